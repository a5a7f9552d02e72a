"""The guided reverse diffusion: ancestral IDDPM steps moved against the gradient of the properties.

At every step the prior predicts ε (and its learned variance) from x_t, giving x̂₀ and the posterior
mean μ and variance Σ. The gradient g = ∇ₓ̂₀ Σ wᵢ·Lᵢ(x̂₀) (taken at x̂₀, no gradient through the UNet,
as the public code does) moves the sample by one of two rules:

- ``mean`` (restoration, reference identity): μ ← μ − s·Σ·g, then x_{t−1} = μ + √Σ·z;
- ``dynamic`` (colourisation, inpainting, old photos): x_{t−1} = μ + √Σ·z, then
  x_{t−1} ← x_{t−1} − s·(‖x_t − x_{t−1}‖ / ‖g‖)·g, the norms per image (and per channel when
  ``per_channel``), so s is a fraction of the step the sampler takes anyway.

A ``mask`` (1 = missing pixels) zeroes the gradient there. With ``repeats`` N > 1, timesteps in the
early window t ∈ (``repeat_from``·T, T] are taken N times (the sample is fed back at the same t), as
PGDiff's multiple gradient steps. Noise comes from CPU generators seeded with ``seed``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from bfrboost.errors import UsageError
from bfrboost.guidance.properties import Property, Step, guidance_gradient
from bfrboost.guidance.schedule import NUM_TIMESTEPS, Schedule

UPDATES = ("mean", "dynamic")


@dataclass
class Guidance:
    """The properties (weight, property), how they move the sample, and where."""

    terms: list[tuple[float, Property]] = field(default_factory=list)
    update: str = "mean"
    scale: float = 0.1
    per_channel: bool = False
    mask: torch.Tensor | None = None  # (B, 1, H, W), 1 = gradient zeroed (pixels to fill)
    repeats: int = 1
    repeat_from: float = 0.7  # repeats apply for t in (repeat_from·T, T]

    def __post_init__(self) -> None:
        if self.update not in UPDATES:
            raise UsageError(f"unknown update rule {self.update!r}; use mean or dynamic")
        if self.repeats < 1:
            raise UsageError(f"gradient steps per timestep must be >= 1, got {self.repeats}")
        if not 0.0 <= self.repeat_from <= 1.0:
            raise UsageError(f"the start of the repeat window must be in [0, 1], got {self.repeat_from}")


def _norm(x: torch.Tensor, per_channel: bool) -> torch.Tensor:
    dims = (2, 3) if per_channel else (1, 2, 3)
    return torch.linalg.vector_norm(x.float(), dim=dims, keepdim=True)


def dynamic_update(x_t: torch.Tensor, sample: torch.Tensor, grad: torch.Tensor, scale: float, per_channel: bool) -> torch.Tensor:
    """x_{t−1} − s·(‖x_t − x_{t−1}‖ / ‖g‖)·g; images (or channels) whose gradient is zero are left alone."""
    g_norm = _norm(grad, per_channel)
    coef = torch.where(g_norm > 0, _norm(x_t - sample, per_channel) / g_norm.clamp_min(1e-12), torch.zeros_like(g_norm))
    return sample - scale * coef.to(grad) * grad


@torch.no_grad()
def guided_step(
    prior: nn.Module, schedule: Schedule, k: int, x: torch.Tensor, guidance: Guidance, noise: torch.Tensor,
    log: Callable[[int, dict[str, float]], None] | None = None,
) -> torch.Tensor:
    """One reverse step at index ``k`` of ``schedule``: x_t → guided x_{t−1}."""
    t = schedule.timesteps[k]
    out = prior(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)).float()
    channels = x.shape[1]
    eps, values = out[:, :channels], out[:, channels:]
    x0 = schedule.predict_x0(k, x, eps).clamp(-1, 1)
    mean = schedule.posterior_mean(k, x0, x)
    log_var = (
        schedule.learned_log_variance(k, values)
        if values.shape[1] == channels
        else torch.full_like(x, schedule.posterior_log_variance[k])
    )
    grad, losses = guidance_gradient(x0, guidance.terms, Step(x_t=x, t=t))
    if log is not None:
        log(t, losses)
    if guidance.mask is not None:
        grad = grad * (1 - guidance.mask)
    spread = torch.exp(0.5 * log_var) * noise if k > 0 else 0.0
    if guidance.update == "mean":
        return mean - guidance.scale * torch.exp(log_var) * grad + spread
    return dynamic_update(x, mean + spread, grad, guidance.scale, guidance.per_channel)


@torch.no_grad()
def sample(
    prior: nn.Module,
    shape: Sequence[int],
    guidance: Guidance,
    *,
    steps: int = NUM_TIMESTEPS,
    seed: int = 1234,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    on_step: Callable[[int, int], None] | None = None,
    log: Callable[[int, dict[str, float]], None] | None = None,
) -> torch.Tensor:
    """A guided sample of ``shape`` (B, 3, H, W) in [-1, 1]; ``on_step(done, total)`` reports progress.

    Each image draws its noise from its own generator seeded with ``seed``, so a face comes out the
    same whatever else shares its batch.
    """
    schedule = Schedule.respaced(steps)
    generators = [torch.Generator().manual_seed(seed) for _ in range(shape[0])]

    def noise() -> torch.Tensor:
        return torch.stack([torch.randn(tuple(shape[1:]), generator=g) for g in generators]).to(device=device, dtype=dtype)

    x = noise()
    threshold = guidance.repeat_from * NUM_TIMESTEPS
    plan = [(k, guidance.repeats if schedule.timesteps[k] > threshold else 1) for k in reversed(range(len(schedule)))]
    total = sum(r for _, r in plan)
    done = 0
    for k, repeats in plan:
        for _ in range(repeats):
            x = guided_step(prior, schedule, k, x, guidance, noise(), log=log)
            done += 1
            if on_step is not None:
                on_step(done, total)
    return x.clamp(-1, 1)
