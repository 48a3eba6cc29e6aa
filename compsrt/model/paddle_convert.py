"""One-time converter: official MambaIRv2-light ``.pdparams`` (PaddlePaddle re-save) -> safetensors.

    python -m compsrt.model.paddle_convert mambairv2_lightSR_x2.pdparams mambairv2_light_x2.safetensors

A ``.pdparams`` file is a Python pickle of a dict of numpy arrays plus one Paddle metadata key.
A pickle can run code, so it is read with an unpickler that admits only the three numpy globals
an array needs; anything else is refused before it is imported. No Paddle is needed.

Conversion: drop ``StructuredToParameterName@@``; check ``relative_position_index_SA`` against
our own index and drop it (the model recomputes it); transpose every ``nn.Linear`` weight (Paddle
stores them [in, out]; the square 48x48 ones too, which no shape check could catch); keep every
other tensor (convs, embeddings, raw parameters) as is. The key names are already ours. Then
check the parameter count and a strict load, and write fp32 safetensors with provenance metadata.
"""
from __future__ import annotations

import argparse
import json
import pickle
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ArgumentParser, CompsrtError
from ..state import file_sha256
from .mambairv2 import MambaIRv2Config, MambaIRv2Light, infer_mambairv2_config, official_to_model
from .swinir import relative_position_index
from .weights import load_into, save_state_dict

# The two official files (re-saved by a public PaddlePaddle port), by sha256 -> scale.
KNOWN_SHA256 = {
    "19364ebe09c7a3a3042a00bbdb6bebc188cb83a09496c295068bf588541519e7": 2,
    "a816d03034a1949399c636c7195b4dec99d7a4bafdd0d16823da23285fd17ce1": 4,
}
# Learned parameters of the official configuration per scale (the index buffer excluded).
PARAM_COUNTS = {2: 774_092, 3: 780_587, 4: 789_680}

_META_KEY = "StructuredToParameterName@@"
_INDEX_KEY = "relative_position_index_SA"
# numpy >= 2 pickles name numpy._core, older ones numpy.core; both mean the same function.
_ALLOWED_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can build numpy arrays and plain containers, and nothing else."""

    def find_class(self, module: str, name: str):  # noqa: ANN201 (pickle's signature)
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}: only numpy arrays are allowed")


def read_pdparams(path: Path) -> dict[str, np.ndarray]:
    """The numpy arrays of a ``.pdparams`` file, the Paddle metadata key dropped.

    Raises:
        CompsrtError: unreadable file, a pickle that needs anything but numpy arrays, or a value
            that is not a numeric array.
    """
    try:
        with open(path, "rb") as f:
            obj = NumpyOnlyUnpickler(f).load()
    except OSError as e:
        raise CompsrtError(f"{path}: cannot read ({e.strerror})") from None
    except Exception as e:  # refused global, truncated or not a pickle
        raise CompsrtError(f"{path}: not a readable .pdparams file ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(obj, dict):
        raise CompsrtError(f"{path}: expected a dict of arrays, got {type(obj).__name__}")
    obj.pop(_META_KEY, None)
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, np.ndarray) or v.dtype.kind not in "fiu":
            raise CompsrtError(f"{path}: entry {k!r} is not a numeric array ({type(v).__name__})")
    return obj


def linear_weight_keys(model: nn.Module) -> set[str]:
    """State-dict keys of every official nn.Linear weight: the tensors Paddle stores transposed
    (``assm.in_proj.0``, a Linear here, is a 1x1 conv in the official files: not transposed)."""
    return {f"{name}.weight" for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and not name.endswith("assm.in_proj.0")}


def convert(arrays: dict[str, np.ndarray], source: str) -> tuple[MambaIRv2Light, dict[str, Tensor]]:
    """Paddle arrays -> (model with the weights loaded, our state dict). Checks everything."""
    arrays = dict(arrays)
    index = arrays.pop(_INDEX_KEY, None)
    sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    cfg = infer_mambairv2_config(sd, source)
    if index is not None and not np.array_equal(index, relative_position_index(cfg.window_size).numpy()):
        raise CompsrtError(f"{source}: {_INDEX_KEY} differs from the Swin relative-position index")
    model = MambaIRv2Light(cfg)
    linear = linear_weight_keys(model)
    missing_linear = sorted(linear - set(sd))
    if missing_linear:
        raise CompsrtError(f"{source}: missing Linear weights, e.g. {missing_linear[:3]}")
    sd = {k: (v.t().contiguous() if k in linear else v).float() for k, v in sd.items()}
    load_into(model, official_to_model(sd), source)
    n_params = sum(v.numel() for v in sd.values())
    official = cfg == MambaIRv2Config(scale=cfg.scale)
    if official and n_params != PARAM_COUNTS[cfg.scale]:
        raise CompsrtError(f"{source}: {n_params:,} parameters, expected {PARAM_COUNTS[cfg.scale]:,} for x{cfg.scale}")
    return model, sd


def convert_file(src: Path, dst: Path, check_sha: bool = True) -> MambaIRv2Light:
    """Convert one official file; returns the loaded model (eval mode).

    Raises:
        CompsrtError: unknown sha256 (unless ``check_sha`` is False), unreadable or unsafe
            pickle, wrong tensors or parameter count.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise CompsrtError(f"{src}: no such file")
    digest = file_sha256(src)
    if check_sha and digest not in KNOWN_SHA256:
        raise CompsrtError(f"{src}: sha256 {digest} is not one of the official MambaIRv2-light files "
                           "(their sums are listed in docs/mambairv2.md); pass --any-sha to convert it anyway")
    model, sd = convert(read_pdparams(src), str(src))
    if digest in KNOWN_SHA256 and KNOWN_SHA256[digest] != model.cfg.scale:
        raise CompsrtError(f"{src}: the file with this sha256 is x{KNOWN_SHA256[digest]}, its tensors say x{model.cfg.scale}")
    meta = {
        "arch": "mambairv2-light",
        "config": json.dumps(asdict(model.cfg)),
        "source": src.name,
        "source_sha256": digest,
        "license": "Apache-2.0 (official MambaIRv2 weights, Guo et al.)",
        "converted_by": "compsrt.model.paddle_convert",
    }
    save_state_dict(model, dst, metadata=meta, tensors=sd)   # the official layout (in_proj as a 1x1 conv)
    return model.eval()


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m compsrt.model.paddle_convert",
                       description="Convert official MambaIRv2-light .pdparams weights to safetensors.")
    p.add_argument("src", type=Path, help="the .pdparams file")
    p.add_argument("dst", type=Path, help="the .safetensors file to write")
    p.add_argument("--any-sha", action="store_true", help="convert a file whose sha256 is not a known official one")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        model = convert_file(args.src, args.dst, check_sha=not args.any_sha)
    except (CompsrtError, OSError) as e:
        print(f"paddle_convert: error: {e}", file=sys.stderr)
        return 2
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.dst}: x{model.cfg.scale}, {n:,} parameters", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
