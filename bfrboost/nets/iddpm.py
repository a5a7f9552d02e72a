"""The IDDPM FFHQ-512 face prior: UNet, sinusoidal timestep embedding and the linear noise schedule.

Our own UNet (guided-diffusion / IDDPM layout as DifFace's ``models/unet.py``, key names matching
the official checkpoint ``iddpm_ffhq512_ema500000.pth``); shared by the DifFace base and PGDiff guidance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

PRIOR_FILE = "iddpm_ffhq512_ema500000.pth"


@dataclass(frozen=True)
class UNetConfig:
    """``configs/sample/iddpm_ffhq512_swinir.yaml`` → ``model.params``."""

    image_size: int = 512
    in_channels: int = 3
    model_channels: int = 32
    out_channels: int = 6  # ε and the learned-variance interpolation
    num_res_blocks: tuple[int, ...] = (1, 2, 2, 2, 2, 3, 4)
    attention_resolutions: tuple[int, ...] = (32, 16, 8)  # spatial sizes, not downsample rates
    channel_mult: tuple[int, ...] = (1, 2, 4, 8, 8, 16, 16)
    num_head_channels: int = 64


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding, [cos | sin] halves as guided-diffusion."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class GroupNorm32(nn.GroupNorm):
    """32-group norm computed in float32 (as upstream, for half-precision safety)."""

    def __init__(self, channels: int) -> None:
        super().__init__(32, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


class ResBlock(nn.Module):
    """Residual block with FiLM-style (scale, shift) timestep conditioning."""

    def __init__(self, in_ch: int, emb_ch: int, out_ch: int) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(GroupNorm32(in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, 2 * out_ch))
        self.out_layers = nn.Sequential(
            GroupNorm32(out_ch), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        )
        self.skip_connection = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        scale, shift = self.emb_layers(emb).type(h.dtype)[..., None, None].chunk(2, dim=1)
        h = self.out_layers[0](h) * (1 + scale) + shift
        h = self.out_layers[1:](h)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Spatial self-attention; 1-D convs for qkv/proj and the *legacy* head split (heads, then q/k/v)."""

    def __init__(self, channels: int, head_channels: int) -> None:
        super().__init__()
        self.num_heads = channels // head_channels
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        length = qkv.shape[-1]
        q, k, v = qkv.reshape(b * self.num_heads, -1, length).chunk(3, dim=1)  # each (B·H, ch, T)
        h = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        h = h.transpose(1, 2).reshape(b, c, length)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TimestepSequential(nn.Sequential):
    """Passes the timestep embedding to the residual blocks only."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class IDDPMUNet(nn.Module):
    """ε-predicting UNet (with learned-variance channels) of Improved DDPM, DifFace's FFHQ-512 prior."""

    def __init__(self, cfg: UNetConfig = UNetConfig()) -> None:
        super().__init__()
        self.config = cfg
        mc = cfg.model_channels
        emb_ch = mc * 4
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))

        def stage(in_ch: int, out_ch: int, resolution: int) -> list[nn.Module]:
            layers: list[nn.Module] = [ResBlock(in_ch, emb_ch, out_ch)]
            if resolution in cfg.attention_resolutions:
                layers.append(AttentionBlock(out_ch, cfg.num_head_channels))
            return layers

        ch = cfg.channel_mult[0] * mc
        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))])
        skip_chs = [ch]
        res = cfg.image_size
        last = len(cfg.channel_mult) - 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks[level]):
                self.input_blocks.append(TimestepSequential(*stage(ch, mult * mc, res)))
                ch = mult * mc
                skip_chs.append(ch)
            if level != last:
                self.input_blocks.append(TimestepSequential(Downsample(ch)))
                skip_chs.append(ch)
                res //= 2

        self.middle_block = TimestepSequential(
            ResBlock(ch, emb_ch, ch), AttentionBlock(ch, cfg.num_head_channels), ResBlock(ch, emb_ch, ch)
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks[level] + 1):
                layers = stage(ch + skip_chs.pop(), mult * mc, res)
                ch = mult * mc
                if level and i == cfg.num_res_blocks[level]:
                    layers.append(Upsample(ch))
                    res *= 2
                self.output_blocks.append(TimestepSequential(*layers))

        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(ch, cfg.out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x in [-1, 1] at (original, not respaced) integer timesteps ``t`` → (B, 6, H, W)."""
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(x.dtype))
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


def linear_alphas_cumprod(num_steps: int = 1000) -> torch.Tensor:
    """ᾱ_t of IDDPM's linear schedule (β from 1e-4 to 0.02 over 1000 steps), float64."""
    betas = torch.linspace(1e-4 * 1000 / num_steps, 0.02 * 1000 / num_steps, num_steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)
