"""PGDiff's own smooth-semantics restorer (``rrdb_iter_100000.pth``): a time-conditioned RRDB net.

Real-ESRGAN's ×1 generator (pixel-unshuffle ×4, 23 RRDB blocks of 64 channels, growth 32, two
nearest ×2 upsampling convs) whose input is 9 channels: the current sample x_t, the degraded face y
and a 3-channel embedding of the timestep (sinusoidal 100-d → Linear → SiLU → Linear, broadcast over
the image). Key names as the released checkpoint: ``generator.conv_first``, ``generator.body.N.rdbK.convJ``,
``generator.conv_body``, ``generator.conv_up1/2``, ``generator.conv_hr``, ``generator.conv_last``,
``time_embed.0/2``. Everything in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bfrboost import weights
from bfrboost.backbones.spec import CheckpointMismatch, build_strict
from bfrboost.errors import WeightsError
from bfrboost.nets.iddpm import timestep_embedding

RRDB_FILE = "rrdb_iter_100000.pth"


@dataclass(frozen=True)
class RRDBConfig:
    in_channels: int = 9
    out_channels: int = 3
    mid_channels: int = 64
    num_blocks: int = 23
    growth_channels: int = 32
    time_channels: int = 3
    time_embedding_dim: int = 100


class DenseBlock(nn.Module):
    def __init__(self, mid: int, growth: int) -> None:
        super().__init__()
        for i in range(5):
            setattr(self, f"conv{i + 1}", nn.Conv2d(mid + i * growth, mid if i == 4 else growth, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for i in range(1, 5):
            features.append(F.leaky_relu(getattr(self, f"conv{i}")(torch.cat(features, 1)), 0.2))
        return self.conv5(torch.cat(features, 1)) * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, mid: int, growth: int) -> None:
        super().__init__()
        self.rdb1, self.rdb2, self.rdb3 = (DenseBlock(mid, growth) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class Generator(nn.Module):
    """RRDBNet at scale 1: pixel-unshuffle ×4 in, two ×2 upsamplings out."""

    def __init__(self, cfg: RRDBConfig) -> None:
        super().__init__()
        mid = cfg.mid_channels
        self.conv_first = nn.Conv2d(cfg.in_channels * 16, mid, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(mid, cfg.growth_channels) for _ in range(cfg.num_blocks)))
        self.conv_body = nn.Conv2d(mid, mid, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(mid, mid, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(mid, mid, 3, 1, 1)
        self.conv_hr = nn.Conv2d(mid, mid, 3, 1, 1)
        self.conv_last = nn.Conv2d(mid, cfg.out_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first(F.pixel_unshuffle(x, 4))
        feat = feat + self.conv_body(self.body(feat))
        for conv in (self.conv_up1, self.conv_up2):
            feat = F.leaky_relu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))


class TimeRRDB(nn.Module):
    """(x_t, y, t) → smooth-semantics estimate of the clean face, all in [-1, 1]."""

    def __init__(self, cfg: RRDBConfig = RRDBConfig()) -> None:
        super().__init__()
        self.config = cfg
        self.generator = Generator(cfg)
        self.time_embed = nn.Sequential(
            nn.Linear(cfg.time_embedding_dim, cfg.time_channels), nn.SiLU(), nn.Linear(cfg.time_channels, cfg.time_channels)
        )

    def forward(self, x_t: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.config.time_embedding_dim).to(x_t.dtype))
        emb = emb[:, :, None, None].expand(-1, -1, *x_t.shape[2:])
        return self.generator(torch.cat([x_t, y, emb], dim=1))


#: The architecture :func:`build` and :func:`load` use by default (the released configuration).
RRDB_CONFIG = RRDBConfig()
#: ``--tiny``: a one-block, 8-channel restorer with random weights (no download).
TINY_RRDB_CONFIG = RRDBConfig(mid_channels=8, num_blocks=1, growth_channels=4)


def build(state_dict: Mapping[str, torch.Tensor] | None = None, config: RRDBConfig | None = None) -> TimeRRDB:
    """The restorer randomly initialised, or with the released checkpoint's tensors loaded strictly."""
    cfg = config or RRDB_CONFIG
    return build_strict(lambda: TimeRRDB(cfg), state_dict).eval().requires_grad_(False)


#: Training wrappers the released file (or a re-saved copy) may nest the state dict in, by preference.
WRAPPERS = ("params_ema", "params", "state_dict")
#: A copy of the generator kept by some trainers; used only when the plain ``generator.*`` is absent.
EMA_PREFIX = "generator_ema."


def unwrap_tolerant(checkpoint: Any, expected: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The tensors of ``checkpoint`` that ``expected`` names, and the keys left out (wrapper siblings such as
    ``meta``/``optimizer``/``iter``, an EMA copy, a discriminator, counters).

    Upstream loads this file with ``strict=False``; we keep the strictness that matters (every expected
    key present with its shape, checked by the caller) and name what was ignored instead of dropping
    it silently.
    """
    ignored: list[str] = []
    while isinstance(checkpoint, dict):
        wrapper = next((k for k in WRAPPERS if isinstance(checkpoint.get(k), dict)), None)
        if wrapper is None:
            break
        ignored += [str(k) for k in checkpoint if k != wrapper]
        checkpoint = checkpoint[wrapper]
    if not isinstance(checkpoint, dict):
        raise CheckpointMismatch(f"holds a {type(checkpoint).__name__}, not a state dict")
    state = {str(k)[len("module.") :] if str(k).startswith("module.") else str(k): v for k, v in checkpoint.items()}
    if not any(k.startswith("generator.") for k in state) and any(k.startswith(EMA_PREFIX) for k in state):
        state = {("generator." + k[len(EMA_PREFIX) :] if k.startswith(EMA_PREFIX) else k): v for k, v in state.items()}
    kept = {k: v for k, v in state.items() if k in expected and isinstance(v, torch.Tensor)}
    ignored += [k for k in state if k not in kept]
    return kept, ignored


def describe_ignored(keys: list[str], limit: int = 4) -> str:
    """``a, b, c, d and 12 more`` — the keys a tolerant load left out, for a note."""
    groups = sorted({k.split(".")[0] + (".*" if "." in k else "") for k in keys})
    shown = ", ".join(groups[:limit])
    return shown + (f" and {len(groups) - limit} more" if len(groups) > limit else "")


def load(path: str | Path, notes: list[str] | None = None) -> TimeRRDB:
    """The restorer from a checkpoint file (tensor-only ``.pth`` or safetensors, wrapped or not).

    Every key of the restorer must be present with its shape; anything else in the file (training
    wrappers, counters, an EMA or discriminator copy) is ignored and named in ``notes``.
    """
    with torch.device("meta"):
        expected = TimeRRDB(RRDB_CONFIG).state_dict()
    try:
        state, ignored = unwrap_tolerant(weights.load_checkpoint(path), expected)
        net = build(state)
    except (CheckpointMismatch, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0]
        raise WeightsError(
            f"{path}: not PGDiff's RRDB restorer ({reason}); use {RRDB_FILE} from `bfrboost weights download pgdiff`"
        ) from None
    if ignored and notes is not None:
        entries = "entry" if len(ignored) == 1 else "entries"
        notes.append(f"{path}: ignored {len(ignored)} {entries} that are not the restorer's: {describe_ignored(ignored)}")
    return net
