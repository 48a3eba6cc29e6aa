"""torchrun data parallelism on this CPU: gloo process groups of 2 ranks started as torchrun starts
them (its environment variables, a free port, one process per rank), against one process.

- calibration: 2 ranks end with the quantizer parameters of 1 process with the same global batch
  (float reduction order apart); 1 rank through the data-parallel path is the plain run bit for
  bit; the graphed step (stand-in graph) is the eager one; a run resumes with another number of
  ranks; only rank 0 writes;
- evaluation and inference: 2 ranks give the figures and files of 1 process; the ranks' shards
  (the images each actually loaded) are disjoint and cover every image;
- a rank that dies, or hangs past COMPSRT_DIST_TIMEOUT_S, makes the others exit 2 with one clear line.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from compsrt.distributed import Dist, prog_name, session, timeout_seconds
from compsrt.errors import CompsrtError
from dist_models import CFG, fit_tiny_model, tiny_fp, tiny_pairs, write_tiny_fp

ROOT = Path(__file__).resolve().parents[1]
WORKER = str(ROOT / "tests" / "dist_worker.py")
QSUFFIXES = (".lower", ".upper", ".step_extra", ".zero_extra")


# -- launching ranks as torchrun does ------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Ranks:
    """Processes started together with torchrun's variables; ``rc``, ``out`` and ``err`` per rank."""

    def __init__(self, tmp: Path, commands: list[list[str]], env: dict | None = None, world: bool = True) -> None:
        port, n = _free_port(), len(commands)
        self.logs = [(tmp / f"rank{r}.out", tmp / f"rank{r}.err") for r in range(n)]
        self.procs = []
        for r, cmd in enumerate(commands):
            e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
            if world:
                e.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(n), RANK=str(r),
                         LOCAL_RANK=str(r), LOCAL_WORLD_SIZE=str(n))
            with open(self.logs[r][0], "w") as out, open(self.logs[r][1], "w") as err:
                self.procs.append(subprocess.Popen([sys.executable, *cmd], cwd=ROOT, env=e, stdout=out, stderr=err))

    def wait(self, timeout: float = 180, only: int | None = None) -> "Ranks":
        """Wait for every rank (or rank ``only``), then kill what still runs."""
        t0 = time.monotonic()
        try:
            for p in self.procs if only is None else [self.procs[only]]:
                p.wait(timeout=max(1.0, timeout - (time.monotonic() - t0)))
        finally:
            for p in self.procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        self.seconds = time.monotonic() - t0
        self.rc = [p.returncode for p in self.procs]
        self.out = [o.read_text() for o, _ in self.logs]
        self.err = [e.read_text() for _, e in self.logs]
        return self


def _start(tmp: Path, commands: list[list[str]], **kw) -> Ranks:
    tmp.mkdir(parents=True, exist_ok=True)
    return Ranks(tmp, commands, **kw)


def _ranks(tmp: Path, commands: list[list[str]], only: int | None = None, **kw) -> Ranks:
    return _start(tmp, commands, **kw).wait(only=only)


def _qparams(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(path)).items() if k.endswith(QSUFFIXES)}


def _assert_close_to(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rel_range: float) -> None:
    """Every quantizer scalar of ``b`` within ``rel_range`` x that quantizer's range (u - l) of ``a``'s."""
    assert a.keys() == b.keys() and a
    for k in a:
        base = k.rsplit(".", 1)[0]
        rng = float(a[base + ".upper"] - a[base + ".lower"])
        assert abs(float(a[k] - b[k])) <= rel_range * rng, (k, float(a[k]), float(b[k]), rng)


# -- the helpers themselves (one process) --------------------------------------------------------

