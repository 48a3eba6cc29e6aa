"""``python -m compsrt.calib``: FP SwinIR-light or MambaIRv2-light weights -> a 2/3/4-bit CompSRT checkpoint.

Quick default (CPU, minutes): ``python -m compsrt.calib --scale 2 --bits 4 --out C``
(``--arch mambairv2-light [--layers official]`` for MambaIRv2-light).
The paper's setting: ``--iters 4000 --batch 16`` (used automatically on a GPU unless the
flags are given). Writes ``C/model.safetensors``, the packed checkpoint the integer runtime
runs (``compsrt-infer --weights``, ``python -m compsrt.eval --weights``), beside
``C/calibrated.safetensors`` (the trained fake-quant form, which ``python -m compsrt.pack``
re-packs), ``C/report.json``, ``C/report.md`` and the resumable state
``C/calib_state.safetensors``. ``--eval-data`` scores the packed model.

Data parallel: ``torchrun --nproc-per-node N -m compsrt.calib ...`` (each rank on its own GPU,
or gloo processes on the CPU): the same run, its global batch (``--batch``) split over the
ranks; rank 0 alone writes files. Commands and measurements: docs/distributed.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from importlib import resources
from pathlib import Path

import torch

from ..config import LOSSES, LR_UNITS, CalibConfig
from ..data import load_training_pairs, split_holdout
from ..device import parse_device
from ..distributed import Dist, prog_name, session
from ..errors import ArgumentParser, CompsrtError
from ..io import atomic_path
from ..quant.compress import save_calibrated
from ..quant.pack import pack_model, save_packed
from ..load import ARCHS, load_model
from ..quant.plan import check_layers
from ..pack import source_sha256
from .calibrate import CalibrationInterrupted, calibrate
from .methods import METHODS, method_config


def bundled_calib_images() -> Path:
    """A few 256x256 crops of BSD200/T91 training images shipped for the quick default."""
    return Path(str(resources.files("compsrt") / "assets" / "calib"))


def _data_identity(folders: list[Path]) -> str:
    """sha256 over the training images' names and sizes: a resumed run must see the same data."""
    import hashlib

    h = hashlib.sha256()
    for d in folders:
        for p in sorted(Path(d).rglob("*")):
            if p.is_file():
                h.update(f"{p.relative_to(d)}|{p.stat().st_size}\n".encode())
    return h.hexdigest()


def _parser() -> argparse.ArgumentParser:
    d = CalibConfig()
    p = ArgumentParser(prog="python -m compsrt.calib", description=__doc__.split("\n")[0])
    p.add_argument("--scale", type=int, choices=(2, 3, 4), required=True)
    p.add_argument("--arch", choices=ARCHS, default="swinir-light")
    p.add_argument("--layers", default="", help="the layer set quantized (compsrt/quant/plan.py): swinir-light has "
                   "'full'; mambairv2-light 'official' (default: what the official CompSRT code quantizes)")
    p.add_argument("--bits", type=int, choices=(2, 3, 4, 8), default=4)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--method", choices=list(METHODS), default="compsrt")
    p.add_argument("--official-rotation", action="store_true",
                   help="quantize each operand rotated, then rotate back (the official code's way)")
    p.add_argument("--rotate", choices=("both", "weights"), default="both",
                   help="'weights' rotates weights only (Figure 6); needs --official-rotation")
    p.add_argument("--weights", type=Path, help="FP weights (default: the bundled ones of --arch and --scale)")
    p.add_argument("--data", type=Path, nargs="+", help="folders of HR training images (default: bundled crops); "
                   "never a benchmark test set")
    p.add_argument("--val-images", type=int, default=3, help="training images held out for keep-best")
    p.add_argument("--iters", type=int, help=f"finetuning iterations (default {d.iters}; 4000 on a GPU)")
    p.add_argument("--batch", type=int, help=f"finetuning batch (default {d.batch}; 16 on a GPU)")
    p.add_argument("--calib-batch", type=int, help=f"patches in the DOBI batch (default {d.calib_batch}; 32 on a GPU)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--lr-unit", choices=LR_UNITS, default=d.lr_unit,
                   help="what --lr is relative to, per quantizer: its DOBI range (default), its DOBI step "
                        "(try --lr 0.15 at 2 bits), or nothing (one absolute rate, as the official code)")
    p.add_argument("--loss", choices=LOSSES, default=d.loss,
                   help="output distillation loss: l1 (default, the paper's) or l2 (mean squared, what PSNR "
                        "measures; measured at 2 bits in docs/calib/experiments.md)")
    p.add_argument("--feature-loss", type=float, default=d.feature_loss, help="weight of the stage feature loss")
    p.add_argument("--prune", type=float, default=0.0, help="fraction pruned per quantized weight (e.g. 0.4)")
    p.add_argument("--prune-mode", choices=("unstructured", "channel"), default="unstructured")
    p.add_argument("--exact-dc", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the rotated DC coefficient (scaled row sum) of every operand in FP (default on); "
                        "only with the deployable rotation")
    p.add_argument("--row-mean", action="store_true",
                   help="keep each operand row's mean along the contraction axis in FP and quantize the centred "
                        "rest (the unrotated counterpart of the exact DC); only for 2dquant, decomposition-only")
    p.add_argument("--val-every", type=int, help=f"keep-best check every K iterations (default {d.val_every}; 200 on a GPU)")
    p.add_argument("--recompute", action=argparse.BooleanOptionalAction, default=None,
                   help="recompute each Swin block in backward instead of keeping its temporaries "
                        "(default on the CPU: a third of the memory at x0.8-1.05 the time, batch 16 needs it "
                        "within 24 GB; off on a GPU, where it costs x1.9 the time and batch 16 fits 13.5 GB "
                        "without it; benchmarks/calib_step_memory.py)")
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=d.cuda_graph,
                   help="on CUDA without recompute, replay each finetuning step from a CUDA graph (checked "
                        "against the eager step once; falls back to it, saying why); default on")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--eval-data", type=Path, help="benchmark folder to evaluate on after calibration "
                   "(holding <Set>/HR and <Set>/LR_bicubic/X<s>); omitted = no evaluation")
    p.add_argument("--eval-sets", nargs="+", default=["Set5", "Set14", "B100"])
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--minutes", type=float, default=0.0,
                   help="wall-clock budget of the calibration: shorten --iters to end within it (0 = none)")
    p.add_argument("--quiet", action="store_true")
    return p


