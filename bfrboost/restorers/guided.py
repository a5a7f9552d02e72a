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
from bfrboost.guidance.masks import check_gray, check_mask_shape, color_mask, mask_to_crop, read_mask, require_marked
from bfrboost.guidance.onepass import NETWORKS, OnePass
from bfrboost.guidance.properties import color_stats_of
from bfrboost.guidance.scratch import detect_scratches
from bfrboost.guidance.tasks import PGDiff, load_prior, tiny_prior
from bfrboost.options import GuidanceOptions, RestoreOptions
from bfrboost.restorers.base import BaseRestorer
from bfrboost.restorers.protocol import FACE_SIZE, StepCallback, Timer, to_tensor, to_uint8

#: Guide name of PGDiff's own restorer (``rrdb_iter_100000.pth``), which is not a registered base.
RRDB_GUIDE = "rrdb"
#: Finds the face of a reference photo: ``(image, problem, need_face) -> aligned crop`` (``problem``: the
#: message when a face is needed and none is found).
ReferenceAligner = Callable[[np.ndarray, str, bool], np.ndarray]


class GuidedFaceRestorer:
    """PGDiff on aligned crops, the ``pgdiff`` entry of :data:`bfrboost.restorers.FACE_RESTORERS`."""

    reports_steps = True

    def __init__(self, restore: RestoreOptions, guidance: GuidanceOptions, device: torch.device,
                 align_reference: ReferenceAligner | None = None) -> None:
        task = guidance.task
        check_guidance(restore, guidance)
        self.name, self.task, self.options, self.device = "pgdiff", task, guidance, device
        self.keeps_gray = task not in ("colorize", "old-photo")
        self.keep_known = bool(guidance.keep_known)
        self.on_step: StepCallback | None = None
        self.batch = guidance.batch_size or (4 if device.type == "cuda" else 1)
        self.guide = self._guide(restore, guidance)
        self.notes = self.guide.notes
        self.align_reference = align_reference or _square_reference
        prior = guidance.prior
        if not isinstance(prior, torch.nn.Module):
            prior = tiny_prior() if guidance.tiny and prior is None else load_prior(prior)
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

        if self.options.tiny and path is None:
            torch.manual_seed(0)
            return rrdb.build(None, rrdb.TINY_RRDB_CONFIG)
        return rrdb.load(Path(path) if path is not None else weights.ensure(rrdb.RRDB_FILE))

    def _arcface(self) -> torch.nn.Module | None:
        arcface = self.options.arcface
        if not self.options.reference:
            return None
        if arcface is None or isinstance(arcface, (str, Path)):
            from bfrboost.nets.arcface import load_arcface, random_arcface

            tiny = self.options.tiny and arcface is None
            arcface = random_arcface(0) if tiny else load_arcface(device=self.device, weights=arcface)
        return arcface.to(self.device)

    def _references(self) -> tuple[list[Any], Path | None]:
        """Photos of one person for every input, or one folder of references named like the inputs."""
        refs = list(self.options.reference)
        folders = [r for r in refs if not isinstance(r, np.ndarray) and Path(r).is_dir()]
        if not folders:
            return refs, None
        if len(refs) > 1:
            raise UsageError("--reference takes one folder (references named like the inputs) or photos of one person, not both")
        return [], Path(folders[0])

    def _reference_embedding(self) -> torch.Tensor | None:
        refs, self.reference_dir = self._references()
        return self.embed(refs) if refs else None

    def embed(self, references: Sequence[Any]) -> torch.Tensor:
        """The unit-length mean ArcFace embedding (1, D) of reference photos of one person."""
        crops = to_tensor([self._reference_crop(r, "reference") for r in references], self.device)
        embedding = self.model.embed(crops).mean(0, keepdim=True)
        return torch.nn.functional.normalize(embedding, dim=1)

    def _reference_crop(self, source: Path | str | np.ndarray, what: str) -> np.ndarray:
        """An aligned crop of a reference photo (a file or an array)."""
        from bfrboost.io.read import read_image

        name = str(source) if not isinstance(source, np.ndarray) else f"{what} image"
        image = source if isinstance(source, np.ndarray) else read_image(Path(source)).rgb
        return self.align_reference(image, f"{name}: no face found in this {what}", what == "reference")

    # ---- the protocol -----------------------------------------------------------------------

    def image_extras(self, image: np.ndarray, extras: Mapping[str, Any] | None) -> dict[str, Any]:
        """The photo's checked mask (or the painted one), and its reference identity (a photo named like the
        input, or the one given for every input), kept for its largest face (:meth:`restore_faces`)."""
        out = checked_extras(image, extras, self.options)
        reference = out.pop("reference", None)
        if reference is not None:
            out["reference"] = self.embed([reference])
        elif self.reference_dir is not None:
            raise UsageError(f"--reference {self.reference_dir} is a folder of references named like the inputs: "
                             "give the inputs as files, or the reference photos themselves")
        elif self.reference is not None:
            out["reference"] = self.reference
        out["image_key"] = object()  # the faces of one image share it: the reference guides the largest only
        return out

    def restore_faces(self, faces: list[Face], timer: Timer) -> list[np.ndarray]:
        guided = _largest_per_image(faces)
        out: list[np.ndarray] = []
        for start in range(0, len(faces), self.batch):
            chunk = slice(start, start + self.batch)
            out += self._restore_chunk(faces[chunk], guided[chunk], start, len(faces), timer)
        if self.keep_known and self.task == "inpaint":
            out = [keep_known(crop, self._crop_mask(face), face.crop) for crop, face in zip(out, faces, strict=True)]
        return out

    def _restore_chunk(self, chunk: list[Face], guided: list[bool], first: int, total: int, timer: Timer) -> list[np.ndarray]:
        crops = to_tensor([face.crop for face in chunk], self.device)
        targets = None
        if self._uses_guide() and self.model.rrdb is None:
            with timer("base"):
                targets = self.guide.base.restore(crops)
        reference, reference_faces = self._chunk_references(chunk, guided)
        with timer("guidance"):
            restored = self.model(
                self.task, crops, self.options, targets=targets, masks=self._masks(chunk), reference=reference,
                reference_faces=reference_faces, on_step=self._progress(first, len(chunk), total),
            )
        return to_uint8(restored)

    def _chunk_references(self, chunk: list[Face], guided: list[bool]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Each face's reference embedding (zeros where none) and (B,) 1 for the faces it guides."""
        refs = [face.extras.get("reference") if keep else None for face, keep in zip(chunk, guided, strict=True)]
        if all(r is None for r in refs):
            return None, None
        dim = next(r for r in refs if r is not None).shape[-1]
        reference = torch.cat([r if r is not None else torch.zeros(1, dim, device=self.device) for r in refs])
        return reference, torch.tensor([float(r is not None) for r in refs], device=self.device)

    def _masks(self, chunk: Sequence[Face]) -> torch.Tensor | None:
        if self.task not in ("inpaint", "old-photo"):
            return None
        found = [self._crop_mask(face) for face in chunk]
        if all(m is None for m in found):
            return None
        empty = np.zeros((FACE_SIZE, FACE_SIZE), np.float32)
        return torch.from_numpy(np.stack([m if m is not None else empty for m in found]))[:, None].to(self.device)

    def _crop_mask(self, face: Face) -> np.ndarray | None:
        return crop_mask(face, self.options)

    def _progress(self, first: int, count: int, total: int) -> StepCallback | None:
        """Sampler steps of faces ``first … first+count`` as face-steps done out of all ``total`` faces'."""
        if self.on_step is None:
            return None
        report = self.on_step
        return lambda done, steps: report(first * steps + done * count, total * steps)


def _square_reference(image: np.ndarray, _: str, __: bool = False) -> np.ndarray:
    """An aligned crop when no detector is at hand: the image itself, resized (a square photo is aligned)."""
    h = image.shape[0]
    return cv2.resize(image, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA if h > FACE_SIZE else cv2.INTER_CUBIC)



def crop_mask(face: Face, options: GuidanceOptions) -> np.ndarray | None:
    """``face``'s mask in crop coordinates (its photo's, warped), with detected scratches when asked."""
    mask = face.extras.get("mask")
    if mask is not None:
        mask = mask_to_crop(mask, face, face.extras["photo_shape"], face.extras.get("mask_name", "mask"))
    if options.scratches == "auto":
        found = detect_scratches(face.crop)
        mask = found if mask is None else np.maximum(mask, found)
    return mask


def keep_known(restored: np.ndarray, mask: np.ndarray | None, crop: np.ndarray) -> np.ndarray:
    """The known (unmasked) pixels of ``crop`` put back around the filled ones."""
    return restored if mask is None else np.where(mask[..., None] > 0, restored, crop)


def _largest_per_image(faces: Sequence[Face]) -> list[bool]:
    """True for the largest face of each image (faces of one image share ``extras["image_key"]``)."""
    area = lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1])  # noqa: E731
    largest: dict[int, Face] = {}
    for face in faces:
        key = id(face.extras.get("image_key"))
        if key not in largest or area(face) > area(largest[key]):
            largest[key] = face
    chosen = {id(f) for f in largest.values()}
    return [id(face) in chosen for face in faces]


