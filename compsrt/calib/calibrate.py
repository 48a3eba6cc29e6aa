"""``calibrate(fp_model, pairs, quant, cfg)``: DOBI bound search, then DQC distillation finetuning.

1. The FP model is copied and compressed (:func:`compress_`; or the caller passes the compressed
   ``student``); pruning masks are fixed there.
2. DOBI: one no-grad forward of a seeded calibration batch in which each quantizer searches
   its bounds on the tensor it receives and quantizes from then on, so later quantizers see
   the error of earlier ones (the official code searches on FP activations instead).
3. DQC: the quantizer scalars (l, u, s2, z2, as the method allows) are trained to make the
   quantized model's output match the FP model's (L1, or L2 on request; optionally a
   normalized feature loss on the four stage outputs), with Adam, gradient value clipping, a
   cosine-decayed learning rate, and a projection after every step that keeps each step size
   positive (one step: :mod:`.step`; on a GPU it is replayed from a CUDA graph, :mod:`.graphed_step`).

What this relies on from the 2DQuant and CompSRT papers and official code, and where it departs
from that code: docs/method_notes.md.

Robustness: a non-finite loss or parameter stops training with the last finite state kept
and the reason reported. Keep-best uses held-out *training* patches: the state whose output is
closest to the FP model's (PSNR against the FP output; PSNR against HR is reported beside it).
The state is checkpointed atomically (:mod:`compsrt.state`) so ``resume=True`` continues where a
run stopped; batches come from ``default_rng([seed, iteration])``, so a resumed run sees the same data.

Data parallel (``dist``, several ranks started by torchrun; docs/distributed.md): every rank draws
the same global batch and runs its own slice of it (:meth:`~compsrt.distributed.Dist.batch_slice`);
the loss of a slice is weighted by its share of the batch, so the ranks' gradients sum to the
gradient of the whole batch's loss, and that sum, the quantizer scalars' flat gradient with the
weighted loss appended, is all-reduced once per step (inside the graph where the step is graphed),
before the update every rank then applies alike. Rank 0 alone searches the bounds (DOBI, on the
whole calibration batch, exactly as one process) and broadcasts them; it alone reads and writes the
state, runs the keep-best checks and the time budget, and broadcasts what the others need: the
resumed state, the run's (shortened) length, and at the end the kept state. A Ctrl-C on any rank
stops all at the end of the same iteration. The state holds nothing of the number of ranks, so a
run resumes with another number.
"""
from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..budget import TimeBudget
from ..config import CalibConfig, QuantConfig
from ..data import Pair, random_patches
from ..distributed import Dist
from ..errors import CompsrtError
from ..metrics import psnr
from ..quant.compress import compress_, set_calibrating
from ..quant.qmodules import quantizers
from ..schedule import cosine
from ..state import read_state, write_state
from .dobi import dobi
from .graphed_step import CudaGraph, Graph, GraphedStep, graph_unsupported, routing_rng
from .scalar_adam import ScalarAdam
from .step import StageTaps, distill_loss, finetune_step_, update_


@dataclass
class CalibReport:
    quant: dict
    calib: dict
    iters_done: int = 0
    best_iter: int = 0
    best_val_psnr_db: float = float("nan")    # PSNR against HR of the kept state
    start_val_psnr_db: float = float("nan")   # right after DOBI
    fp_val_psnr_db: float = float("nan")
    best_fidelity_db: float = float("nan")    # PSNR against the FP model's output: the keep-best score
    start_fidelity_db: float = float("nan")
    start_val_l1: float = float("nan")          # the training loss (L1 to the FP output), held out
    dobi_seconds: float = 0.0
    finetune_seconds: float = 0.0
    seconds_per_iter: float = float("nan")
    stopped: str = ""                           # why training stopped early, if it did
    step_mode: str = ""                         # "cuda graph", or "eager" and why not a graph
    ranks: int = 1                              # data-parallel ranks (torchrun) of the run's last part
    history: list[dict] = field(default_factory=list)


