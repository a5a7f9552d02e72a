"""Background upsampler: Real-ESRGAN upscales the whole photo before the restored faces are pasted on.

GFPGAN and CodeFormer users expect ``--bg_upsampler realesrgan`` rather than a plain Lanczos resize.
The network is the official RRDBNet (``RealESRGAN_x2plus.pth`` / ``RealESRGAN_x4plus.pth``), built by
spandrel from the checkpoint's keys; x2plus pixel-unshuffles its input (12 channels) and runs the same
×4 body, so it is a ×2 model.

Inference follows upstream ``RealESRGANer``: RGB in [0, 1], tiles of ``tile`` input pixels each
seen with ``tile_pad`` pixels of context (so memory stays bounded on big photos), fp16 on CUDA, and a
Lanczos resize from the model's scale to the exact requested one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from bfrboost import weights
from bfrboost.errors import UsageError, WeightsError

if TYPE_CHECKING:
    from spandrel import ImageModelDescriptor

NAMES = ("none", "realesrgan")
X2_FILE = "RealESRGAN_x2plus.pth"
X4_FILE = "RealESRGAN_x4plus.pth"
TILE_PAD = 10  # context around each tile, as upstream RealESRGANer


def weight_file(upscale: float) -> str:
    """The ×2 model serves upscales up to 2 (cheaper, no large downsizing); beyond that the ×4 one."""
    return X2_FILE if upscale <= 2 else X4_FILE


@dataclass
class Upsampler:
    """A loaded Real-ESRGAN model and how to run it; build it with :func:`load_upsampler`."""

    net: ImageModelDescriptor  # spandrel's call pads to the size requirements and clamps to [0, 1]
    scale: int
    device: torch.device
    dtype: torch.dtype
    tile: int  # input pixels per tile side; 0 = the whole image at once
    tile_pad: int
    file: str

    def upscale(self, rgb: np.ndarray, outscale: float) -> np.ndarray:
        """RGB uint8 H×W×3 → RGB uint8 of size (round(H·outscale), round(W·outscale))."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise UsageError(f"images must be RGB uint8 H×W×3 arrays, got {rgb.dtype} {rgb.shape}")
        if outscale <= 0:
            raise UsageError(f"outscale must be positive, got {outscale}")
        h, w = rgb.shape[:2]
        out = self._model_scale(rgb)
        size = (round(w * outscale), round(h * outscale))
        if out.shape[1::-1] != size:
            out = cv2.resize(out, size, interpolation=cv2.INTER_LANCZOS4)
        return out

    @torch.inference_mode()
    def _model_scale(self, rgb: np.ndarray) -> np.ndarray:
        """The network's own ×``scale`` output, tile by tile, assembled in host memory."""
        h, w = rgb.shape[:2]
        s = self.scale
        image = torch.from_numpy(rgb).to(self.device).permute(2, 0, 1).unsqueeze(0)
        out = np.empty((h * s, w * s, 3), dtype=np.uint8)
        step = self.tile or max(h, w)
        for y0 in range(0, h, step):
            for x0 in range(0, w, step):
                y1, x1 = min(y0 + step, h), min(x0 + step, w)
                py0, px0 = max(y0 - self.tile_pad, 0), max(x0 - self.tile_pad, 0)
                py1, px1 = min(y1 + self.tile_pad, h), min(x1 + self.tile_pad, w)
                patch = image[..., py0:py1, px0:px1].to(self.dtype).div_(255)
                result = self.net(patch)[0, :, (y0 - py0) * s : (y1 - py0) * s, (x0 - px0) * s : (x1 - px0) * s]
                out[y0 * s : y1 * s, x0 * s : x1 * s] = result.float().mul_(255).round_().byte().permute(1, 2, 0).cpu().numpy()
        return out


def load_upsampler(
    name: str,
    upscale: float,
    device: torch.device | str = "cpu",
    tile: int = 400,
    half: bool | None = None,
    tile_pad: int = TILE_PAD,
) -> Upsampler | None:
    """Real-ESRGAN for ``upscale`` (×2 model up to 2, else ×4), or ``None`` for ``name="none"``.

    ``half`` defaults to fp16 on CUDA; it is refused elsewhere (CPU fp16 convolutions are slow or missing).
    """
    if name not in NAMES:
        raise UsageError(f"unknown background upsampler {name!r}; choose one of: {', '.join(NAMES)}")
    if name == "none":
        return None
    if tile < 0 or tile_pad < 0:
        raise UsageError(f"tile ({tile}) and tile_pad ({tile_pad}) must be >= 0 (tile 0 = no tiling)")
    device = torch.device(device)
    half = device.type == "cuda" if half is None else half
    if half and device.type != "cuda":
        raise UsageError(f"fp16 background upsampling needs a CUDA device, not {device}; leave half off")

    file = weight_file(upscale)
    descriptor = _load(weights.ensure(file), expected_scale=2 if file == X2_FILE else 4)
    descriptor.to(device).eval()
    if half:
        descriptor.half()
    descriptor.model.requires_grad_(False)
    # Tile corners on the model's size grid (pixel-unshuffle groups of x2plus), so a tile sees the
    # same pixel groups as the whole image would.
    grid = descriptor.size_requirements.multiple_of
    return Upsampler(
        net=descriptor,
        scale=descriptor.scale,
        device=device,
        dtype=torch.float16 if half else torch.float32,
        tile=_round_up(tile, grid),
        tile_pad=_round_up(tile_pad, grid),
        file=file,
    )


def _load(path: Path, expected_scale: int) -> ImageModelDescriptor:
    """spandrel's ESRGAN descriptor of a checkpoint, refusing anything but a ×``expected_scale`` RRDBNet."""
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

    state_dict = weights.load_state_dict(path)  # the safe loader; it unwraps ``params_ema`` / ``params``
    refused = WeightsError(
        f"{path}: not a Real-ESRGAN x{expected_scale} RRDBNet checkpoint; "
        f"delete it and run `bfrboost weights download {path.name}`"
    )
    try:
        descriptor = ModelLoader().load_from_state_dict(state_dict)
    except (UnsupportedModelError, KeyError, RuntimeError, ValueError):
        raise refused from None
    if (
        not isinstance(descriptor, ImageModelDescriptor)
        or descriptor.architecture.id != "ESRGAN"
        or descriptor.scale != expected_scale
    ):
        raise refused
    return descriptor


def _round_up(n: int, multiple: int) -> int:
    return math.ceil(n / multiple) * multiple
