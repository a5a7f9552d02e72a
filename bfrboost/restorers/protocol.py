"""The small protocol every face restorer follows, and the helpers they share (timing, crops ↔ tensors).

A face restorer turns aligned FACE_SIZE² crops into restored crops; finding faces and pasting them
back are the :class:`~bfrboost.pipeline.Restorer`'s other parts, so a new way of restoring faces is a
new face restorer, not a Restorer subclass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import numpy as np
import torch

from bfrboost.faces.types import FACE_SIZE, Face

__all__ = ["FACE_SIZE", "FaceRestorer", "StepCallback", "Timer", "to_tensor", "to_uint8"]

StepCallback = Callable[[int, int], None]


class Timer:
    """Accumulates seconds per stage (``with timer("base"): ...``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def to_tensor(crops: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """RGB uint8 H×W×3 crops → (B, 3, H, W) float in [0, 1] on ``device``."""
    array = np.stack(crops).astype(np.float32) / 255.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).to(device)


def to_uint8(batch: torch.Tensor) -> list[np.ndarray]:
    """(B, 3, H, W) in [0, 1] → RGB uint8 H×W×3 crops."""
    array = (batch.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return list(array)


class FaceRestorer(Protocol):
    """Aligned crops in, restored crops out.

    ``keeps_gray``: a gray input is written gray (bases may tint it; colourising turns this off).
    ``reports_steps``: it calls ``on_step(done, total)`` while it works (diffusion sampling), so a
    caller may show a step-level progress bar. ``notes``: one-line remarks for the user.
    """

    name: str
    keeps_gray: bool
    reports_steps: bool
    on_step: StepCallback | None
    notes: list[str]

    def image_extras(self, image: np.ndarray, extras: Mapping[str, Any] | None) -> dict[str, Any]:
        """What each face of ``image`` carries besides its crop (``Face.extras``), from the caller's ``extras``."""
        ...

    def restore_faces(self, faces: list[Face], timer: Timer) -> list[np.ndarray]:
        """Restored RGB uint8 crops of ``faces`` (aligned, ``face.crop``), in order."""
        ...
