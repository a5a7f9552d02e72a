"""A tiny IDDPM prior (the real architecture class, 64 px, random weights) shared by the guidance tests.

The released prior (160 M parameters, 1000 UNet passes at 512 px per face) cannot run in CPU tests;
the same code runs on this reduced configuration, and the official key names are checked separately.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bfrboost.guidance import tasks
from bfrboost.guidance.tasks import TINY_PRIOR_CONFIG as TINY_PRIOR
from bfrboost.nets.iddpm import IDDPMUNet
from bfrboost.nets.rrdb import TINY_RRDB_CONFIG as TINY_RRDB

__all__ = ["TINY_PRIOR", "TINY_RRDB", "load_rgb", "to_batch"]


def random_prior_state(seed: int = 1) -> dict[str, torch.Tensor]:
    return tasks.tiny_prior(seed).state_dict()


@pytest.fixture(scope="session")
def tiny_prior() -> IDDPMUNet:
    return tasks.tiny_prior(1)


@pytest.fixture(scope="session")
def prior_file(tmp_path_factory) -> Path:
    """The tiny prior saved like the official file (DataParallel ``module.`` prefix)."""
    path = tmp_path_factory.mktemp("prior") / "iddpm_ffhq512_ema500000.pth"
    torch.save({f"module.{k}": v for k, v in random_prior_state().items()}, path)
    return path


def load_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def to_batch(*images: np.ndarray, size: int = 64) -> torch.Tensor:
    """uint8 RGB images → (B, 3, size, size) float in [0, 1]."""
    out = []
    for image in images:
        pil = Image.fromarray(image).resize((size, size), Image.Resampling.BOX)
        out.append(torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1).float() / 255)
    return torch.stack(out)
