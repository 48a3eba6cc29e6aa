"""One rank of a tests/test_distributed.py scenario: ``python tests/dist_worker.py SCENARIO ARG...``,
started with torchrun's variables (RANK, WORLD_SIZE, ...) by that test's launcher.

Scenarios (the command-line tools as torchrun runs them, with a fault or a record added by wrapping
one of their functions in this process only):
  eval LOG ARGS...           python -m compsrt.eval ARGS, appending each image this rank loads to LOG.<rank>
  eval-die ARGS...           as eval, but rank 1 exits (code 3) when it is about to load its first image
  eval-hang ARGS...          as eval, but rank 1 sleeps instead of loading its first image
  calib-die ARGS...          python -m compsrt.calib ARGS, rank 1 exits (code 3) at its 3rd finetuning batch
  calib-lib OUT ARCH W       calibrate() on the tiny ARCH weights W with the batch split over the ranks, eagerly
                             and with a stand-in graph (the graphed path on the CPU); rank 0 saves both in OUT
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RANK = int(os.environ.get("RANK", "0"))


def _wrap(module, name: str, before) -> None:
    real = getattr(module, name)

    def wrapped(*a, **k):
        before(*a)
        return real(*a, **k)

    setattr(module, name, wrapped)


def _eval(args: list[str], fault: str = "", log: str = "") -> int:
    import compsrt.eval as ev

    def record(root, set_name, hr_path, scale):
        if log:
            with open(f"{log}.{RANK}", "a") as f:
                f.write(f"{set_name}/{Path(hr_path).stem}\n")
        if RANK == 1 and fault == "die":
            os._exit(3)
        if RANK == 1 and fault == "hang":
            time.sleep(120)

    _wrap(ev, "load_benchmark_pair", record)
    return ev.main(args)


def _calib_die(args: list[str]) -> int:
    import compsrt.calib.__main__ as cli
    import compsrt.calib.calibrate as cal

    calls = {"n": 0}

    def count(*a):
        calls["n"] += 1
        if RANK == 1 and calls["n"] == 3:
            os._exit(3)

    _wrap(cal, "random_patches", count)
    return cli.main(args)


class ReplayGraph:
    """A correct graph as far as the CPU can tell: replay runs what was captured (as in
    tests/calib/test_graphed_step.py)."""

    def capture(self, fn):
        self.fn = fn

    def replay(self):
        self.fn()


def _calib_lib(out: str, arch: str, weights: str) -> int:
    import torch
    from safetensors.torch import save_file

    from compsrt.calib.calibrate import calibrate
    from compsrt.config import QuantConfig
    from compsrt.distributed import session
    from compsrt.quant.compress import quant_parameters

    sys.path.insert(0, str(ROOT / "tests"))
    from dist_models import CFG, tiny_fp, tiny_pairs

    fp, pairs = tiny_fp(Path(weights), arch), tiny_pairs()
    with session(torch.device("cpu")) as dist:
        results = {}
        for name, graph in (("eager", None), ("graph", ReplayGraph)):
            model, rep = calibrate(fp, pairs[1:], pairs[:1], QuantConfig(bits=3), CFG, progress=False, graph=graph,
                                   dist=dist)
            results[name] = (model, rep)
        if dist.is_main:
            for name, (model, rep) in results.items():
                t = {f"p{i}": p.detach().reshape(1) for i, p in enumerate(quant_parameters(model))}
                meta = {"step_mode": rep.step_mode, "losses": json.dumps([h["loss"] for h in rep.history])}
                save_file(t, str(Path(out) / f"{name}.safetensors"), metadata=meta)
    return 0


def main(argv: list[str]) -> int:
    scenario, rest = argv[0], argv[1:]
    if scenario == "eval":
        return _eval(rest[1:], log=rest[0])
    if scenario in ("eval-die", "eval-hang"):
        return _eval(rest, fault=scenario.split("-")[1])
    if scenario == "calib-die":
        return _calib_die(rest)
    if scenario == "calib-lib":
        return _calib_lib(*rest)
    raise SystemExit(f"unknown scenario {scenario!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
