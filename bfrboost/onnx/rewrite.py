"""Exportable equivalents of modules that ONNX would get wrong, slow, or not at all.

:func:`exportable` swaps them in for the duration of a trace only; the PyTorch network is unchanged
and remains the reference every graph is checked against.

- ``nn.GroupNorm`` → :class:`StableGroupNorm` (accuracy: ONNX Runtime's InstanceNormalization sums a
  whole group in one float32 accumulator).
- StyleGAN2 modulated convolutions (GFPGAN, GPEN) → :class:`ConstantKernelModConv` (speed: the
  kernel stays a graph constant, so ONNX Runtime pre-packs it and fuses the convolution).
- 3 × 3 convolutions with many channels on small maps (the modulated ones too) → :class:`Winograd3x3`
  (speed: 16 products per 2 × 2 outputs instead of 36, where that beats ONNX Runtime's direct kernel).
- Bilinear halving (GFPGAN's down-sampling blocks) → a 2 × 2 average pool, the same numbers (speed:
  ONNX Runtime keeps pools in its blocked layout, while a Resize costs a layout change each way).
- CodeFormer's ``fuse_convs_dict`` → :class:`SizeKeyedDict` (tracing: sizes are tensors).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

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


#: Winograd F(2 × 2, 3 × 3) (Lavin & Gray, 2016), interpolation points 0, ±1, ∞: input tile transform B^T,
#: kernel transform G, output transform A^T.
_BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
_AT = ((1, 1, 1, 0), (0, 1, -1, -1))
#: The product whose A^T coefficient is 1 in all four outputs: it carries the bias.
_BIAS_PRODUCT = 5


def winograd_pays(in_channels: int, out_channels: int, height: int, width: int) -> bool:
    """Where F(2 × 2, 3 × 3) beats ONNX Runtime's direct convolution (one core, AVX-512; ONNX Runtime time ÷
    direct): 0.54–0.67 for 256–512 channels on maps of 16–128 px, 0.82 for 128 → 128 at 128 px, 0.90 for
    256 → 128 at 256 px; slower on large maps with few channels (1.25 for 64 → 128 at 512 px), where the
    transforms' memory traffic outweighs the products saved."""
    area = height * width
    return min(in_channels, out_channels) >= 128 and 16 * 16 <= area and (area <= 128 * 128 or in_channels >= 256)


def _combine(coefficients: tuple[int, ...], terms: list[torch.Tensor]) -> torch.Tensor:
    """Σ c·t for c in {-1, 0, 1} as additions and subtractions (the first coefficient that is not 0 is 1 here)."""
    out = None
    for c, t in zip(coefficients, terms, strict=True):
        if c:
            out = t if out is None else (out + t if c > 0 else out - t)
    assert out is not None
    return out


