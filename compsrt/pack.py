"""``python -m compsrt.pack CALIBRATED OUT``: a calibrated (fake-quant) checkpoint -> a packed one.

CALIBRATED is a ``compsrt-calibrated`` file (what ``python -m compsrt.calib`` keeps as
``C/calibrated.safetensors``, and the ``model.safetensors`` of earlier compsrt versions). OUT
gets the packed file the integer runtime runs (:mod:`compsrt.quant.pack`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cli_errors import run_cli
from .errors import ArgumentParser, CompsrtError
from .state import file_sha256
from .quant.pack import FP_DTYPES, pack_model, save_packed


def source_sha256(weights: str, scale: int, arch: str = "swinir-light") -> str:
    """sha256 of the FP weights a calibration started from, where the file can still be found."""
    from .model.weights import bundled_weights

    try:
        path = bundled_weights(scale, arch) if weights.startswith("bundled") else Path(weights)
        return file_sha256(path) if path.is_file() else "unknown"
    except (CompsrtError, OSError):
        return "unknown"


def pack_file(src: Path, dst: Path, fp_dtype: str = "fp16", command: str = "") -> dict:
    """Pack ``src`` into ``dst`` (atomically); returns the header written."""
    from .load import checkpoint_kind
    from .quant.compress import load_calibrated

    kind = checkpoint_kind(src)
    if kind != "compsrt-calibrated":
        raise CompsrtError(f"{src}: a {kind!r} file, not a calibrated compsrt checkpoint; pack takes the output "
                           "of python -m compsrt.calib (calibrated.safetensors)")
    model = load_calibrated(src)
    prov = model.provenance or {}
    tensors, header = pack_model(model, fp_dtype, prov, source_sha256(str(prov.get("weights", "")), model.cfg.scale,
                                                                    prov.get("arch", "swinir-light")),
                                 command or prov.get("command", ""))
    save_packed(tensors, header, dst)
    return header


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m compsrt.pack", description=__doc__.split("\n")[0])
    p.add_argument("calibrated", type=Path, help="calibrated checkpoint (compsrt-calibrated safetensors)")
    p.add_argument("out", type=Path, help="packed checkpoint to write (.safetensors)")
    p.add_argument("--fp-dtype", choices=list(FP_DTYPES), default="fp16",
                   help="storage type of the FP parts (convs, norms, biases); default fp16")
    return p


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    return run_cli("compsrt.pack", lambda: _main(a), interrupted="nothing written")


def _main(a: argparse.Namespace) -> int:
    if not a.calibrated.is_file():
        raise CompsrtError(f"{a.calibrated}: file not found")
    if a.out.suffix != ".safetensors":
        raise CompsrtError(f"{a.out}: the packed file must end in .safetensors")
    if a.out.resolve() == a.calibrated.resolve():
        raise CompsrtError(f"{a.out}: is the input; choose another output so the input is kept")
    pack_file(a.calibrated, a.out, a.fp_dtype)
    print(f"{a.out}: {a.out.stat().st_size:,} bytes ({a.calibrated.stat().st_size:,} calibrated)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
