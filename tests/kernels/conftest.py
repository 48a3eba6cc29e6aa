"""Kernel tests: Triton kernels run compiled on a GPU, else in Triton's interpreter on CPU tensors.

TRITON_INTERPRET must be set before the kernel module is imported (its @triton.jit decorators
read it), and only when no GPU is present, so it is set here, before any test module loads.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def device() -> torch.device:
    """Where the Triton launcher runs: CUDA (compiled) or CPU (interpreter)."""
    return DEVICE
