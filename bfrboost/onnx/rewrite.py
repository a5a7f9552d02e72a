"""Exportable equivalents of modules that ONNX would get wrong, slow, or not at all.

:func:`exportable` swaps them in for the duration of a trace only; the PyTorch network is unchanged
and remains the reference every graph is checked against.

- ``nn.GroupNorm`` → :class:`StableGroupNorm` (accuracy: ONNX Runtime's InstanceNormalization sums a
  whole group in one float32 accumulator).
- StyleGAN2 modulated convolutions (GFPGAN, GPEN) → :class:`ConstantKernelModConv` (speed: the
  kernel stays a graph constant, so ONNX Runtime pre-packs it and fuses the convolution).
- CodeFormer's ``fuse_convs_dict`` → :class:`SizeKeyedDict` (tracing: sizes are tensors).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from spandrel.architectures.GFPGAN.__arch.stylegan2_clean_arch import ModulatedConv2d as GFPGANModConv
from torch import nn

from bfrboost.backbones.gpen import ModulatedConv2d as GPENModConv


class StableGroupNorm(nn.Module):
    """``norm`` written with a two-level mean and a two-pass variance.

    PyTorch's GroupNorm accumulates its statistics accurately; ONNX Runtime's InstanceNormalization
    (what ``nn.GroupNorm`` exports to) sums a whole group in one float32 accumulator: over a 512 px,
    64-channel map (2 channels × 262 144 pixels per group) that is 6e-5 off PyTorch per norm, and
    CodeFormer's VQGAN stacks dozens of them (3.4e-4 on its output). Means of rows, then of the row
    means, are exact for equal rows and keep each sum short: 4e-6 off PyTorch, like PyTorch itself.
    """

    def __init__(self, norm: nn.GroupNorm) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.norm
        rows = x.reshape(x.shape[0], norm.num_groups, -1, x.shape[-1])
        centred = rows - rows.mean(dim=3, keepdim=True).mean(dim=2, keepdim=True)
        var = (centred * centred).mean(dim=3, keepdim=True).mean(dim=2, keepdim=True)
        y = (centred / torch.sqrt(var + norm.eps)).reshape(x.shape)
        if norm.affine:
            per_channel = (-1, *([1] * (x.ndim - 2)))
            y = y * norm.weight.reshape(per_channel) + norm.bias.reshape(per_channel)
        return y


class ConstantKernelModConv(nn.Module):
    """A StyleGAN2 modulated convolution with its kernel kept constant.

    Upstream scales the kernel by the style for every face and runs a grouped convolution with that
    per-face kernel, which ONNX Runtime can neither pre-pack nor fuse. Scaling the input channels by
    the style instead, and the output channels by the demodulation factor, is the same linear map
    (``conv(x · s, W) · d``, d from the squared kernel summed over its taps) with one fixed kernel.
    """

    def __init__(self, conv: GFPGANModConv | GPENModConv) -> None:
        super().__init__()
        self.conv = conv
        kernel = conv.weight[0] * getattr(conv, "scale", 1.0)  # GPEN keeps its equalised-lr scale apart
        self.register_buffer("kernel", kernel.detach().clone(), persistent=False)
        self.register_buffer("energy", kernel.detach().pow(2).sum(dim=(2, 3)), persistent=False)  # (out, in)
        self.eps = getattr(conv, "eps", 1e-8)
        self.upsample = getattr(conv, "sample_mode", None) == "upsample" or getattr(conv, "upsample", False) is True
        self.transposed = isinstance(conv, GPENModConv) and self.upsample

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        scale = self.conv.modulation(style)  # (b, in)
        x = x * scale[:, :, None, None]
        if self.transposed:  # GPEN: stride-2 transposed convolution, blurred after demodulation
            out = F.conv_transpose2d(x, self.kernel.transpose(0, 1), stride=2)
        else:
            if self.upsample:  # GFPGAN: bilinear ×2 before the convolution
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            out = F.conv2d(x, self.kernel, padding=self.kernel.shape[-1] // 2)
        if self.conv.demodulate:
            out = out * torch.rsqrt((scale * scale) @ self.energy.T + self.eps)[:, :, None, None]
        return self.conv.blur(out) if self.transposed else out


class SizeKeyedDict(nn.ModuleDict):
    """CodeFormer finds its fusion blocks by ``str(x.shape[-1])``; while tracing, sizes are 0-d tensors
    spelt ``tensor(32)``. This dict (the same modules) accepts both spellings."""

    def __getitem__(self, key: str) -> nn.Module:
        return super().__getitem__(re.sub(r"^tensor\((\d+)\)$", r"\1", key))


def _replacement(attr: str, module: nn.Module) -> Callable[[nn.Module], nn.Module] | None:
    if attr == "fuse_convs_dict" and isinstance(module, nn.ModuleDict):  # CodeFormer
        return SizeKeyedDict
    if isinstance(module, nn.GroupNorm) and module.num_channels % module.num_groups == 0:
        return StableGroupNorm
    if isinstance(module, GFPGANModConv | GPENModConv):
        return ConstantKernelModConv
    return None


def swaps(net: nn.Module) -> list[tuple[nn.Module, str, nn.Module, nn.Module]]:
    """(parent, attribute, original, exportable equivalent) for every module of ``net`` that has one."""
    found = []
    for parent in net.modules():
        for attr, child in parent.named_children():
            make = _replacement(attr, child)
            if make is not None:
                found.append((parent, attr, child, make(child)))
    return found


@contextmanager
def exportable(net: nn.Module) -> Iterator[None]:
    """``net`` with its exportable equivalents swapped in, for the block only."""
    found = swaps(net)
    for parent, attr, _, replacement in found:
        setattr(parent, attr, replacement)
    try:
        yield
    finally:
        for parent, attr, original, _ in reversed(found):
            setattr(parent, attr, original)
