"""PGDiff's tasks as compositions of properties, and :class:`PGDiff`, which runs them on aligned crops.

| task | properties (default weight) | update | default s |
|---|---|---|---|
| ``restore`` | smooth semantics (1) [+ identity (5e3 ``mse`` / 1e4 ``cos``)] | mean shift | 0.1 |
| ``colorize`` | lightness of the input (1) + colour statistics (0.05) | dynamic, per channel | 0.01 |
| ``inpaint`` | unmasked region (1), gradient zeroed in the mask | dynamic | 0.01 |
| ``old-photo`` | restorer lightness off the mask (1) + colour statistics (0.5), mask gradient 0 | dynamic, per channel | 0.002 |

Defaults are the public code's (``inference_pgdiff.py``); its README gives s ∈ [0.05, 0.1] for
restoration and s ∈ [0.0015, 0.005] for old photos.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bfrboost import weights
from bfrboost.backbones.spec import CheckpointMismatch, build_strict
from bfrboost.errors import UsageError, WeightsError
from bfrboost.guidance.properties import (
    ColorStats,
    Identity,
    Lightness,
    SmoothSemantics,
    Unmasked,
)
from bfrboost.guidance.sampler import Guidance, sample
from bfrboost.nets.iddpm import PRIOR_FILE, IDDPMUNet, UNetConfig
from bfrboost.options import GUIDED_TASKS, GuidanceOptions


def make_guidance(
    task: str,
    options: GuidanceOptions,
    y: torch.Tensor,
    *,
    target: torch.Tensor | None = None,
    restorer: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    mask: torch.Tensor | None = None,
    identity: tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor] | None = None,
    identity_faces: torch.Tensor | None = None,
) -> Guidance:
    """The properties of ``task`` for inputs ``y`` (all (B, C, H, W) in [-1, 1], mask 1 = missing);
    ``identity_faces`` (B,) 1 for the faces the identity guides (default: all)."""
    if task not in GUIDED_TASKS:
        raise UsageError(f"unknown guided task {task!r}; use one of {', '.join(GUIDED_TASKS)}")
    o = options
    color = ColorStats(mean=o.color_mean, std=o.color_std)
    common = dict(scale=o.scale_for(task), repeats=o.repeats, repeat_from=o.repeat_from)
    if task in ("restore", "old-photo") and target is None and restorer is None:
        raise UsageError(f"task {task!r} needs a smooth-semantics restorer (a --guide)")
    semantics = SmoothSemantics(target=target, restorer=restorer)
    if task == "restore":
        terms = [(o.ss_weight, semantics)]
        if identity is not None:
            identity_term = Identity(embed=identity[0], reference=identity[1], kind=o.ref_loss, faces=identity_faces)
            terms.append((o.identity_weight, identity_term))
        return Guidance(terms=terms, update="mean", **common)
    if identity is not None:
        raise UsageError("a reference identity guides restoration only; use `bfrboost restore --base pgdiff --reference REF`")
    if task == "colorize":
        terms = [(o.lightness_weight, Lightness(y)), (o.color_weight, color)]
        return Guidance(terms=terms, update="dynamic", per_channel=True, **common)
    if mask is None:
        mask = torch.zeros_like(y[:, :1])
    if task == "inpaint":
        return Guidance(terms=[(o.unmasked_weight, Unmasked(y, mask))], update="dynamic", mask=mask, **common)
    return Guidance(
        terms=[(o.op_lightness_weight, Lightness(semantics, mask)), (o.op_color_weight, color)],
        update="dynamic", per_channel=True, mask=mask, **common,
    )


def load_prior(path: str | Path | None = None, config: UNetConfig | None = None) -> IDDPMUNet:
    """The FFHQ-512 IDDPM prior (DifFace's ``iddpm_ffhq512_ema500000.pth``, or a checkpoint in its format)."""
    config = config or PRIOR_CONFIG
    path = Path(path) if path is not None else weights.ensure(PRIOR_FILE)
    state = weights.load_state_dict(path)
    try:
        prior = build_strict(lambda: IDDPMUNet(config), state)
    except (CheckpointMismatch, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0]
        raise WeightsError(
            f"{path}: not an IDDPM FFHQ-512 prior ({reason}); use {PRIOR_FILE} from `bfrboost weights download difface`"
        ) from None
    return prior.eval().requires_grad_(False)


#: The architecture ``load_prior`` builds by default (DifFace's released configuration).
PRIOR_CONFIG = UNetConfig()
#: ``--tiny``: the same architecture class at 64 px with seeded random weights (no download), to try
#: every guided command in seconds; its faces are noise-like, not restorations.
TINY_PRIOR_CONFIG = UNetConfig(
    image_size=64, channel_mult=(1, 1, 2), num_res_blocks=(1, 1, 1), attention_resolutions=(16,), num_head_channels=32
)


def tiny_prior(seed: int = 1) -> IDDPMUNet:
    """The ``--tiny`` demo prior: :data:`TINY_PRIOR_CONFIG` with weights drawn N(0, 0.1²) from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    net = IDDPMUNet(TINY_PRIOR_CONFIG)
    with torch.no_grad():
        for tensor in net.state_dict().values():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
    return net.eval().requires_grad_(False)


def _resize(x: torch.Tensor, size: int, mode: str = "bicubic") -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    if mode == "area":
        return F.interpolate(x, size=(size, size), mode="area")
    return F.interpolate(x, size=(size, size), mode=mode, antialias=True, align_corners=False)


class PGDiff(nn.Module):
    """The prior and the optional networks guidance uses (PGDiff's RRDB restorer, an ArcFace)."""

    def __init__(self, prior: IDDPMUNet, rrdb: nn.Module | None = None, arcface: Any = None) -> None:
        super().__init__()
        self.prior = prior
        self.rrdb = rrdb
        self.arcface = arcface

    @property
    def size(self) -> int:
        return self.prior.config.image_size

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised ArcFace embeddings of [0, 1] face crops (the reference identity)."""
        if self.arcface is None:
            raise UsageError("identity guidance needs an ArcFace model; none is loaded")
        with torch.no_grad():
            return self.arcface.embed(images)

    def forward(
        self,
        task: str,
        crops: torch.Tensor,
        options: GuidanceOptions | None = None,
        *,
        targets: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        reference: torch.Tensor | None = None,
        reference_faces: torch.Tensor | None = None,
        on_step: Callable[[int, int], None] | None = None,
        log: Callable[[int, Mapping[str, float]], None] | None = None,
    ) -> torch.Tensor:
        """Guided restoration of ``crops`` (B, 3, S, S) in [0, 1] → same shape in [0, 1].

        ``targets``: a restorer's outputs for the crops ([0, 1], the smooth-semantics target) unless
        the RRDB restorer is loaded; ``masks``: (B, 1, S, S), 1 = fill; ``reference``: ArcFace
        embedding(s) of the reference identity, (1 or B, D); ``reference_faces``: (B,) 1 for the crops
        the identity guides, 0 for the others (default: all).
        """
        options = options or GuidanceOptions()
        device, size = crops.device, self.size
        height, width = crops.shape[-2:]
        y = _resize(crops.float(), size) * 2 - 1
        target = None if targets is None else (_resize(targets.float(), size) * 2 - 1).clamp(-1, 1)
        mask = None if masks is None else (_resize(masks.float(), size, mode="area") > 0).float()
        restorer = None
        if target is None and self.rrdb is not None:
            rrdb = self.rrdb

            def restorer(x_t: torch.Tensor, t: int) -> torch.Tensor:
                return rrdb(x_t, y, torch.full((x_t.shape[0],), t, device=device, dtype=torch.long))

        identity = (self.arcface.embed, reference) if reference is not None else None
        if identity is not None and self.arcface is None:
            raise UsageError("identity guidance needs an ArcFace model; none is loaded")
        guidance = make_guidance(
            task, options, y, target=target, restorer=restorer, mask=mask, identity=identity, identity_faces=reference_faces
        )
        out = sample(
            self.prior, y.shape, guidance, steps=options.steps, seed=options.seed, device=device, on_step=on_step, log=log
        )
        out = (out + 1) / 2
        if (height, width) != (size, size):
            out = F.interpolate(out, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
        return out.clamp(0, 1)
