"""Train SwinIR-light full-precision weights: ``python -m compsrt.train``.

Short-run recipe (what the CPU allows): L1 loss, Adam (betas 0.9/0.99), linear warmup then
cosine decay, gradient-norm clipping, bf16 autocast, random flips/rotations of HR crops whose
LR is made once with the MATLAB-compatible bicubic. Validation PSNR (Y, crop = scale) runs on
a held-out slice of the *training* images, never on a benchmark set.

Reproducibility: the crops of iteration ``i`` come from ``default_rng([seed, i])``, so a run
needs no saved RNG state; a resumed run replays exactly the batches an uninterrupted run
would have seen. The state file (weights, Adam moments, iteration, best score) is written
atomically as safetensors with a JSON header, the format calibration's state shares
(:mod:`compsrt.state`): no pickle. The cosine (:mod:`compsrt.schedule`) and the held-out split
(:func:`compsrt.data.split_holdout`, here a seeded choice) are shared with calibration too.

Run folder: ``state.safetensors`` (resume), ``best.safetensors`` (weights only, keep-best),
``log.jsonl`` (one line per validation), ``args.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from .budget import TimeBudget
from .cli_errors import run_cli
from .config import SwinIRConfig
from .data import Pair, load_training_pairs, random_patches, split_holdout
from .device import parse_device
from .errors import ArgumentParser, CompsrtError
from .metrics import psnr
from .model.swinir import SwinIRLight
from .model.weights import read_state_dict, save_state_dict
from .schedule import cosine
from .state import read_state, write_state


@dataclass(frozen=True)
class TrainConfig:
    scale: int = 2
    iters: int = 1000
    batch: int = 8
    patch: int = 48          # LR patch side
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup: int = 200
    clip: float = 1.0        # gradient-norm clipping (0 = off)
    bf16: bool = True
    val_every: int = 250
    val_images: int = 10     # training images held out for validation
    val_patch: int = 96      # LR side of the centre crop validated per held-out image
    seed: int = 0
    data: tuple[str, ...] = field(default_factory=tuple)
    init: str = ""

    def __post_init__(self) -> None:
        for name in ("iters", "batch", "patch", "val_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.lr:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def lr_at(cfg: TrainConfig, it: int) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``min_lr`` at ``iters``."""
    if it < cfg.warmup:
        return cfg.lr * (it + 1) / cfg.warmup
    t = (it - cfg.warmup) / max(1, cfg.iters - cfg.warmup)
    return cosine(min(1.0, t), 1, cfg.lr, cfg.min_lr)


def to_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).float().div_(255.0)


