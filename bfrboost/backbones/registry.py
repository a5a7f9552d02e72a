"""Base restorers by name: a name maps to a small descriptor, nothing magic.

Each base model lives in its own module (``gfpgan.py``, ``codeformer.py``, …) that defines one or
more ``BaseSpec`` objects; this file lists them. Adding a base model = one new module + one line in
``_SPECS``.

Contract for every adapter:
- ``spec.build(state_dict)`` returns an ``nn.Module`` (official architecture config) whose
  ``load_state_dict(strict=True)`` succeeded on the official checkpoint's (unwrapped) state dict;
  ``spec.build(None)`` returns the same architecture randomly initialised (tests, benchmarks);
- ``spec.forward(net, x, **knobs)`` takes RGB crops ``x`` as float32 in [0, 1], shape
  (B, 3, 512, 512), and returns restored crops of the same shape in [0, 1]. Any
  model-specific normalisation (e.g. mean 0.5 / std 0.5) happens inside ``forward``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class BaseSpec:
    """What the registry knows about one base model (one CLI name)."""

    name: str  # CLI name, e.g. "gfpgan"
    display_name: str  # e.g. "GFPGAN v1.4"
    card: str  # model card stem: backbones/<card>.toml
    weight_file: str  # file name (as listed in the card) of the main checkpoint
    build: Callable[[Mapping[str, torch.Tensor] | None], nn.Module]
    forward: Callable[..., torch.Tensor]
    knobs: Mapping[str, Any] = field(default_factory=dict)  # knob name -> default
    input_size: int = 512
