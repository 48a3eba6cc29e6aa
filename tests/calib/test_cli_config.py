"""python -m compsrt.calib: which CalibConfig the options make, on a CPU and on a GPU."""
from __future__ import annotations

from compsrt.calib.__main__ import _calib_config, _parser
from compsrt.config import CalibConfig


def _cfg(*argv: str) -> CalibConfig:
    return _calib_config(_parser().parse_args(["--scale", "2", "--out", "o", *argv]))


def test_cpu_default_is_the_quick_run():
    assert _cfg("--device", "cpu") == CalibConfig()


def test_gpu_default_is_the_papers_setting():
    """Options left out must not drag the quick run's values into the GPU run."""
    assert _cfg("--device", "cuda") == CalibConfig.full()


def test_given_options_win_on_either_device():
    for dev in ("cpu", "cuda"):
        c = _cfg("--device", dev, "--iters", "7", "--batch", "3", "--calib-batch", "5", "--val-every", "9")
        assert (c.iters, c.batch, c.calib_batch, c.val_every) == (7, 3, 5, 9)


def test_loss_option():
    assert _cfg("--loss", "l2").loss == "l2"
    assert _cfg().loss == CalibConfig().loss == "l1"


def test_lr_unit_option():
    assert _cfg("--lr-unit", "step", "--lr", "0.15").lr_unit == "step"
    assert _cfg().lr_unit == CalibConfig().lr_unit == "range"


def test_recompute_option():
    assert _cfg("--device", "cpu").recompute and not _cfg("--device", "cuda").recompute   # each device's default
    for dev in ("cpu", "cuda"):
        assert not _cfg("--device", dev, "--no-recompute").recompute
        assert _cfg("--device", dev, "--recompute").recompute


def test_cuda_graph_option():
    assert _cfg("--device", "cuda").cuda_graph and CalibConfig.full().cuda_graph   # on by default
    assert not _cfg("--device", "cuda", "--no-cuda-graph").cuda_graph
