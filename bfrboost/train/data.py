"""High-quality training faces: the folder, a fixed seeded validation split, loading, flips, batch order.

Any folder of aligned 512 faces works (FFHQ-512, or ``bfrboost restore --save-faces`` output). The
split and the order of every epoch depend only on the seed, so a resumed run sees exactly the
batches an uninterrupted one would.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from bfrboost.errors import InputError
from bfrboost.io.inputs import scan_folder


def list_hq_faces(folder: Path) -> list[Path]:
    """Aligned faces under ``folder`` (recursive, sorted); an empty or missing folder is one line."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(
            f"{folder}: no such folder of high-quality aligned faces; "
            "pass --data FFHQ_DIR (or faces from `bfrboost restore --save-faces`)"
        )
    paths = scan_folder(folder)
    if not paths:
        raise InputError(
            f"{folder}: no images found; --data needs aligned 512 faces (FFHQ-512 layout, or `bfrboost restore --save-faces`)"
        )
    return paths


def split_faces(paths: Sequence[Path], val_count: int, seed: int) -> tuple[list[Path], list[Path]]:
    """(train, val): ``val_count`` faces chosen by ``seed``, the same on every run over the same folder."""
    if val_count < 0 or val_count >= len(paths):
        raise InputError(
            f"need more faces than the validation split ({len(paths)} found, --val-count {val_count}); "
            "add faces or lower --val-count"
        )
    order = np.random.default_rng(seed).permutation(len(paths))
    val = sorted(int(i) for i in order[:val_count])
    chosen = set(val)
    return [p for i, p in enumerate(paths) if i not in chosen], [paths[i] for i in val]


@functools.lru_cache(maxsize=4)
def epoch_order(count: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of one epoch: a permutation fixed by (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(count)


def batch_indices(count: int, batch: int, seed: int, position: int) -> tuple[list[int], int]:
    """Sample indices of the batch starting at global sample ``position``; returns them and the next position.

    Positions run through consecutive epochs, each in its own seeded order, so the data position
    (one integer) is all a checkpoint needs to continue exactly.
    """
    out = []
    while len(out) < batch:
        epoch, offset = divmod(position, count)
        out.append(int(epoch_order(count, seed, epoch)[offset]))
        position += 1
    return out, position


def flip_mask(batch: int, generator: torch.Generator) -> torch.Tensor:
    """Which samples of a batch are mirrored (p = 0.5), drawn from the step's generator."""
    return torch.rand(batch, generator=generator) < 0.5


def apply_flips(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror the samples of (B, C, H, W) ``x`` selected by ``mask`` horizontally."""
    return torch.where(mask.view(-1, 1, 1, 1).to(x.device), x.flip(-1), x)
