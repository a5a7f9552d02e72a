"""The ``pgdiff`` face restorer: PGDiff partial guidance over the FFHQ-512 IDDPM prior.

Colourise, inpaint, restore old photos or restore by guidance (optionally towards a reference
identity). For ``restore``/``old-photo`` a *guide* restores the crop first (the smooth-semantics
target: any registered base, or ``rrdb``, PGDiff's own time-conditioned restorer); each face is then
sampled from the prior under the task's properties. Masks arrive as arrays in each image's extras.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from bfrboost import weights
from bfrboost.errors import UsageError
from bfrboost.faces.types import Face
from bfrboost.guidance.masks import check_mask_shape, color_mask, mask_to_crop, read_mask
from bfrboost.guidance.properties import color_stats_of
from bfrboost.guidance.scratch import detect_scratches
from bfrboost.guidance.tasks import PGDiff, load_prior
from bfrboost.options import GuidanceOptions, RestoreOptions
from bfrboost.restorers.base import BaseRestorer
from bfrboost.restorers.protocol import FACE_SIZE, StepCallback, Timer, to_tensor, to_uint8

#: Guide name of PGDiff's own restorer (``rrdb_iter_100000.pth``), which is not a registered base.
RRDB_GUIDE = "rrdb"
#: Finds the face of a reference photo that is not an aligned crop: ``(image) -> aligned crop``.
ReferenceAligner = Callable[[np.ndarray, str], np.ndarray]


class GuidedFaceRestorer:
    """PGDiff on aligned crops, the ``pgdiff`` entry of :data:`bfrboost.restorers.FACE_RESTORERS`."""

    reports_steps = True

    def __init__(self, restore: RestoreOptions, guidance: GuidanceOptions, device: torch.device,
                 align_reference: ReferenceAligner | None = None) -> None:
        task = guidance.task
        if restore.refine or restore.refiner is not None:
            raise UsageError("the InfoBFR refiner does not run after guided restoration yet; drop --refine/--refiner")
        if guidance.reference and task != "restore":
            raise UsageError("--reference guides restoration only: use `bfrboost restore --base pgdiff --reference REF`")
        self.name, self.task, self.options, self.device = "pgdiff", task, guidance, device
        self.keeps_gray = task not in ("colorize", "old-photo")
        self.on_step: StepCallback | None = None
        self.batch = guidance.batch_size or (4 if device.type == "cuda" else 1)
        self.guide = self._guide(restore, guidance)
        self.notes = self.guide.notes
        self.align_reference = align_reference or _square_reference
        prior = guidance.prior if isinstance(guidance.prior, torch.nn.Module) else load_prior(guidance.prior)
        rrdb = self._rrdb(restore.weights) if self._uses_rrdb() else None
        self.model = PGDiff(prior, rrdb=rrdb, arcface=self._arcface()).to(device)
        self.reference = self._reference_embedding()
        if guidance.color_refs:
            crops = to_tensor([self._reference_crop(r, "colour reference") for r in guidance.color_refs], device)
            mean, std = color_stats_of([crops * 2 - 1])
            self.options = dataclasses.replace(self.options, color_mean=mean, color_std=std)

    # ---- parts ------------------------------------------------------------------------------

    def _uses_guide(self) -> bool:
        return self.task in ("restore", "old-photo")

    def _uses_rrdb(self) -> bool:
        return self._uses_guide() and self.options.guide == RRDB_GUIDE

    def _guide(self, restore: RestoreOptions, guidance: GuidanceOptions) -> BaseRestorer:
        """The base model that gives the smooth-semantics target (``none`` when PGDiff's RRDB or no guide)."""
        if not self._uses_guide() and restore.weights is not None:
            raise UsageError(f"task {self.task!r} uses no restorer, so --weights has nothing to load")
        name = guidance.guide if self._uses_guide() and guidance.guide != RRDB_GUIDE else "none"
        weights_file = None if name == "none" else restore.weights
        return BaseRestorer(dataclasses.replace(restore, base=name, weights=weights_file), self.device)

    def _rrdb(self, path: str | Path | None) -> torch.nn.Module:
        from bfrboost.nets import rrdb

        return rrdb.load(Path(path) if path is not None else weights.ensure(rrdb.RRDB_FILE))

    def _arcface(self) -> torch.nn.Module | None:
        arcface = self.options.arcface
        if not self.options.reference:
            return None
        if arcface is None or isinstance(arcface, (str, Path)):
            from bfrboost.nets.arcface import load_arcface

            arcface = load_arcface(device=self.device, weights=arcface)
        return arcface.to(self.device)

    def _reference_embedding(self) -> torch.Tensor | None:
        if not self.options.reference:
            return None
        crops = to_tensor([self._reference_crop(r, "reference") for r in self.options.reference], self.device)
        embedding = self.model.embed(crops).mean(0, keepdim=True)
        return torch.nn.functional.normalize(embedding, dim=1)

    def _reference_crop(self, source: Path | str | np.ndarray, what: str) -> np.ndarray:
        """An aligned crop of a reference photo (a file or an array)."""
        from bfrboost.io.read import read_image

        name = str(source) if not isinstance(source, np.ndarray) else f"{what} image"
        image = source if isinstance(source, np.ndarray) else read_image(Path(source)).rgb
        return self.align_reference(image, f"{name}: no face found in this {what}")

    # ---- the protocol -----------------------------------------------------------------------

    def image_extras(self, image: np.ndarray, extras: Mapping[str, Any] | None) -> dict[str, Any]:
        """The photo's shape (to warp masks), its mask (an array, checked) or the painted one (``mask_color``)."""
        out = dict(extras or {})
        out["photo_shape"] = image.shape[:2]
        if out.get("mask") is not None:
            out["mask"] = read_mask(out["mask"])
            check_mask_shape(out["mask"], image.shape, out.get("mask_name", "mask"))
        if self.options.mask_color is not None:
            out["mask"] = color_mask(image, self.options.mask_color)
            out["mask_name"] = f"--mask-color {self.options.mask_color}"
        return out

    def restore_faces(self, faces: list[Face], timer: Timer) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for start in range(0, len(faces), self.batch):
            out += self._restore_chunk(faces[start : start + self.batch], start, len(faces), timer)
        return out

    def _restore_chunk(self, chunk: list[Face], first: int, total: int, timer: Timer) -> list[np.ndarray]:
        crops = to_tensor([face.crop for face in chunk], self.device)
        targets = None
        if self._uses_guide() and self.model.rrdb is None:
            with timer("base"):
                targets = self.guide.base.restore(crops)
        with timer("guidance"):
            restored = self.model(
                self.task, crops, self.options, targets=targets, masks=self._masks(chunk), reference=self.reference,
                on_step=self._progress(first, len(chunk), total),
            )
        return to_uint8(restored)

    def _masks(self, chunk: Sequence[Face]) -> torch.Tensor | None:
        if self.task not in ("inpaint", "old-photo"):
            return None
        found = [self._crop_mask(face) for face in chunk]
        if all(m is None for m in found):
            return None
        empty = np.zeros((FACE_SIZE, FACE_SIZE), np.float32)
        return torch.from_numpy(np.stack([m if m is not None else empty for m in found]))[:, None].to(self.device)

    def _crop_mask(self, face: Face) -> np.ndarray | None:
        mask = face.extras.get("mask")
        if mask is not None:
            mask = mask_to_crop(mask, face, face.extras["photo_shape"], face.extras.get("mask_name", "mask"))
        if self.options.scratches == "auto":
            found = detect_scratches(face.crop)
            mask = found if mask is None else np.maximum(mask, found)
        return mask

    def _progress(self, first: int, count: int, total: int) -> StepCallback | None:
        """Sampler steps of faces ``first … first+count`` as face-steps done out of all ``total`` faces'."""
        if self.on_step is None:
            return None
        report = self.on_step
        return lambda done, steps: report(first * steps + done * count, total * steps)


def _square_reference(image: np.ndarray, _: str) -> np.ndarray:
    """An aligned crop when no detector is at hand: the image itself, resized (a square photo is aligned)."""
    h = image.shape[0]
    return cv2.resize(image, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA if h > FACE_SIZE else cv2.INTER_CUBIC)

