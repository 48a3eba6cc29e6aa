"""Configuration dataclasses: frozen, validated on construction, passed explicitly."""
from __future__ import annotations

import math
from dataclasses import dataclass


MAX_PARAMETERS = 100_000_000   # SwinIR-light has 0.9M, the classical SwinIR 12M


def check_common(cfg, extra_ints: dict[str, int], tops: dict[str, int]) -> None:
    """The checks both architectures' configs share, so that a damaged or hostile file header cannot
    build a nonsensical model or ask for a huge allocation: ``in_chans``, ``embed_dim``,
    ``window_size``, ``depths``, ``num_heads`` (and ``extra_ints``, name -> value) are positive
    integers; ``tops`` (name -> bound) and the blocks and heads are bounded; heads divide the width;
    an even window; 3 input channels, a finite ``rgb_mean`` and a sane ``mlp_ratio`` and ``img_range``.

    Raises:
        ValueError: the first check that fails, naming the field.
    """
    sizes = {"in_chans": (cfg.in_chans,), "embed_dim": (cfg.embed_dim,), "window_size": (cfg.window_size,),
             "depths": cfg.depths, "num_heads": cfg.num_heads, **{k: (v,) for k, v in extra_ints.items()}}
    for name, vals in sizes.items():
        if not vals or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in vals):
            raise ValueError(f"{name} must be positive integers, got {vals}")
    if len(cfg.depths) != len(cfg.num_heads):
        raise ValueError(f"depths {cfg.depths} and num_heads {cfg.num_heads} differ in length")
    bounds = [(name, sizes[name][0], top) for name, top in tops.items()]
    for name, value, top in (*bounds, ("num_heads", max(cfg.num_heads), 64), ("depths", max(cfg.depths), 64),
                             ("sum(depths)", sum(cfg.depths), 256), ("len(depths)", len(cfg.depths), 16)):
        if value > top:
            raise ValueError(f"{name} must be at most {top}, got {value}")
    for h in cfg.num_heads:
        if cfg.embed_dim % h:
            raise ValueError(f"embed_dim {cfg.embed_dim} is not divisible by num_heads {h}")
    if cfg.window_size < 2 or cfg.window_size % 2:
        raise ValueError(f"window_size must be an even number >= 2, got {cfg.window_size}")
    if cfg.in_chans != 3:
        raise ValueError(f"in_chans must be 3 (the model subtracts a 3-channel rgb_mean), got {cfg.in_chans}")
    if len(cfg.rgb_mean) != 3 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in cfg.rgb_mean):
        raise ValueError(f"rgb_mean must be 3 finite numbers, got {cfg.rgb_mean}")
    for name, value, top in (("mlp_ratio", cfg.mlp_ratio, 8.0), ("img_range", cfg.img_range, 1e4)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= top:
            raise ValueError(f"{name} must be a number in (0, {top:g}], got {value}")


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
        check_common(self, extra_ints={}, tops={"embed_dim": 1024, "window_size": 64})
        if self.mlp_hidden < 1:
            raise ValueError(f"mlp_ratio {self.mlp_ratio} gives an MLP of {self.mlp_hidden} channels; need at least 1")
        if self.parameter_count > MAX_PARAMETERS:
            raise ValueError(f"embed_dim {self.embed_dim}, depths {self.depths}, mlp_ratio {self.mlp_ratio} make "
                             f"{self.parameter_count / 1e6:.0f}M parameters, over {MAX_PARAMETERS / 1e6:.0f}M")

    @property
    def parameter_count(self) -> int:
        """The model's number of learned values (the Linear, conv, norm and bias-table tensors)."""
        d, hid, ws = self.embed_dim, self.mlp_hidden, self.window_size
        block = 4 * d * d + 4 * d + 2 * d * hid + hid + d + 4 * d   # qkv + proj, MLP, two LayerNorms
        table = (2 * ws - 1) ** 2                                    # relative-position bias, per head
        blocks = sum(depth * (block + table * heads) for depth, heads in zip(self.depths, self.num_heads))
        convs = (len(self.depths) + 1) * (9 * d * d + d) + 9 * self.in_chans * d + d
        return blocks + convs + 9 * d * 3 * self.scale ** 2 + 3 * self.scale ** 2 + 4 * d

    @property
    def shift_size(self) -> int:
        return self.window_size // 2

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)


ROTATIONS = ("none", "deploy", "official")


