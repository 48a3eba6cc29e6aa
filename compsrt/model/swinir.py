"""SwinIR-light in plain PyTorch, with the official state-dict key names.

Differences from the official definition that do not change results:
- the shift masks and window-order tables are computed once per padded input size and kept
  in a small per-model cache (the official blocks rebuild the mask on every call for any
  size other than 64x64);
- the relative-position index is a non-persistent buffer (official files that store it, and
  the per-block ``attn_mask`` buffers, load fine: the loader drops them after checking);
- the two attention products live in their own small module, :class:`Attend`, which the
  quantization plan names as a site: calibration swaps it for a fake-quantized one and the
  packed runtime for an integer one (nothing else in the model changes).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..config import SwinIRConfig


def window_partition(x: Tensor, ws: int) -> Tensor:
    """(B, H, W, C) -> (B * nW, ws*ws, C), windows ordered batch-major, then row, then column."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_reverse(windows: Tensor, ws: int, b: int, h: int, w: int) -> Tensor:
    """Inverse of :func:`window_partition`: (B * nW, ws*ws, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def relative_position_index(ws: int) -> Tensor:
    """(ws*ws, ws*ws) index into the (2ws-1)^2 bias table, as the official code builds it."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]


def shift_mask(h: int, w: int, ws: int, shift: int) -> Tensor:
    """(nW, ws*ws, ws*ws) additive mask for shifted windows: -100 across region borders, else 0.

    -100 (not -inf) is what the official model uses; it is kept for bit-compatibility.
    """
    labels = torch.zeros(1, h, w, 1)
    cuts = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    for i, hs in enumerate(cuts):
        for j, wsl in enumerate(cuts):
            labels[:, hs, wsl, :] = 3 * i + j
    win = window_partition(labels, ws).squeeze(-1)
    diff = win[:, None, :] - win[:, :, None]
    return torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def with_shift_mask(bias: Tensor, mask: Tensor | None) -> Tensor:
    """The attention's additive term: the (heads, N, N) position bias plus, in a shifted block, the
    (nW, N, N) shift mask broadcast over the heads (``bias + mask[:, None]``: (nW, heads, N, N))."""
    return bias if mask is None else bias + mask[:, None]


class Attend(nn.Module):
    """softmax(q k^T * scale + bias (+ mask)) v. q, k, v: (B, nW, heads, N, d); bias broadcasts;
    mask: None or the (nW, N, N) shift mask, added to the bias here (:func:`with_shift_mask`), so
    that a runtime module in this one's place can add it without building the sum."""

    def forward(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, scale: float,
                mask: Tensor | None = None) -> Tensor:
        bias = with_shift_mask(bias, mask)
        # Explicit rather than scaled_dot_product_attention: with a float mask the CPU
        # SDPA falls back to a path ~3x slower (masked-row checks) for these 64-token windows.
        logits = (q * scale) @ k.transpose(-2, -1) + bias.to(q.dtype)
        return logits.softmax(-1).to(v.dtype) @ v


class WindowAttention(nn.Module):
    """Multi-head self-attention inside 8x8 windows with a learned relative-position bias."""

    def __init__(self, dim: int, ws: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)  # as the official model
        self.register_buffer("relative_position_index", relative_position_index(ws), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attend = Attend()

    def position_bias(self) -> Tensor:
        """(heads, N, N) bias gathered from the table."""
        n = self.relative_position_index.shape[0]
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        return bias.view(n, n, self.heads).permute(2, 0, 1)

    def split_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B_, N, C) -> q, k, v, each (B_, heads, N, head_dim); q unscaled."""
        b_, n, c = x.shape
        qkv = self.qkv(x).view(b_, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def forward(self, x: Tensor, n_windows: int, mask: Tensor | None) -> Tensor:
        """x: (B * nW, N, C) windows; mask: (nW, N, N) or None. Returns (B * nW, N, C)."""
        b_, n, c = x.shape
        q, k, v = self.split_qkv(x)
        shape5 = (b_ // n_windows, n_windows, self.heads, n, self.head_dim)
        bias = self.position_bias()  # (heads, N, N); the attend module adds the (nW, N, N) mask
        out = self.attend(q.reshape(shape5), k.reshape(shape5), v.reshape(shape5), bias, self.scale, mask)
        out = out.reshape(b_, self.heads, n, self.head_dim).transpose(1, 2).reshape(b_, n, c)
        return self.proj(out)


class SwinBlock(nn.Module):
    def __init__(self, cfg: SwinIRConfig, heads: int, shifted: bool) -> None:
        super().__init__()
        self.ws = cfg.window_size
        self.shift = cfg.shift_size if shifted else 0
        self.norm1 = nn.LayerNorm(cfg.embed_dim)
        self.attn = WindowAttention(cfg.embed_dim, cfg.window_size, heads)
        self.norm2 = nn.LayerNorm(cfg.embed_dim)
        self.mlp = Mlp(cfg.embed_dim, cfg.mlp_hidden)

    def forward(self, x: Tensor, hw: tuple[int, int], mask: Tensor | None) -> Tensor:
        """x: (B, H*W, C) tokens; mask: the shift mask for this size (used only when shifted)."""
        h, w = hw
        b, _, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        n_windows = (h // self.ws) * (w // self.ws)
        y = self.attn(window_partition(y, self.ws), n_windows, mask if self.shift else None)
        y = window_reverse(y, self.ws, b, h, w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y.reshape(b, h * w, c)
        return x + self.mlp(self.norm2(x))


class BasicLayer(nn.Module):
    def __init__(self, cfg: SwinIRConfig, depth: int, heads: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(SwinBlock(cfg, heads, shifted=i % 2 == 1) for i in range(depth))
        self.recompute = False  # see SwinIRLight.recompute_blocks

    def forward(self, x: Tensor, hw: tuple[int, int], mask: Tensor) -> Tensor:
        for blk in self.blocks:
            if self.recompute and torch.is_grad_enabled():
                x = checkpoint(blk, x, hw, mask, use_reentrant=False)
            else:
                x = blk(x, hw, mask)
        return x


class RSTB(nn.Module):
    """Residual Swin Transformer Block: 6 Swin blocks, a 3x3 conv, a residual add."""

    def __init__(self, cfg: SwinIRConfig, depth: int, heads: int) -> None:
        super().__init__()
        self.residual_group = BasicLayer(cfg, depth, heads)
        self.conv = nn.Conv2d(cfg.embed_dim, cfg.embed_dim, 3, 1, 1)

    def forward(self, x: Tensor, hw: tuple[int, int], mask: Tensor) -> Tensor:
        b, _, c = x.shape
        y = self.residual_group(x, hw, mask)
        y = self.conv(y.transpose(1, 2).reshape(b, c, *hw))
        return y.flatten(2).transpose(1, 2) + x


class _PatchEmbed(nn.Module):
    """Holds only the LayerNorm, so its key is ``patch_embed.norm`` as in official files."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)