@pytest.mark.parametrize("n, world", [(0, 2), (1, 2), (5, 2), (7, 3), (16, 4), (3, 5)])
def test_shards_and_batch_slices_are_disjoint_and_cover(n, world):
    shards = [list(Dist(rank=r, world=world).shard(n)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    slices = [Dist(rank=r, world=world).batch_slice(n) for r in range(world)]
    assert [i for s in slices for i in range(n)[s]] == list(range(n))   # contiguous, in rank order
    sizes = [s.stop - s.start for s in slices]
    assert max(sizes) - min(sizes) <= 1


def test_a_plain_run_has_one_rank_and_no_communication(tmp_path):
    with session(torch.device("cpu"), env={}) as d:
        assert d == Dist() and d.is_main and not d.joined
        t = torch.ones(3)
        assert d.all_reduce_(t, "x") is t and torch.equal(t, torch.ones(3))
        assert d.broadcast_json({"a": 1}, "x") == {"a": 1} and d.all_gather_json([1], "x") == [[1]]
        assert d.decide(lambda: 5, "x") == 5
        with pytest.raises(CompsrtError, match="own message"):   # raised as it is
            d.decide(lambda: (_ for _ in ()).throw(CompsrtError("own message")), "x")
        (tmp_path / "f").write_bytes(b"abc")
        with d.rank0_file(tmp_path / "f", "x") as p:
            assert p == tmp_path / "f"


def test_bad_torchrun_variables_are_one_line_errors():
    env = {"WORLD_SIZE": "two", "RANK": "0", "LOCAL_RANK": "0"}
    with pytest.raises(CompsrtError, match="WORLD_SIZE='two'"):
        with session(torch.device("cpu"), env=env):
            pass
    with pytest.raises(CompsrtError, match="RANK=2 with WORLD_SIZE=2"):
        with session(torch.device("cpu"), env={"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"}):
            pass
    with pytest.raises(CompsrtError, match="COMPSRT_DIST_TIMEOUT_S"):
        timeout_seconds({"COMPSRT_DIST_TIMEOUT_S": "-1"})
    assert timeout_seconds({}) == 1800 and timeout_seconds({"COMPSRT_DIST_TIMEOUT_S": "2.5"}) == 2.5
    assert prog_name("compsrt.eval", {}) == "compsrt.eval"
    assert prog_name("compsrt.eval", {"WORLD_SIZE": "2", "RANK": "1"}) == "compsrt.eval[rank 1]"


def test_more_ranks_than_patches_in_a_batch_is_refused():
    from compsrt.calib.calibrate import calibrate
    from compsrt.config import QuantConfig

    pairs = tiny_pairs()
    with pytest.raises(CompsrtError, match="5 ranks share a batch of 4 patches: give --batch 5"):
        calibrate(fit_tiny_model(), pairs[1:], pairs[:1], QuantConfig(bits=3), CFG, progress=False,
                  dist=Dist(rank=0, world=5))


# -- calibration -------------------------------------------------------------------------------

def _calib_argv(weights: Path, data: Path, out: Path, iters: int = 4, bench: Path | None = None) -> list[str]:
    return ["-m", "compsrt.calib", "--scale", "2", "--bits", "4", "--weights", str(weights), "--data", str(data),
            "--val-images", "1", "--iters", str(iters), "--batch", "2", "--calib-batch", "2", "--val-every", "2",
            "--no-recompute", "--out", str(out), "--quiet",
            *(["--eval-data", str(bench), "--eval-sets", "Tiny", "Two"] if bench else [])]


@pytest.fixture(scope="module")
def calib_runs(tmp_path_factory, bench):
    """One process, one rank through the data-parallel path, and two ranks (rank 1 with its own
    --out, as on a node without rank 0's file system), on the same tiny model and data, each
    evaluating its packed model (--eval-data) at the end."""
    from test_calibrate import write_tiny_inputs

    tmp = tmp_path_factory.mktemp("calib")
    weights, data = write_tiny_inputs(tmp, fit_tiny_model(), 3)
    plain = _start(tmp / "p", [_calib_argv(weights, data, tmp / "plain", bench=bench)], world=False)
    one = _start(tmp / "w1", [_calib_argv(weights, data, tmp / "one", bench=bench)])   # in parallel: one core each
    plain.wait(), one.wait()
    two = _ranks(tmp / "w2", [_calib_argv(weights, data, tmp / "two", bench=bench),
                              _calib_argv(weights, data, tmp / "two_rank1", bench=bench)])
    return tmp, weights, data, plain, one, two


@pytest.mark.slow   # the command-line runs take ~60 s together on 2 cores
def test_two_ranks_calibrate_what_one_process_does(calib_runs):
    tmp, _, _, plain, _, two = calib_runs
    assert plain.rc == [0] and two.rc == [0, 0], two.err
    _assert_close_to(_qparams(tmp / "plain" / "calibrated.safetensors"),
                     _qparams(tmp / "two" / "calibrated.safetensors"), 1e-4)
    ref_all = json.loads((tmp / "plain" / "report.json").read_text())
    ref, got = ref_all["calibration"], json.loads((tmp / "two" / "report.json").read_text())
    assert got["config"]["ranks"] == 2 and got["calibration"]["ranks"] == 2 and "ranks" not in \
        json.loads((tmp / "plain" / "report.json").read_text())["config"]
    assert [h["iteration"] for h in got["calibration"]["history"]] == [h["iteration"] for h in ref["history"]]
    for h, r in zip(got["calibration"]["history"], ref["history"]):   # the loss of the whole batch, not a slice's
        assert h["loss"] == pytest.approx(r["loss"], rel=1e-2) and h["val_fidelity_db"] == pytest.approx(
            r["val_fidelity_db"], abs=0.05)
    # the packed model, sent to rank 1 (whose --out does not hold it), evaluated on both ranks' shards
    for name in ("Tiny", "Two"):
        e, r = got["eval"][name], ref_all["eval"][name]
        assert (e["fp_psnr_db"], e["fp_ssim"]) == (r["fp_psnr_db"], r["fp_ssim"])   # the same FP model: exactly
        assert e["psnr_db"] == pytest.approx(r["psnr_db"], abs=0.05)
    # rank 0 alone printed the report and wrote files: rank 1's --out was never made
    assert "# CompSRT calibration" in two.out[0] and two.out[1] == "" and not (tmp / "two_rank1").exists()
    assert "x 2 ranks" in (tmp / "two" / "report.md").read_text()


@pytest.mark.slow   # the command-line runs take ~60 s together on 2 cores
def test_one_rank_of_the_data_parallel_path_is_the_plain_run_bit_for_bit(calib_runs):
    tmp, _, _, plain, one, _ = calib_runs
    assert one.rc == [0], one.err
    a = load_file(str(tmp / "plain" / "calibrated.safetensors"))
    b = load_file(str(tmp / "one" / "calibrated.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp / "one" / "report.json").read_text())["calibration"]["history"] == \
        json.loads((tmp / "plain" / "report.json").read_text())["calibration"]["history"]


@pytest.mark.slow   # the command-line runs take ~60 s together on 2 cores
def test_a_run_resumes_with_another_number_of_ranks(calib_runs, tmp_path):
    """The one-process run's state (iteration 4) continued to 6 by two ranks = continued by one."""
    from compsrt.calib.__main__ import main

    tmp, weights, data, plain, _, _ = calib_runs
    for name in ("by1", "by2"):
        shutil.copytree(tmp / "plain", tmp_path / name)
    held = _ranks(tmp_path / "l0", [_calib_argv(weights, data, tmp_path / "by2", 6)] * 2)   # no --resume
    assert held.rc == [2, 2]   # rank 0's decision, raised on both: one line each, rank 1's marked
    assert held.err[0].strip().startswith("compsrt.calib: error:") and "pass --resume" in held.err[0]
    assert held.err[1].strip().startswith("compsrt.calib[rank 1]: error:") and "pass --resume" in held.err[1]
    two = _ranks(tmp_path / "l2", [_calib_argv(weights, data, tmp_path / "by2", 6) + ["--resume"]] * 2)
    assert two.rc == [0, 0], two.err
    assert main(_calib_argv(weights, data, tmp_path / "by1", 6)[2:] + ["--resume"]) == 0
    r1 = json.loads((tmp_path / "by1" / "report.json").read_text())["calibration"]
    r2 = json.loads((tmp_path / "by2" / "report.json").read_text())["calibration"]
    assert r1["iters_done"] == r2["iters_done"] == 6 and r2["ranks"] == 2 and r1["ranks"] == 1
    assert r2["history"][:2] == r1["history"][:2]   # the first part, from the state, unchanged
    _assert_close_to(_qparams(tmp_path / "by1" / "calibrated.safetensors"),
                     _qparams(tmp_path / "by2" / "calibrated.safetensors"), 1e-4)


def _lib_run(tmp: Path, arch: str, weights: Path) -> dict[str, tuple[list[torch.Tensor], dict]]:
    r = _ranks(tmp / "logs", [[WORKER, "calib-lib", str(tmp), arch, str(weights)]] * 2)
    assert r.rc == [0, 0], r.err
    runs = {}
    for name in ("eager", "graph"):
        with safe_open(str(tmp / f"{name}.safetensors"), "pt") as f:
            meta = f.metadata()
        t = load_file(str(tmp / f"{name}.safetensors"))
        runs[name] = ([t[f"p{i}"] for i in range(len(t))], meta)
    return runs


def _one_process(arch: str, weights: Path) -> tuple[list[torch.Tensor], list[float]]:
    from compsrt.calib.calibrate import calibrate
    from compsrt.config import QuantConfig
    from compsrt.quant.compress import quant_parameters

    pairs = tiny_pairs()
    model, rep = calibrate(tiny_fp(weights, arch), pairs[1:], pairs[:1], QuantConfig(bits=3), CFG, progress=False)
    return [p.detach().reshape(1) for p in quant_parameters(model)], [h["loss"] for h in rep.history]


def _check_lib(tmp: Path, arch: str) -> dict:
    weights = write_tiny_fp(arch, tmp / f"{arch}.safetensors")
    runs = _lib_run(tmp, arch, weights)
    ref, losses = _one_process(arch, weights)
    for params, meta in runs.values():
        assert len(params) == len(ref) and json.loads(meta["losses"]) == pytest.approx(losses, rel=1e-3)
        worst = max(float((a - b).abs().max()) for a, b in zip(ref, params))
        assert worst < 1e-5, worst   # float reduction order: ~1e-7 measured; one step without the all-reduce moves 1e-3
    assert all(torch.equal(a, b) for a, b in zip(runs["eager"][0], runs["graph"][0]))
    return runs


def test_two_ranks_equal_one_process_eager_and_graphed(tmp_path):
    """The library's data-parallel step, eager and through GraphedStep (a replaying stand-in graph:
    the all-reduce captured in the step), on the same global batch as one process."""
    runs = _check_lib(tmp_path, "swinir-light")
    assert runs["graph"][1]["step_mode"] == "cuda graph"


@pytest.mark.slow
def test_two_ranks_equal_one_process_mambairv2(tmp_path):
    runs = _check_lib(tmp_path, "mambairv2-light")
    assert runs["graph"][1]["step_mode"].startswith("eager (the seeded routing")


@pytest.mark.slow   # the command-line runs take ~60 s together on 2 cores
def test_a_rank_that_dies_mid_calibration_stops_the_other(calib_runs, tmp_path):
    _, weights, data, _, _, _ = calib_runs
    r = _ranks(tmp_path, [[WORKER, "calib-die", *_calib_argv(weights, data, tmp_path / "out", 50)[2:]]] * 2)
    assert r.rc == [2, 3] and r.seconds < 60
    line = r.err[0].strip().splitlines()[-1]
    assert line.startswith("compsrt.calib: error: rank 0 of 2: the gradient all-reduce failed: another rank stopped")
    assert "Traceback" not in r.err[0]
    assert not (tmp_path / "out" / "model.safetensors").exists()


# -- evaluation and inference ------------------------------------------------------------------

@pytest.fixture(scope="module")
def bench(tmp_path_factory, make_rgb, write_png) -> Path:
    root = tmp_path_factory.mktemp("bench")
    for i in range(5):
        write_png(root / "Tiny" / "HR" / f"im{i}.png", make_rgb(24 + 4 * i, 30, seed=i))
    write_png(root / "Two" / "HR" / "a.png", make_rgb(26, 22, seed=9))
    return root


def _eval_args(weights: Path, bench: Path, out: Path) -> list[str]:
    return ["--weights", str(weights), "--scale", "2", "--data", str(bench), "--sets", "Tiny", "Two",
            "--json", str(out), "--quiet"]


def test_two_rank_evaluation_equals_one_process_on_disjoint_shards(bench, tmp_path, test_weights, capsys):
    from compsrt.eval import main

    assert main(_eval_args(test_weights, bench, tmp_path / "one.json")) == 0
    table = capsys.readouterr().out
    log = tmp_path / "loaded"
    argv = [WORKER, "eval", str(log), *_eval_args(test_weights, bench, tmp_path / "two.json")]
    r = _ranks(tmp_path / "l", [argv] * 2)
    assert r.rc == [0, 0], r.err
    # rank 0 alone prints the table, row for row the one-process table but for the timing column
    strip = lambda t: [line.rsplit("|", 2)[0] for line in t.strip().splitlines()]   # noqa: E731
    assert strip(r.out[0]) == strip(table) and r.out[1] == "" and r.err[1] == ""
    one, two = (json.loads((tmp_path / f"{n}.json").read_text())["results"] for n in ("one", "two"))
    for name in ("Tiny", "Two"):
        assert [row["image"] for row in two[name]["images"]] == [row["image"] for row in one[name]["images"]]
        for a, b in zip(one[name]["images"], two[name]["images"]):
            assert (a["psnr_db"], a["ssim"]) == (b["psnr_db"], b["ssim"])   # exactly
        assert (two[name]["psnr_db"], two[name]["ssim"]) == (one[name]["psnr_db"], one[name]["ssim"])
    loaded = [(log.with_name(f"loaded.{k}").read_text().split() if log.with_name(f"loaded.{k}").exists() else [])
              for k in range(2)]
    assert not set(loaded[0]) & set(loaded[1]) and len(loaded[0]) + len(loaded[1]) == 6
    assert sorted(loaded[0] + loaded[1]) == sorted(f"{s}/{row['image']}" for s in one for row in one[s]["images"])
    assert all(row["rank"] == k for k in range(2) for s in two for row in two[s]["images"]
               if f"{s}/{row['image']}" in loaded[k])


def test_two_rank_inference_writes_what_one_process_writes(tmp_path, test_weights, make_rgb, write_png):
    src = tmp_path / "in"
    for i in range(5):
        write_png(src / f"im{i}.png", make_rgb(20 + 2 * i, 18, seed=i))
    (src / "bad.png").write_bytes(b"not an image")
    argv = lambda out, j: ["-m", "compsrt.cli", str(src), str(out), "--weights", str(test_weights),  # noqa: E731
                           "--json", str(j), "--quiet"]
    one = _ranks(tmp_path / "l1", [argv(tmp_path / "o1", tmp_path / "one.json")], world=False)
    two = _ranks(tmp_path / "l2", [argv(tmp_path / "o2", tmp_path / "two.json")] * 2)
    assert one.rc == [2] and two.rc == [2, 2], two.err   # the failed image makes every rank exit 2
    names = sorted(p.name for p in (tmp_path / "o1").iterdir())
    assert len(names) == 5 and names == sorted(p.name for p in (tmp_path / "o2").iterdir())
    for n in names:
        assert (tmp_path / "o1" / n).read_bytes() == (tmp_path / "o2" / n).read_bytes()
    records = lambda j: [{**r, "seconds": 0, "output": r["output"] and Path(r["output"]).name}  # noqa: E731
                         for r in json.loads(j.read_text())["images"]]
    assert records(tmp_path / "two.json") == records(tmp_path / "one.json")   # all ranks' records, in input order
    summary = [line for line in two.err[0].splitlines() if "written" in line]
    assert summary == ["compsrt-infer: 5 written, 1 failed: bad.png"] and "written" not in two.err[1]
    assert sum("bad.png: cannot decode" in e for e in two.err) == 1   # the rank that had it says so, once


@pytest.mark.slow
def test_a_rank_that_hangs_is_given_up_after_the_timeout(bench, tmp_path, test_weights):
    r = _ranks(tmp_path, [[WORKER, "eval-hang", *_eval_args(test_weights, bench, tmp_path / "e.json")]] * 2,
               env={"COMPSRT_DIST_TIMEOUT_S": "3"}, only=0)   # rank 1 is killed afterwards
    assert r.rc[0] == 2 and "did not answer within 3 s" in r.err[0] and "Traceback" not in r.err[0]
    assert not (tmp_path / "e.json").exists()


def test_a_rank_that_dies_mid_evaluation_stops_the_other_at_once(bench, tmp_path, test_weights):
    r = _ranks(tmp_path, [[WORKER, "eval-die", *_eval_args(test_weights, bench, tmp_path / "e.json")]] * 2)
    assert r.rc == [2, 3] and r.seconds < 60
    assert r.err[0].strip().startswith("compsrt.eval: error: rank 0 of 2: gathering the Tiny metrics failed")
    assert r.err[0].count("\n") == 1 and not (tmp_path / "e.json").exists()
