"""compsrt: compress image super-resolution transformers to 2-4 bits and run them."""
from .config import SwinIRConfig
from .errors import CompsrtError
from .model import SwinIRLight, load_swinir

__all__ = ["CompsrtError", "SwinIRConfig", "SwinIRLight", "load_swinir"]
__version__ = "0.1.0"