def checked_extras(image: np.ndarray, extras: Mapping[str, Any] | None, options: GuidanceOptions) -> dict[str, Any]:
    """An input's extras, checked: colourising a colour photo (unless ``force``), a mask of the wrong size,
    an all-black inpainting mask — each one line naming the input (its own failure, not the batch's)."""
    out = dict(extras or {})
    name = out.pop("name", "image")
    out["photo_shape"] = image.shape[:2]
    if options.task == "colorize" and not options.force:
        check_gray(image, name)
    if options.mask_color is not None:
        out["mask"] = color_mask(image, options.mask_color)
        out["mask_name"] = f"{name}: --mask-color {options.mask_color}"
    if out.get("mask") is not None:
        out["mask"] = read_mask(out["mask"])
        check_mask_shape(out["mask"], image.shape, out.get("mask_name", "mask"))
        if options.task == "inpaint":
            require_marked(out["mask"], out.get("mask_name", "mask"))
    return out


def resolve_method(guidance: GuidanceOptions, device: torch.device) -> str:
    """``auto``: CodeFormer's one pass on a CPU where it has a network for the task (PGDiff takes hours per
    face there), PGDiff on a GPU or when a prior is given (only PGDiff samples from one)."""
    if guidance.method != "auto":
        return guidance.method
    one_pass = device.type == "cpu" and guidance.task in NETWORKS and guidance.prior is None
    return "codeformer" if one_pass else "pgdiff"


