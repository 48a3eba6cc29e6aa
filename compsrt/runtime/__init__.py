"""The packed integer runtime: frozen modules built from a packed checkpoint."""
from .load import build_runtime, load_packed
from .modules import PackedAttend, PackedLinear

__all__ = ["PackedAttend", "PackedLinear", "build_runtime", "load_packed"]
