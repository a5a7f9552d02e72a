"""GPEN-BFR-512 (Yang et al., CVPR 2021): a GAN prior embedded in a U-Net.

A StyleGAN2 generator whose "noise" inputs are replaced by the features of a small convolutional
encoder: each encoder feature map is *concatenated* (scaled by a learned weight) to the styled
convolution output of the same resolution, and the encoder's 4×4 output, flattened through one
linear layer, is the generator's style code. So inference is deterministic — there is no random
noise to choose.

Our own implementation. Module and parameter names follow the official checkpoint
(``yangxy/GPEN`` ``face_model/gpen_model.py``, ``FullGenerator``) so ``load_state_dict(strict=True)``
succeeds on ``GPEN-BFR-512.pth``, including its persistent blur-kernel buffers. The network works
in RGB with inputs normalised to [-1, 1] (upstream ``face_gan.py`` flips its BGR input to RGB and
applies mean 0.5 / std 0.5), which is what ``forward`` below does for our RGB [0, 1] crops.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bfrboost.backbones.spec import BaseSpec, build_strict, from_signed, to_signed

_BLUR_TAPS = (1.0, 3.0, 3.0, 1.0)


@dataclass(frozen=True)
class GPENConfig:
    """Upstream ``FaceGAN`` for GPEN-BFR-512: size 512, style 512, 8 MLP layers, multiplier 2."""

    size: int = 512
    style_dim: int = 512
    n_mlp: int = 8
    channel_multiplier: int = 2
    narrow: float = 1.0
    lr_mlp: float = 0.01

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    def channels(self, resolution: int) -> int:
        """Feature width at a given resolution (StyleGAN2's table, scaled by ``narrow``)."""
        base = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * self.channel_multiplier,
                128: 128 * self.channel_multiplier, 256: 64 * self.channel_multiplier,
                512: 32 * self.channel_multiplier, 1024: 16 * self.channel_multiplier}
        return int(base[resolution] * self.narrow)


class Blur(nn.Module):
    """FIR filter with optional zero-insertion upsampling (StyleGAN2's ``upfirdn2d`` without down)."""

    def __init__(self, pad: tuple[int, int], up: int = 1, gain: float = 1.0) -> None:
        super().__init__()
        taps = torch.tensor(_BLUR_TAPS)
        kernel = taps[:, None] * taps[None, :]
        # Persistent: the official checkpoint stores these kernels.
        self.register_buffer("kernel", kernel / kernel.sum() * gain)
        self.pad = pad
        self.up = up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels and size as ints: constants when traced for ONNX, whose Conv needs a known kernel shape; the
        # batch stays free (-1), so the graph takes any batch
        c, h, w = map(int, x.shape[1:])
        if self.up > 1:  # zeros inserted after each pixel, each row: pad a (h, 1, w, 1) view to (h, up, w, up)
            spread = F.pad(x[:, :, :, None, :, None], (0, self.up - 1, 0, 0, 0, self.up - 1))
            x = spread.reshape(-1, c, h * self.up, w * self.up)
        p0, p1 = self.pad
        x = F.pad(x, (p0, p1, p0, p1))
        weight = self.kernel.flip(0, 1).to(x.dtype).expand(c, 1, *self.kernel.shape)
        return F.conv2d(x, weight, groups=c)


class FusedLeakyReLU(nn.Module):
    """Bias + leaky ReLU(0.2), rescaled by √2 to keep unit variance."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return F.leaky_relu(x + self.bias.view(shape), 0.2) * math.sqrt(2)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate (weights scaled at run time)."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activate: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias * self.lr_mul
        if self.activate:
            return F.leaky_relu(F.linear(x, self.weight * self.scale) + bias, 0.2) * math.sqrt(2)
        return F.linear(x, self.weight * self.scale, bias)


class EqualConv2d(nn.Module):
    """Convolution with equalised learning rate."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.scale = 1 / math.sqrt(in_ch * kernel_size**2)
        self.stride = stride
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, self.stride, self.padding)


