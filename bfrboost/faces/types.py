"""Plain data passed between the face stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from bfrboost.faces.detect import Detector
    from bfrboost.faces.parse import FaceParser

FACE_SIZE = 512
"""Side of the aligned face crops every face restorer works on (the FFHQ 512 template)."""


@dataclass
class Face:
    """One detected face.

    Coordinates are in pixels of the *input* image (before upscaling).
    ``affine`` maps input-image coordinates to the aligned crop (2×3, float64).
    ``crop`` / ``restored`` are aligned RGB uint8 crops (size×size×3).
    """

    box: np.ndarray  # (4,) x1, y1, x2, y2
    score: float
    landmarks: np.ndarray  # (5, 2): left eye, right eye, nose, left mouth, right mouth
    affine: np.ndarray | None = None
    crop: np.ndarray | None = None
    restored: np.ndarray | None = None
    extras: dict = field(default_factory=dict)


class FaceNetworks(Protocol):
    """Where the detector's and the parser's networks run (``--runtime``): each method returns the part
    as it is (PyTorch, or a part without a network such as dlib) or the same part on another runtime."""

    def detector(self, detector: Detector) -> Detector: ...

    def parser(self, parser: FaceParser) -> FaceParser: ...