class Winograd3x3(nn.Module):
    """``F.conv2d(x, weight, bias, padding=padding)`` (3 × 3, stride 1) as Winograd F(2 × 2, 3 × 3) in ONNX ops.

    The input transform is 4 + 16 depthwise convolutions with 0/±1 taps (rows, then columns, stride 2),
    the 16 products are 1 × 1 convolutions with constant kernels G·w·G^T (computed in float64), and the
    output transform adds and subtracts them before one interleave (ONNX's DepthToSpace). The convolutions
    run in ONNX Runtime's blocked layout, and the first addition of each product fuses into it.
    Used only where :func:`winograd_pays` says so, for a static, even output size.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, padding: int, enabled: bool = True) -> None:
        super().__init__()
        self.weight, self.bias, self.padding, self.enabled = weight, bias, padding, enabled
        g = torch.tensor(_G, dtype=torch.float64)
        u = torch.einsum("ki,ocij,lj->kloc", g, weight.detach().double(), g)  # (4, 4, out, in)
        self.register_buffer("products", u.reshape(16, *weight.shape[:2], 1, 1).float(), persistent=False)
        bt = torch.tensor(_BT, dtype=weight.dtype).repeat_interleave(weight.shape[1], 0).reshape(4, weight.shape[1], 1, 4)
        self.register_buffer("rows", bt[:, :, :, :, None], persistent=False)  # (4, in, 1, 4, 1)
        self.register_buffer("cols", bt[:, :, :, None, :], persistent=False)  # (4, in, 1, 1, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, (channels_out, channels) = self.padding, self.weight.shape[:2]
        # sizes are 0-d tensors while tracing; enabled only for graphs whose image size is fixed
        height, width = int(x.shape[-2]) + 2 * p - 2, int(x.shape[-1]) + 2 * p - 2
        if not (self.enabled and height % 2 == 0 and width % 2 == 0 and winograd_pays(channels, channels_out, height, width)):
            return F.conv2d(x, self.weight, self.bias, padding=p)
        rows = [F.conv2d(x, k, stride=(2, 1), padding=p, groups=channels) for k in self.rows]
        tiles = [F.conv2d(r, k, stride=(1, 2), groups=channels) for r in rows for k in self.cols]
        products = [F.conv2d(t, u, self.bias if i == _BIAS_PRODUCT else None)
                    for i, (t, u) in enumerate(zip(tiles, self.products, strict=True))]
        half = [[_combine(a, products[q::4]) for q in range(4)] for a in _AT]
        quarters = [_combine(b, half[a]) for a in range(2) for b in _AT]
        return _DepthToSpace.apply(torch.cat(quarters, 1))


class _DepthToSpace(torch.autograd.Function):
    """(N, 4C, H, W) → (N, C, 2H, 2W), input channel (2a + b)·C + c to pixel (2i + a, 2j + b): ONNX's
    DepthToSpace in DCR order, which ONNX Runtime runs twice as fast as the same reshape-transpose-reshape."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        n, c4, h, w = x.shape
        out = x.reshape(n, 2, 2, c4 // 4, h, w).permute(0, 3, 4, 1, 5, 2)
        return out.reshape(n, c4 // 4, 2 * h, 2 * w)

    @staticmethod
    def symbolic(g: Any, x: Any) -> Any:
        return g.op("DepthToSpace", x, blocksize_i=2, mode_s="DCR")


def winograd_conv(conv: nn.Conv2d) -> Winograd3x3:
    """An ``nn.Conv2d`` (3 × 3, stride 1, zero padding) as :class:`Winograd3x3`, sharing its weight and bias."""
    return Winograd3x3(conv.weight, conv.bias, conv.padding[0])


def _is_plain_3x3(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.dilation == (1, 1)
            and conv.groups == 1 and conv.padding in ((0, 0), (1, 1)) and conv.padding_mode == "zeros")


class ConstantKernelModConv(nn.Module):
    """A StyleGAN2 modulated convolution with its kernel kept constant.

    Upstream scales the kernel by the style for every face and runs a grouped convolution with that
    per-face kernel, which ONNX Runtime can neither pre-pack nor fuse. Scaling the input channels by
    the style instead, and the output channels by the demodulation factor, is the same linear map
    (``conv(x · s, W) · d``, d from the squared kernel summed over its taps) with one fixed kernel.
    """

    def __init__(self, conv: GFPGANModConv | GPENModConv, winograd: bool = True) -> None:
        super().__init__()
        self.conv = conv
        kernel = conv.weight[0] * getattr(conv, "scale", 1.0)  # GPEN keeps its equalised-lr scale apart
        self.register_buffer("kernel", kernel.detach().clone(), persistent=False)
        self.conv3x3 = Winograd3x3(self.kernel, None, 1, winograd) if kernel.shape[-2:] == (3, 3) else None
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
            out = self.conv3x3(x) if self.conv3x3 is not None else F.conv2d(x, self.kernel, padding=self.kernel.shape[-1] // 2)
        if self.conv.demodulate:
            out = out * torch.rsqrt((scale * scale) @ self.energy.T + self.eps)[:, :, None, None]
        return self.conv.blur(out) if self.transposed else out


class SizeKeyedDict(nn.ModuleDict):
    """CodeFormer finds its fusion blocks by ``str(x.shape[-1])``; while tracing, sizes are 0-d tensors
    spelt ``tensor(32)``. This dict (the same modules) accepts both spellings."""

    def __getitem__(self, key: str) -> nn.Module:
        return super().__getitem__(re.sub(r"^tensor\((\d+)\)$", r"\1", key))


def _replacement(attr: str, module: nn.Module, winograd: bool) -> Callable[[nn.Module], nn.Module] | None:
    if attr == "fuse_convs_dict" and isinstance(module, nn.ModuleDict):  # CodeFormer
        return SizeKeyedDict
    if isinstance(module, nn.GroupNorm) and module.num_channels % module.num_groups == 0:
        return StableGroupNorm
    if isinstance(module, GFPGANModConv | GPENModConv):
        return partial(ConstantKernelModConv, winograd=winograd)
    if winograd and _is_plain_3x3(module):
        return winograd_conv
    return None


def swaps(net: nn.Module, winograd: bool = True) -> list[tuple[nn.Module, str, nn.Module, nn.Module]]:
    """(parent, attribute, original, exportable equivalent) for every module of ``net`` that has one.

    ``winograd``: also 3 × 3 convolutions as :class:`Winograd3x3` (only for graphs of a static image size)."""
    found = []
    for parent in net.modules():
        for attr, child in parent.named_children():
            make = _replacement(attr, child, winograd)
            if make is not None:
                found.append((parent, attr, child, make(child)))
    return found


def _interpolate_halving_as_pool(interpolate: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``F.interpolate`` where bilinear halving (no corner alignment, no antialias) is a 2 × 2 average pool:
    with half-pixel centres each output is the mean of exactly the 2 × 2 inputs it covers."""

    def halving_as_pool(x: torch.Tensor, size: object = None, scale_factor: object = None, mode: str = "nearest",
                        align_corners: bool | None = None, *args: object, **kwargs: object) -> torch.Tensor:
        even = all(int(n) % 2 == 0 for n in x.shape[-2:])
        if (mode == "bilinear" and not align_corners and size is None and scale_factor in (0.5, (0.5, 0.5)) and even
                and not kwargs.get("antialias") and not args):
            return F.avg_pool2d(x, 2)
        return interpolate(x, size, scale_factor, mode, align_corners, *args, **kwargs)

    return halving_as_pool


@contextmanager
def exportable(net: nn.Module, static_size: bool = True) -> Iterator[None]:
    """``net`` with its exportable equivalents swapped in, for the block only. ``static_size``: the graph's
    image size is fixed, so the speed rewrites that depend on it (Winograd, halving as a pool) apply."""
    found = swaps(net, winograd=static_size)
    interpolate = F.interpolate
    for parent, attr, _, replacement in found:
        setattr(parent, attr, replacement)
    if static_size:
        F.interpolate = _interpolate_halving_as_pool(interpolate)
    try:
        yield
    finally:
        F.interpolate = interpolate
        for parent, attr, original, _ in reversed(found):
            setattr(parent, attr, original)
