"""Partial-guidance properties: each a small differentiable loss of the predicted clean face x̂₀.

PGDiff does not model the degradation. It asks that x̂₀ (RGB in [-1, 1], at the prior's size) has
properties a good output must have, each measured by a simple "classifier" and compared to a target
(losses are summed over pixels, ``reduction='sum'``, as the public code does):

| property | classifier of x̂₀ | target |
|---|---|---|
| smooth semantics | identity | a restorer's output for the input |
| lightness | channel mean (gray) | the input's (or the restorer's) gray |
| colour statistics | AdaIN to per-channel mean/std | x̂₀ itself, re-normalised (self-referential) |
| unmasked region | pixels outside the mask | the input's pixels |
| identity | ArcFace embedding at 112 px | the reference's embedding |

Several properties compose by a weighted sum (:func:`guidance_gradient`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from bfrboost.options import CELEBA_HQ_COLOR_MEAN, CELEBA_HQ_COLOR_STD


def gray(x: torch.Tensor) -> torch.Tensor:
    """Lightness as PGDiff measures it: the mean of the RGB channels, kept as 3 equal channels."""
    return x.mean(dim=1, keepdim=True).expand_as(x)


def channel_stats(x: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel mean and (unbiased) std, shapes (B, C, 1, 1)."""
    flat = x.flatten(2)
    return flat.mean(dim=2)[..., None, None], (flat.var(dim=2) + eps).sqrt()[..., None, None]


def color_stats_of(images: Sequence[torch.Tensor]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Average per-channel mean and std of reference images (each (3, H, W) or (B, 3, H, W) in [-1, 1])."""
    batch = torch.cat([im if im.ndim == 4 else im[None] for im in images]).float()
    mean, std = channel_stats(batch)
    return tuple(mean.mean(0).flatten().tolist()), tuple(std.mean(0).flatten().tolist())


@dataclass
class Step:
    """What a property may look at besides x̂₀: the current sample and its original timestep."""

    x_t: torch.Tensor
    t: int


class Property:
    """One guidance term: ``loss(x0, step)`` is a scalar differentiable in ``x0``."""

    name = "property"

    def loss(self, x0: torch.Tensor, step: Step) -> torch.Tensor:
        raise NotImplementedError


@dataclass
class SmoothSemantics(Property):
    """‖x̂₀ − restorer output‖²: a fixed target, or one recomputed from (x_t, t) once per timestep."""

    target: torch.Tensor | None = None
    restorer: Callable[[torch.Tensor, int], torch.Tensor] | None = None
    name: str = "smooth_semantics"
    _cache: tuple[int, torch.Tensor] | None = field(default=None, repr=False)

    def target_at(self, step: Step) -> torch.Tensor:
        if self.restorer is None:
            assert self.target is not None
            return self.target
        if self._cache is None or self._cache[0] != step.t:
            with torch.no_grad():
                self._cache = (step.t, self.restorer(step.x_t, step.t).clamp(-1, 1))
        return self._cache[1]

    def loss(self, x0: torch.Tensor, step: Step) -> torch.Tensor:
        return F.mse_loss(x0, self.target_at(step), reduction="sum")


@dataclass
class Lightness(Property):
    """‖gray(x̂₀) − gray(target)‖² outside ``mask`` (1 = ignore); the target may be a restorer's output."""

    target: torch.Tensor | SmoothSemantics
    mask: torch.Tensor | None = None
    name: str = "lightness"

    def loss(self, x0: torch.Tensor, step: Step) -> torch.Tensor:
        target = self.target.target_at(step) if isinstance(self.target, SmoothSemantics) else self.target
        diff = gray(x0) - gray(target)
        if self.mask is not None:
            diff = diff * (1 - self.mask)
        return diff.pow(2).sum()


@dataclass
class ColorStats(Property):
    """‖x̂₀ − AdaIN(x̂₀; mean, std)‖²: pulls x̂₀'s per-channel statistics towards the target ones."""

    mean: Sequence[float] = CELEBA_HQ_COLOR_MEAN
    std: Sequence[float] = CELEBA_HQ_COLOR_STD
    name: str = "color"

    def loss(self, x0: torch.Tensor, step: Step) -> torch.Tensor:
        mean, std = channel_stats(x0)
        style_mean = torch.tensor(self.mean, dtype=x0.dtype, device=x0.device).reshape(1, -1, 1, 1)
        style_std = torch.tensor(self.std, dtype=x0.dtype, device=x0.device).reshape(1, -1, 1, 1)
        adain = ((x0 - mean) / std * style_std + style_mean).clamp(-1, 1)
        return F.mse_loss(x0, adain, reduction="sum")


@dataclass
class Unmasked(Property):
    """‖x̂₀ − y‖² on the known pixels (``mask`` 1 = missing, excluded)."""

    y: torch.Tensor
    mask: torch.Tensor
    name: str = "unmasked"

    def loss(self, x0: torch.Tensor, step: Step) -> torch.Tensor:
        return ((x0 - self.y) * (1 - self.mask)).pow(2).sum()


@dataclass
class Identity(Property):
    """ArcFace distance between x̂₀ and the reference: squared L2 (``mse``) or −cosine.

    ``embed`` (e.g. :meth:`bfrboost.nets.arcface.ArcFace.embed`) takes [0, 1] crops and resizes them to
    its 112 px input itself, as PGDiff resizes x̂₀ before its ArcFace.
    """

    embed: Callable[[torch.Tensor], torch.Tensor]  # [0, 1] images (B, 3, H, W) → (B, D)
    reference: torch.Tensor  # (1 or B, D)
    kind: str = "mse"
    faces: torch.Tensor | None = None  # (B,): 1 = guide this image's identity, 0 = leave it alone
    name: str = "identity"

    def loss(self, x0: torch.Tensor, step: Step) -> torch.Tensor:
        emb = self.embed((x0 + 1) / 2)
        ref = self.reference.to(emb).expand_as(emb)
        if self.kind == "cos":
            per_face = -F.cosine_similarity(emb, ref, dim=1)
        else:
            per_face = (emb - ref).pow(2).sum(dim=1)
        if self.faces is not None:
            per_face = per_face * self.faces.to(per_face)
        return per_face.sum()


def guidance_gradient(
    x0: torch.Tensor, terms: Sequence[tuple[float, Property]], step: Step
) -> tuple[torch.Tensor, dict[str, float]]:
    """∇ of Σ wᵢ·Lᵢ(x̂₀) with respect to x̂₀ (no gradient through the prior), and each weighted loss."""
    with torch.enable_grad():
        x0 = x0.detach().requires_grad_(True)
        total = x0.new_zeros(())
        losses: dict[str, float] = {}
        for weight, prop in terms:
            if weight == 0:
                continue
            value = weight * prop.loss(x0, step)
            losses[prop.name] = losses.get(prop.name, 0.0) + float(value.detach())
            total = total + value
        if not total.requires_grad:
            return torch.zeros_like(x0), losses
        (grad,) = torch.autograd.grad(total, x0)
    return grad, losses
