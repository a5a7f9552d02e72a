"""``none``: no base restorer. Faces are only aligned, (optionally) refined and pasted back."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from bfrboost.backbones.spec import BaseSpec


def build(state_dict: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    return nn.Identity()


def forward(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x


SPECS = [BaseSpec(name="none", display_name="none (no base restorer)", card="", weight_file="", build=build, forward=forward)]
