"""The IDDPM linear schedule, respaced, with the learned-range variance of the FFHQ-512 prior.

PGDiff samples the prior with ancestral DDPM steps (guided-diffusion's ``p_sample``) on the full
1000-step schedule by default; ``--steps N`` keeps N of the 1000 timesteps as guided-diffusion's
``SpacedDiffusion`` does (an integer stride when one gives exactly N steps, as upstream's
``ddpmN``; otherwise N evenly spaced timesteps) and recomputes the betas between kept steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bfrboost.errors import UsageError
from bfrboost.nets.iddpm import linear_alphas_cumprod

NUM_TIMESTEPS = 1000


def respaced_timesteps(steps: int, num_timesteps: int = NUM_TIMESTEPS) -> list[int]:
    """Original timesteps kept for ``steps`` sampling steps, ascending."""
    if not 1 <= steps <= num_timesteps:
        raise UsageError(f"steps must be in [1, {num_timesteps}], got {steps}")
    for stride in range(1, num_timesteps):
        if len(range(0, num_timesteps, stride)) == steps:
            return list(range(0, num_timesteps, stride))
    if steps == 1:
        return [0]
    frac = (num_timesteps - 1) / (steps - 1)
    return sorted({round(i * frac) for i in range(steps)})


@dataclass(frozen=True)
class Schedule:
    """Per-step constants of the respaced chain (index k = 0 … K-1, original timestep ``timesteps[k]``)."""

    timesteps: list[int]
    alphas_cumprod: list[float]
    betas: list[float]
    posterior_variance: list[float]
    posterior_log_variance: list[float]  # clipped at k = 0 as upstream
    mean_coef_x0: list[float]
    mean_coef_xt: list[float]

    @classmethod
    def respaced(cls, steps: int = NUM_TIMESTEPS) -> Schedule:
        timesteps = respaced_timesteps(steps)
        abar_all = linear_alphas_cumprod(NUM_TIMESTEPS)
        abar = [float(abar_all[t]) for t in timesteps]
        prev = [1.0] + abar[:-1]
        betas = [1 - a / p for a, p in zip(abar, prev)]
        post_var = [b * (1 - p) / (1 - a) for b, a, p in zip(betas, abar, prev)]
        first = post_var[1] if len(post_var) > 1 else betas[0]
        post_log = [math.log(first)] + [math.log(v) for v in post_var[1:]]
        coef_x0 = [b * math.sqrt(p) / (1 - a) for b, a, p in zip(betas, abar, prev)]
        coef_xt = [(1 - p) * math.sqrt(1 - b) / (1 - a) for b, a, p in zip(betas, abar, prev)]
        return cls(timesteps, abar, betas, post_var, post_log, coef_x0, coef_xt)

    def __len__(self) -> int:
        return len(self.timesteps)

    def predict_x0(self, k: int, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod[k]
        return x * math.sqrt(1 / a) - eps * math.sqrt(1 / a - 1)

    def posterior_mean(self, k: int, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.mean_coef_x0[k] * x0 + self.mean_coef_xt[k] * x

    def learned_log_variance(self, k: int, values: torch.Tensor) -> torch.Tensor:
        """IDDPM's learned range: ``values`` in [-1, 1] interpolate between the posterior and β (log)."""
        frac = (values + 1) / 2
        return frac * math.log(self.betas[k]) + (1 - frac) * self.posterior_log_variance[k]