def _official_init(m: nn.Module) -> None:
    """The official SwinIR initialization of Linear and LayerNorm (convs keep PyTorch's).

    Only freshly built models see it (loaded weights replace it), but it shapes what training
    produces: from PyTorch's default Linear init (uniform, std 0.075 at fan-in 60) a short run
    leaves the weights flat-distributed (kurtosis ~2, the shipped weights), unlike trained
    transformers' heavy-tailed ones that rotation-based quantization is designed for.
    """
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class SwinIRLight(nn.Module):
    """SwinIR-light super-resolution network (pixelshuffledirect upsampler, 1conv residual).

    Input: (B, 3, H, W) RGB in [0, 1], any H, W >= 1. Output: (B, 3, H*s, W*s), not clamped.
    The input is padded to a multiple of the window size inside the model (reflect, or edge
    where a side is too small to reflect) and the output cropped, as the official model does.

    Example:
        >>> model = SwinIRLight(SwinIRConfig(scale=2)).eval()
        >>> model(torch.rand(1, 3, 20, 30)).shape
        torch.Size([1, 3, 40, 60])
    """

    def __init__(self, cfg: SwinIRConfig = SwinIRConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        self.register_buffer("mean", torch.tensor(cfg.rgb_mean).view(1, 3, 1, 1), persistent=False)
        self.conv_first = nn.Conv2d(cfg.in_chans, dim, 3, 1, 1)
        self.patch_embed = _PatchEmbed(dim)
        self.layers = nn.ModuleList(RSTB(cfg, d, h) for d, h in zip(cfg.depths, cfg.num_heads))
        self.norm = nn.LayerNorm(dim)
        self.conv_after_body = nn.Conv2d(dim, dim, 3, 1, 1)
        self.upsample = nn.Sequential(
            nn.Conv2d(dim, cfg.scale ** 2 * cfg.in_chans, 3, 1, 1), nn.PixelShuffle(cfg.scale)
        )
        self._masks: dict[tuple[int, int, torch.device], Tensor] = {}
        self.apply(_official_init)

    def recompute_blocks(self, on: bool = True) -> "SwinIRLight":
        """Keep only each Swin block's input for backward and recompute the block there.

        Training through the 24 blocks keeps every attention map and MLP hidden state alive
        until backward: a batch of 16 64x64 patches needs over 24 GB when the quantizers are
        trained. Recomputing costs one more forward of each block (deterministic, so the
        gradients are the same) and keeps one block's temporaries at a time; on the CPU the
        smaller working set about breaks even at batch 2 and pays for it at batch 4
        (benchmarks/calib_step_memory.py). No effect without autograd (inference, DOBI).
        """
        for layer in self.layers:
            layer.residual_group.recompute = on
        return self

    def shift_mask_for(self, h: int, w: int, device: torch.device) -> Tensor:
        """The shift mask for a padded (h, w), computed once per size and device, then reused."""
        key = (h, w, device)
        if key not in self._masks:
            if len(self._masks) > 16:  # bound the cache for callers that stream many sizes
                self._masks.clear()
            self._masks[key] = shift_mask(h, w, self.cfg.window_size, self.cfg.shift_size).to(device)
        return self._masks[key]

    def pad_to_window(self, x: Tensor) -> Tensor:
        ws = self.cfg.window_size
        h, w = x.shape[-2:]
        ph, pw = (-h) % ws, (-w) % ws
        if ph == 0 and pw == 0:
            return x
        mode = "reflect" if ph < h and pw < w else "replicate"
        return F.pad(x, (0, pw, 0, ph), mode=mode)

    def forward_features(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        mask = self.shift_mask_for(h, w, x.device)
        t = self.patch_embed.norm(x.flatten(2).transpose(1, 2))
        for layer in self.layers:
            t = layer(t, (h, w), mask)
        t = self.norm(t)
        return t.transpose(1, 2).reshape(b, c, h, w)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        x = self.pad_to_window(x)
        mean = self.mean.to(x.dtype)
        x = (x - mean) * self.cfg.img_range
        x = self.conv_first(x)
        x = self.conv_after_body(self.forward_features(x)) + x
        x = self.upsample(x) / self.cfg.img_range + mean
        s = self.cfg.scale
        return x[:, :, : h * s, : w * s]
