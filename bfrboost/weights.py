"""Weights: manifest (model cards), cache, verification, offline mode, safe loading.

SKELETON — the weights helper replaces this with the full manager. The public API below is the
contract other modules rely on:

- ``home() -> Path``: cache directory (``BFRBOOST_HOME`` or the platform user cache dir).
- ``ensure(file_name, offline=None) -> Path``: path of a verified cached file; downloads it when
  missing (unless offline) and raises ``WeightsError`` with one line saying what to put where.
- ``load_state_dict(path) -> dict[str, Tensor]``: safe load (``weights_only=True`` or
  safetensors), unwrapping ``params_ema`` / ``params`` / ``state_dict`` / ``g_ema``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from platformdirs import user_cache_dir

from bfrboost.errors import WeightsError

_WRAPPERS = ("params_ema", "params", "state_dict", "g_ema")


def home() -> Path:
    return Path(os.environ.get("BFRBOOST_HOME") or user_cache_dir("bfrboost"))


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle needing code execution, corrupt file, ...
            raise WeightsError(f"{path}: refused to load ({type(exc).__name__}); only tensor-only checkpoints are accepted") from None
    for key in _WRAPPERS:
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    return dict(sd)
