"""MambaIRv2-light in plain PyTorch, with the official state-dict key names.

Guo et al., "MambaIRv2: Attentive State Space Restoration" (github.com/csguoh/MambaIR), light SR model.
Each AttentiveLayer is window attention (16x16 windows) + a gated conv MLP, then the attentive
state-space module (ASSM): tokens are routed to one of 64 classes, sorted by class, run through
a selective scan (compsrt.kernels.selective_scan) and un-sorted, + a second gated conv MLP.

Routing. The official code draws each token's class with ``gumbel_softmax(hard=True)`` at
inference too, so its outputs are random (two runs differ by up to 4 grey levels). Here:

- ``routing="seeded"`` (default): the same Gumbel-max draw, ``argmax(logits + Gumbel noise)``,
  with noise from a ``torch.Generator`` seeded afresh (``seed``, 0 by default) on every
  forward. Repeatable, and it reproduces the published PSNR. The noise has shape (L, 64) per
  layer and is shared by the images of a batch, so an image's output does not depend on its
  batch neighbours; it does depend on the padded input size.
- ``routing="argmax"``: the class is ``argmax(logits)``; deterministic without any RNG but about
  0.07 dB lower at x2 (0.04 dB at x4), because the barely trained router then uses few classes.

Differences from the official definition (none moves PSNR beyond the official seed-to-seed spread):
- the ``route`` head has no trailing LogSoftmax: argmax and softmax ignore per-row shifts;
- the class sort is stable (raster order within a class; the official sort is not, which
  moves Set5 by about 0.01 dB with argmax routing);
- the relative-position index is recomputed (the official buffer ``relative_position_index_SA``
  is not in our files); shift masks and window orders are computed once per padded size;
- the cyclic shift and window partition are one gather of norm1(x) by a precomputed order
  (the official code rolls qkv; the per-token Linear commutes with the token order);
- attention runs through ``scaled_dot_product_attention`` with the position bias (and, for the
  border windows of shifted layers, the shift mask) as an additive mask;
- symmetric padding repeats the mirror pattern, so inputs smaller than half a window also work
  (the official ``cat([x, flip(x)])`` only covers paddings up to the image size).
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..config import check_common
from ..errors import CompsrtError
from ..kernels.selective_scan import selective_scan
from .swinir import Attend, relative_position_index, shift_mask, window_partition
from .weights import load_into, read_state_dict

ROUTING_MODES = ("seeded", "argmax")


@dataclass(frozen=True)
class MambaIRv2Config:
    """MambaIRv2-light hyper-parameters (the official light SR configuration by default)."""

    scale: int = 2
    in_chans: int = 3
    embed_dim: int = 48
    d_state: int = 8
    depths: tuple[int, ...] = (5, 5, 5, 5)
    num_heads: tuple[int, ...] = (4, 4, 4, 4)
    window_size: int = 16
    inner_rank: int = 32
    num_tokens: int = 64
    mlp_ratio: float = 1.0
    img_range: float = 1.0
    rgb_mean: tuple[float, float, float] = (0.4488, 0.4371, 0.4040)
    version: int = 1

    def __post_init__(self) -> None:
        if self.scale not in (2, 3, 4):
            raise ValueError(f"scale must be 2, 3 or 4, got {self.scale}")
        check_common(self, extra_ints={"d_state": self.d_state, "inner_rank": self.inner_rank,
                                        "num_tokens": self.num_tokens},
                     tops={"embed_dim": 1024, "window_size": 64, "d_state": 256, "inner_rank": 1024,
                           "num_tokens": 4096})
        if self.mlp_hidden < 2 or self.mlp_hidden % 2:
            raise ValueError(f"embed_dim * mlp_ratio must be an even number >= 2, got {self.mlp_hidden}")
        if self.embed_dim < 3:
            raise ValueError(f"embed_dim must be >= 3 (the router's width is embed_dim // 3), got {self.embed_dim}")

    @property
    def shift_size(self) -> int:
        return self.window_size // 2

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def dt_rank(self) -> int:
        return math.ceil(self.embed_dim / 16)


def symmetric_pad(x: Tensor, mult: int) -> Tensor:
    """Pad H, W at the bottom/right up to multiples of ``mult`` by mirroring, edge row repeated.

    Matches the official ``cat([x, flip(x, H)])[:Hp]`` (then W) and keeps mirroring periodically
    where the padding exceeds the image.
    """
    for dim in (-2, -1):
        n = x.shape[dim]
        target = -(-n // mult) * mult
        if target != n:
            i = torch.arange(target, device=x.device) % (2 * n)
            x = x.index_select(dim, torch.where(i < n, i, 2 * n - 1 - i))
    return x


def to_image(x: Tensor, hw: tuple[int, int]) -> Tensor:
    """(B, L, C) tokens -> (B, C, H, W), a channels-last view (no copy for contiguous tokens)."""
    b, _, c = x.shape
    return x.reshape(b, hw[0], hw[1], c).permute(0, 3, 1, 2)


def to_tokens(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, L, C)."""
    return x.flatten(2).transpose(1, 2)


