"""LoRA on the UNet (peft) with the standard one-step SD-LoRA target list, saved and fused our way.

The paper adapts the whole UNet (its "16.4 M trainable" is ≈ 16.4 MB, see design/method.md), so
attention-only LoRA (q/k/v/out) is far too small. We use the target list of the one-step SD-LoRA
restorers (img2img-turbo, OSEDiff): attention q/k/v/out, proj_in/proj_out, feed-forward, ResNet
conv1/conv2/conv_shortcut, the down/up-sampler convs and the UNet's conv_out. ``time_emb_proj`` is left
out: at one fixed timestep its input is a constant, so a LoRA on it could only learn a bias.
"""

from __future__ import annotations

import torch
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from bfrboost.errors import WeightsError

#: peft matches these as the last part(s) of a module name ("conv" = the down/up-sampler convs).
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                "conv1", "conv2", "conv_shortcut", "conv", "conv_out")
ADAPTER = "default"


def add_lora(unet: nn.Module, rank: int, alpha: float) -> None:
    """Attach a LoRA adapter; B starts at zero (peft default), so the UNet is unchanged at init."""
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(LORA_TARGETS), init_lora_weights=True)
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
        raise WeightsError(
            f"{source}: LoRA weights do not match this UNet ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"e.g. {first}); re-create the refiner for this SD model"
        )
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise WeightsError(
                f"{source}: LoRA weight {name} has shape {tuple(tensor.shape)}, expected {tuple(expected[name].shape)}; "
                "check the rank in config.json"
            )
    unet.load_state_dict(state, strict=False)


def fuse_lora(unet: nn.Module) -> None:
    """Merge LoRA into the base weights and drop the wrappers: inference then runs the plain UNet."""
    for module in unet.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
    unet.unload_lora()


def has_lora(unet: nn.Module) -> bool:
    return any(isinstance(m, BaseTunerLayer) for m in unet.modules())