def check_guidance(restore: RestoreOptions, guidance: GuidanceOptions) -> None:
    """Usage errors, before anything is loaded."""
    task = guidance.task
    if restore.refine or restore.refiner is not None:
        raise UsageError("the InfoBFR refiner does not run after guided restoration yet; drop --refine/--refiner")
    if guidance.reference and task != "restore":
        raise UsageError("--reference guides restoration only: use `bfrboost restore --base pgdiff --reference REF`")
    if guidance.keep_known and task != "inpaint":
        raise UsageError("--keep-known puts the unmasked pixels back after inpainting; it is for `bfrboost inpaint` only")


class OnePassFaceRestorer:
    """CodeFormer's one-pass colourisation/inpainting network on aligned crops (``method="codeformer"``):
    one forward per face, seconds on a CPU."""

    reports_steps = True

    def __init__(self, restore: RestoreOptions, guidance: GuidanceOptions, device: torch.device) -> None:
        from bfrboost.guidance import onepass

        check_guidance(restore, guidance)
        if guidance.task not in NETWORKS:
            raise UsageError(
                f"CodeFormer publishes networks for {' and '.join(NETWORKS)} only; {guidance.task} needs --method pgdiff"
            )
        self.name, self.task, self.options, self.device = "codeformer", guidance.task, guidance, device
        self.keeps_gray = guidance.task != "colorize"
        self.keep_known = guidance.keep_known is not False  # upstream puts the known pixels back
        self.on_step: StepCallback | None = None
        self.notes: list[str] = []
        net = onepass.build(guidance.task) if guidance.tiny and restore.weights is None else onepass.load(
            guidance.task, None if restore.weights is None else str(restore.weights)
        )
        self.onepass = OnePass(guidance.task, net, device)

    def image_extras(self, image: np.ndarray, extras: Mapping[str, Any] | None) -> dict[str, Any]:
        return checked_extras(image, extras, self.options)

    def restore_faces(self, faces: list[Face], timer: Timer) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for index, face in enumerate(faces):
            mask = crop_mask(face, self.options) if self.task == "inpaint" else None
            with timer("base"):
                out += self.onepass([face.crop], [mask] if mask is not None else None, keep_known=self.keep_known)
            if self.on_step is not None:
                self.on_step(index + 1, len(faces))
        return out
