"""LoRA on every Linear and Conv2d of the UNet's blocks (peft), saved and fused our way.

The paper adapts the whole UNet (its "16.4 M trainable" is ≈ 16.4 MB, see design/method.md), so
attention-only LoRA (q/k/v/out) is far too small: we target every Linear/Conv2d inside
``down_blocks``, ``mid_block`` and ``up_blocks`` (attention, proj_in/out, feed-forward, ResNet
convs, time_emb_proj, down/up-samplers) and leave conv_in, conv_out and the time embedding alone.
"""

from __future__ import annotations

import torch
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from bfrboost.errors import WeightsError

BLOCK_PREFIXES = ("down_blocks.", "mid_block.", "up_blocks.")
ADAPTER = "default"


def lora_target_modules(unet: nn.Module) -> list[str]:
    """Full names of the Linear/Conv2d layers inside the UNet's blocks (peft matches them exactly).

    On a UNet that already has the adapter, the wrappers count under their original names.
    """
    return [
        name
        for name, module in unet.named_modules()
        if name.startswith(BLOCK_PREFIXES)
        and isinstance(module, (nn.Linear, nn.Conv2d, BaseTunerLayer))
        and ".lora_" not in name
        and not name.endswith(".base_layer")
    ]


def add_lora(unet: nn.Module, rank: int, alpha: float) -> None:
    """Attach a LoRA adapter; B starts at zero (peft default), so the UNet is unchanged at init."""
    targets = lora_target_modules(unet)
    # Full module names, so conv_in, conv_out and the time embedding are never matched.
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=True)
    unet.add_adapter(config, adapter_name=ADAPTER)


def is_lora_key(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def lora_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights under their module names (e.g. ``...to_q.lora_A.default.weight``)."""
    return {name: p.detach() for name, p in unet.named_parameters() if is_lora_key(name)}


def load_lora_state_dict(unet: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load adapter weights strictly: a refiner saved at another rank or UNet layout must not half-load."""
    expected = lora_state_dict(unet)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise WeightsError(f"{source}: LoRA weights do not match this UNet ({len(missing)} missing, {len(unexpected)} unexpected, e.g. {first}); re-create the refiner for this SD model")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise WeightsError(f"{source}: LoRA weight {name} has shape {tuple(tensor.shape)}, expected {tuple(expected[name].shape)}; check the rank in config.json")
    unet.load_state_dict(state, strict=False)


def fuse_lora(unet: nn.Module) -> None:
    """Merge LoRA into the base weights and drop the wrappers: inference then runs the plain UNet."""
    for module in unet.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
    unet.unload_lora()


def has_lora(unet: nn.Module) -> bool:
    return any(isinstance(m, BaseTunerLayer) for m in unet.modules())