class PixelNorm(nn.Module):
    """Normalise each style vector to unit RMS (index 0 of the mapping network)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class ConvLayer(nn.Sequential):
    """Encoder layer: [blur →] equalised conv → bias + leaky ReLU; index layout as upstream."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, downsample: bool = False) -> None:
        layers: list[nn.Module] = []
        if downsample:
            p = len(_BLUR_TAPS) - 2 + kernel_size - 1  # keeps size // 2 exactly after the stride-2 conv
            layers += [Blur(((p + 1) // 2, p // 2)), EqualConv2d(in_ch, out_ch, kernel_size, stride=2, bias=False)]
        else:
            layers.append(EqualConv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False))
        layers.append(FusedLeakyReLU(out_ch))
        super().__init__(*layers)


class ModulatedConv2d(nn.Module):
    """StyleGAN2 convolution: per-sample weights modulated by the style (and demodulated)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, upsample: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1.0)
        self.scale = 1 / math.sqrt(in_ch * kernel_size**2)
        self.demodulate = demodulate
        self.upsample = upsample
        if upsample:  # transposed conv (stride 2) then a ×4-gain blur to remove checkerboards
            self.blur = Blur((1, 1), gain=4.0)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        b, in_ch, h, w = map(int, x.shape)  # ints: constants when traced for ONNX (see Blur)
        out_ch, k = self.weight.shape[1], self.weight.shape[-1]
        weight = self.scale * self.weight * self.modulation(style).view(b, 1, in_ch, 1, 1)
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4)) + 1e-8).view(b, out_ch, 1, 1, 1)
        x = x.reshape(1, b * in_ch, h, w)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(b * in_ch, out_ch, k, k)
            out = F.conv_transpose2d(x, weight, stride=2, groups=b)
            return self.blur(out.view(b, out_ch, *out.shape[-2:]))
        out = F.conv2d(x, weight.reshape(b * out_ch, in_ch, k, k), padding=k // 2, groups=b)
        return out.view(b, out_ch, *out.shape[-2:])


class NoiseInjection(nn.Module):
    """GPEN's twist: concatenates the (weighted) encoder feature instead of adding random noise."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        return torch.cat((x, self.weight * feature), dim=1)


class StyledConv(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, style_dim: int, upsample: bool = False) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, 3, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_ch * 2)

    def forward(self, x: torch.Tensor, style: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        return self.activate(self.noise(self.conv(x, style), feature))


class ToRGB(nn.Module):
    def __init__(self, in_ch: int, style_dim: int, upsample: bool = True) -> None:
        super().__init__()
        if upsample:  # upfirdn2d(up=2) with pads (2, 1) and gain 4
            self.upsample = Blur((2, 1), up=2, gain=4.0)
        self.conv = ModulatedConv2d(in_ch, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, style) + self.bias
        return out if skip is None else out + self.upsample(skip)


class ConstantInput(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, 4, 4))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.expand(batch, -1, -1, -1)


class StyleGenerator(nn.Module):
    """StyleGAN2 synthesis network with concatenated encoder features (``generator.*`` keys)."""

    def __init__(self, cfg: GPENConfig) -> None:
        super().__init__()
        self.style = nn.Sequential(
            PixelNorm(),
            *(EqualLinear(cfg.style_dim, cfg.style_dim, lr_mul=cfg.lr_mlp, activate=True) for _ in range(cfg.n_mlp)),
        )
        ch = cfg.channels(4)
        self.input = ConstantInput(ch)
        self.conv1 = StyledConv(ch, ch, cfg.style_dim)
        self.to_rgb1 = ToRGB(ch * 2, cfg.style_dim, upsample=False)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        for log_res in range(3, cfg.log_size + 1):
            out_ch = cfg.channels(2**log_res)
            self.convs.append(StyledConv(ch * 2, out_ch, cfg.style_dim, upsample=True))
            self.convs.append(StyledConv(out_ch * 2, out_ch, cfg.style_dim))
            self.to_rgbs.append(ToRGB(out_ch * 2, cfg.style_dim))
            ch = out_ch

    def forward(self, code: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        """``features`` run coarse to fine: one per resolution 4, 8, …, size."""
        w = self.style(code)  # one style for every layer (no mixing, no truncation)
        out = self.conv1(self.input(code.shape[0]), w, features[0])
        image = self.to_rgb1(out, w)
        for i, to_rgb in enumerate(self.to_rgbs):
            out = self.convs[2 * i](out, w, features[i + 1])
            out = self.convs[2 * i + 1](out, w, features[i + 1])
            image = to_rgb(out, w, image)
        return image


class GPEN(nn.Module):
    """Encoder ``ecd0 … ecd{log2(size)-2}`` + ``final_linear`` + StyleGAN2 ``generator``."""

    def __init__(self, cfg: GPENConfig = GPENConfig()) -> None:
        super().__init__()
        self.config = cfg
        self.generator = StyleGenerator(cfg)
        self.ecd0 = nn.Sequential(ConvLayer(3, cfg.channels(cfg.size), 1))
        for i, log_res in enumerate(range(cfg.log_size, 2, -1), start=1):
            block = ConvLayer(cfg.channels(2**log_res), cfg.channels(2 ** (log_res - 1)), 3, downsample=True)
            self.add_module(f"ecd{i}", nn.Sequential(block))
        self.final_linear = nn.Sequential(EqualLinear(cfg.channels(4) * 16, cfg.style_dim, activate=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: RGB in [-1, 1], (B, 3, size, size) → RGB in about [-1, 1]."""
        features = []
        for i in range(self.config.log_size - 1):
            x = getattr(self, f"ecd{i}")(x)
            features.append(x)
        code = self.final_linear(x.flatten(1))
        return self.generator(code, features[::-1])


def build(state_dict: Mapping[str, torch.Tensor] | None = None, config: GPENConfig = GPENConfig()) -> GPEN:
    """GPEN with ``state_dict`` loaded strictly (the official file is an unwrapped state dict)."""
    return build_strict(lambda: GPEN(config), state_dict).eval()


def forward(net: GPEN, x: torch.Tensor) -> torch.Tensor:
    """RGB [0, 1] crops → restored RGB [0, 1] crops (upstream mean 0.5 / std 0.5, clipped)."""
    return from_signed(net(to_signed(x)))


SPECS = [
    BaseSpec(
        name="gpen",
        display_name="GPEN-BFR-512",
        card="gpen",
        weight_file="GPEN-BFR-512.pth",
        build=build,
        forward=forward,
    )
]
