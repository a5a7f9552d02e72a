"""VQFR v2 (Gu et al., ECCV 2022) as a base restorer, in one self-contained file.

How the network works, and why it has a knob:
- a VQGAN encoder turns the degraded face into a 16x16 grid of features; v2 *predicts* a codebook
  index per cell (LayerNorm + Linear classifier) instead of a nearest-neighbour lookup;
- the VQGAN "texture" decoder decodes those codes: crisp, high-quality but hallucinated detail;
- a parallel "main" decoder warps the texture features toward features of the input with
  modulated deformable convs, producing a residual that pulls the result back to the input.
  ``fidelity_ratio`` scales that residual: 0 = texture decoder only (best quality, upstream
  default), 1 = full residual (best fidelity).

Module and parameter names follow the official ``VQFRv2`` so that the released ``VQFR_v2.pth``
loads with ``strict=True``; the code itself is our own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bfrboost.backbones.spec import (
    BaseSpec,
    Knob,
    build_strict,
    from_signed,
    to_signed,
)


@dataclass(frozen=True)
class VQFRv2Config:
    """Network hyper-parameters; the defaults are the released model (upstream test_vqfr_v2.yml)."""

    base_channels: int = 64
    channel_multipliers: tuple[int, ...] = (1, 2, 2, 4, 4, 8)
    num_enc_blocks: int = 2
    num_dec_blocks: int = 2
    use_enc_attention: bool = True
    use_dec_attention: bool = True
    code_dim: int = 256
    num_code: int = 1024
    inpfeat_dim: int = 32  # also the condition width of every texture-warping module
    deformable_groups: int = 4

    @property
    def channels(self) -> list[int]:
        """Feature width at level i (spatial downscale 2**i)."""
        return [self.base_channels * m for m in self.channel_multipliers]


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


def _conv3(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)


def _head(c_in: int, c_out: int) -> nn.Sequential:
    """GroupNorm -> SiLU -> 3x3 conv; index 1 has no weights, as upstream (keys ``.0`` / ``.2``)."""
    return nn.Sequential(_norm(c_in), nn.SiLU(), _conv3(c_in, c_out))


class ResnetBlock(nn.Module):
    """Pre-activation residual block; a 1x1 conv matches widths when they differ."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.norm1 = _norm(c_in)
        self.conv1 = _conv3(c_in, c_out)
        self.norm2 = _norm(c_out)
        self.conv2 = _conv3(c_out, c_out)
        self.residual_func = nn.Conv2d(c_in, c_out, kernel_size=1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.residual_func(x)


class AttnBlock(nn.Module):
    """Single-head self-attention over all spatial positions (1x1-conv projections)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (proj(y).flatten(2).transpose(1, 2) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c)) v
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3x3 conv with right/bottom zero padding (taming-transformers convention)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2 then 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _conv3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _stage(c_in: int, c_out: int, num_blocks: int, attention: bool) -> list[nn.Module]:
    """``num_blocks`` residual blocks, each followed by attention when asked."""
    layers: list[nn.Module] = []
    for j in range(num_blocks):
        layers.append(ResnetBlock(c_in if j == 0 else c_out, c_out))
        if attention:
            layers.append(AttnBlock(c_out))
    return layers


def _middle(channels: int, attention: bool) -> nn.Sequential:
    if attention:
        return nn.Sequential(ResnetBlock(channels, channels), AttnBlock(channels), ResnetBlock(channels, channels))
    return nn.Sequential(ResnetBlock(channels, channels), ResnetBlock(channels, channels))


class VQGANEncoder(nn.Module):
    """Image -> code-dim features at 1/2**(levels-1) resolution; attention only at the coarsest level."""

    def __init__(self, cfg: VQFRv2Config) -> None:
        super().__init__()
        chans = cfg.channels
        last = len(chans) - 1
        self.conv_in = _conv3(3, chans[0])
        self.blocks = nn.ModuleList()
        for i, ch in enumerate(chans):
            prev = chans[max(i - 1, 0)]
            layers: list[nn.Module] = [] if i == 0 else [Downsample(prev)]
            layers += _stage(prev, ch, cfg.num_enc_blocks, cfg.use_enc_attention and i == last)
            self.blocks.append(nn.Sequential(*layers))
        self.mid_blocks = _middle(chans[-1], cfg.use_enc_attention)
        self.conv_out = _head(chans[-1], cfg.code_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.blocks:
            x = block(x)
        return self.conv_out(self.mid_blocks(x))


class VQGANDecoder(nn.Module):
    """Codes -> per-level texture features (``conv_out`` turns the finest level into RGB)."""

    def __init__(self, cfg: VQFRv2Config) -> None:
        super().__init__()
        chans = cfg.channels
        last = len(chans) - 1
        self.conv_in = _conv3(cfg.code_dim, chans[-1])
        self.mid_blocks = _middle(chans[-1], cfg.use_dec_attention)
        self.blocks = nn.ModuleList()  # coarsest level first
        for i in reversed(range(len(chans))):
            prev = chans[min(i + 1, last)]
            layers: list[nn.Module] = [] if i == last else [Upsample(prev)]
            layers += _stage(prev, chans[i], cfg.num_dec_blocks, cfg.use_dec_attention and i == last)
            self.blocks.append(nn.Sequential(*layers))
        self.conv_out = _head(chans[0], 3)

    def forward(self, codes: torch.Tensor) -> list[torch.Tensor]:
        """Features indexed by level: ``feats[i]`` is at spatial downscale 2**i."""
        x = self.mid_blocks(self.conv_in(codes))
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return feats[::-1]


class DCNv2Pack(nn.Module):
    """Modulated deformable 3x3 conv whose offsets and masks come from a *separate* feature.

    ``conv_offset`` emits [offsets (2/3 of the channels, torchvision layout) | mask logits (1/3)].
    """

    def __init__(self, channels: int, deformable_groups: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.conv_offset = nn.Conv2d(channels, deformable_groups * 3 * 9, kernel_size=3, padding=1)
        bound = 1.0 / math.sqrt(channels * 9)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        o1, o2, mask = self.conv_offset(cond).chunk(3, dim=1)
        offset = torch.cat([o1, o2], dim=1)
        if torch.onnx.is_in_onnx_export():  # torchvision's op has no ONNX form: the same maths in standard ops
            return deform_conv3x3_by_sampling(x, offset, self.weight, self.bias, mask.sigmoid())
        from torchvision.ops import deform_conv2d  # imports torch._dynamo (seconds): only when VQFR runs

        return deform_conv2d(x, offset, self.weight, self.bias, padding=1, mask=mask.sigmoid())


def deform_conv3x3_by_sampling(
    x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``torchvision.ops.deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)`` for a 3x3 kernel,
    written with ``grid_sample`` and a 1x1 convolution so it exports to plain ONNX (GridSample, Conv).

    Offsets use torchvision's layout: per offset group g and kernel tap k, channels ``2 (9 g + k)``
    (dy) and ``2 (9 g + k) + 1`` (dx); taps outside the image read zeros, as torchvision's do.
    """
    # channels and size as ints: constants in the (fixed-size) graph, so its Conv has a known kernel shape;
    # the batch stays -1, so the graph takes any batch
    c, h, w = map(int, x.shape[1:])
    groups = int(offset.shape[1]) // 18
    taps = torch.arange(9, dtype=x.dtype, device=x.device)
    rows = torch.arange(h, dtype=x.dtype, device=x.device).view(1, 1, 1, h, 1)
    cols = torch.arange(w, dtype=x.dtype, device=x.device).view(1, 1, 1, 1, w)
    offset = offset.reshape(-1, groups, 9, 2, h, w)
    y = rows + (taps // 3 - 1).view(1, 1, 9, 1, 1) + offset[:, :, :, 0]  # (b, groups, 9, h, w)
    xs = cols + (taps % 3 - 1).view(1, 1, 9, 1, 1) + offset[:, :, :, 1]
    grid = torch.stack((xs * (2 / max(w - 1, 1)) - 1, y * (2 / max(h - 1, 1)) - 1), dim=-1)
    grid = grid.reshape(-1, 9 * h, w, 2)
    sampled = F.grid_sample(x.reshape(-1, c // groups, h, w), grid, mode="bilinear", padding_mode="zeros",
                            align_corners=True)  # (b * groups, c / groups, 9 h, w)
    sampled = sampled.reshape(-1, groups, c // groups, 9, h, w) * mask.reshape(-1, groups, 1, 9, h, w)
    columns = sampled.reshape(-1, c * 9, h, w)
    return F.conv2d(columns, weight.reshape(weight.shape[0], c * 9, 1, 1), bias)


class TextureWarpingModule(nn.Module):
    """Warps one level's texture feature toward the input, guided by (downscaled) input features.

    Returns the warped feature and the offset feature, which the next finer level consumes.
    """

    def __init__(
        self, channels: int, cond_channels: int, cond_downscale: int, deformable_groups: int, prev_offset_channels: int
    ) -> None:
        super().__init__()
        self.cond_downscale = cond_downscale
        self.offset_conv1 = nn.Sequential(
            nn.Conv2d(channels + cond_channels, channels, kernel_size=1),
            _norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, kernel_size=7, padding=3, groups=channels),
            _norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, kernel_size=1),
        )
        self.offset_conv2 = nn.Sequential(_conv3(channels + prev_offset_channels, channels), _norm(channels), nn.SiLU())
        self.dcn = DCNv2Pack(channels, deformable_groups)

    def forward(
        self, texture: torch.Tensor, inp_feat: torch.Tensor, prev_offset: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = inp_feat.shape[-2:]
        size = (h // self.cond_downscale, w // self.cond_downscale)
        cond = F.interpolate(inp_feat, size=size, mode="bilinear", align_corners=False)
        offset = self.offset_conv1(torch.cat([cond, texture], dim=1))
        if prev_offset is not None:
            offset = torch.cat([offset, prev_offset], dim=1)
        offset = self.offset_conv2(offset)
        return self.dcn(texture, offset), offset


class MainDecoder(nn.Module):
    """Coarse-to-fine decoder fusing warped texture features; returns the finest feature map.

    Output = texture feature + ``fidelity_ratio`` * main-branch feature, so 0 reproduces the
    texture decoder exactly.
    """

    def __init__(self, cfg: VQFRv2Config) -> None:
        super().__init__()
        chans = cfg.channels
        last = len(chans) - 1
        self.pre_upsample_dict = nn.ModuleDict()
        self.align_func_dict = nn.ModuleDict()
        self.decoder_dict = nn.ModuleDict()
        for i in reversed(range(len(chans))):
            key, prev = f"Level_{2**i}", chans[min(i + 1, last)]
            self.align_func_dict[key] = TextureWarpingModule(
                chans[i], cfg.inpfeat_dim, 2**i, cfg.deformable_groups, 0 if i == last else prev
            )
            if i != last:
                self.pre_upsample_dict[key] = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), _conv3(prev, chans[i]))
                self.decoder_dict[key] = ResnetBlock(2 * chans[i], chans[i])

    def forward(self, feats: list[torch.Tensor], inp_feat: torch.Tensor, fidelity_ratio: float) -> torch.Tensor:
        last = len(feats) - 1
        x, offset = self.align_func_dict[f"Level_{2**last}"](feats[last], inp_feat)
        for i in reversed(range(last)):
            key = f"Level_{2**i}"
            x = self.pre_upsample_dict[key](x)
            # Offsets are propagated as features; upstream scales them x2 with the resolution.
            prev_offset = F.interpolate(offset, scale_factor=2, mode="bilinear", align_corners=False) * 2
            warped, offset = self.align_func_dict[key](feats[i], inp_feat, prev_offset)
            x = self.decoder_dict[key](torch.cat([x, warped], dim=1))
        return feats[0] + fidelity_ratio * x


class Codebook(nn.Module):
    """The learned VQ dictionary (only the embedding table is used at inference)."""

    def __init__(self, num_code: int, code_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_code, code_dim)


class VQFRv2(nn.Module):
    """VQFR v2: ``forward(x in [-1, 1], fidelity_ratio) -> restored face in about [-1, 1]``."""

    def __init__(self, config: VQFRv2Config | None = None) -> None:
        super().__init__()
        cfg = config or VQFRv2Config()
        self.config = cfg
        self.encoder = VQGANEncoder(cfg)
        self.feat2index = nn.Sequential(nn.LayerNorm(cfg.code_dim), nn.Linear(cfg.code_dim, cfg.num_code))
        self.decoder = VQGANDecoder(cfg)
        self.main_branch = MainDecoder(cfg)
        self.inpfeat_extraction = nn.Conv2d(3, cfg.inpfeat_dim, kernel_size=3, padding=1)
        self.quantizer = Codebook(cfg.num_code, cfg.code_dim)

    def forward(self, x: torch.Tensor, fidelity_ratio: float = 0.0) -> torch.Tensor:
        z = self.encoder(x)
        b, c, h, w = z.shape
        index = self.feat2index(z.flatten(2).transpose(1, 2)).argmax(dim=-1)  # (b, h*w)
        codes = self.quantizer.embedding(index).transpose(1, 2).reshape(b, c, h, w)
        feats = self.decoder(codes)
        if fidelity_ratio == 0.0:
            # feats[0] + 0 * main == feats[0]: skip the (costly) main branch, same result.
            return self.decoder.conv_out(feats[0])
        fused = self.main_branch(feats, self.inpfeat_extraction(x), fidelity_ratio)
        return self.decoder.conv_out(fused)


def build(state_dict: Mapping[str, torch.Tensor] | None = None, config: VQFRv2Config | None = None) -> VQFRv2:
    """The released architecture (or ``config``), strictly loaded from ``state_dict`` when given.

    The official file is a basicsr checkpoint (weights under ``params``/``params_ema``, which
    ``weights.load_state_dict`` unwraps, preferring ``params_ema`` like upstream's demo).
    """
    return build_strict(lambda: VQFRv2(config), state_dict).eval()


def forward(net: VQFRv2, x: torch.Tensor, fidelity_ratio: float = 0.0) -> torch.Tensor:
    """RGB [0, 1] crops -> restored RGB [0, 1] crops (upstream mean 0.5 / std 0.5, clipped)."""
    ratio = fidelity_ratio if isinstance(fidelity_ratio, torch.Tensor) else float(fidelity_ratio)  # a tensor when exporting
    return from_signed(net(to_signed(x), fidelity_ratio=ratio))


SPECS = [
    BaseSpec(
        name="vqfr",
        display_name="VQFR v2",
        card="vqfr",
        weight_file="VQFR_v2.pth",
        build=build,
        forward=forward,
        knobs={
            "fidelity_ratio": Knob(
                default=0.0,  # upstream demo.py / predict.py default
                help="0 = best quality (texture decoder only), 1 = best fidelity to the input",
                low=0.0,
                high=1.0,
            )
        },
    )
]
