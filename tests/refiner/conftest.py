"""A tiny random self-contained refiner, written once per session and loaded fresh by each test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bfrboost.refiner import InfoBFR, init_tiny


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tiny_refiner")
    init_tiny(directory, seed=0)
    return directory


@pytest.fixture
def tiny(tiny_dir) -> InfoBFR:
    """Unfused, eval mode."""
    return InfoBFR.from_pretrained(tiny_dir, fuse_lora=False)


@pytest.fixture
def faces() -> torch.Tensor:
    """Two seeded 64×64 'images' in [-1, 1] (smooth, so the VAE sees structure, not only noise)."""
    g = torch.Generator().manual_seed(0)
    low = torch.rand(2, 3, 8, 8, generator=g)
    return torch.nn.functional.interpolate(low, size=64, mode="bilinear", align_corners=False) * 2 - 1


def randomize_trainables(model: InfoBFR, seed: int = 1, scale: float = 0.05) -> None:
    """Give LoRA B, the λ head and the Transformer non-trivial values (they start at no-op values)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
