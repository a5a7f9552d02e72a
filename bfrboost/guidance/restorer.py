"""`GuidedRestorer`: PGDiff guidance (or CodeFormer's one-pass task networks) on whole photos, through
the Restorer's detect → align → paste.

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
from bfrboost.guidance.onepass import METHODS, NETWORKS, OnePass
from bfrboost.guidance.properties import color_stats_of
from bfrboost.guidance.scratch import detect_scratches
from bfrboost.guidance.tasks import TASKS, GuidanceOptions, PGDiff, load_prior, tiny_prior
from bfrboost.pipeline import FACE_SIZE, Prepared, Restorer, _Timer, _to_tensor, _to_uint8

#: Guide name of PGDiff's own restorer (``rrdb_iter_100000.pth``), which is not a registered base.
RRDB_GUIDE = "rrdb"
#: Pixels of a ``mask_color`` at least this close to the colour (every channel) are to be filled.
COLOR_TOLERANCE = 8
COLORS = {"white": (255, 255, 255), "black": (0, 0, 0)}

ImageLike = Path | str | np.ndarray


def read_mask(source: ImageLike, name: str = "mask") -> np.ndarray:
    """A mask image as a float32 H×W array in {0, 1}: every non-zero pixel (any channel) is 1 = fill.

    As PGDiff (``mask > 0`` after reading): a 0/1 mask from a segmentation tool works, and a soft
    (anti-aliased) edge is filled entirely — any value ≥ 1 of 255 counts, never "> 127".
    """
    if isinstance(source, np.ndarray):
        array = source if source.ndim == 2 else source.max(axis=2)
        return (array > 0).astype(np.float32)
    from bfrboost.io.read import read_image

    return read_mask(read_image(Path(source)).rgb, name)


def require_marked(mask: np.ndarray, name: str) -> np.ndarray:
    """``mask`` if it marks at least one pixel; an all-black mask would inpaint nothing, so it is refused."""
    if not mask.any():
        raise InputError(
            f"{name}: the mask is all black, so there is nothing to fill; mark the pixels to fill with any non-black value"
        )
    return mask


#: A photo whose colour beyond a tint (:func:`colour_beyond_tint`) exceeds this many levels is "in
#: colour": gray and sepia scans measure 0–4.1 on the test photos, colour photos 3.9–18.5 (docs/guided.md).
IN_COLOUR = 5.0


def colour_beyond_tint(image: np.ndarray) -> float:
    """RMS (0–255 levels) of what an affine map of the lightness does not explain, per channel.

    Gray and tinted monochrome (sepia, a faded cast) are each channel = a·lightness + b, so they
    measure ~0 whatever their tint; a colour photo has hues the lightness cannot predict.
    """
    x = image.reshape(-1, 3).astype(np.float64)[:: max(1, image.shape[0] * image.shape[1] // 262144)]
    basis = np.stack([x.mean(axis=1), np.ones(len(x))], axis=1)
    coef, *_ = np.linalg.lstsq(basis, x, rcond=None)
    return float(np.sqrt(((x - basis @ coef) ** 2).mean()))


def check_gray(image: np.ndarray, name: str) -> None:
    """Refuse to colourise ``image`` when it is already in colour (re-colouring it loses its colours)."""
    level = colour_beyond_tint(image)
    if level > IN_COLOUR:
        raise InputError(
            f"{name}: already in colour ({level:.1f} levels of colour beyond a tint > {IN_COLOUR:g}); "
            "colorize would replace its colours — pass --force to do it anyway"
        )


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

    ``task``: ``restore``, ``colorize``, ``inpaint`` or ``old-photo``. ``method``: ``pgdiff`` (guided
    sampling from the FFHQ prior) or ``codeformer`` (CodeFormer's one-pass colourisation/inpainting
    network; ``colorize`` and ``inpaint`` only). ``guide``: the smooth-semantics restorer for
    ``restore``/``old-photo`` (a base name such as ``codeformer``, or ``rrdb``); its
    ``weights``/``knobs``/``fidelity`` are the Restorer's. ``prior``: a prior checkpoint in the
    official format (default: the cached DifFace prior) or a built network. ``masks``: one mask for
    every input or a folder of masks named like the inputs (any non-black pixel = fill);
    ``mask_color`` finds them in the photo instead; ``scratches="auto"`` detects scratches on each face
    crop (old photos). ``reference``: photos of the same person, or one folder of references named
    like the inputs (identity guidance, ``restore`` only; in each photo only its largest face is
    guided). ``color_refs``: photos whose colour statistics colourisation aims for. ``keep_known``:
    put the known pixels back after inpainting (default: as the method's upstream code — on for
    CodeFormer, off for PGDiff). ``force``: colourise photos that are already in colour.
    ``tiny``: a random 64 px demo prior (and random RRDB/ArcFace/CodeFormer), no download.
    Everything else is :class:`Restorer`'s.
    """

    def __init__(
        self,
        task: str = "restore",
        *,
        method: str = "pgdiff",
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
        keep_known: bool | None = None,
        force: bool = False,
        tiny: bool = False,
        **kwargs: Any,
    ) -> None:
        _check_arguments(task, method, reference, masks, mask_color, keep_known, kwargs)
        self.task, self.method, self.force, self.tiny = task, method, force, tiny
        self.options = options or GuidanceOptions()
        self.keeps_gray = task not in ("colorize", "old-photo")
        self.keep_known = (method == "codeformer") if keep_known is None else keep_known
        uses_guide = task in ("restore", "old-photo")
        own_weights = kwargs.pop("weights", None) if method == "codeformer" or (uses_guide and guide == RRDB_GUIDE) else None
        if not uses_guide and kwargs.get("weights") is not None:
            raise UsageError(f"task {task!r} uses no restorer, so --weights has nothing to load")
        detector_name = kwargs.get("detector", "auto")
        super().__init__(guide if uses_guide and guide != RRDB_GUIDE else "none", **kwargs)
        self.guided_batch = guided_batch or (4 if self.device.type == "cuda" else 1)
        self.on_step = on_step
        self._set_masks(masks, mask_color, scratches)
        self._detector_name = detector_name
        self._reference_detector: Any = None
        self.onepass: OnePass | None = None
        self.model: PGDiff | None = None
        if method == "codeformer":
            from bfrboost.guidance import onepass

            net = onepass.build(task) if tiny else onepass.load(task, own_weights)
            self.onepass = OnePass(task, net, self.device)
        else:
            uses_rrdb = uses_guide and guide == RRDB_GUIDE
            self.model = self._load_pgdiff(prior, uses_rrdb, own_weights, arcface if reference else False)
        self.reference, self.reference_dir = self._load_references(reference)
        if color_refs:
            crops = _to_tensor([self._reference_crop(r, "colour reference", need_face=False) for r in color_refs], self.device)
            mean, std = color_stats_of([crops * 2 - 1])
            self.options = dataclasses.replace(self.options, color_mean=mean, color_std=std)

    # ---- set-up ----------------------------------------------------------------------------

    def _set_masks(self, masks: str | Path | None, mask_color: str | None, scratches: str | Path | None) -> None:
        self.mask_source = Path(masks) if masks is not None else None
        if self.mask_source is not None and not self.mask_source.exists():
            raise InputError(f"{self.mask_source}: no such mask file or folder")
        self.mask_color = mask_color
        if mask_color is not None:
            color_mask(np.zeros((1, 1, 3), np.uint8), mask_color)  # validates the name now
        self.scratches = scratches
        if isinstance(scratches, (str, Path)) and str(scratches) != "auto":
            self.mask_source = Path(scratches)
            if not self.mask_source.exists():
                raise InputError(f"{self.mask_source}: no such scratch-mask file or folder")

    def _load_pgdiff(self, prior: Any, uses_rrdb: bool, rrdb_weights: Any, arcface: Any) -> PGDiff:
        """The prior, PGDiff's RRDB guide when used, and an ArcFace when references are given (``arcface``
        False = none needed)."""
        from bfrboost.nets import rrdb as rrdb_module

        if isinstance(prior, torch.nn.Module):
            prior_net = prior
        else:
            prior_net = tiny_prior() if self.tiny and prior is None else load_prior(prior)
        rrdb_net = None
        if uses_rrdb and self.tiny and rrdb_weights is None:
            torch.manual_seed(0)
            rrdb_net = rrdb_module.build(None, rrdb_module.TINY_RRDB_CONFIG)
        elif uses_rrdb:
            path = Path(rrdb_weights) if rrdb_weights is not None else weights.ensure(rrdb_module.RRDB_FILE)
            rrdb_net = rrdb_module.load(path, notes=self.notes)
        arcface_net = None
        if arcface is not False:
            from bfrboost.nets.arcface import load_arcface, random_arcface

            if arcface is None or isinstance(arcface, (str, Path)):
                tiny_arcface = self.tiny and arcface is None
                arcface = random_arcface(0) if tiny_arcface else load_arcface(device=self.device, weights=arcface)
            arcface_net = arcface.to(self.device)
        return PGDiff(prior_net, rrdb=rrdb_net, arcface=arcface_net).to(self.device)

    def _load_references(self, reference: Sequence[ImageLike]) -> tuple[torch.Tensor | None, Path | None]:
        """One identity for every input (files), or a folder whose files are matched to inputs by name."""
        if not reference:
            return None, None
        folders = [r for r in reference if not isinstance(r, np.ndarray) and Path(r).is_dir()]
        if folders:
            if len(reference) > 1:
                raise UsageError(
                    "--reference takes one folder (references named like the inputs) or photos of one person, not both"
                )
            return None, Path(folders[0])
        return self._embed(reference), None

    def _embed(self, references: Sequence[ImageLike]) -> torch.Tensor:
        """The unit-length mean ArcFace embedding (1, D) of reference photos of one person."""
        assert self.model is not None
        crops = _to_tensor([self._reference_crop(r, "reference") for r in references], self.device)
        return torch.nn.functional.normalize(self.model.embed(crops).mean(0, keepdim=True), dim=1)

    # ---- inputs ----------------------------------------------------------------------------

    def _reference_crop(self, source: ImageLike, what: str, need_face: bool = True) -> np.ndarray:
        """An aligned crop of a reference: a square image with a face is taken as aligned, else its largest
        face is aligned. A reference identity must show a face (also with ``--aligned``): refused otherwise."""
        from bfrboost.faces.align import warp_faces
        from bfrboost.faces.detect import get_detector
        from bfrboost.io.read import read_image

        name = str(source) if not isinstance(source, np.ndarray) else f"{what} image"
        image = source if isinstance(source, np.ndarray) else read_image(Path(source)).rgb
        h, w = image.shape[:2]
        faces = []
        if need_face or h != w:
            if self.detector is None and self._reference_detector is None:  # --aligned loads none for the inputs
                self._reference_detector = get_detector(self._detector_name, device=str(self.device))
            faces = (self.detector or self._reference_detector).detect(image)
            if not faces:
                raise InputError(f"{name}: no face found in this {what}; give a photo or an aligned 512×512 crop of the face")
        if h == w:
            return cv2.resize(image, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA if h > FACE_SIZE else cv2.INTER_CUBIC)
        largest = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
        warp_faces(image, [largest], size=FACE_SIZE)
        return largest.crop

    def mask_for(self, path: Path) -> np.ndarray | None:
        """The mask of input ``path``: the one mask file, or the folder's file with the same stem."""
        if self.mask_source is None:
            return None
        if self.mask_source.is_file():
            return read_mask(self.mask_source)
        return read_mask(self._named_like(path, self.mask_source, "mask", "(white = fill) or leave the folder out"))

    @staticmethod
    def _named_like(path: Path, folder: Path, what: str, advice: str) -> Path:
        matches = sorted(p for p in folder.iterdir() if p.stem == path.stem and p.is_file())
        if not matches:
            raise InputError(f"{path}: no {what} named {path.stem}.* in {folder}; add one {advice}")
        return matches[0]

    def input_targets(self, path: Path, image: np.ndarray) -> dict[str, Any] | None:
        """The mask and reference identity of input ``path`` (by its name), checked against the photo."""
        extras = self._checked(image, str(path), self.mask_for(path), str(self.mask_source))
        if self.reference_dir is not None:
            ref = self._named_like(path, self.reference_dir, "reference", "(a photo of the same person)")
            extras["reference"] = self._embed([ref])
        return extras

    def _checked(self, image: np.ndarray, name: str, mask: np.ndarray | None, mask_name: str) -> dict[str, Any]:
        """Per-input extras, or one line on what is wrong with this input (its own failure, not the batch's)."""
        if self.task == "colorize" and not self.force:
            check_gray(image, name)
        if self.mask_color is not None:
            mask, mask_name = color_mask(image, self.mask_color), f"{name}: --mask-color {self.mask_color}"
        extras: dict[str, Any] = {"photo_shape": image.shape[:2], "checked": True}
        if mask is not None:
            check_mask_shape(mask, image.shape, mask_name)
            if self.task == "inpaint":
                require_marked(mask, mask_name)
            extras.update(mask=mask, mask_name=mask_name)
        return extras

    def restore(self, image: np.ndarray, alpha: np.ndarray | None = None, mask: np.ndarray | None = None) -> Any:  # type: ignore[override]
        """Restore one RGB uint8 image; ``mask`` (H×W, non-zero = fill) in photo or crop coordinates."""
        extras = self._checked(image, "image", read_mask(mask) if mask is not None else None, "mask")
        return self.restore_batch([image], [alpha], targets=[extras])[0]

    def restore_batch(self, images: Sequence[np.ndarray], alphas: Any = None, targets: Any = None) -> list[Any]:
        targets = [dict(t or {}) for t in (targets if targets is not None else [None] * len(images))]
        for index, (image, extras) in enumerate(zip(images, targets, strict=True)):
            if not extras.get("checked"):
                targets[index] = {**extras, **self._checked(image, f"image {index}", extras.get("mask"), "mask")}
        return super().restore_batch(images, alphas, targets)

    def prepare(
        self, image: np.ndarray, alpha: np.ndarray | None = None, extras: Any = None, landmark_filter: Any = None
    ) -> Prepared:
        """Detect and align; the input's reference identity stays on its largest face only."""
        prepared = super().prepare(image, alpha, extras, landmark_filter)
        reference = (extras or {}).get("reference", self.reference)
        for face in prepared.faces:
            face.extras.pop("reference", None)
        if reference is not None and prepared.faces:
            largest = max(prepared.faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
            largest.extras["reference"] = reference
        return prepared

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
        masks = [self._crop_mask(face) for face in faces] if self.task in ("inpaint", "old-photo") else [None] * len(faces)
        if self.onepass is not None:
            out = []
            for index, (face, mask) in enumerate(zip(faces, masks, strict=True)):
                with timer("base"):
                    out += self.onepass([face.crop], [mask] if self.task == "inpaint" else None, keep_known=self.keep_known)
                if self.on_step is not None:
                    self.on_step(index + 1, len(faces))
            return out
        out = []
        for start in range(0, len(faces), self.guided_batch):
            chunk = slice(start, start + self.guided_batch)
            out += self._sample(faces[chunk], masks[chunk], timer, start, len(faces))
        if self.keep_known and self.task == "inpaint":
            out = [
                crop if m is None else np.where(m[..., None] > 0, crop, face.crop)
                for crop, m, face in zip(out, masks, faces, strict=True)
            ]
        return out

    def _sample(
        self, chunk: list[Face], found: list[np.ndarray | None], timer: _Timer, start: int, total: int
    ) -> list[np.ndarray]:
        """Guided sampling of one batch of faces."""
        assert self.model is not None
        crops = _to_tensor([face.crop for face in chunk], self.device)
        targets = None
        if self.task in ("restore", "old-photo") and self.model.rrdb is None:
            with timer("base"):
                targets = self.base.restore(crops)
        masks = None
        if any(m is not None for m in found):
            empty = np.zeros((FACE_SIZE, FACE_SIZE), np.float32)
            masks = torch.from_numpy(np.stack([m if m is not None else empty for m in found]))[:, None].to(self.device)
        references = [face.extras.get("reference") for face in chunk]
        reference = reference_faces = None
        if any(r is not None for r in references):
            dim = next(r for r in references if r is not None).shape[-1]
            reference = torch.cat([r if r is not None else torch.zeros(1, dim, device=self.device) for r in references])
            reference_faces = torch.tensor([float(r is not None) for r in references], device=self.device)
        with timer("guidance"):
            restored = self.model(
                self.task, crops, self.options, targets=targets, masks=masks, reference=reference,
                reference_faces=reference_faces, on_step=self._progress(start, len(chunk), total),
            )
        return _to_uint8(restored)

    def _progress(self, first: int, count: int, total: int) -> Callable[[int, int], None] | None:
        """Sampler steps of faces ``first … first+count`` as face-steps done out of all ``total`` faces'."""
        if self.on_step is None:
            return None
        report = self.on_step
        return lambda done, steps: report(first * steps + done * count, total * steps)


def _check_arguments(
    task: str, method: str, reference: Sequence[Any], masks: Any, mask_color: Any, keep_known: bool | None, kwargs: dict[str, Any]
) -> None:
    """Usage errors, before anything is loaded."""
    if task not in TASKS:
        raise UsageError(f"unknown guided task {task!r}; use one of {', '.join(TASKS)}")
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; use {' or '.join(METHODS)}")
    if method == "codeformer" and task not in NETWORKS:
        raise UsageError(f"CodeFormer publishes networks for {' and '.join(NETWORKS)} only; {task} needs --method pgdiff")
    if kwargs.get("refine") or kwargs.get("refiner") is not None:
        raise UsageError("the InfoBFR refiner does not run after guided restoration yet; drop --refine/--refiner")
    if reference and task != "restore":
        raise UsageError("--reference guides restoration only: use `bfrboost restore --base pgdiff --reference REF`")
    if masks is not None and mask_color is not None:
        raise UsageError("give either --mask FILE|DIR or --mask-color, not both")
    if keep_known and task != "inpaint":
        raise UsageError("--keep-known puts the unmasked pixels back after inpainting; it is for `bfrboost inpaint` only")
