"""Kernels: PyTorch reference twins (the spec) and fast paths dispatched for CUDA tensors.

``import compsrt.kernels`` never imports Triton; the fast path is loaded on first CUDA use.
"""
from .fake_quant import fake_quant, fake_quant_ref
from .hadamard import hadamard, hadamard_matrix, hadamard_ref
from .hadamard_fake_quant import hadamard_fake_quant, hadamard_fake_quant_ref

__all__ = ["fake_quant", "fake_quant_ref", "hadamard", "hadamard_matrix", "hadamard_ref",
           "hadamard_fake_quant", "hadamard_fake_quant_ref"]
