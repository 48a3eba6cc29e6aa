"""Quantization: per-architecture plans, the fake-quant modules calibration trains, and pack."""
from .compress import compress_
from .plan import QuantPlan, plan_for

__all__ = ["QuantPlan", "compress_", "plan_for"]
