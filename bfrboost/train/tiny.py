"""The CPU-scale configuration: a tiny SD (VAE + one-step UNet) fitted to faces in minutes.

A *random* tiny VAE reconstructs a face at ~10 dB and its decoder barely depends on the latent, so on
it no objective can be tested: the image losses give the bottleneck no reason to keep information at
any β. Here the tiny SD is *fitted* instead, seeded and in minutes on a CPU:

1. the VAE (×2 down-sampling, ``LATENT_CHANNELS`` = 4: 32 px faces → 16×16×4 latents) on clean faces, with
   the reconstruction loss and a small KL, like SD's VAE;
2. the UNet as the one-step prior the refiner relies on: from the latent of a face whose VAE moments
   went through a bottleneck-like mix ``λ·r + (1 − λ)·ε`` (λ drawn per face in [0.5, 1], ε from the
   moments' statistics) it predicts, at the refiner's timestep, the clean latent. At λ = 1 it is the
   identity, so an untrained refiner starts at ≈ the VAE reconstruction of the base output; the LoRA
   and the bottleneck then learn the restoration.

Nothing fitted here is shipped: the shared test faces are partly non-commercial, so the tiny SD is
fitted where it is used (``bfrboost train tiny-sd``, ``bfrboost train --tiny`` on its own training split,
or a pytest session fixture), never on the faces it is evaluated on.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bfrboost.errors import UsageError
from bfrboost.options import TinySdOptions, default_of
from bfrboost.refiner.model import TINY_PROMPT_SHAPE, alpha_bar, one_step_x0, vae_moments
from bfrboost.safety import atomic_dir

LATENT_CHANNELS = 4  # 16×16×4 latents for 32 px faces; the refiner's manifold (mean + log-variance) follows: 8 channels
VAE_CONFIG: dict[str, Any] = {
    "block_out_channels": [32, 64],
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "latent_channels": LATENT_CHANNELS,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
    "mid_block_add_attention": False,  # 8×8 to 16×16 latents: convolutions see them whole, attention only costs time
}
UNET_CONFIG: dict[str, Any] = {
    "attention_head_dim": 4,
    "block_out_channels": [32, 64],
    "cross_attention_dim": TINY_PROMPT_SHAPE[-1],
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "in_channels": LATENT_CHANNELS,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "out_channels": LATENT_CHANNELS,
    "sample_size": 16,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "use_linear_projection": True,
}
FIT_NAME = "fit.json"
LOGVAR_INIT = -8.0


@dataclass
class TinyFit:
    """How the tiny SD is fitted (stored in ``fit.json`` next to it)."""

    size: int = default_of(TinySdOptions, "size")
    vae_steps: int = default_of(TinySdOptions, "vae_steps")
    unet_steps: int = default_of(TinySdOptions, "unet_steps")
    batch_size: int = 8  # reaches the VAE's 28.4 dB in half the time of 16
    lr: float = 2e-3
    kl_weight: float = 1e-6  # SD's VAE: a KL weight of 1e-6 keeps the latent near a Gaussian without blurring
    seed: int = 0
    timestep: int = 499
    scaling_factor: float = 0.18215
    min_lambda: float = 0.8  # the UNet is fitted on bottleneck mixes with λ in [min_lambda, 1]; 0.5 cost 0.7 dB at λ ≈ 1


def _draw(count: int, fit: TinyFit, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of a seeded random batch of ``count`` items and which of them are mirrored."""
    index = torch.randint(0, count, (min(fit.batch_size, count),), generator=generator)
    return index, torch.rand(index.shape[0], generator=generator) < 0.5


def _optimise(params, fit: TinyFit, steps: int, loss_of: Callable[[], torch.Tensor],
              progress: Callable[[str, int, int], None] | None, stage: str) -> float:
    """AdamW under a one-cycle schedule (warm up, then anneal): the most reconstruction per step of a short fit."""
    loss = torch.zeros(())
    if steps == 0:
        return float(loss)
    optimizer = torch.optim.AdamW(params, lr=fit.lr, weight_decay=0.0)
    # at least 20 scheduled steps: the 10 % warm-up must span more than one step (OneCycleLR divides by it)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=fit.lr, total_steps=max(steps, 20), pct_start=0.1)
    for step in range(1, steps + 1):
        loss = loss_of()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if progress is not None:
            progress(stage, step, steps)
    return float(loss.detach())


def reconstruction_psnr(vae, faces: torch.Tensor) -> float:
    """Mean PSNR (dB) of encode → decode (posterior mean) over (N, 3, S, S) uint8 faces."""
    values = []
    with torch.no_grad():
        for chunk in faces.split(16):
            x = chunk.float() / 127.5 - 1
            y = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
            mse = ((y - x) / 2).square().mean((1, 2, 3)).clamp_min(1e-12)
            values += (10 * torch.log10(1 / mse)).tolist()
    return float(np.mean(values))