class _Windows:
    """Per padded size: window order of the tokens for each shift, and the shift mask pieces.

    ``order[s]`` lists, window after window, the token index (in raster order of the padded
    image) that lands at each window position after a cyclic shift by -s; ``inverse[s]`` undoes
    it. One gather replaces the official roll + window partition (and its reverse). Windows
    crossed by a shift-region border are listed in ``border``; only they get the -100 mask.
    """

    def __init__(self, hp: int, wp: int, ws: int, device: torch.device) -> None:
        shift = ws // 2
        tokens = torch.arange(hp * wp).view(1, hp, wp, 1)
        self.order, self.inverse = {}, {}
        for s in (0, shift):
            rolled = torch.roll(tokens, shifts=(-s, -s), dims=(1, 2)) if s else tokens
            order = window_partition(rolled, ws).reshape(-1)
            self.order[s] = order.to(device)
            self.inverse[s] = torch.argsort(order).to(device)
        mask = shift_mask(hp, wp, ws, shift).to(device)     # (nW, N, N), 0 or -100
        crossed = mask.flatten(1).ne(0).any(1)
        self.n_windows = mask.shape[0]
        self.border = crossed.nonzero().squeeze(1)          # window indices inside one image
        self.interior = (~crossed).nonzero().squeeze(1)
        self.border_mask = mask[self.border][:, None]       # (nBorder, 1, N, N)


