"""Helpers the compsrt-infer tests share (tests/test_cli.py, tests/test_cli_*.py)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from compsrt.cli import main


def run(capsys, *argv) -> tuple[int, str]:
    """compsrt-infer in this process: (exit code, stderr)."""
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def error_line(err: str) -> str:
    """The one line a user mistake prints (progress bars aside)."""
    lines = [ln for ln in err.splitlines() if ln.startswith("compsrt-infer: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def stray(folder: Path, keep: set[str]) -> list[str]:
    """Files in ``folder`` other than ``keep`` (temp files left behind, say)."""
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


class Nearest(nn.Module):
    """Pointwise x2 model: every tile (and every image of a batch) sees what it sees alone, so
    blending and batching must be exact."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(2, -1).repeat_interleave(2, -2)


def local_conv_model() -> nn.Module:
    """Shift-equivariant x2 model with a 2-pixel receptive radius: only seams can differ."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, padding_mode="replicate"), nn.GELU(),
                         nn.Conv2d(8, 12, 3, padding=1, padding_mode="replicate"), nn.PixelShuffle(2),
                         nn.Sigmoid()).eval()
