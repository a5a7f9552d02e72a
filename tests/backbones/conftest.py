"""Helpers for every base-restorer test: real aligned faces, checkpoints written like the official ones,
and swapping a registry entry for a small variant so the real ``load_base`` path runs in milliseconds.

The released networks take 10–50 s per 512 face on this shared CPU, so adapter tests check the
official config on the meta device (keys, shapes, size) or through loading without a forward, and run
forwards on narrow variants of the same architecture class.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from bfrboost.backbones import registry
from bfrboost.backbones.registry import BaseSpec

FACES = ("0143.png", "0368.png")


def two_aligned_faces(testdata: Path, size: int = 512) -> torch.Tensor:
    """Two real FFHQ-aligned crops as a (2, 3, size, size) float tensor in [0, 1] (box-downscaled)."""
    crops = []
    for name in FACES:
        image = Image.open(testdata / "aligned" / name).convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BOX)
        crops.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255)
    return torch.stack(crops)


def meta_state_dict(spec: BaseSpec) -> dict[str, torch.Tensor]:
    """The official config's state dict on the meta device: names and shapes without memory or init."""
    with torch.device("meta"):
        return spec.build(None).state_dict()


class Checkpoint(NamedTuple):
    pth: Path  # torch.save of {wrapper: state_dict} (or the bare state dict when wrapper is None)
    safetensors: Path
    state_dict: dict[str, torch.Tensor]


def roundtrip_checkpoint(
    spec: BaseSpec, tmp_path: Path, wrapper: str | None = "params_ema", net: nn.Module | None = None
) -> Checkpoint:
    """Write ``net``'s (default: ``spec.build(None)``'s) weights as the official ``.pth`` and as safetensors."""
    net = spec.build(None) if net is None else net
    state_dict = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    stem = Path(spec.weight_file).stem or spec.name
    pth, st = tmp_path / f"{stem}.pth", tmp_path / f"{stem}.safetensors"
    torch.save(state_dict if wrapper is None else {wrapper: state_dict}, pth)
    save_file(state_dict, str(st))
    return Checkpoint(pth, st, state_dict)


def swap_spec(monkeypatch: pytest.MonkeyPatch, name: str, **changes) -> BaseSpec:
    """Replace registry entry ``name`` for one test (e.g. a narrow ``build`` and a small ``input_size``)."""
    spec = dataclasses.replace(registry.get_spec(name), **changes)
    monkeypatch.setitem(registry.REGISTRY, name, spec)
    return spec


def assert_same_weights(net: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    loaded = net.state_dict()
    assert loaded.keys() == state_dict.keys()
    for key, value in state_dict.items():
        assert torch.equal(loaded[key].float(), value.float()), key