def _calib_config(a: argparse.Namespace) -> CalibConfig:
    on_gpu = str(a.device).startswith("cuda")
    base = CalibConfig.full() if on_gpu else CalibConfig()
    # Options left out take the base's value: the GPU's base is the paper's setting, not the quick one.
    given = {k: getattr(a, k) for k in ("iters", "batch", "calib_batch", "val_every", "recompute")
             if getattr(a, k) is not None}
    return CalibConfig(**{**asdict(base), **given, "lr": a.lr, "lr_unit": a.lr_unit, "loss": a.loss,
                          "feature_loss": a.feature_loss, "seed": a.seed, "cuda_graph": a.cuda_graph})


def write_report(out: Path, report: dict) -> None:
    with atomic_path(out / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    r, c = report["calibration"], report["config"]
    lines = [f"# CompSRT calibration: {c['method']} W{c['quant']['bits']}A{c['quant']['bits']} x{c['scale']}", "",
             f"- weights: {c['weights']}; data: {', '.join(c['data'])}",
             f"- quant: {json.dumps(c['quant'])}", f"- calib: {json.dumps(c['calib'])}",
             f"- DOBI {r['dobi_seconds']:.1f} s; finetuning {r['finetune_seconds']:.1f} s for {r['iters_done']} "
             f"iterations ({r['seconds_per_iter']:.2f} s/iter incl. validation) on {c['device']}"
             + (f" x {c['ranks']} ranks" if c.get("ranks") else "")
             + (f", step: {r['step_mode']}" if r.get("step_mode") else ""),
             f"- held-out training patches PSNR: FP {r['fp_val_psnr_db']:.3f}, after DOBI "
             f"{r['start_val_psnr_db']:.3f}, kept {r['best_val_psnr_db']:.3f} dB (iteration {r['best_iter']})",
             f"- fidelity to the FP output on those patches (the keep-best score): after DOBI "
             f"{r['start_fidelity_db']:.2f}, kept {r['best_fidelity_db']:.2f} dB"]
    if report.get("packed_bytes"):
        lines.append(f"- packed checkpoint model.safetensors: {report['packed_bytes']:,} bytes")
    if r["stopped"]:
        lines.append(f"- stopped early: {r['stopped']}")
    if report.get("eval"):
        lines += ["", "| set | FP PSNR | FP SSIM | quantized PSNR | quantized SSIM | drop (dB) |", "|---|---|---|---|---|---|"]
        for name, e in report["eval"].items():
            lines.append(f"| {name} | {e['fp_psnr_db']:.3f} | {e['fp_ssim']:.4f} | {e['psnr_db']:.3f} | "
                         f"{e['ssim']:.4f} | {e['fp_psnr_db'] - e['psnr_db']:.3f} |")
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    prog = prog_name("compsrt.calib")
    try:
        quant = method_config(a.method, a.bits, a.official_rotation, a.rotate, a.prune, a.prune_mode,
                              exact_dc=a.exact_dc, row_mean=a.row_mean)
        quant = replace(quant, layers=check_layers(a.arch, a.layers))
        cfg = _calib_config(a)
        if a.arch != "swinir-light" and cfg.feature_loss > 0:
            raise ValueError(f"--feature-loss taps SwinIR-light's stage outputs; it is not available for {a.arch}")
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    try:
        with session(parse_device(a.device)) as dist:
            _run(a, argv, quant, cfg, dist)
    except (CompsrtError, OSError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except CalibrationInterrupted as e:
        where = f"{a.out / 'calib_state.safetensors'} holds iteration {e.iteration}" if e.saved else "nothing saved"
        print(f"{prog}: interrupted; {where}: run the same command with --resume to continue", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"{prog}: interrupted before finetuning began; nothing saved", file=sys.stderr)
        return 130
    if dist.is_main:
        print((a.out / "report.md").read_text())
    return 0


def _check_out(a: argparse.Namespace, state: Path) -> None:
    if state.exists() and not a.resume:
        raise CompsrtError(f"{a.out}: holds a calibration run; pass --resume to continue it or choose another --out")


def _same_inputs(dist: Dist, identity: dict) -> None:
    """Every rank must calibrate the same weights on the same data (and options): checked against rank 0's."""
    every = dist.all_gather_json(identity, "comparing the ranks' inputs")
    for r, other in enumerate(every[1:], 1):
        diff = sorted(k for k in every[0] if other.get(k) != every[0][k])
        if diff:
            raise CompsrtError(f"rank {r} has other inputs than rank 0 ({', '.join(diff)} differ); give every rank the "
                               "same options and the same --weights and --data files")


def _run(a: argparse.Namespace, argv: list[str] | None, quant, cfg: CalibConfig, dist: Dist) -> None:
    """Calibrate and write the outputs (rank 0); a data-parallel run's ranks all come here."""
    device, main = dist.device, dist.is_main
    state = a.out / "calib_state.safetensors"
    dist.decide(lambda: _check_out(a, state), "checking --out")
    data = a.data or [bundled_calib_images()]
    for d in data:
        if not Path(d).is_dir():
            raise CompsrtError(f"{d}: not a folder of training images")
    if a.eval_data is not None and not a.eval_data.is_dir():
        raise CompsrtError(f"{a.eval_data}: not a benchmark folder")
    fp = load_model(a.weights, a.scale, arch=a.arch)
    pairs = [p for p in load_training_pairs(list(data), a.scale, progress=not a.quiet and main)
             if min(p.lr.shape[:2]) >= cfg.patch]
    if len(pairs) <= a.val_images:
        raise CompsrtError(f"need more than {a.val_images} training images of at least {cfg.patch * a.scale}px "
                           f"in {', '.join(map(str, data))}; found {len(pairs)}")
    train, val = split_holdout(pairs, a.val_images)
    if main:
        a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    identity = {"method": a.method, "arch": a.arch, "scale": a.scale, "val_images": a.val_images,
                "weights_sha256": source_sha256(str(a.weights) if a.weights else "bundled", a.scale, a.arch),
                "data_sha256": _data_identity(data)}
    if dist.joined:
        _same_inputs(dist, identity)
    model, rep = calibrate(fp, train, val, quant, cfg, state, a.resume, not a.quiet, device, identity=identity,
                           minutes=a.minutes, dist=dist)
    wall = time.perf_counter() - t0
    weights_name = str(a.weights) if a.weights else f"bundled {a.arch.replace('-', '_')}_x{a.scale}"
    config = {"method": a.method, "arch": a.arch, "layers": quant.layers, "scale": a.scale, "weights": weights_name,
              "data": [str(d) for d in data], "device": str(device), "quant": asdict(quant), "calib": rep.calib}
    if dist.joined:
        config["ranks"] = dist.world
    command = "python -m compsrt.calib " + " ".join(sys.argv[1:] if argv is None else argv)
    prov = {**config, "iters_done": rep.iters_done, "command": command}
    report = {"config": config, "wall_seconds": wall, "calibration": asdict(rep)}
    if main:
        save_calibrated(model.cpu(), a.out / "calibrated.safetensors", provenance=prov)
        if quant.bits in (2, 3, 4) and quant.rotation != "official":
            # packed from the model in memory (what python -m compsrt.pack would make of the file above)
            tensors, header = pack_model(model, "fp16", prov, identity["weights_sha256"], command)
            save_packed(tensors, header, a.out / "model.safetensors")
            report["packed_bytes"] = (a.out / "model.safetensors").stat().st_size
        else:   # 8 bits and the official rotate-back mode are fake-quant studies: nothing to pack
            save_calibrated(model, a.out / "model.safetensors", provenance=prov)
    if a.eval_data is not None:
        from ..eval import evaluate

        with dist.rank0_file(a.out / "model.safetensors", "sharing the packed model") as path:
            packed = load_model(path, a.scale, arch=a.arch, device=device)
        q = evaluate(packed, a.eval_data, a.eval_sets, a.scale, device, progress=not a.quiet, dist=dist)
        f = evaluate(fp, a.eval_data, a.eval_sets, a.scale, device, progress=not a.quiet, dist=dist)
        report["eval"] = {n: {"psnr_db": q[n]["psnr_db"], "ssim": q[n]["ssim"], "fp_psnr_db": f[n]["psnr_db"],
                              "fp_ssim": f[n]["ssim"], "seconds_per_image": q[n]["seconds_per_image"]}
                          for n in a.eval_sets}
    if main:
        write_report(a.out, report)
    dist.barrier("waiting for rank 0 to write the outputs")


if __name__ == "__main__":
    sys.exit(main())
