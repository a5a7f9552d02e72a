"""GFPGAN v1.3 / v1.4 (Wang et al., CVPR 2021): a U-Net encoder steering a StyleGAN2 decoder.

Architecture: spandrel's ``GFPGANv1Clean`` (module names of the official ``GFPGANv1.{3,4}.pth``), built
with the config upstream ``GFPGANer`` uses for ``arch="clean"``. Both releases share it; only the
weights differ (v1.4 has more detail, v1.3 is smoother).

Pre/post-processing follows ``GFPGANer``, not spandrel's descriptor call (which feeds [0, 1] in and
clamps): mean 0.5 / std 0.5 in, ``(y + 1) / 2`` clipped out.

StyleGAN noise: upstream draws fresh Gaussian noise per call (``randomize_noise=True``), so the same
face restores differently each run and depends on its batch. We default to the fixed noise maps
stored in the checkpoint (``randomize_noise=False``): deterministic, batch-independent, and the same
kind of noise the generator was trained with. ``randomize_noise=true`` restores upstream behaviour.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from bfrboost.backbones.spec import (
    BaseSpec,
    Knob,
    build_strict,
    from_signed,
    to_signed,
)

if TYPE_CHECKING:  # spandrel imports torchvision (seconds): only when this base is built
    from spandrel.architectures.GFPGAN import GFPGAN

#: ``GFPGANer(arch="clean", channel_multiplier=2)`` → ``GFPGANv1Clean`` hyper-parameters.
CONFIG = {
    "out_size": 512,
    "num_style_feat": 512,
    "channel_multiplier": 2,
    "decoder_load_path": None,
    "fix_decoder": False,
    "num_mlp": 8,
    "input_is_latent": True,
    "different_w": True,
    "narrow": 1,
    "sft_half": True,
}


def build(state_dict: Mapping[str, torch.Tensor] | None = None) -> GFPGAN:
    from spandrel.architectures.GFPGAN import GFPGAN

    return build_strict(lambda: GFPGAN(**CONFIG), state_dict)


def forward(net: GFPGAN, x: torch.Tensor, randomize_noise: bool = False) -> torch.Tensor:
    y, _ = net(to_signed(x), return_rgb=False, randomize_noise=randomize_noise)
    return from_signed(y)


KNOBS = {
    "randomize_noise": Knob(False, "fresh StyleGAN noise every call, like upstream (not reproducible)"),
}

V14 = BaseSpec(
    name="gfpgan",
    display_name="GFPGAN v1.4",
    card="gfpgan",
    weight_file="GFPGANv1.4.pth",
    build=build,
    forward=forward,
    knobs=KNOBS,
)
SPECS = [V14, dataclasses.replace(V14, name="gfpgan-1.3", display_name="GFPGAN v1.3", weight_file="GFPGANv1.3.pth")]
