"""RestoreFormer (Wang et al., CVPR 2022): cross-attention from degraded queries to a HQ dictionary.

Architecture: spandrel's ``RestoreFormer`` with the defaults upstream ``GFPGANer(arch="RestoreFormer")``
builds for ``RestoreFormer.pth`` (GFPGAN release v1.3.4). Deterministic; no options.
Pre/post-processing as ``GFPGANer``: mean 0.5 / std 0.5 in, ``(y + 1) / 2`` clipped out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from bfrboost.backbones.spec import BaseSpec, build_strict, from_signed, to_signed

if TYPE_CHECKING:  # spandrel imports torchvision (seconds): only when this base is built
    from spandrel.architectures.RestoreFormer import RestoreFormer

CONFIG = {
    "n_embed": 1024,
    "embed_dim": 256,
    "ch": 64,
    "out_ch": 3,
    "ch_mult": (1, 2, 2, 4, 4, 8),
    "num_res_blocks": 2,
    "attn_resolutions": (16,),
    "dropout": 0.0,
    "in_channels": 3,
    "resolution": 512,
    "z_channels": 256,
    "double_z": False,
    "enable_mid": True,
    "head_size": 8,
}


def build(state_dict: Mapping[str, torch.Tensor] | None = None) -> RestoreFormer:
    from spandrel.architectures.RestoreFormer import RestoreFormer

    return build_strict(lambda: RestoreFormer(**CONFIG), state_dict)


def forward(net: RestoreFormer, x: torch.Tensor) -> torch.Tensor:
    y, _ = net(to_signed(x))
    return from_signed(y)


SPECS = [
    BaseSpec(
        name="restoreformer",
        display_name="RestoreFormer",
        card="restoreformer",
        weight_file="RestoreFormer.pth",
        build=build,
        forward=forward,
    )
]