@dataclass(frozen=True)
class QuantConfig:
    """How SwinIR-light is quantized (and pruned). Presets: ``compsrt.calib.methods.METHODS``.

    rotation: "deploy" rotates both operands of every product along its contraction axis and
        keeps them rotated (the deployable form, docs/engine.md); "official" quantizes each operand in
        the rotated domain, then rotates back and crops (the official code's way); "none" is
        2DQuant (no rotation).
    rotate_acts: False rotates weights only (the paper's Figure 6 ablation); only meaningful,
        and only allowed, with rotation="official".
    decompose: learn the step and zero extras s2, z2 (the scalar decomposition).
    train_bounds: learn l, u during finetuning (False = "tuning only": bounds frozen at DOBI).
    one_sided: search a non-negative tensor's bounds one-sided (lower bound fixed at its min).
    prune: fraction of each quantized weight's rotated out x n coefficients (or of its output
        channels, prune_mode="channel") set to exactly zero; 0 disables pruning.
    exact_dc: with rotation="deploy", keep coefficient 0 of every rotated operand (its scaled
        sum along the contraction axis) in FP and quantize the other n - 1: a shared offset,
        which the rotation concentrates there, no longer sets the quantization range. The
        products stay exact (a rank-1 FP term is added); False quantizes all n coefficients.
        Only meaningful with rotation="deploy" (ignored otherwise; the calibration CLI refuses
        ``--exact-dc`` / ``--no-exact-dc`` elsewhere).
    row_mean: the unrotated counterpart of exact_dc (rotation="none" only): every operand row
        along the contraction axis is split as ``r = mean(r) 1^T + c``; the mean stays FP and
        the centred rest c is quantized (its bound search sees c): ``r_hat = mean(r) + Q(c)``.
        With pruning the mask covers c (a pruned coefficient dequantizes to its row's mean).
    layers: which layer set of the architecture's plan is quantized (compsrt/quant/plan.py,
        LAYER_SETS): "" is the architecture's default (SwinIR-light: "full", its only set;
        MambaIRv2-light: "official").
    """

    bits: int = 4
    rotation: str = "deploy"
    rotate_acts: bool = True
    decompose: bool = True
    train_bounds: bool = True
    one_sided: bool = True
    prune: float = 0.0
    prune_mode: str = "unstructured"
    exact_dc: bool = True
    row_mean: bool = False
    layers: str = ""

    def __post_init__(self) -> None:
        if self.bits not in (2, 3, 4, 8):
            raise ValueError(f"bits must be 2, 3, 4 or 8, got {self.bits}")
        if self.rotation not in ROTATIONS:
            raise ValueError(f"rotation must be one of {ROTATIONS}, got {self.rotation!r}")
        if not self.rotate_acts and self.rotation != "official":
            raise ValueError("rotating weights only (rotate_acts=False) needs rotation='official'")
        if not 0.0 <= self.prune < 1.0:
            raise ValueError(f"prune must be in [0, 1), got {self.prune}")
        if self.prune_mode not in ("unstructured", "channel"):
            raise ValueError(f"prune_mode must be 'unstructured' or 'channel', got {self.prune_mode!r}")
        if self.layers not in ("", "official", "full"):
            raise ValueError(f"layers must be 'official' or 'full', got {self.layers!r}")
        if self.row_mean and self.rotation != "none":
            raise ValueError(f"row_mean (an FP mean per operand row) needs rotation 'none', got {self.rotation!r}; "
                             "with rotation 'deploy' the exact DC (exact_dc) keeps that offset")
        if not (self.decompose or self.train_bounds):
            raise ValueError("nothing to train: decompose=False and train_bounds=False")


LR_UNITS = ("range", "step", "absolute")
LOSSES = ("l1", "l2")


@dataclass(frozen=True)
class CalibConfig:
    """Calibration and distillation finetuning (DOBI + DQC). Defaults are the quick CPU run
    (measured 4-6 s per batch-2 iteration of 64x64 patches on one thread of a 2-core machine
    whose other core was busy, so about 7-10 minutes in all with the ~20 s DOBI).

    The paper's setting is iters=4000, batch=16 (``CalibConfig.full()``).
    """

    iters: int = 100
    batch: int = 2              # finetuning batch of LR patches
    patch: int = 64             # LR patch side
    calib_batch: int = 8        # patches in the one DOBI batch
    lr: float = 1e-2
    lr_unit: str = "range"      # per quantizer, lr x its DOBI "range" (u - l) or "step"; "absolute": one lr
    clip: float = 1.0           # gradient value clipping, as the official code
    loss: str = "l1"            # output distillation: "l1" (the paper's) or "l2" (mean squared, what PSNR measures)
    feature_loss: float = 0.0   # weight of the normalized feature loss on the 4 stage outputs
    recompute: bool = True      # recompute each Swin block in backward: CPU 1/3 of the memory, x0.8-1.05 the time
    cuda_graph: bool = True     # on CUDA without recompute, replay the step from a CUDA graph (checked, else eager)
    val_every: int = 25
    val_patches: int = 4
    search_candidates: int = 100
    search_max_elems: int = 1 << 16   # DOBI's objective subsample (elements)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.lr_unit not in LR_UNITS:
            raise ValueError(f"lr_unit must be one of {LR_UNITS}, got {self.lr_unit!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        for name in ("batch", "patch", "calib_batch", "val_every", "val_patches", "search_candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.iters < 0:
            raise ValueError(f"iters must be >= 0, got {self.iters}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    @classmethod
    def full(cls, **kw) -> "CalibConfig":
        """The paper's setting: 4000 iterations of batch 16, on a GPU.

        Without block recompute: on an H100 a batch-16 step keeps 13.5 GB (under the issue's 16 GB)
        and takes 0.57 s against 1.06 s with recompute (docs/gpu_lease_2026-11-28.md), and without
        it the step can be replayed from a CUDA graph (``cuda_graph``, compsrt/calib/graphed_step.py).
        """
        return cls(**{"iters": 4000, "batch": 16, "calib_batch": 32, "val_every": 200, "val_patches": 16,
                      "recompute": False, **kw})
