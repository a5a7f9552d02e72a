"""ArcFace identity embeddings (IR-SE50, the network behind facexlib's ``recognition_arcface_ir_se50.pth``).

Used for the ``ids`` metric of ``bfrboost eval`` (cosine between a restored face and its reference)
and as a differentiable identity property for guided restoration, so :meth:`ArcFace.embed` keeps the
autograd graph to its input (the network's own weights are frozen).

The architecture is written here rather than taken from facexlib because facexlib's
``init_recognition_model`` moves the network to CUDA unconditionally; the module tree below matches
facexlib's ``Backbone(num_layers=50, mode="ir_se")`` key for key, so the official file loads strictly.

Input convention: aligned FFHQ crops (any square size, RGB in [0, 1]). The network was trained on
112×112 faces normalised to [-1, 1]; :meth:`ArcFace.embed` resizes the whole crop to 112 with
antialiased bilinear interpolation as PGDiff's identity guidance does (``crop="full"``), or first cuts
the tighter central box that the pSp/e4e identity loss uses for FFHQ alignments (``crop="center"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

import bfrboost.weights
from bfrboost.errors import WeightsError

ARCFACE_FILE = "recognition_arcface_ir_se50.pth"
ARCFACE_CARD = "arcface"
EMBEDDING_DIM = 512
INPUT_SIZE = 112
# IR-SE50: (input channels, output channels, number of units) per stage; the first unit of each stage strides by 2.
_STAGES = ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3))
# pSp's IDLoss crops rows 35:223, columns 32:220 of a 256 FFHQ crop before pooling to 112:
# the same box as fractions of the side (top, bottom, left, right).
_CENTER_BOX = (35 / 256, 223 / 256, 32 / 256, 220 / 256)

Crop = Literal["full", "center"]


class SqueezeExcite(nn.Module):
    """Channel gate: global average → 1×1 conv down → ReLU → 1×1 conv up → sigmoid → scale."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


class IRSEUnit(nn.Module):
    """Improved residual unit with SE: BN → conv3 → PReLU → conv3 (stride) → BN → SE, plus shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if in_channels == out_channels:
            # a 1×1 max-pool is a strided subsample without parameters (the official layout)
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
            nn.PReLU(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            SqueezeExcite(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRSE50(nn.Module):
    """ArcFace IR-SE50 on 112×112 RGB faces in [-1, 1] → 512-d embedding (not normalised)."""

    def __init__(self) -> None:
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        units = []
        for in_ch, out_ch, count in _STAGES:
            units.append(IRSEUnit(in_ch, out_ch, 2))
            units.extend(IRSEUnit(out_ch, out_ch, 1) for _ in range(count - 1))
        self.body = nn.Sequential(*units)
        spatial = INPUT_SIZE // 16
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512),
            nn.Dropout(0.6),  # inactive in eval mode; kept so the Linear sits at the official index 3
            nn.Flatten(),
            nn.Linear(512 * spatial * spatial, EMBEDDING_DIM),
            nn.BatchNorm1d(EMBEDDING_DIM),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.body(self.input_layer(x)))


class ArcFace(nn.Module):
    """Frozen IR-SE50 with FFHQ-crop preprocessing; :meth:`embed` is differentiable in its input."""

    def __init__(self, net: IRSE50, crop: Crop = "full") -> None:
        super().__init__()
        if crop not in ("full", "center"):
            raise ValueError(f"crop must be 'full' or 'center', not {crop!r}")
        self.net = net.eval().requires_grad_(False)
        self.crop = crop

    def train(self, mode: bool = True) -> ArcFace:
        # BatchNorm/Dropout stay in inference mode: the embedding must not depend on the batch.
        return super().train(False)

    def preprocess(self, faces: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] RGB in [0, 1] → [B, 3, 112, 112] in [-1, 1] as the network was trained."""
        if faces.ndim != 4 or faces.shape[1] != 3:
            raise ValueError(f"faces must be [B, 3, H, W] RGB, got shape {tuple(faces.shape)}")
        if self.crop == "center":
            h, w = faces.shape[-2:]
            top, bottom, left, right = _CENTER_BOX
            faces = faces[:, :, round(top * h) : round(bottom * h), round(left * w) : round(right * w)]
        faces = F.interpolate(faces, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True)
        return faces * 2.0 - 1.0

    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        """L2-normalised [B, 512] embeddings of aligned face crops (gradients flow to ``faces``)."""
        param = next(self.net.parameters())
        x = self.preprocess(faces.to(device=param.device, dtype=param.dtype))
        return F.normalize(self.net(x), dim=1)

    forward = embed

    def similarity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Cosine similarity [B] between two batches of faces, pair by pair (1 = same embedding)."""
        return (self.embed(a) * self.embed(b)).sum(dim=1)


def _with_batch_counters(net: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoints saved before PyTorch 0.4.1 have no BatchNorm ``num_batches_tracked``; PyTorch
    itself fills them in for such files, and they do not affect inference: add the missing ones."""
    state = dict(state)
    for key, value in net.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    return state


def load_arcface(device: str | torch.device = "cpu", weights: Path | None = None, crop: Crop = "full") -> ArcFace:
    """ArcFace IR-SE50 from the verified cache (``bfrboost weights download arcface``) or ``weights``.

    An explicit ``weights`` file is loaded as given (e.g. a converted or fine-tuned copy in the
    official key layout); the cached file is size- and SHA-256-checked first.
    """
    path = Path(weights) if weights is not None else bfrboost.weights.ensure(ARCFACE_FILE)
    net = IRSE50()
    state = _with_batch_counters(net, bfrboost.weights.load_state_dict(path))
    try:
        bfrboost.weights.check_state_dict(net, state)
    except bfrboost.weights.CheckpointMismatch as exc:
        raise WeightsError(
            f"{path}: not an ArcFace IR-SE50 checkpoint ({exc}); run `bfrboost weights download {ARCFACE_CARD}`"
        ) from None
    net.load_state_dict(state, strict=True)
    return ArcFace(net, crop).to(device)


def random_arcface(seed: int = 0, crop: Crop = "full") -> ArcFace:
    """IR-SE50 with seeded random weights and BatchNorm statistics, for tests (no download)."""
    generator = torch.Generator().manual_seed(seed)
    net = IRSE50()
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith("running_mean"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
            elif tensor.ndim == 1 and name.endswith("weight"):  # BatchNorm scales, PReLU slopes
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.5 + 0.5)
            elif tensor.ndim == 1:  # BatchNorm shifts, Linear bias
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
            else:  # He-style init keeps activations in range through 24 units
                fan_in = tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
    return ArcFace(net, crop)
