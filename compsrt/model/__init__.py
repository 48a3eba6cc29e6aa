"""FP models: SwinIR-light and its weight files (MambaIRv2-light in mambairv2.py). Quantization lives
in compsrt.quant, the packed runtime in compsrt.runtime; nothing here imports them."""
from .swinir import SwinIRLight
from .weights import bundled_weights, load_swinir

__all__ = ["SwinIRLight", "bundled_weights", "load_swinir"]
