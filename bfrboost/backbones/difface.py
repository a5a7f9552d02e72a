"""DifFace (Yue & Loy, 2022): a restorer's estimate, diffused part-way, then denoised by a face prior.

Pipeline, as upstream's ``inference_difface.py`` (``DifFaceSampler.sample_func_ir_aligned``) runs it
for aligned 512 faces:

1. first stage: a SwinIR restorer (``swinir_restoration512_L1.pth``; pixel-unshuffle ×8 in,
   nearest+conv ×8 out) maps the RGB [0, 1] crop to an estimate ``x̂0``, clipped to [0, 1];
2. diffuse: ``x_N = √ᾱ_N · (2·x̂0 − 1) + √(1 − ᾱ_N) · ε`` on the IDDPM linear schedule
   (1000 steps, β from 1e-4 to 0.02), where upstream's ``N = 100`` on its ``ddim250`` grid
   (stride 4) is original timestep 400;
3. sample: DDIM with η = 0.5 on that grid, from index N−1 down to 0 — upstream feeds the sample
   diffused to index N into its first step at index N−1, and we keep that. The FFHQ-512 UNet
   prior (``iddpm_ffhq512_ema500000.pth``) predicts ε (its learned-variance channels are unused by
   DDIM), x0 is clipped to [-1, 1] at every step, and the final x0 is mapped back to [0, 1].

Knobs: ``steps`` = number of prior evaluations (default 100 = upstream: grid ``0, 4, …, 400``;
other values, 10 to 400, space the grid ``round(k · 400 / steps)`` evenly over the same start
noise level) and ``seed`` (default 12345 as upstream's script). Noise is drawn on the CPU from one
generator seeded with ``seed`` for the whole batch, so a batch repeats exactly across runs and
devices; a face's noise depends on its position in the batch (as upstream).

Our own UNet (guided-diffusion / IDDPM layout as DifFace's ``models/unet.py``, key names matching
the official checkpoint); the SwinIR restorer is spandrel's, which reads DifFace's keys
(``conv_first.1.*`` after the unshuffle, ``conv_up3``) as they are.

Weights: the BaseSpec's ``weight_file`` is the prior; ``--weights FILE`` replaces the prior only,
and the restorer is always ``swinir_restoration512_L1.pth`` from the weights cache (``build`` calls
``weights.ensure`` for it after the prior has loaded, so a wrong prior fails before any download).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from bfrboost import weights
from bfrboost.backbones.spec import BaseSpec, Knob, build_strict
from bfrboost.errors import WeightsError

PRIOR_FILE = "iddpm_ffhq512_ema500000.pth"
RESTORER_FILE = "swinir_restoration512_L1.pth"
START_TIMESTEP = 400  # upstream: index 100 of range(0, 1000, 4)
ETA = 0.5  # upstream inference_difface.py default


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


@dataclass(frozen=True)
class RestorerConfig:
    """Same yaml → ``model_ir.params`` (DifFace's SwinIR), as spandrel's SwinIR arguments."""

    img_size: int = 64
    embed_dim: int = 180
    depths: tuple[int, ...] = (6,) * 8
    num_heads: tuple[int, ...] = (6,) * 8
    window_size: int = 8
    mlp_ratio: float = 2.0
    scale: int = 8  # pixel-unshuffle ×8 in, nearest+conv ×8 out


@dataclass(frozen=True)
class DifFaceConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)
    restorer: RestorerConfig = field(default_factory=RestorerConfig)


# ----------------------------------------------------------------------------------------------
# IDDPM UNet


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


# ----------------------------------------------------------------------------------------------
# first-stage restorer (spandrel's SwinIR) and the sampler


def _new_restorer(cfg: RestorerConfig) -> nn.Module:
    from spandrel.architectures.SwinIR import SwinIR

    return SwinIR(
        img_size=cfg.img_size, in_chans=3, embed_dim=cfg.embed_dim, depths=list(cfg.depths),
        num_heads=list(cfg.num_heads), window_size=cfg.window_size, mlp_ratio=cfg.mlp_ratio,
        upscale=cfg.scale, img_range=1.0, upsampler="nearest+conv", resi_connection="1conv",
        start_unshuffle=cfg.scale,
    )


def _load_restorer(state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """DifFace's SwinIR via spandrel, which detects its config from the keys and loads strictly."""
    from spandrel import ModelLoader, UnsupportedModelError

    refused = WeightsError(f"{RESTORER_FILE}: not DifFace's SwinIR restorer; delete it and download it again")
    try:
        descriptor = ModelLoader().load_from_state_dict(dict(state_dict))  # spandrel renames keys in place
    except (UnsupportedModelError, KeyError, RuntimeError):
        raise refused from None
    if descriptor.architecture.id != "SwinIR" or descriptor.scale != 1:
        raise refused
    return descriptor.model


def linear_alphas_cumprod(num_steps: int = 1000) -> torch.Tensor:
    """ᾱ_t of IDDPM's linear schedule (β from 1e-4 to 0.02 over 1000 steps), float64."""
    betas = torch.linspace(1e-4 * 1000 / num_steps, 0.02 * 1000 / num_steps, num_steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


def respaced_timesteps(steps: int) -> torch.Tensor:
    """Original timesteps of grid indices 0…steps (index ``steps`` is the diffused start, t=400)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(0, START_TIMESTEP, steps + 1, dtype=torch.float64).round().long()


class DifFace(nn.Module):
    """SwinIR estimate → partial diffusion → DDIM with the IDDPM face prior."""

    def __init__(self, prior: IDDPMUNet, restorer: nn.Module) -> None:
        super().__init__()
        self.prior = prior
        self.restorer = restorer

    @torch.no_grad()
    def forward(self, y: torch.Tensor, steps: int = 100, seed: int = 12345) -> torch.Tensor:
        """y: RGB [0, 1] (B, 3, H, W) → RGB [0, 1], same shape (resized to the prior's size and back)."""
        size = self.prior.config.image_size
        height, width = y.shape[-2:]
        if (height, width) != (size, size):
            y = F.interpolate(y, size=(size, size), mode="bicubic", antialias=True)
        estimate = self.restorer(y).clamp(0, 1) * 2 - 1

        timesteps = respaced_timesteps(steps)
        abar = linear_alphas_cumprod()[timesteps].tolist()
        generator = torch.Generator().manual_seed(seed)

        def noise() -> torch.Tensor:
            return torch.randn(estimate.shape, generator=generator).to(estimate)

        x = math.sqrt(abar[steps]) * estimate + math.sqrt(1 - abar[steps]) * noise()
        for i in reversed(range(steps)):
            t = torch.full((x.shape[0],), int(timesteps[i]), device=x.device)
            eps = self.prior(x, t)[:, :3]
            a, a_prev = abar[i], (abar[i - 1] if i > 0 else 1.0)
            x0 = (x / math.sqrt(a) - math.sqrt(1 / a - 1) * eps).clamp(-1, 1)
            sigma = ETA * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
            x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - sigma**2) * eps
            if i > 0:
                x = x + sigma * noise()
        out = ((x + 1) / 2).clamp(0, 1)
        if (height, width) != (size, size):
            out = F.interpolate(out, size=(height, width), mode="bicubic", antialias=True).clamp(0, 1)
        return out


def build(
    state_dict: Mapping[str, torch.Tensor] | None = None,
    *,
    restorer_state_dict: Mapping[str, torch.Tensor] | None = None,
    config: DifFaceConfig = DifFaceConfig(),
) -> DifFace:
    """DifFace with the prior's ``state_dict`` loaded strictly.

    With a prior but no ``restorer_state_dict``, the restorer comes from the weights cache
    (``weights.ensure(RESTORER_FILE)``); with neither, both are randomly initialised.
    """
    prior = build_strict(lambda: IDDPMUNet(config.unet), state_dict)  # a wrong prior fails before any download
    if state_dict is not None and restorer_state_dict is None:
        restorer_state_dict = weights.load_state_dict(weights.ensure(RESTORER_FILE))
    if restorer_state_dict is not None:
        restorer = _load_restorer(restorer_state_dict)
    else:
        restorer = _new_restorer(config.restorer)
    return DifFace(prior, restorer).eval()


def forward(net: DifFace, x: torch.Tensor, steps: int = 100, seed: int = 12345) -> torch.Tensor:
    return net(x, steps=steps, seed=seed)


SPECS = [
    BaseSpec(
        name="difface",
        display_name="DifFace",
        card="difface",
        weight_file=PRIOR_FILE,
        build=build,
        forward=forward,
        knobs={
            # Below 10 steps the one-grid-step start offset (see the module docstring) dominates.
            "steps": Knob(
                100, "denoising steps from t=400 (100 = upstream DifFace: ddim250 started at 100)", low=10, high=START_TIMESTEP
            ),
            "seed": Knob(12345, "seed of the diffusion noise (upstream's default 12345)", low=0),
        },
    )
]
