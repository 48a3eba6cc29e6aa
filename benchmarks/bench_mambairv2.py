"""CPU time of MambaIRv2-light x2 beside SwinIR-light x2 on one 128x128 LR input.

    PYTHONPATH=. .venv/bin/python -m pytest benchmarks/bench_mambairv2.py -p no:cacheprovider \
        --benchmark-columns=min,median,max --benchmark-json=runs/bench_mambairv2.json

Both models run in the same session, at 1 thread and at torch's default thread count, so their
ratio is comparable even on a loaded machine (compare rows of the same thread count). Random
SwinIR weights time the same as trained ones; MambaIRv2 runs the shipped weights and the default
seeded routing (its sort depends on the weights, its cost hardly).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compsrt.config import SwinIRConfig
from compsrt.model.mambairv2 import load_mambairv2
from compsrt.model.swinir import SwinIRLight

ROOT = Path(__file__).resolve().parents[1]
SIZE = 128
DEFAULT_THREADS = torch.get_num_threads()


def build(arch: str) -> torch.nn.Module:
    if arch == "swinir-light":
        torch.manual_seed(0)
        return SwinIRLight(SwinIRConfig(scale=2)).eval()
    return load_mambairv2(ROOT / "compsrt" / "weights" / "mambairv2_light_x2.safetensors", scale=2)


@pytest.mark.parametrize("threads", sorted({1, DEFAULT_THREADS}))
@pytest.mark.parametrize("arch", ["swinir-light", "mambairv2-light"])
def test_infer_128(benchmark, arch, threads):
    benchmark.group = f"x2 {SIZE}x{SIZE} LR, {threads} thread(s)"
    model = build(arch)
    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)

    def run() -> None:
        with torch.inference_mode():
            model(x)

    try:
        benchmark.pedantic(run, rounds=3, warmup_rounds=1, iterations=1)
    finally:
        torch.set_num_threads(before)
    benchmark.extra_info.update(arch=arch, threads=threads, shape=[1, 3, SIZE, SIZE], scale=2,
                                params=sum(p.numel() for p in model.parameters()))