class WindowAttention(nn.Module):
    """Multi-head self-attention in windows; q, k, v come in precomputed (the layer's ``wqkv``).

    ``attend`` is the attention site a quantization plan may swap (compsrt/quant/plan.py, layer
    set "full"): the FP :class:`~compsrt.model.swinir.Attend` runs as scaled_dot_product_attention
    below (interior and border windows apart); a swapped one is called once with q, k, v as
    (B, nW, heads, N, d) and the position bias plus shift mask as (nW, heads, N, N).
    """

    def __init__(self, dim: int, ws: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.empty((2 * ws - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.proj = nn.Linear(dim, dim)
        self.attend = Attend()

    def position_bias(self, rpi: Tensor) -> Tensor:
        """(1, heads, N, N) bias gathered from the table with the (N, N) index ``rpi``."""
        n = rpi.shape[0]
        bias = self.relative_position_bias_table[rpi.reshape(-1)]
        return bias.view(n, n, self.heads).permute(2, 0, 1).unsqueeze(0).contiguous()

    def forward(self, qkv: Tensor, rpi: Tensor, win: _Windows | None) -> Tensor:
        """qkv: (B * nW, N, 3C) windows, channels [q | k | v]; win: given for shifted layers only."""
        b_, n, c3 = qkv.shape
        c = c3 // 3
        q, k, v = qkv.view(b_, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        bias = self.position_bias(rpi).to(q.dtype)
        if not isinstance(self.attend, Attend):   # a quantized site: one call over every window
            n_w = 1 if win is None else win.n_windows
            if win is not None and len(win.border):
                full = bias.expand(n_w, -1, -1, -1).clone()
                full[win.border] += win.border_mask.to(q.dtype)
                bias = full
            shape5 = (b_ // n_w, n_w, self.heads, n, self.head_dim)
            out = self.attend(q.reshape(shape5), k.reshape(shape5), v.reshape(shape5), bias, self.scale)
            return self.proj(out.reshape(b_, self.heads, n, self.head_dim).transpose(1, 2).reshape(b_, n, c))
        # A 4-d additive mask keeps CPU SDPA on its fused path (a 3-d one is ~4x slower).
        if win is None or len(win.border) == 0:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        else:
            # Only the windows crossed by a shift-region border need the -100 mask: attend to
            # the others with the bias alone, which avoids a (nW, heads, N, N) mask tensor.
            out = torch.empty_like(q)
            n_img = b_ // win.n_windows
            base = torch.arange(n_img, device=q.device)[:, None] * win.n_windows
            for idx, m in ((win.interior, bias), (win.border, bias + win.border_mask.to(q.dtype))):
                if len(idx):
                    i = (base + idx.to(q.device)).reshape(-1)
                    m = m.repeat(n_img, 1, 1, 1) if m.shape[0] > 1 and n_img > 1 else m
                    out[i] = F.scaled_dot_product_attention(q[i], k[i], v[i], attn_mask=m, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b_, n, c))


class Gate(nn.Module):
    """LayerNorm then a depthwise 5x5 conv over the second half of the channels."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv2d(dim, dim, 5, 1, 2, groups=dim)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        return to_tokens(self.conv(to_image(self.norm(x), hw)))


class GatedMLP(nn.Module):
    """fc1 -> GELU -> split in halves x1, x2 -> x1 * Gate(x2) -> fc2 (the light model's FFN)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.sg = Gate(hidden // 2)
        self.fc2 = nn.Linear(hidden // 2, dim)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        x1, x2 = self.act(self.fc1(x)).chunk(2, dim=-1)
        return self.fc2(x1 * self.sg(x2.contiguous(), hw))


class SelectiveScan(nn.Module):
    """Parameters and projections of one forward selective scan (d_inner = dim, K = 1)."""

    def __init__(self, dim: int, d_state: int, dt_rank: int) -> None:
        super().__init__()
        self.dt_rank, self.d_state = dt_rank, d_state
        self.x_proj_weight = nn.Parameter(torch.empty(1, dt_rank + 2 * d_state, dim))
        self.dt_projs_weight = nn.Parameter(torch.empty(1, dim, dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(1, dim))
        self.A_logs = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(dim, 1))
        self.Ds = nn.Parameter(torch.ones(dim))
        nn.init.uniform_(self.x_proj_weight, -dim ** -0.5, dim ** -0.5)
        nn.init.uniform_(self.dt_projs_weight, -dt_rank ** -0.5, dt_rank ** -0.5)
        # dt = softplus(bias) log-uniform in [1e-3, 0.1], as in Mamba
        dt = torch.exp(torch.rand(dim) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        self.dt_projs_bias.data.copy_((dt + torch.log(-torch.expm1(-dt)))[None])

    def forward(self, xs: Tensor, prompt: Tensor) -> Tensor:
        """xs: (B, L, C) sorted tokens; prompt: (B, L, N) added to C_t. Returns (B, L, C) fp32."""
        xs = xs.float()
        x_dbl = xs @ self.x_proj_weight[0].t()                                 # (B, L, R + 2N)
        dt, b, c = x_dbl.split((self.dt_rank, self.d_state, self.d_state), dim=-1)
        delta = F.softplus(dt @ self.dt_projs_weight[0].t() + self.dt_projs_bias[0])
        a = -torch.exp(self.A_logs.float())
        return selective_scan(xs, delta, a, b.contiguous(), c + prompt.float(), self.Ds.float())


class ASSM(nn.Module):
    """Attentive state-space module: route tokens to classes, sort, scan, un-sort."""

    def __init__(self, cfg: MambaIRv2Config) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.selectiveScan = SelectiveScan(dim, cfg.d_state, cfg.dt_rank)
        self.out_norm = nn.LayerNorm(dim)
        self.out_proj = nn.Linear(dim, dim)
        # Officially a 1x1 Conv2d; here the same map as a Linear on the tokens (its (C, C, 1, 1)
        # weight is loaded squeezed, load_mambairv2), so that it can be quantized like any Linear.
        self.in_proj = nn.Sequential(nn.Linear(dim, dim))
        self.CPE = nn.Sequential(nn.Conv2d(dim, dim, 3, 1, 1, groups=dim))
        self.embeddingB = nn.Embedding(cfg.num_tokens, cfg.inner_rank)
        nn.init.uniform_(self.embeddingB.weight, -1 / cfg.num_tokens, 1 / cfg.num_tokens)
        # official index 3 is a LogSoftmax, omitted: argmax and softmax ignore per-row shifts
        self.route = nn.Sequential(nn.Linear(dim, dim // 3), nn.GELU(), nn.Linear(dim // 3, cfg.num_tokens))

    def classify(self, u: Tensor, table: Tensor, noise: Tensor | None) -> tuple[Tensor, Tensor]:
        """Class of each token (B, L) and its prompt (B, L, N); ``noise`` (L, K) is the layer's Gumbel
        draw (:meth:`MambaIRv2Light.routing_noise`), None for argmax routing."""
        logits = self.route(u).float()
        if noise is None:
            k = logits.argmax(-1)
            return k, table[k]
        y = logits + noise
        k = y.argmax(-1)
        if not (torch.is_grad_enabled() and y.requires_grad):
            return k, table[k]
        # training: straight-through one-hot, so the router learns through the prompt
        soft = y.softmax(-1)
        hard = F.one_hot(k, soft.shape[-1]).to(soft.dtype)
        return k, (hard - soft.detach() + soft) @ table

    def forward(self, u: Tensor, hw: tuple[int, int], embedding_a: Tensor, noise: Tensor | None) -> Tensor:
        """u: (B, L, C) normalized tokens; embedding_a: (inner_rank, N); noise: see :meth:`classify`.
        Returns (B, L, C)."""
        b, n_tok, c = u.shape
        table = self.embeddingB.weight @ embedding_a                            # (num_tokens, N)
        k, prompt = self.classify(u, table, noise)
        order = torch.argsort(k, dim=-1, stable=True)                           # raster order within a class
        z = to_image(self.in_proj(u), hw)
        z = to_tokens(z * torch.sigmoid(self.CPE(z)))
        idx = order[..., None].expand(b, n_tok, c)
        xs = torch.gather(z, 1, idx)
        # Official quirk, kept: the prompt is not sorted; sorted position t gets token t's prompt.
        y = self.out_proj(self.out_norm(self.selectiveScan(xs, prompt).to(u.dtype)))
        return torch.empty_like(y).scatter_(1, idx, y)


class AttentiveLayer(nn.Module):
    """Window MHSA + gated MLP, then ASSM + gated MLP, each part with a scaled long shortcut."""

    def __init__(self, cfg: MambaIRv2Config, heads: int, shifted: bool) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.ws = cfg.window_size
        self.shift = cfg.shift_size if shifted else 0
        self.norm1, self.norm2, self.norm3, self.norm4 = (nn.LayerNorm(dim) for _ in range(4))
        self.scale1 = nn.Parameter(1e-4 * torch.ones(dim))
        self.scale2 = nn.Parameter(1e-4 * torch.ones(dim))
        self.wqkv = nn.Linear(dim, 3 * dim)
        self.win_mhsa = WindowAttention(dim, cfg.window_size, heads)
        self.assm = ASSM(cfg)
        self.convffn1 = GatedMLP(dim, cfg.mlp_hidden)
        self.convffn2 = GatedMLP(dim, cfg.mlp_hidden)
        self.embeddingA = nn.Embedding(cfg.inner_rank, cfg.d_state)
        nn.init.uniform_(self.embeddingA.weight, -1 / cfg.inner_rank, 1 / cfg.inner_rank)

    def forward(self, x: Tensor, hw: tuple[int, int], rpi: Tensor, win: _Windows,
                noise: Tensor | None) -> Tensor:
        """x: (B, L, C) tokens of the padded (H, W) = hw; noise: the ASSM's routing draw (or None)."""
        b, n_tok, c = x.shape
        s = x
        # Per-token ops commute with the token order: gather norm1(x) into shifted windows
        # (official: roll qkv, then partition), and scatter the attention output back.
        y = self.norm1(x).index_select(1, win.order[self.shift])
        qkv = self.wqkv(y).view(b * win.n_windows, self.ws * self.ws, 3 * c)
        attn = self.win_mhsa(qkv, rpi, win if self.shift else None)
        x_win = attn.view(b, n_tok, c).index_select(1, win.inverse[self.shift]) + s
        x_win = self.convffn1(self.norm2(x_win), hw) + x_win
        x = s * self.scale1 + x_win
        s = x
        x_aca = self.assm(self.norm3(x), hw, self.embeddingA.weight, noise) + x
        x = x_aca + self.convffn2(self.norm4(x_aca), hw)
        return s * self.scale2 + x


class _Group(nn.Module):
    """Holds the AttentiveLayers, so their keys read ``residual_group.layers.j`` as officially."""

    def __init__(self, cfg: MambaIRv2Config, depth: int, heads: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(AttentiveLayer(cfg, heads, shifted=j % 2 == 1) for j in range(depth))


class ASSB(nn.Module):
    """Attentive state space block: AttentiveLayers, a 3x3 conv, a residual add."""

    def __init__(self, cfg: MambaIRv2Config, depth: int, heads: int) -> None:
        super().__init__()
        self.residual_group = _Group(cfg, depth, heads)
        self.conv = nn.Conv2d(cfg.embed_dim, cfg.embed_dim, 3, 1, 1)
        self.recompute = False  # see MambaIRv2Light.recompute_blocks

    def forward(self, x: Tensor, hw: tuple[int, int], rpi: Tensor, win: _Windows,
                noise: Iterator[Tensor | None]) -> Tensor:
        """noise: yields each AttentiveLayer's routing draw, in order (MambaIRv2Light.routing_noise)."""
        y = x
        for layer in self.residual_group.layers:
            nz = next(noise)
            if self.recompute and torch.is_grad_enabled():
                y = checkpoint(layer, y, hw, rpi, win, nz, use_reentrant=False)
            else:
                y = layer(y, hw, rpi, win, nz)
        return to_tokens(self.conv(to_image(y, hw))) + x


class _PatchEmbed(nn.Module):
    """Holds only the LayerNorm, so its key is ``patch_embed.norm`` as in official files."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)


class MambaIRv2Light(nn.Module):
    """MambaIRv2-light super-resolution network (pixelshuffledirect upsampler, 1conv residual).

    Input: (B, 3, H, W) RGB in [0, 1], any H, W >= 1 and batch size. Output: (B, 3, H*s, W*s),
    not clamped. The input is padded symmetrically to multiples of 16 inside the model and the
    output cropped, as the official model does.

    Args:
        cfg: the hyper-parameters (scale among them).
        routing: ``"seeded"`` (default: Gumbel-max class draw from a generator seeded with
            ``seed`` on every forward; repeatable, reproduces the published PSNR) or
            ``"argmax"`` (no noise; about 0.07 dB lower at x2). See the module docstring.
        seed: the seed of the per-forward generator (seeded routing only).
    Raises:
        ValueError: unknown routing mode.

    Example:
        >>> model = MambaIRv2Light(MambaIRv2Config(scale=2)).eval()
        >>> model(torch.rand(1, 3, 20, 30)).shape
        torch.Size([1, 3, 40, 60])
    """

    def __init__(self, cfg: MambaIRv2Config = MambaIRv2Config(), routing: str = "seeded", seed: int = 0) -> None:
        super().__init__()
        if routing not in ROUTING_MODES:
            raise ValueError(f"routing must be one of {ROUTING_MODES}, got {routing!r}")
        self.cfg, self.routing, self.seed = cfg, routing, seed
        dim = cfg.embed_dim
        self.register_buffer("mean", torch.tensor(cfg.rgb_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("rpi", relative_position_index(cfg.window_size), persistent=False)
        self.conv_first = nn.Conv2d(cfg.in_chans, dim, 3, 1, 1)
        self.patch_embed = _PatchEmbed(dim)
        self.layers = nn.ModuleList(ASSB(cfg, d, h) for d, h in zip(cfg.depths, cfg.num_heads))
        self.norm = nn.LayerNorm(dim)
        self.conv_after_body = nn.Conv2d(dim, dim, 3, 1, 1)
        self.upsample = nn.Sequential(
            nn.Conv2d(dim, cfg.scale ** 2 * cfg.in_chans, 3, 1, 1), nn.PixelShuffle(cfg.scale)
        )
        self._windows: dict[tuple[int, int, torch.device], _Windows] = {}

    def windows_for(self, h: int, w: int, device: torch.device) -> _Windows:
        """Window orders and shift masks for a padded (h, w), computed once per size and device, then reused."""
        key = (h, w, device)
        if key not in self._windows:
            if len(self._windows) > 16:  # bound the cache for callers that stream many sizes
                self._windows.clear()
            self._windows[key] = _Windows(h, w, self.cfg.window_size, device)
        return self._windows[key]

    def generator(self, device: torch.device) -> torch.Generator | None:
        """A fresh generator for one forward (seeded routing), or None (argmax routing)."""
        if self.routing == "argmax":
            return None
        return torch.Generator(device=device).manual_seed(self.seed)

    def routing_noise(self, n_tok: int, device: torch.device) -> Iterator[Tensor | None]:
        """The AttentiveLayers' Gumbel(0, 1) draws, (L, K) each, in layer order, from one fresh
        seeded generator (seeded routing; None each for argmax), drawn one layer at a time (only one
        layer's draw is alive at inference). Drawn outside the layer, so a layer recomputed in
        backward (:meth:`recompute_blocks`) sees the same draw. The noise is shared by the images of
        a batch: an image's output does not depend on its neighbours. Gumbel = -log(-log(U)); U = 0
        gives -inf: that class is simply not drawn."""
        gen = self.generator(device)
        for _ in range(sum(self.cfg.depths)):
            if gen is None:
                yield None
            else:
                yield torch.rand((n_tok, self.cfg.num_tokens), generator=gen, device=device).log_().neg_().log_().neg_()

    def recompute_blocks(self, on: bool = True) -> "MambaIRv2Light":
        """Keep only each AttentiveLayer's input for backward and recompute the layer there (the
        calibration's memory saver, as SwinIRLight.recompute_blocks; the routing draw is an input,
        so the recomputation is exact). No effect without autograd."""
        for layer in self.layers:
            layer.recompute = on
        return self

    def forward_features(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        win = self.windows_for(h, w, x.device)
        noise = self.routing_noise(h * w, x.device)
        t = self.patch_embed.norm(to_tokens(x))
        for layer in self.layers:
            t = layer(t, (h, w), self.rpi, win, noise)
        return to_image(self.norm(t), (h, w))

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        x = symmetric_pad(x, self.cfg.window_size)
        mean = self.mean.to(x.dtype)
        x = (x - mean) * self.cfg.img_range
        x = self.conv_first(x)
        x = self.conv_after_body(self.forward_features(x)) + x
        x = self.upsample(x) / self.cfg.img_range + mean
        s = self.cfg.scale
        return x[:, :, : h * s, : w * s]


def official_to_model(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official tensors -> this model's: the 1x1 conv ``assm.in_proj.0.weight`` (C, C, 1, 1) becomes
    the Linear weight (C, C) it equals."""
    return {k: v[:, :, 0, 0] if k.endswith("assm.in_proj.0.weight") and v.dim() == 4 and v.shape[2:] == (1, 1)
            else v for k, v in sd.items()}


_LAYER_KEY = re.compile(r"^layers\.(\d+)\.residual_group\.layers\.(\d+)\.")


def infer_mambairv2_config(sd: dict[str, Tensor], source: str = "weights") -> MambaIRv2Config:
    """Derive scale, widths, depths and heads from the tensors themselves, never a filename.

    Raises:
        CompsrtError: the tensors are not MambaIRv2-light weights (SwinIR-light ones, say).
    """
    if not any(".assm." in k for k in sd):
        looks = "SwinIR-light" if any(".residual_group.blocks." in k for k in sd) else "an unknown architecture"
        raise CompsrtError(f"{source}: not MambaIRv2-light weights (looks like {looks}); "
                           "use --arch swinir-light or pass a MambaIRv2-light file")
    for key in ("conv_first.weight", "upsample.0.weight"):
        if key not in sd:
            raise CompsrtError(f"{source}: missing tensor {key}; the file is incomplete")
    embed, in_ch = sd["conv_first.weight"].shape[:2]
    out_ch = sd["upsample.0.weight"].shape[0]
    scale = round((out_ch / in_ch) ** 0.5)
    if scale * scale * in_ch != out_ch or scale not in (2, 3, 4):
        raise CompsrtError(f"{source}: upsample.0.weight has {out_ch} output channels, not 3*s^2 for s in 2, 3, 4")
    depth: dict[int, int] = {}
    for k in sd:
        m = _LAYER_KEY.match(k)
        if m:
            i, j = int(m.group(1)), int(m.group(2))
            depth[i] = max(depth.get(i, 0), j + 1)
    if not depth:
        raise CompsrtError(f"{source}: no layers.*.residual_group.layers.* tensors: not MambaIRv2-light weights")
    groups = max(depth) + 1
    d = MambaIRv2Config()

    def dim_of(suffix: str, axis: int, default: int) -> int:
        """A size read from the first layer that has the tensor (another layer may lack it)."""
        for k, v in sd.items():
            if k.endswith(suffix) and _LAYER_KEY.match(k):
                return v.shape[axis]
        return default

    heads = []
    for i in range(groups):
        table = sd.get(f"layers.{i}.residual_group.layers.0.win_mhsa.relative_position_bias_table")
        heads.append(table.shape[1] if table is not None else dim_of("relative_position_bias_table", 1, d.num_heads[0]))
    table_rows = dim_of("relative_position_bias_table", 0, (2 * d.window_size - 1) ** 2)
    try:
        return MambaIRv2Config(
            scale=scale, in_chans=in_ch, embed_dim=embed,
            d_state=dim_of("selectiveScan.A_logs", 1, d.d_state),
            depths=tuple(depth.get(i, 0) for i in range(groups)), num_heads=tuple(heads),
            window_size=(round(table_rows ** 0.5) + 1) // 2,
            inner_rank=dim_of("embeddingA.weight", 0, d.inner_rank),
            num_tokens=dim_of("assm.embeddingB.weight", 0, d.num_tokens),
            mlp_ratio=dim_of("convffn1.fc1.weight", 0, embed) / embed,
        )
    except ValueError as e:
        raise CompsrtError(f"{source}: inconsistent MambaIRv2-light tensors ({e})") from None


def load_mambairv2(path: Path, scale: int | None = None, routing: str = "seeded") -> MambaIRv2Light:
    """Build MambaIRv2-light from a safetensors file (as made by compsrt.model.paddle_convert).

    Args:
        path: the weights file, e.g. ``bundled_weights(2, "mambairv2-light")``.
        scale: the scale the caller expects; a file of another scale is an error.
        routing: ``"seeded"`` (default) or ``"argmax"``; see :class:`MambaIRv2Light`.
    Returns:
        The model in eval mode.
    Raises:
        CompsrtError: unreadable or truncated file, SwinIR (or other) weights, another scale,
            missing, unexpected or wrong-shape tensors.

    Example:
        >>> model = load_mambairv2(bundled_weights(4, "mambairv2-light"), scale=4)
    """
    if routing not in ROUTING_MODES:
        raise ValueError(f"routing must be one of {ROUTING_MODES}, got {routing!r}")
    sd = official_to_model(read_state_dict(Path(path)))
    cfg = infer_mambairv2_config(sd, str(path))
    if scale is not None and cfg.scale != scale:
        raise CompsrtError(f"{path}: these are x{cfg.scale} weights but --scale {scale} was asked; "
                           f"use --scale {cfg.scale} or x{scale} weights")
    model = MambaIRv2Light(cfg, routing=routing)
    load_into(model, sd, str(path))
    return model.eval()
