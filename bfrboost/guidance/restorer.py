"""`GuidedRestorer`: PGDiff guidance on whole photos, through the Restorer's detect → align → paste.

The Restorer's base model becomes the *guide* (the smooth-semantics restorer: any registered base,
or ``rrdb``, PGDiff's own time-conditioned restorer), and each face is then sampled from the
FFHQ-512 prior under the task's properties. Masks given for a photo are warped into every face crop
with that face's affine (``Face.affine``), exactly as the crop itself was cut; with ``aligned=True``
the photo *is* the crop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from bfrboost import weights
from bfrboost.errors import InputError, UsageError
from bfrboost.faces.align import warp_affine
from bfrboost.faces.types import Face
from bfrboost.guidance.properties import color_stats_of
from bfrboost.guidance.scratch import detect_scratches
from bfrboost.guidance.tasks import TASKS, GuidanceOptions, PGDiff, load_prior
from bfrboost.pipeline import FACE_SIZE, Restorer, _Timer, _to_tensor, _to_uint8

#: Guide name of PGDiff's own restorer (``rrdb_iter_100000.pth``), which is not a registered base.
RRDB_GUIDE = "rrdb"
#: Pixels of a ``mask_color`` at least this close to the colour (every channel) are to be filled.
COLOR_TOLERANCE = 8
COLORS = {"white": (255, 255, 255), "black": (0, 0, 0)}

ImageLike = Path | str | np.ndarray


def read_mask(source: ImageLike) -> np.ndarray:
    """A mask image (white/any non-black = 1) as a float32 H×W array in {0, 1}."""
    if isinstance(source, np.ndarray):
        array = source if source.ndim == 2 else source.max(axis=2)
        return (array > (127 if array.dtype == np.uint8 else 0.5)).astype(np.float32)
    from bfrboost.io.read import read_image

    return read_mask(read_image(Path(source)).rgb)


def color_mask(image: np.ndarray, color: str) -> np.ndarray:
    """1 where ``image`` (RGB uint8) is the named colour (e.g. white strokes painted over a face)."""
    if color not in COLORS:
        raise UsageError(f"unknown mask colour {color!r}; use {', '.join(COLORS)}")
    diff = np.abs(image.astype(np.int16) - np.array(COLORS[color], dtype=np.int16)).max(axis=2)
    return (diff <= COLOR_TOLERANCE).astype(np.float32)


def check_mask_shape(mask: np.ndarray, photo_shape: Sequence[int], name: str = "mask") -> None:
    """A mask must be the photo's size (photo coordinates) or FACE_SIZE² (aligned-crop coordinates)."""
    h, w = photo_shape[:2]
    if mask.shape[:2] not in ((h, w), (FACE_SIZE, FACE_SIZE)):
        raise InputError(
            f"{name}: is {mask.shape[1]}×{mask.shape[0]}, but the photo is {w}×{h}; give a mask of the photo's size "
            f"(photo coordinates) or {FACE_SIZE}×{FACE_SIZE} (aligned-crop coordinates)"
        )


def mask_to_crop(mask: np.ndarray, face: Face, photo_shape: Sequence[int], name: str = "mask") -> np.ndarray:
    """A photo-coordinate mask warped into ``face``'s aligned crop (1 = fill); a FACE_SIZE² mask on a
    photo of another size is taken to be in crop coordinates already."""
    check_mask_shape(mask, photo_shape, name)
    if mask.shape[:2] != tuple(photo_shape[:2]):
        return mask.astype(np.float32)
    warped = warp_affine(mask.astype(np.float32), face.affine, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_LINEAR)
    return (warped > 0.25).astype(np.float32)  # thin strokes survive a shrinking warp


