"""Configuration dataclasses: frozen, validated on construction, passed explicitly."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SwinIRConfig:
    """SwinIR-light hyper-parameters (the official lightweight configuration by default).

    Only what the lightweight model uses is configurable; the tests build tiny variants
    (fewer blocks, smaller width) with the same code.
    """

    scale: int = 2
    in_chans: int = 3
    embed_dim: int = 60
    depths: tuple[int, ...] = (6, 6, 6, 6)
    num_heads: tuple[int, ...] = (6, 6, 6, 6)
    window_size: int = 8
    mlp_ratio: float = 2.0
    img_range: float = 1.0
    rgb_mean: tuple[float, float, float] = (0.4488, 0.4371, 0.4040)

    def __post_init__(self) -> None:
        if self.scale not in (2, 3, 4):
            raise ValueError(f"scale must be 2, 3 or 4, got {self.scale}")
        if len(self.depths) != len(self.num_heads):
            raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} differ in length")
        for h in self.num_heads:
            if self.embed_dim % h:
                raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {h}")
        if self.window_size < 2 or self.window_size % 2:
            raise ValueError(f"window_size must be an even number >= 2, got {self.window_size}")

    @property
    def shift_size(self) -> int:
        return self.window_size // 2

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)
