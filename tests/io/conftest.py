"""Seeded images shared by the io tests."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def blocks(rng: np.random.Generator) -> np.ndarray:
    """A 48×64 RGB image of flat 8×8 blocks: survives JPEG well and shows any rotation or flip."""
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return np.ascontiguousarray(np.repeat(np.repeat(small, 8, axis=0), 8, axis=1))