@torch.no_grad()
def validate(model: SwinIRLight, val: list[Pair], cfg: TrainConfig) -> float:
    """Mean PSNR (Y, crop = scale) over centre crops of the held-out training images."""
    model.eval()
    dev = next(model.parameters()).device
    s, p, scores = cfg.scale, cfg.val_patch, []
    for pair in val:
        h, w = pair.lr.shape[:2]
        y, x = max(0, (h - p) // 2), max(0, (w - p) // 2)
        lr = pair.lr[y:y + p, x:x + p]
        hr = pair.hr[y * s:(y + lr.shape[0]) * s, x * s:(x + lr.shape[1]) * s]
        out = model(to_tensor(lr.transpose(2, 0, 1))[None].to(dev))[0].float().cpu()
        sr = (out.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        scores.append(psnr(sr, hr, crop_border=s))
    model.train()
    return float(np.mean(scores))


_STATE = "training state"
_START_AGAIN = "start again in another --out"


def save_state(path: Path, model: SwinIRLight, opt: torch.optim.Adam, it: int, best: float, cfg: TrainConfig) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    for i, p in enumerate(model.parameters()):
        st = opt.state.get(p)
        if st:
            tensors[f"adam.{i}.exp_avg"] = st["exp_avg"]
            tensors[f"adam.{i}.exp_avg_sq"] = st["exp_avg_sq"]
            tensors[f"adam.{i}.step"] = st["step"].reshape(1).float()
    write_state(path, tensors, {"iteration": it, "best_psnr_db": best, "config": asdict(cfg)})


def load_state(path: Path, model: SwinIRLight, opt: torch.optim.Adam) -> tuple[int, float]:
    t, meta = read_state(path, _STATE, _START_AGAIN)
    try:
        it, best = int(meta["iteration"]), float(meta["best_psnr_db"])
        model.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")})
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise CompsrtError(f"{path}: damaged {_STATE} or one of another model ({str(e).splitlines()[0][:100]}); "
                           f"{_START_AGAIN}") from None
    for i, p in enumerate(model.parameters()):
        if f"adam.{i}.exp_avg" in t:
            opt.state[p] = {"exp_avg": t[f"adam.{i}.exp_avg"].to(p.device),
                            "exp_avg_sq": t[f"adam.{i}.exp_avg_sq"].to(p.device),
                            "step": t[f"adam.{i}.step"].reshape(())}
    return it, best


def init_from(model: SwinIRLight, path: Path) -> int:
    """Copy every tensor of matching name and shape (an x2 body into an x3/x4 model)."""
    sd = {k: v for k, v in read_state_dict(path).items() if not k.endswith(("attn_mask", "relative_position_index"))}
    own = model.state_dict()
    take = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    own.update(take)
    model.load_state_dict(own)
    return len(take)


def train(cfg: TrainConfig, out: Path, resume: bool = False, progress: bool = True,
          device: str | torch.device = "cpu", minutes: float = 0.0) -> float:
    """Train (or resume) into ``out``; returns the best validation PSNR.

    ``minutes`` > 0 shortens ``cfg.iters`` so that this call ends within that wall-clock time
    (see :mod:`compsrt.budget`); the shortened length is what ``args.json`` and the state record.
    """
    from tqdm import tqdm

    budget = TimeBudget(minutes)
    device = torch.device(device)

    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "state.safetensors"
    if state_path.exists() and not resume:
        raise CompsrtError(f"{out}: holds a run already; pass --resume to continue it or choose another --out")
    torch.manual_seed(cfg.seed)
    model = SwinIRLight(SwinIRConfig(scale=cfg.scale))
    if cfg.init:
        init_from(model, Path(cfg.init))
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99))
    start, best = 0, -1.0
    if resume and state_path.exists():
        start, best = load_state(state_path, model, opt)
    pairs = load_training_pairs([Path(d) for d in cfg.data], cfg.scale, progress)
    big = [p for p in pairs if min(p.lr.shape[:2]) >= cfg.patch]
    if len(big) < len(pairs):
        print(f"skipping {len(pairs) - len(big)} images smaller than the {cfg.patch}px LR patch", file=sys.stderr)
    train_set, val_set = split_holdout(big, cfg.val_images, seed=cfg.seed)
    (out / "args.json").write_text(json.dumps(asdict(cfg), indent=1))
    model.train()
    budget.loop_started()
    bar = tqdm(range(start, cfg.iters), initial=start, total=cfg.iters, desc=f"train x{cfg.scale}", disable=not progress)
    t0 = time.time()
    for it in bar:
        lr_np, hr_np = random_patches(train_set, np.random.default_rng([cfg.seed, it]), cfg.batch, cfg.patch, cfg.scale)
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, it)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            sr = model(to_tensor(lr_np).to(device, non_blocking=True))
        loss = F.l1_loss(sr.float(), to_tensor(hr_np).to(device, non_blocking=True))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr_at(cfg, it):.2e}")
        done = it + 1
        fitted = budget.shorten(cfg, done, bar)
        if fitted is not cfg:
            cfg = fitted
            print(f"time budget of {minutes:g} min: this run stops at iteration {cfg.iters}", file=sys.stderr)
            (out / "args.json").write_text(json.dumps(asdict(cfg), indent=1))
        if done % cfg.val_every == 0 or done == cfg.iters:
            score = validate(model, val_set, cfg)
            if score > best:
                best = score
                save_state_dict(model, out / "best.safetensors", {"iteration": str(done), "val_psnr_db": f"{score:.4f}"})
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps({"iteration": done, "val_psnr_db": round(score, 4), "loss": round(loss.item(), 5),
                                    "lr": lr_at(cfg, it), "seconds": round(time.time() - t0, 1)}) + "\n")
            save_state(state_path, model, opt, done, best, cfg)
        if done >= cfg.iters:
            break
    return best


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m compsrt.train", description=__doc__.split("\n")[0])
    d = TrainConfig()
    p.add_argument("--scale", type=int, choices=(2, 3, 4), required=True)
    p.add_argument("--data", type=Path, nargs="+", required=True, help="folders of HR training images")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--init", type=Path, help="start from these weights (e.g. the x2 body for x3/x4)")
    p.add_argument("--iters", type=int, default=d.iters)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--patch", type=int, default=d.patch, help="LR patch side")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--min-lr", type=float, default=d.min_lr)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--clip", type=float, default=d.clip)
    p.add_argument("--no-bf16", action="store_true", help="train in float32")
    p.add_argument("--val-every", type=int, default=d.val_every, help="validate and checkpoint every K iterations")
    p.add_argument("--val-images", type=int, default=d.val_images)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--minutes", type=float, default=0.0,
                   help="wall-clock budget: shorten --iters to end within it (0 = no budget)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    return run_cli("compsrt.train", lambda: _main(a), errors=(CompsrtError, ValueError),
                   interrupted=f"--resume continues from the last checkpoint in {a.out}")


def _main(a: argparse.Namespace) -> int:
    for d in a.data:
        if not d.is_dir():
            raise CompsrtError(f"{d}: not a folder of training images")
    if a.init and not a.init.is_file():
        raise CompsrtError(f"{a.init}: --init weights not found")
    cfg = TrainConfig(scale=a.scale, iters=a.iters, batch=a.batch, patch=a.patch, lr=a.lr, min_lr=a.min_lr,
                      warmup=a.warmup, clip=a.clip, bf16=not a.no_bf16, val_every=a.val_every,
                      val_images=a.val_images, seed=a.seed, data=tuple(map(str, a.data)),
                      init=str(a.init or ""))
    best = train(cfg, a.out, resume=a.resume, device=parse_device(a.device), minutes=a.minutes)
    print(f"best validation PSNR {best:.3f} dB; weights in {a.out / 'best.safetensors'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