def _to_input(a: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(a).to(device).float().div_(255.0)


def val_patches(val: list[Pair], n: int, patch: int, scale: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed held-out (LR, HR) patches: the same every evaluation, never augmented."""
    return random_patches(val, np.random.default_rng([seed, 777]), n, patch, scale, aug=False)


def _hr_psnr(out: Tensor, hr: np.ndarray, scale: int) -> float:
    """Mean PSNR (official protocol: uint8, Y, border crop) of outputs in [0, 1] against HR."""
    out = out.mul(255).round().byte().cpu().numpy()
    return float(np.mean([psnr(o.transpose(1, 2, 0), h.transpose(1, 2, 0), scale) for o, h in zip(out, hr)]))


def _fidelity(out: Tensor, fp_out: Tensor) -> float:
    """PSNR (dB) of outputs in [0, 1] against the FP model's outputs ``fp_out``.

    The keep-best score: what finetuning optimizes, and far less noisy than PSNR against HR,
    in which a 4-bit model's error (~0.05 dB on a few patches) drowns in the patches' own.
    """
    mse = torch.mean((out - fp_out) ** 2).item()
    return 10 * math.log10(1 / max(mse, 1e-20))


@torch.no_grad()
def val_scores(model: torch.nn.Module, lr: np.ndarray, hr: np.ndarray, fp_out: Tensor, scale: int,
               device: torch.device) -> tuple[float, float, float]:
    """(PSNR against HR, fidelity to the FP output, L1 to the FP output) on the held-out
    patches, from one forward. The L1 is the training objective's held-out value: it can fall
    while the fidelity (a mean *squared* error) does not (docs/calib/experiments.md)."""
    out = model(_to_input(lr, device)).clamp(0, 1)
    return _hr_psnr(out, hr, scale), _fidelity(out, fp_out), float((out - fp_out).abs().mean())


def _qstate(model: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()
            if k.endswith((".lower", ".upper", ".step_extra", ".zero_extra"))}


class CalibrationInterrupted(KeyboardInterrupt):
    """Ctrl-C during finetuning: raised at the end of the iteration it arrived in, after the
    state was saved (when there is a state file), so ``--resume`` continues exactly."""

    def __init__(self, iteration: int, saved: bool) -> None:
        super().__init__(iteration)
        self.iteration, self.saved = iteration, saved


class _DeferredInterrupt:
    """While active (main thread only), the first Ctrl-C sets ``requested``; a second one stops at once."""

    def __init__(self) -> None:
        self.requested, self._old = False, None

    def __enter__(self) -> "_DeferredInterrupt":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        import signal

        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


# CalibConfig fields that cannot change the result: a resumed run may differ in them.
_RESUMABLE_FIELDS = ("iters",)   # --minutes shortens iters; the schedule then follows the saved length


def _run_config(quant: QuantConfig, cfg: CalibConfig, identity: dict | None) -> dict:
    """What a resumed run must share with the run that wrote the state."""
    calib = {k: v for k, v in asdict(cfg).items() if k not in _RESUMABLE_FIELDS}
    return {"quant": asdict(quant), "calib": calib, "identity": identity or {}}


_STATE = "calibration state"
_START_AGAIN = "start again in another --out"


def _save_state(path: Path, model, opt: ScalarAdam, it: int, best: dict, report: CalibReport, run: dict) -> None:
    t = {f"q.{k}": v for k, v in _qstate(model).items()}
    t.update({f"best.{k}": v for k, v in best.items()})
    t.update(opt.state_tensors())
    write_state(path, t, {"iteration": it, "report": asdict(report), "run": run})


def _load_state(path: Path, model, opt: ScalarAdam, run: dict) -> tuple[int, dict, CalibReport]:
    t, meta = read_state(path, _STATE, _START_AGAIN)
    if "adam.base_lrs" not in t or "run" not in meta:
        raise CompsrtError(f"{path}: a {_STATE} from an older compsrt; {_START_AGAIN}")
    try:
        saved, iteration, old_report = meta["run"], int(meta["iteration"]), meta["report"]
    except (ValueError, KeyError, TypeError):
        raise CompsrtError(f"{path}: damaged {_STATE} (its header); {_START_AGAIN}") from None
    # Fields added to the configs after a state was written take their defaults, as the run would have.
    for part, cls in (("quant", QuantConfig), ("calib", CalibConfig)):
        if isinstance(saved.get(part), dict):
            saved[part] = {**{f.name: f.default for f in fields(cls) if f.name in run[part]}, **saved[part]}
    if saved != json.loads(json.dumps(run, sort_keys=True)):
        diff = sorted(f"{part}.{k}" for part in ("quant", "calib", "identity")
                      for k in set(saved.get(part, {})) | set(run.get(part, {}))
                      if saved.get(part, {}).get(k) != run.get(part, {}).get(k))
        raise CompsrtError(f"{path}: --resume with different settings than the run it continues ({', '.join(diff)}); "
                           "resume with the options it was started with, or start again in another --out")
    dev = next(model.parameters()).device
    own = dict(model.named_parameters())
    try:
        with torch.no_grad():
            for k, v in t.items():
                if k.startswith("q."):
                    own[k[2:]].copy_(v.reshape(()))
        opt.load_state_tensors(t)   # the first run's rates (from its DOBI) included
    except (KeyError, ValueError, RuntimeError) as e:
        raise CompsrtError(f"{path}: does not match this run ({e}); resume with the options it was started "
                           "with, or start again in another --out") from None
    best = {k[5:]: v.to(dev) for k, v in t.items() if k.startswith("best.")}
    try:
        return iteration, best, CalibReport(**old_report)
    except TypeError:
        raise CompsrtError(f"{path}: damaged {_STATE} (its report); {_START_AGAIN}") from None


def quant_optimizer(model: torch.nn.Module, cfg: CalibConfig) -> ScalarAdam:
    """Adam over the quantizer scalars, each quantizer's rates scaled by ``cfg.lr_unit``.

    "range" (default): bounds learn at lr x the DOBI range, extras (s2, z2) at lr x the step, so
    a weight quantizer with a range of 0.3 and an activation quantizer with a range of 30 both
    move their bounds by about 1% of the range per update at lr 1e-2 (one "absolute" rate, as the
    official code uses, moves small weight bounds by a whole quantization step per update).
    A bound then moves (2^b - 1)% of a step per update: 15% at 4 bits but 3% at 2, too slowly
    for either method at 2 bits (docs/calib/experiments.md). "step": everything at lr x the
    step, the same fraction of a step at every bit width.

    The range is read once, right after DOBI; a resumed run restores those rates from its state.
    """
    params, rates = [], []
    for q in quantizers(model):
        rng = float((q.upper - q.lower).detach())
        step = rng / (2 ** q.bits - 1)
        units = {"range": (rng, step), "step": (step, step), "absolute": (1.0, 1.0)}[cfg.lr_unit]
        for p, unit in zip((q.lower, q.upper, q.step_extra, q.zero_extra), (units[0], units[0], units[1], units[1])):
            if p.requires_grad:   # the order of quant_parameters()
                params.append(p)
                rates.append(cfg.lr * unit)
    return ScalarAdam(params, rates, betas=(0.9, 0.99))


def calib_batch(train: list[Pair], cfg: CalibConfig, scale: int) -> np.ndarray:
    """The seeded LR calibration batch DOBI searches on (its own stream, apart from the
    finetuning batches')."""
    cal, _ = random_patches(train, np.random.default_rng([cfg.seed, 2 ** 31]), cfg.calib_batch, cfg.patch, scale)
    return cal


def search_bounds_(student: nn.Module, train: list[Pair], cfg: CalibConfig, device: torch.device) -> Tensor:
    """DOBI: one no-grad forward of the seeded calibration batch, each quantizer searching its
    bounds on what it receives; returns that batch (model input)."""
    x = _to_input(calib_batch(train, cfg, student.cfg.scale), device)
    set_calibrating(student, partial(dobi, n=cfg.search_candidates, max_elems=cfg.search_max_elems, seed=cfg.seed))
    with torch.no_grad():
        student(x)
    set_calibrating(student, None)
    return x


def cosine_lr_(opt: ScalarAdam, it: int, iters: int) -> None:
    """Scale every rate for iteration ``it``: cosine decay from its base rate to 1% of it."""
    opt.scale = cosine(it, max(1, iters), 1.0, 0.01)


def _qparams(model: nn.Module) -> list[Tensor]:
    """Every quantizer's four scalars (trained or not), in model order: what DOBI sets."""
    return [p for q in quantizers(model) for p in (q.lower, q.upper, q.step_extra, q.zero_extra)]


def _local_grad_and_loss(student: nn.Module, teacher: nn.Module, x: Tensor, opt: ScalarAdam, cfg: CalibConfig,
                         share: float, taps: tuple[StageTaps, StageTaps] | None = None) -> Tensor:
    """Backward of this rank's loss on its slice ``x``, weighted by its ``share`` of the global batch
    (a mean over the slice; the weighted means sum to the mean over the batch, and so do their
    gradients); returns ``[gradient of every quantizer scalar..., weighted loss]``, one flat vector."""
    loss = distill_loss(student, teacher, x, cfg, taps)
    if share != 1.0:
        loss = loss * share
    opt.zero_grad(set_to_none=True)
    loss.backward()
    return torch.cat([opt.grads(), loss.detach().reshape(1)])


def _apply_reduced_(flat: Tensor, opt: ScalarAdam, qs: list, cfg: CalibConfig) -> None:
    """Give each parameter its summed gradient from ``flat``, then clip, Adam and the step guard."""
    for p, g in zip(opt.params, flat[:-1].unbind()):
        p.grad = g
    update_(opt, qs, cfg)


def data_parallel_step_(student: nn.Module, teacher: nn.Module, x: Tensor, opt: ScalarAdam, qs: list,
                        cfg: CalibConfig, dist: Dist, share: float,
                        taps: tuple[StageTaps, StageTaps] | None = None) -> Tensor:
    """One DQC update of a data-parallel run on this rank's slice ``x`` (``share`` of the batch):
    backward, one all-reduce of the gradient and the loss, then the update every rank applies
    alike. Returns the whole batch's loss, and updates nothing when it is not finite (a decision
    every rank makes on the same number)."""
    flat = dist.all_reduce_(_local_grad_and_loss(student, teacher, x, opt, cfg, share, taps), "the gradient all-reduce")
    loss = flat[-1]
    if not torch.isfinite(loss):
        return loss
    opt.advance()
    _apply_reduced_(flat, opt, qs, cfg)
    return loss


class DataParallelGraphedStep(GraphedStep):
    """:class:`.graphed_step.GraphedStep` replaying :func:`data_parallel_step_`'s device work, the
    all-reduce included (NCCL collectives can be captured in a CUDA graph). Every rank must run
    the graph or none (:func:`_agreed_reason`)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, opt: ScalarAdam, qs: list, cfg: CalibConfig,
                 x: Tensor, graph: Graph, dist: Dist, share: float) -> None:
        super().__init__(student, teacher, opt, qs, cfg, x, graph)
        self.dist, self.share = dist, share

    def _body(self) -> None:
        flat = self.dist.all_reduce_(_local_grad_and_loss(self.student, self.teacher, self.x, self.opt, self.cfg,
                                                          self.share), "the gradient all-reduce")
        _apply_reduced_(flat, self.opt, self.qs, self.cfg)
        self.loss.copy_(flat[-1])


def _agreed_reason(dist: Dist, why: str) -> str:
    """"" when every rank's graph is ready, else the first rank's reason why not (all then run eagerly)."""
    reasons = dist.all_gather_json(why, "agreeing on the CUDA graph")
    return next((f"rank {r}: {w}" if dist.world > 1 else w for r, w in enumerate(reasons) if w), "")


def _agreed_control(dist: Dist, cfg: CalibConfig, interrupted: bool) -> tuple[CalibConfig, bool]:
    """Rank 0's run length (its time budget's) and whether any rank was interrupted: one all-reduce."""
    v = torch.tensor([cfg.iters if dist.is_main else 0, int(interrupted)], dtype=torch.int64, device=dist.comm_device)
    iters, interrupts = dist.all_reduce_(v, "agreeing on the run's length").tolist()
    return (cfg if iters == cfg.iters else replace(cfg, iters=iters)), interrupts > 0


def calibrate(fp: nn.Module, train: list[Pair], val: list[Pair], quant: QuantConfig, cfg: CalibConfig,
              state_path: Path | None = None, resume: bool = False, progress: bool = True,
              device: str | torch.device = "cpu", minutes: float = 0.0,
              graph: Callable[[], Graph] | None = None,
              identity: dict | None = None, student: nn.Module | None = None,
              dist: Dist | None = None) -> tuple[nn.Module, CalibReport]:
    """Quantize ``fp`` with DOBI + DQC; returns the calibrated model (best state) and a report.

    Args:
        fp: the FP model (not modified).
        train: HR/LR pairs to draw calibration and finetuning patches from (never test sets).
        val: held-out pairs for keep-best validation.
        state_path: where to checkpoint (and resume from); None disables checkpoints.
        minutes: wall-clock budget (> 0): the finetuning is shortened to end within it, counted
            from this call, DOBI included (see :mod:`compsrt.budget`); ``report.calib`` records
            the shortened length.
        graph: makes the graph the step is captured in (:mod:`.graphed_step`); None = a CUDA
            graph where the step can be graphed (CUDA, no recompute, no feature loss), else eager.
            Tests pass an eager stand-in to run the graphed path on the CPU.
        identity: what else a resumed run must share (weights, data, method...): recorded in
            the state with both configs; ``resume`` refuses a state that differs.
        student: the compressed model to calibrate, made by ``compress_(copy of fp, quant)``
            and then changed by the caller (some quantizers frozen, at other bit widths, or
            with an ``override``: what the diagnostics in research/ do); modified in place and
            returned. None (the default): ``compress_`` of a copy of ``fp``.
        dist: the ranks of a data-parallel run (:mod:`compsrt.distributed`; see the module's
            docstring); ``cfg.batch`` is the global batch. Every rank returns the kept model;
            rank 0's report is the run's. None: one process.
    """
    from tqdm import tqdm

    dist = dist or Dist()
    if dist.world > cfg.batch:
        raise CompsrtError(f"{dist.world} ranks share a batch of {cfg.batch} patches: give --batch {dist.world} or "
                           "more (each rank needs at least one), or start fewer ranks")
    main = dist.is_main
    budget = TimeBudget(minutes)

    device = torch.device(device)
    s = fp.cfg.scale
    teacher = copy.deepcopy(fp).to(device).eval()
    if student is None:
        student = compress_(copy.deepcopy(fp), quant)
    elif getattr(student, "quant_cfg", None) != quant:
        raise ValueError("calibrate(): the student was compressed with another QuantConfig than quant")
    student = student.to(device).eval().recompute_blocks(cfg.recompute)
    report = CalibReport(quant=asdict(quant), calib=asdict(cfg))
    if main:   # the keep-best patches: rank 0 alone validates
        vlr, vhr = val_patches(val, cfg.val_patches, cfg.patch, s, cfg.seed)
        with torch.no_grad():
            vfp = teacher(_to_input(vlr, device)).clamp(0, 1)
    start, best = 0, {}
    resuming = dist.decide(lambda: resume and state_path is not None and state_path.exists(), "the --resume decision")
    run = _run_config(quant, cfg, identity)
    if not resuming:
        if main:
            t0 = time.perf_counter()
            search_bounds_(student, train, cfg, device)
            report.dobi_seconds = time.perf_counter() - t0
            report.fp_val_psnr_db = _hr_psnr(vfp, vhr, s)
            report.start_val_psnr_db, report.start_fidelity_db, report.start_val_l1 = val_scores(
                student, vlr, vhr, vfp, s, device)
            report.best_val_psnr_db, report.best_fidelity_db = report.start_val_psnr_db, report.start_fidelity_db
            best = _qstate(student)
        dist.broadcast_(_qparams(student), "broadcasting the DOBI bounds")
    opt = quant_optimizer(student, cfg)
    if resuming:
        def load() -> list[int]:
            nonlocal best, report
            it, best, report = _load_state(state_path, student, opt, run)
            return [it, opt.steps]

        start, opt.steps = dist.decide(load, "reading the calibration state")
        dist.broadcast_([*_qparams(student), opt.exp_avg, opt.exp_avg_sq, opt.base_lrs],
                        "broadcasting the resumed state")
    report.ranks = dist.world
    part = dist.batch_slice(cfg.batch)   # this rank's patches of every batch
    share = (part.stop - part.start) / cfg.batch
    taps = (StageTaps(student), StageTaps(teacher)) if cfg.feature_loss > 0 else None
    qs, params = quantizers(student), opt.params
    last_good = [p.detach().clone() for p in params]
    why_eager = graph_unsupported(cfg, device.type == "cuda" or graph is not None, routing_rng(student))
    report.step_mode = f"eager ({why_eager})" if why_eager else "cuda graph"
    graphed, build_graph = None, not why_eager
    t_start, done_here = time.perf_counter(), 0
    spent = report.finetune_seconds   # what a resumed state's earlier runs spent finetuning
    budget.loop_started()
    bar = tqdm(range(start, cfg.iters), initial=start, total=cfg.iters, desc=f"DQC w{quant.bits}a{quant.bits}",
               disable=not progress or not main)
    with _DeferredInterrupt() as interrupt:
        for it in bar:
            lr_np, _ = random_patches(train, np.random.default_rng([cfg.seed, it]), cfg.batch, cfg.patch, s)
            x = _to_input(lr_np[part], device)
            cosine_lr_(opt, it, cfg.iters)
            if build_graph:   # on the first batch; the state is left as it was
                build_graph = False
                if dist.joined:
                    graphed = DataParallelGraphedStep(student, teacher, opt, qs, cfg, x, (graph or CudaGraph)(), dist,
                                                      share)
                    why_eager = _agreed_reason(dist, graphed.build(x))
                else:
                    graphed = GraphedStep(student, teacher, opt, qs, cfg, x, (graph or CudaGraph)())
                    why_eager = graphed.build(x)
                if why_eager:
                    graphed, report.step_mode = None, f"eager ({why_eager})"
            if graphed is not None:
                loss = graphed.step(x).item()
            elif dist.joined:
                loss = data_parallel_step_(student, teacher, x, opt, qs, cfg, dist, share, taps).item()
            else:
                loss = finetune_step_(student, teacher, x, opt, qs, cfg, taps).item()   # already synced by its check
            if not math.isfinite(loss):   # (a graph's step has updated anyway: the kept state is loaded below)
                report.stopped = f"non-finite loss at iteration {it}; kept the last finite state"
                break
            with torch.no_grad():   # batched: one op per quantizer scalar would cost more than the GPU step
                if params and not bool(torch.isfinite(torch.stack(params)).all()):  # one host sync
                    torch._foreach_copy_(params, last_good)
                    report.stopped = f"non-finite quantizer parameter after iteration {it}; kept the last finite state"
                    break
                if params:
                    torch._foreach_copy_(last_good, params)
            done_here += 1
            report.iters_done = it + 1
            bar.set_postfix(loss=f"{loss:.5f}")
            fitted = budget.shorten(cfg, report.iters_done, bar) if main else cfg
            if fitted is not cfg:
                cfg = fitted
                report.calib = asdict(cfg)
            if main and (report.iters_done % cfg.val_every == 0 or report.iters_done == cfg.iters):
                score, fid, l1 = val_scores(student, vlr, vhr, vfp, s, device)
                report.history.append({"iteration": report.iters_done, "val_psnr_db": round(score, 4),
                                       "val_fidelity_db": round(fid, 4), "val_l1": round(l1, 6),
                                       "loss": round(loss, 6)})
                if fid > report.best_fidelity_db:
                    report.best_fidelity_db, report.best_val_psnr_db = fid, score
                    report.best_iter, best = report.iters_done, _qstate(student)
                if state_path is not None:
                    report.finetune_seconds = spent + time.perf_counter() - t_start
                    _save_state(state_path, student, opt, report.iters_done, best, report, run)
            interrupted = interrupt.requested
            if dist.joined:   # rank 0's run length (its budget), anyone's Ctrl-C
                cfg, interrupted = _agreed_control(dist, cfg, interrupted)
            if interrupted:
                saved = state_path is not None
                if saved and main:
                    report.finetune_seconds = spent + time.perf_counter() - t_start
                    _save_state(state_path, student, opt, report.iters_done, best, report, run)
                raise CalibrationInterrupted(report.iters_done, saved)
            if report.iters_done >= cfg.iters:
                break
    report.finetune_seconds = spent + time.perf_counter() - t_start   # all runs' (up to their last state)
    if done_here:
        report.seconds_per_iter = (time.perf_counter() - t_start) / done_here
    for tap in taps or ():
        for h in tap.handles:
            h.remove()
    if dist.joined:   # rank 0's kept state, on every rank
        mine = _qstate(student)
        best = best if main else mine
        dist.broadcast_([best[k] for k in sorted(mine)], "broadcasting the kept state")
    student.load_state_dict(best, strict=False)
    return student, report
