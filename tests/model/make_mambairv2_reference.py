"""Make tests/model/data/mambairv2_x2_ref.safetensors: a small forward of the shipped x2 weights.

Run once from the repo root (re-run only when the model's numerics change on purpose):

    PYTHONPATH=. .venv/bin/python tests/model/make_mambairv2_reference.py

Stores the input (1, 3, 20, 23), seeded from torch.Generator(0), and the outputs of both
routing modes. test_mambairv2.py compares fresh forwards against them.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from compsrt.model.mambairv2 import load_mambairv2

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "compsrt" / "weights" / "mambairv2_light_x2.safetensors"
OUT = Path(__file__).resolve().parent / "data" / "mambairv2_x2_ref.safetensors"


def make_input() -> torch.Tensor:
    return torch.rand(1, 3, 20, 23, generator=torch.Generator().manual_seed(0))


def main() -> None:
    x = make_input()
    tensors = {"input": x}
    for routing in ("seeded", "argmax"):
        model = load_mambairv2(WEIGHTS, scale=2, routing=routing)
        with torch.inference_mode():
            tensors[routing] = model(x).contiguous()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(OUT), metadata={"torch": torch.__version__, "weights": WEIGHTS.name})
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
