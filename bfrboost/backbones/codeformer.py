"""CodeFormer (Zhou et al., NeurIPS 2022): a transformer predicts codebook entries for the face.

Architecture: spandrel-extra-arches' ``CodeFormer`` with the config of upstream
``inference_codeformer.py`` (``dim_embd=512, codebook_size=1024, n_head=8, n_layers=9,
connect_list=['32', '64', '128', '256']``); its forward always uses AdaIN, as upstream inference does.

``fidelity`` is upstream's ``-w``: how much of the input's encoder features are fused back into the
decoder. 0 = pure codebook (highest quality, may drift from the identity), 1 = most faithful.
spandrel's descriptor call always uses 0.5 and skips the normalisation, so we call the network:
mean 0.5 / std 0.5 in, ``(y + 1) / 2`` clipped out.
"""

from __future__ import annotations

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
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

CONFIG = {
    "dim_embd": 512,
    "n_head": 8,
    "n_layers": 9,
    "codebook_size": 1024,
    "latent_size": 256,
    "connect_list": ["32", "64", "128", "256"],
    "fix_modules": ["quantize", "generator"],
}


def build(state_dict: Mapping[str, torch.Tensor] | None = None) -> CodeFormer:
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    return build_strict(lambda: CodeFormer(**CONFIG), state_dict)


def forward(net: CodeFormer, x: torch.Tensor, fidelity: float = 0.5) -> torch.Tensor:
    y, _ = net(to_signed(x), weight=fidelity)
    return from_signed(y)


SPECS = [
    BaseSpec(
        name="codeformer",
        display_name="CodeFormer",
        card="codeformer",
        weight_file="codeformer.pth",
        build=build,
        forward=forward,
        knobs={"fidelity": Knob(0.5, "0 = best quality, 1 = closest to the input (upstream -w)", low=0.0, high=1.0)},
    )
]