def fit_tiny_sd(faces: torch.Tensor, out: Path, fit: TinyFit | None = None,
                progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Fit the tiny VAE and UNet on ``faces`` ((N, 3, S, S) uint8, S = ``fit.size``) and write ``out``
    (``vae/``, ``unet/``, ``prompt.pt``, ``fit.json``) atomically; returns what ``fit.json`` holds."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    fit = fit or TinyFit()
    if faces.dim() != 4 or faces.shape[1:] != (3, fit.size, fit.size) or faces.dtype != torch.uint8:
        raise UsageError(f"tiny SD: faces must be (N, 3, {fit.size}, {fit.size}) uint8, got {tuple(faces.shape)} {faces.dtype}")
    if faces.shape[0] < 8:
        raise UsageError(f"tiny SD: {faces.shape[0]} faces are too few to fit a VAE; give at least 8")
    started = time.perf_counter()
    torch.manual_seed(fit.seed)
    generator = torch.Generator().manual_seed(fit.seed)
    vae = AutoencoderKL.from_config(VAE_CONFIG)
    with torch.no_grad():  # posterior σ ≈ 0.02 from the start: sampled latents carry the face from step 1
        vae.encoder.conv_out.bias[VAE_CONFIG["latent_channels"]:] = LOGVAR_INIT
    unet = UNet2DConditionModel.from_config(UNET_CONFIG)
    prompt = torch.randn(TINY_PROMPT_SHAPE, generator=generator)

    def vae_loss() -> torch.Tensor:
        index, flip = _draw(faces.shape[0], fit, generator)
        x = faces[index].float() / 127.5 - 1
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        posterior = vae.encode(x).latent_dist
        y = vae.decode(posterior.sample(generator)).sample
        return F.mse_loss(y, x) + 0.5 * F.l1_loss(y, x) + fit.kl_weight * posterior.kl().mean()

    vae_loss_end = _optimise(vae.parameters(), fit, fit.vae_steps, vae_loss, progress, "vae")
    vae.eval().requires_grad_(False)
    with torch.no_grad():  # the frozen encoder's moments of every face and its mirror, computed once
        x = faces.float() / 127.5 - 1
        r = torch.cat([vae_moments(vae, chunk) for chunk in torch.cat([x, x.flip(-1)]).split(32)])
    mean, std = r.mean((0, 2, 3), keepdim=True), r.std((0, 2, 3), keepdim=True).clamp_min(1e-2)
    ab = alpha_bar(_refiner_config(fit))

    def unet_loss() -> torch.Tensor:
        index, flip = _draw(faces.shape[0], fit, generator)
        with torch.no_grad():
            moments = r[index + flip.long() * faces.shape[0]]
            lam = fit.min_lambda + (1 - fit.min_lambda) * torch.rand(index.shape[0], 1, 1, 1, generator=generator)
            z = lam * moments + (1 - lam) * (mean + std * torch.randn(moments.shape, generator=generator))
            m, logvar = z.chunk(2, dim=1)
            latent = (m + torch.exp(0.5 * logvar.clamp(-30, 20)) * torch.randn(m.shape, generator=generator)) * fit.scaling_factor
            target = moments.chunk(2, dim=1)[0] * fit.scaling_factor
        return F.mse_loss(one_step_x0(unet, latent, fit.timestep, prompt, ab, "epsilon"), target)

    unet_loss_end = _optimise(unet.parameters(), fit, fit.unet_steps, unet_loss, progress, "unet")
    report = {"fit": dataclasses.asdict(fit), "faces": int(faces.shape[0]), "vae_loss": vae_loss_end, "unet_loss": unet_loss_end,
              "psnr_fit_faces": reconstruction_psnr(vae, faces), "seconds": time.perf_counter() - started}
    with atomic_dir(out) as temp:
        vae.save_pretrained(temp / "vae")
        unet.eval().save_pretrained(temp / "unet")
        torch.save(prompt, temp / "prompt.pt")
        (temp / FIT_NAME).write_text(json.dumps(report, indent=1) + "\n")
    return report


def _refiner_config(fit: TinyFit):
    from bfrboost.refiner.model import InfoBFRConfig

    return InfoBFRConfig(timestep=fit.timestep, scaling_factor=fit.scaling_factor)


def is_tiny_sd(folder: Path) -> bool:
    """A folder written by :func:`fit_tiny_sd` (all parts present)."""
    return all((folder / part).exists() for part in ("vae/config.json", "unet/config.json", "prompt.pt", FIT_NAME))


def read_fit(folder: Path) -> dict[str, Any]:
    return json.loads((folder / FIT_NAME).read_text())
