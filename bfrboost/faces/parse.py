"""Soft paste masks from facexlib's ParseNet face parser, when its weights are cached.

A parsing mask follows the face outline, so hair, hands and background around the face keep the
frame's pixels instead of the square crop's. Without the weights, ``load_parser`` returns ``None``
and ``paste_faces`` falls back to its soft square.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from bfrboost import weights

PARSENET_FILE = "parsing_parsenet.pth"

# ParseNet's 19 labels; the mask keeps those facexlib pastes (1–13 and 15) and drops the rest
# (0 background, 14, 16–18), exactly as facexlib's paste-back does.
KEPT_LABELS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15)
_NUM_LABELS = 19
# facexlib blurs the 0/1 mask twice with a 101-tap Gaussian of sigma 11, i.e. once with sigma 11·√2
# (at 512 px), then clears a 10-pixel frame so the crop edge never shows.
_BLUR_SIGMA_512 = 11.0 * np.sqrt(2.0)
_EDGE_512 = 10


def parsenet_path() -> Path:
    return weights.home() / PARSENET_FILE


def labels_to_mask(labels: np.ndarray, size: int) -> np.ndarray:
    """Soft ``size``×``size`` float32 mask (0–1) from an H×W label map: kept labels, blurred."""
    keep = np.zeros(_NUM_LABELS, dtype=np.float32)
    keep[list(KEPT_LABELS)] = 1.0
    mask = cv2.resize(keep[labels], (size, size), interpolation=cv2.INTER_LINEAR)
    sigma = _BLUR_SIGMA_512 * size / 512.0
    mask = cv2.GaussianBlur(mask, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
    edge = max(round(_EDGE_512 * size / 512.0), 1)
    mask[:edge], mask[-edge:], mask[:, :edge], mask[:, -edge:] = 0.0, 0.0, 0.0, 0.0
    return np.clip(mask, 0.0, 1.0)


#: ParseNet's network: a (B, 3, R, R) face batch in [-1, 1] → a tuple whose first item is the (B, 19, R, R)
#: parsing logits. The PyTorch module, or the same graph on ONNX Runtime.
ParseForward = Callable[[torch.Tensor], Sequence[torch.Tensor]]


class FaceParser:
    """ParseNet on aligned crops; ``resolution`` is the size the network sees (it was trained on
    512; smaller values trade accuracy for CPU time, the mask is resized to the crop either way).
    The network is ``forward`` (the PyTorch module ``net``; :meth:`with_forward` gives another runtime's)."""

    def __init__(self, net: torch.nn.Module, device: str | torch.device = "cpu", resolution: int = 512) -> None:
        self.net = net.to(device).eval()
        self.device = torch.device(device)
        self.resolution = resolution
        self.forward: ParseForward = self.net

    def with_forward(self, forward: ParseForward) -> FaceParser:
        """This parser with another network of the same graph (e.g. on ONNX Runtime); settings shared."""
        other = copy.copy(self)
        other.forward = forward
        return other

    @torch.inference_mode()
    def masks(self, faces: Sequence[np.ndarray], batch_size: int = 4) -> list[np.ndarray]:
        """One soft mask per RGB uint8 face crop (facexlib parses the *restored* face)."""
        out: list[np.ndarray] = []
        for start in range(0, len(faces), batch_size):
            chunk = faces[start : start + batch_size]
            batch = np.stack([cv2.resize(f, (self.resolution,) * 2, interpolation=cv2.INTER_LINEAR) for f in chunk])
            x = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            labels = self.forward(x)[0].argmax(dim=1).cpu().numpy()
            out.extend(labels_to_mask(label, face.shape[0]) for label, face in zip(labels, chunk))
        return out


def load_parser(device: str | torch.device = "cpu", resolution: int = 512, required: bool = False) -> FaceParser | None:
    """ParseNet from the bfrboost cache, or ``None`` when its file is absent (``required`` raises)."""
    if not parsenet_path().is_file() and not required:
        return None
    path = weights.ensure(PARSENET_FILE)  # verified before use; fetched when required and missing
    # facexlib imports slowly (numba), so only when the parser is really built.
    from facexlib.parsing.parsenet import ParseNet

    net = ParseNet(in_size=512, out_size=512, parsing_ch=_NUM_LABELS)
    weights.load_into(net, path, "ParseNet", "parsenet")
    return FaceParser(net, device, resolution)
