"""Models: SwinIR-light (FP), its weight loading, and (later) quantized variants and runtime."""
from .swinir import SwinIRLight
from .weights import bundled_weights, load_swinir

__all__ = ["SwinIRLight", "bundled_weights", "load_swinir"]
