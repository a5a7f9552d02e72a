"""Manifold information bottleneck (MIB): a Transformer block over the VAE moments, a λ head, noise mix.

``r`` is the 8-channel output of the frozen SD VAE encoder + ``quant_conv`` (mean and log-variance,
before sampling). The paper's manifold (its Eq. 4) is encoder + quant_conv *followed by* a Transformer
layer, so the bottleneck filters the Transformer output ``h`` (residual, ``h == r`` at init): λ decides
per element how much of ``h`` to keep, the rest is replaced by noise drawn from the statistics of the
manifold over high-quality faces (IBA, Schulz et al. 2020), and the KL is computed on ``h``. The λ head,
sigmoid, mix and KL always run in float32: in bf16, λ = 0.99 would read 0.988 and λ ≥ 0.998 exactly 1.
See design/method.md.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bfrboost.errors import UsageError

STATS_MODES = ("channel", "element")


def sincos_2d(height: int, width: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Fixed 2-D sine/cosine positions, shape (H·W, dim): attention alone would ignore where a token is."""
    if dim % 4:
        raise ValueError(f"transformer width must be a multiple of 4, got {dim}")
    quarter = dim // 4
    freqs = torch.exp(-math.log(10000.0) * torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    ys = torch.arange(height, device=device, dtype=torch.float32)[:, None] * freqs  # (H, dim/4)
    xs = torch.arange(width, device=device, dtype=torch.float32)[:, None] * freqs  # (W, dim/4)
    ys = torch.cat([ys.sin(), ys.cos()], dim=1)[:, None, :].expand(height, width, dim // 2)
    xs = torch.cat([xs.sin(), xs.cos()], dim=1)[None, :, :].expand(height, width, dim // 2)
    return torch.cat([ys, xs], dim=2).reshape(height * width, dim).to(dtype)


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"transformer width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)  # flash / memory-efficient kernels on CUDA
        return self.out(y.transpose(1, 2).reshape(b, n, c))


class ManifoldTransformer(nn.Module):
    """One pre-norm Transformer block whose tokens are the H×W positions of ``r``; residual in ``r`` space."""

    def __init__(self, channels: int, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.proj_in = nn.Linear(channels, width)
        self.norm1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.proj_out = nn.Linear(width, channels)
        # zero output projection: h == r at init, so the bottleneck starts on the VAE manifold itself
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        b, c, h, w = r.shape
        x = self.proj_in(r.flatten(2).transpose(1, 2))
        x = x + sincos_2d(h, w, x.shape[-1], x.device, x.dtype)
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return r + self.proj_out(x).transpose(1, 2).reshape(b, c, h, w)


def information_loss(r: torch.Tensor, lam_logits: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL( N(λ·r̃, (1−λ)²) ‖ N(0, 1) ) with r̃ = (r − μ_R)/σ_R (design/method.md), in nats, averaged over
    every element of the manifold (the refiner rescales it to nats per image pixel, see docs/training.md).

    −log(1−λ) is written as softplus(logit) so λ → 1 stays finite in float32.
    """
    lam = torch.sigmoid(lam_logits)
    r_tilde = (r - mean) / std
    kl = F.softplus(lam_logits) + ((1 - lam) ** 2 + (lam * r_tilde) ** 2) / 2 - 0.5
    return kl.mean()


@dataclass
class BottleneckOutput:
    z: torch.Tensor  # λ·h + (1−λ)·ε, same shape as r, float32
    lam: torch.Tensor  # λ in (0, 1), same shape as r, float32 (all ones without the MIB)
    h: torch.Tensor  # Transformer output: the manifold the bottleneck filters (== r at init; == r without the Transformer)
    info_loss: torch.Tensor  # scalar mean KL per manifold element, unweighted (0 without the MIB)


class ManifoldBottleneck(nn.Module):
    """Transformer ``h = r + T(r)`` → λ head → ``z = λ·h + (1−λ)·ε`` with ``ε ~ N(μ_R, σ_R)``, plus the KL on ``h``."""

    def __init__(
        self,
        channels: int = 8,
        width: int = 128,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        lambda_init: float = 0.99,
        sigma_min: float = 0.01,
        stats_mode: str = "element",
        transformer: bool = True,
        mib: bool = True,
    ) -> None:
        super().__init__()
        if stats_mode not in STATS_MODES:
            raise UsageError(f"stats_mode must be one of {STATS_MODES}, got {stats_mode!r}")
        self.stats_mode = stats_mode
        self.sigma_min = sigma_min
        # ablations (the paper's Table III): without the Transformer h = r; without the MIB z = h
        self.transformer = ManifoldTransformer(channels, width, heads, mlp_ratio) if transformer else None
        self.lambda_head = nn.Conv2d(channels, channels, kernel_size=1) if mib else None
        self.channels = channels
        self.register_buffer("stats_mean", torch.zeros(channels, 1, 1))
        self.register_buffer("stats_std", torch.ones(channels, 1, 1))
        if self.lambda_head is None:
            return
        # λ starts at lambda_init everywhere: the bottleneck then keeps almost all of the manifold
        # (z ≈ r), so training starts from the base output's own latent instead of heavy noise and
        # learns where noise may replace information. (The UNet step after it is not the identity.)
        # A zero weight still receives gradients (∂/∂W = δ·h), so the head trains from step 1.
        nn.init.zeros_(self.lambda_head.weight)
        nn.init.constant_(self.lambda_head.bias, math.log(lambda_init / (1 - lambda_init)))

    def set_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store μ_R, σ_R: (C, 1, 1) in "channel" mode, (C, H, W) in "element" mode (where (C, 1, 1) is the
        placeholder of a refiner whose statistics were not computed yet)."""
        channels = self.channels
        if mean.shape != std.shape or mean.dim() != 3 or mean.shape[0] != channels:
            raise UsageError(
                f"manifold statistics must have shape ({channels}, H, W), got {tuple(mean.shape)} and {tuple(std.shape)}"
            )
        if self.stats_mode == "channel" and mean.shape[1:] != (1, 1):
            raise UsageError(f"statistics of shape {tuple(mean.shape)} do not fit stats_mode={self.stats_mode!r}")
        self.stats_mean = mean.detach().to(self.stats_mean)
        self.stats_std = std.detach().to(self.stats_std)

    def noise_std(self) -> torch.Tensor:
        return self.stats_std.clamp_min(self.sigma_min)

    def forward(
        self, r: torch.Tensor, noise: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> BottleneckOutput:
        """``noise`` is a standard normal tensor like ``r`` (drawn with ``generator`` when not given)."""
        mean, std = self.stats_mean.float(), self.noise_std().float()
        if mean.shape[1:] != (1, 1) and mean.shape[1:] != r.shape[2:]:
            raise UsageError(
                f"per-element statistics are {tuple(mean.shape[1:])} but the manifold is {tuple(r.shape[2:])}; "
                "recompute stats at this face size"
            )
        h = self.transformer(r) if self.transformer is not None else r
        if self.lambda_head is None:
            ones = torch.ones_like(h, dtype=torch.float32)
            return BottleneckOutput(z=h.float(), lam=ones, h=h, info_loss=h.new_zeros((), dtype=torch.float32))
        float32 = (
            torch.autocast(r.device.type, enabled=False) if torch.amp.is_autocast_available(r.device.type) else nullcontext()
        )
        with float32:  # autocast off: λ near 1 must not round (bf16 λ=0.99 → 0.988)
            h32 = h.float()
            logits = self.lambda_head(h32)
            lam = torch.sigmoid(logits)
            if noise is None:
                noise = torch.randn(r.shape, generator=generator, device=r.device, dtype=torch.float32)
            eps = mean + std * noise.float()
            z = lam * h32 + (1 - lam) * eps
            info = information_loss(h32, logits, mean, std)
        return BottleneckOutput(z=z, lam=lam, h=h, info_loss=info)