class GuidedRestorer(Restorer):
    """Colourise, inpaint, restore old photos or restore by guidance (optionally towards a reference identity).

    ``task``: ``restore``, ``colorize``, ``inpaint`` or ``old-photo``. ``guide``: the smooth-semantics
    restorer for ``restore``/``old-photo`` (a base name such as ``codeformer``, or ``rrdb``); its
    ``weights``/``knobs``/``fidelity`` are the Restorer's. ``prior``: a prior checkpoint in the
    official format (default: the cached DifFace prior) or a built network. ``masks``: one mask for
    every input or a folder of masks named like the inputs (white = fill); ``mask_color`` finds
    them in the photo instead; ``scratches="auto"`` detects scratches on each face crop (old photos).
    ``reference``: photos of the same person (identity guidance, ``restore`` only); ``color_refs``:
    photos whose colour statistics colourisation aims for. Everything else is :class:`Restorer`'s.
    """

    def __init__(
        self,
        task: str = "restore",
        *,
        guide: str = RRDB_GUIDE,
        prior: str | Path | torch.nn.Module | None = None,
        options: GuidanceOptions | None = None,
        masks: str | Path | None = None,
        mask_color: str | None = None,
        scratches: str | Path | None = None,
        reference: Sequence[ImageLike] = (),
        color_refs: Sequence[ImageLike] = (),
        arcface: Any = None,
        guided_batch: int | None = None,
        on_step: Callable[[int, int], None] | None = None,
        **kwargs: Any,
    ) -> None:
        if task not in TASKS:
            raise UsageError(f"unknown guided task {task!r}; use one of {', '.join(TASKS)}")
        if kwargs.get("refine") or kwargs.get("refiner") is not None:
            raise UsageError("the InfoBFR refiner does not run after guided restoration yet; drop --refine/--refiner")
        if reference and task != "restore":
            raise UsageError("--reference guides restoration only: use `bfrboost restore --base pgdiff --reference REF`")
        if masks is not None and mask_color is not None:
            raise UsageError("give either --mask FILE|DIR or --mask-color, not both")
        self.task = task
        self.options = options or GuidanceOptions()
        self.keeps_gray = task not in ("colorize", "old-photo")
        uses_guide = task in ("restore", "old-photo")
        rrdb_weights = None
        if uses_guide and guide == RRDB_GUIDE:
            rrdb_weights = kwargs.pop("weights", None)
            base = "none"
        else:
            base = guide if uses_guide else "none"
            if not uses_guide and kwargs.get("weights") is not None:
                raise UsageError(f"task {task!r} uses no restorer, so --weights has nothing to load")
        super().__init__(base, **kwargs)
        self.guided_batch = guided_batch or (4 if self.device.type == "cuda" else 1)
        self.on_step = on_step
        self.mask_source = Path(masks) if masks is not None else None
        if self.mask_source is not None and not self.mask_source.exists():
            raise InputError(f"{self.mask_source}: no such mask file or folder; give --mask an image (white = fill) or a folder "
                             "of masks named like the inputs, or use --mask-color")
        self.mask_color = mask_color
        if mask_color is not None:
            color_mask(np.zeros((1, 1, 3), np.uint8), mask_color)  # validates the name now
        self.scratches = scratches
        if isinstance(scratches, (str, Path)) and str(scratches) != "auto":
            self.mask_source = Path(scratches)
            if not self.mask_source.exists():
                raise InputError(f"{self.mask_source}: no such scratch-mask file or folder; give --scratch-mask an image "
                                 "(white = scratch), a folder of masks named like the inputs, or auto")

        from bfrboost.nets import rrdb as rrdb_module

        prior_net = prior if isinstance(prior, torch.nn.Module) else load_prior(prior)
        rrdb_net = None
        if uses_guide and guide == RRDB_GUIDE:
            path = Path(rrdb_weights) if rrdb_weights is not None else weights.ensure(rrdb_module.RRDB_FILE)
            rrdb_net = rrdb_module.load(path)
        arcface_net = None
        if reference:
            if arcface is None or isinstance(arcface, (str, Path)):
                from bfrboost.nets.arcface import load_arcface

                arcface = load_arcface(device=self.device, weights=arcface)
            arcface_net = arcface.to(self.device)
        self.model = PGDiff(prior_net, rrdb=rrdb_net, arcface=arcface_net).to(self.device)
        self.reference = None
        if reference:
            crops = _to_tensor([self._reference_crop(r, "reference") for r in reference], self.device)
            embedding = self.model.embed(crops).mean(0, keepdim=True)
            self.reference = torch.nn.functional.normalize(embedding, dim=1)
        if color_refs:
            crops = _to_tensor([self._reference_crop(r, "colour reference") for r in color_refs], self.device)
            mean, std = color_stats_of([crops * 2 - 1])
            self.options = dataclasses.replace(self.options, color_mean=mean, color_std=std)

    # ---- inputs ----------------------------------------------------------------------------

    def _reference_crop(self, source: ImageLike, what: str) -> np.ndarray:
        """An aligned crop of a reference: a square image is taken as aligned, else its largest face."""
        from bfrboost.io.read import read_image

        name = str(source) if not isinstance(source, np.ndarray) else f"{what} image"
        image = source if isinstance(source, np.ndarray) else read_image(Path(source)).rgb
        h, w = image.shape[:2]
        if h == w or self.detector is None:
            return cv2.resize(image, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA if h > FACE_SIZE else cv2.INTER_CUBIC)
        from bfrboost.faces.align import warp_faces

        faces = self.detector.detect(image)
        if not faces:
            raise InputError(f"{name}: no face found in this {what}; give an aligned 512×512 face crop")
        largest = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
        warp_faces(image, [largest], size=FACE_SIZE)
        return largest.crop

    def mask_for(self, path: Path) -> np.ndarray | None:
        """The mask of input ``path``: the one mask file, or the folder's file with the same stem."""
        if self.mask_source is None:
            return None
        if self.mask_source.is_file():
            return read_mask(self.mask_source)
        matches = sorted(p for p in self.mask_source.iterdir() if p.stem == path.stem and p.is_file())
        if not matches:
            raise InputError(f"{path}: no mask named {path.stem}.* in {self.mask_source}; add one (white = fill) or leave the folder out")
        return read_mask(matches[0])

    def input_targets(self, path: Path, image: np.ndarray) -> dict[str, Any] | None:
        """The mask of input ``path`` (by its name), checked against the photo's size."""
        mask = self.mask_for(path)
        if mask is None:
            return None
        check_mask_shape(mask, image.shape, str(self.mask_source))
        return {"mask": mask, "mask_name": str(self.mask_source)}

    def restore(self, image: np.ndarray, alpha: np.ndarray | None = None, mask: np.ndarray | None = None) -> Any:  # type: ignore[override]
        """Restore one RGB uint8 image; ``mask`` (H×W, 1 = fill) in photo or crop coordinates."""
        if mask is not None:
            mask = read_mask(mask)
            check_mask_shape(mask, image.shape)
        return self.restore_batch([image], [alpha], targets=[{"mask": mask} if mask is not None else None])[0]

    def restore_batch(self, images: Sequence[np.ndarray], alphas: Any = None, targets: Any = None) -> list[Any]:
        targets = [dict(t or {}) for t in (targets if targets is not None else [None] * len(images))]
        for image, extras in zip(images, targets):
            extras["photo_shape"] = image.shape[:2]
            if self.mask_color is not None:
                extras["mask"] = color_mask(image, self.mask_color)
                extras["mask_name"] = f"--mask-color {self.mask_color}"
        return super().restore_batch(images, alphas, targets)

    # ---- faces -----------------------------------------------------------------------------

    def _crop_mask(self, face: Face) -> np.ndarray | None:
        mask = face.extras.get("mask")
        if mask is not None:
            mask = mask_to_crop(mask, face, face.extras["photo_shape"], face.extras.get("mask_name", "mask"))
        if self.scratches is not None and str(self.scratches) == "auto":
            found = detect_scratches(face.crop)
            mask = found if mask is None else np.maximum(mask, found)
        return mask

    def _restore_faces(self, faces: list[Face], timer: _Timer) -> list[np.ndarray]:
        if not faces:
            return []
        out: list[np.ndarray] = []
        total = len(faces)
        for start in range(0, total, self.guided_batch):
            chunk = faces[start : start + self.guided_batch]
            crops = _to_tensor([face.crop for face in chunk], self.device)
            targets = None
            if self.task in ("restore", "old-photo") and self.model.rrdb is None:
                with timer("base"):
                    targets = self.base.restore(crops)
            masks = None
            if self.task in ("inpaint", "old-photo"):
                found = [self._crop_mask(face) for face in chunk]
                if any(m is not None for m in found):
                    masks = torch.from_numpy(np.stack([m if m is not None else np.zeros((FACE_SIZE, FACE_SIZE), np.float32) for m in found]))[:, None].to(self.device)
            with timer("guidance"):
                restored = self.model(
                    self.task, crops, self.options, targets=targets, masks=masks, reference=self.reference,
                    on_step=self._progress(start, len(chunk), total),
                )
            out += _to_uint8(restored)
        return out

    def _progress(self, first: int, count: int, total: int) -> Callable[[int, int], None] | None:
        """Sampler steps of faces ``first … first+count`` as face-steps done out of all ``total`` faces'."""
        if self.on_step is None:
            return None
        report = self.on_step
        return lambda done, steps: report(first * steps + done * count, total * steps)
