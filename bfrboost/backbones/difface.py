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

The prior is :mod:`bfrboost.nets.iddpm` (shared with PGDiff guidance); the SwinIR restorer is spandrel's, which reads
DifFace's keys (``conv_first.1.*`` after the unshuffle, ``conv_up3``) as they are.

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
from bfrboost.nets.iddpm import PRIOR_FILE, IDDPMUNet, UNetConfig, linear_alphas_cumprod

RESTORER_FILE = "swinir_restoration512_L1.pth"
START_TIMESTEP = 400  # upstream: index 100 of range(0, 1000, 4)
ETA = 0.5  # upstream inference_difface.py default


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
# first-stage restorer (spandrel's SwinIR) and the sampler


def _new_restorer(cfg: RestorerConfig) -> nn.Module:
    from spandrel.architectures.SwinIR import SwinIR

    return SwinIR(
        img_size=cfg.img_size, in_chans=3, embed_dim=cfg.embed_dim, depths=list(cfg.depths),
        num_heads=list(cfg.num_heads), window_size=cfg.window_size, mlp_ratio=cfg.mlp_ratio,
        upscale=cfg.scale, img_range=1.0, upsampler="nearest+conv", resi_connection="1conv",
        start_unshuffle=cfg.scale,
    )


def load_restorer(state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
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
        restorer = load_restorer(restorer_state_dict)
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
