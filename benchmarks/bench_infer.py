"""Whole-model latency: FP32 eager, fake-quant, packed W4A4 and W2A2 (and FP16 + CUDA graphs on a GPU).

    pytest benchmarks/bench_infer.py --benchmark-json bench_infer.json          # CPU, 1 thread
    COMPSRT_BENCH_THREADS=2 pytest benchmarks/bench_infer.py ...               # pin another count

x2 SwinIR-light on a random 128x128 and 256x256 LR input. CPU: torch threads pinned, medians of
``rounds`` calls after a warm-up; speed is the ratio of medians in one run. The packed models are
the bundled ones (compsrt/weights/swinir_light_x2_w4/_w2); the fake-quant model is the FP model
compressed with DOBI bounds on a random batch (its speed does not depend on the bounds). Sizes
(file bytes) go in ``extra_info``. ``test_row_mean`` times packed 2DQuant W4 with and without the row
means (``--row-mean``, packed from DOBI bounds on a random batch) on the fused CPU kernels, and the
row-mean model on the PyTorch path (the kernels off), at 128x128. ``test_cli_end_to_end`` runs ``compsrt-infer`` in fresh
processes on a 256x256 LR image, FP and packed W4 alternated, load included, with peak RSS.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

from compsrt.load import bundled_model, bundled_models, load_model

THREADS = int(os.environ.get("COMPSRT_BENCH_THREADS", "1"))
CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])
SIZES = [128, 256]
PACKED = {"packed_w4": "swinir_light_x2_w4", "packed_w2": "swinir_light_x2_w2"}


def _fake_quant_model(**quant):
    from compsrt.calib.dobi import dobi
    from compsrt.config import QuantConfig
    from compsrt.quant.compress import compress_, set_calibrating

    m = compress_(copy.deepcopy(load_model(None, 2)), QuantConfig(bits=4, **quant)).eval()
    set_calibrating(m, partial(dobi, n=10, max_elems=1 << 12))
    with torch.no_grad():
        m(torch.rand(1, 3, 32, 32))
    set_calibrating(m, None)
    return m


def _model(kind: str, device: str):
    if kind in ("fp32", "fp16"):
        m = load_model(None, 2, device=device)
        return m.half() if kind == "fp16" else m
    if kind == "fake_quant":
        return _fake_quant_model().to(device)
    name = PACKED[kind]
    if name not in bundled_models():
        pytest.skip(f"{name} is not bundled")
    return load_model(bundled_model(name), 2, device=device)


def _size(kind: str) -> int:
    name = PACKED.get(kind, "swinir_light_x2")
    return bundled_models()[name].stat().st_size if name in bundled_models() else 0


KINDS = ["fp32", "fake_quant", "packed_w4", "packed_w2"]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", KINDS + (["fp16", "packed_w4_graph"] if CUDA else []))
@pytest.mark.parametrize("device", DEVICES)
def test_model(benchmark, device, kind, size):
    if kind in ("fp16", "packed_w4_graph") and device != "cuda":
        pytest.skip("GPU only")
    torch.set_num_threads(THREADS)
    benchmark.group = f"x2 {size}x{size} LR {device}"
    base = "packed_w4" if kind == "packed_w4_graph" else kind
    model = _model(base, device)
    x = torch.rand(1, 3, size, size, device=device, dtype=torch.float16 if kind == "fp16" else torch.float32)
    run = lambda: model(x)   # noqa: E731
    if kind == "packed_w4_graph":
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), torch.cuda.stream(s):
            model(x)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(g):
            model(x)
        run = g.replay

    def call():
        with torch.no_grad():
            run()
        if device == "cuda":
            torch.cuda.synchronize()

    benchmark.extra_info.update({"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                                 "threads": THREADS, "file_bytes": _size(base), "lr_size": size})
    rounds = 3 if device == "cpu" else 20
    benchmark.pedantic(call, rounds=rounds, warmup_rounds=1, iterations=1)


@pytest.mark.parametrize("kind", ["2dquant", "2dquant_rowmean", "2dquant_rowmean_pytorch"])
def test_row_mean(benchmark, tmp_path, monkeypatch, kind):
    from compsrt.kernels import cpu_kernels
    from compsrt.quant.pack import pack_model, save_packed
    from compsrt.runtime import load_packed

    torch.set_num_threads(THREADS)
    benchmark.group = "x2 128x128 LR cpu, 2DQuant W4 row means"
    fake = _fake_quant_model(rotation="none", decompose=False, row_mean=kind != "2dquant")
    save_packed(*pack_model(fake, "fp16"), tmp_path / "m.safetensors")
    model = load_packed(tmp_path / "m.safetensors")
    if kind.endswith("_pytorch"):
        monkeypatch.setattr(cpu_kernels, "available", lambda: False)
    x = torch.rand(1, 3, 128, 128)

    def call():
        with torch.no_grad():
            model(x)

    benchmark.extra_info.update({"threads": THREADS, "kernels": cpu_kernels.available()})
    benchmark.pedantic(call, rounds=5, warmup_rounds=1, iterations=1)


_CLI = """
import resource, sys, time
t0 = time.perf_counter()
import torch
torch.set_num_threads(int(sys.argv[1]))
from compsrt.cli import main
rc = main(sys.argv[2:])
print(time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, rc)
"""


def test_cli_end_to_end(tmp_path):
    """compsrt-infer on a 256x256 LR image, FP (bundled x2) and packed W4 alternated, 3 rounds:
    medians of wall time (load included) and peak RSS, and their ratios, in the printed table."""
    import statistics

    from PIL import Image

    if "swinir_light_x2_w4" not in bundled_models():
        pytest.skip("swinir_light_x2_w4 is not bundled")
    src = tmp_path / "in.png"
    g = torch.Generator().manual_seed(0)
    Image.fromarray((torch.rand(256, 256, 3, generator=g) * 255).byte().numpy()).save(src)
    res = {"fp": [], "w4": []}
    for _ in range(3):
        for kind, model in (("fp", "swinir_light_x2"), ("w4", "swinir_light_x2_w4")):
            out = subprocess.run([sys.executable, "-c", _CLI, str(THREADS), str(src), str(tmp_path / f"{kind}.png"),
                                  "--model", model, "--quiet"], capture_output=True, text=True, check=True)
            secs, rss_kb, rc = out.stdout.split()
            assert rc == "0"
            res[kind].append((float(secs), int(rss_kb)))
    med = {k: (statistics.median(s for s, _ in v), statistics.median(r for _, r in v)) for k, v in res.items()}
    print(f"\ncompsrt-infer 256x256 LR, {THREADS} thread(s), median of 3: FP {med['fp'][0]:.2f} s "
          f"{med['fp'][1] / 1024:.0f} MB; packed W4 {med['w4'][0]:.2f} s {med['w4'][1] / 1024:.0f} MB; "
          f"time ratio {med['w4'][0] / med['fp'][0]:.3f}, peak memory ratio {med['w4'][1] / med['fp'][1]:.3f}")
