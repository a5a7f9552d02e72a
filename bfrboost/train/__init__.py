"""Training the InfoBFR refiner: degradation, HQ data, the cache of base outputs, losses, the loop.

Python API (everything ``bfrboost degrade`` / ``train cache`` / ``train`` do)::

    from bfrboost.train import CacheConfig, DegradeConfig, TrainConfig, build_training_cache, train
    from bfrboost.train.degrade import degrade
    lq = degrade(hq_uint8_rgb, seed, DegradeConfig())
    build_training_cache(Path("ffhq512"), Path("cache"), CacheConfig(bases=["gfpgan"]))
    refiner_dir = train(TrainConfig(out=Path("run"), cache=Path("cache"), steps=100_000))
"""

from __future__ import annotations

import importlib
from typing import Any

# Loaded on first use, so `bfrboost degrade` does not wait for torch, diffusers and lpips.
_EXPORTS = {
    "cache": ("CacheConfig", "CachedFaces", "build_cache"),
    "degrade": ("DegradeConfig", "DegradeParams", "apply_degradation", "file_seed", "sample_params"),  # degrade(): from .degrade
    "losses": ("InfoBFRLoss", "LossWeights", "build_lpips", "build_vgg19"),
    "loop": ("TrainConfig", "Trainer", "build_training_cache", "train"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'bfrboost.train' has no attribute {name!r}")
    return getattr(importlib.import_module(f"bfrboost.train.{_WHERE[name]}"), name)
