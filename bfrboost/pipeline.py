"""`Restorer`: detect → align → restore faces → paste, batched over every face of many images.

Built from three parts: a :class:`~bfrboost.faces.finder.FaceFinder`, a face restorer
(:mod:`bfrboost.restorers`: base + refiner, or PGDiff guidance) and a
:class:`~bfrboost.faces.paster.Paster`. Arrays in, arrays out: files, stdin, video and datasets are
runners over it (``bfrboost.runners``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bfrboost.errors import UsageError
from bfrboost.faces.detect import Detector
from bfrboost.faces.finder import FaceFinder
from bfrboost.faces.paster import Paster
from bfrboost.faces.select import blend_faces
from bfrboost.faces.types import FACE_SIZE, Face, FaceNetworks
from bfrboost.options import DetectOptions, GuidanceOptions, PasteOptions, RestoreOptions, restorer_options
from bfrboost.restorers import build_face_restorer
from bfrboost.restorers.base import AUTO_BASE
from bfrboost.restorers.protocol import FaceRestorer, Timer

__all__ = ["AUTO_BASE", "FACE_SIZE", "Prepared", "Restorer", "Result", "resolve_device"]


@dataclass
class Prepared:
    """An image after detection and alignment, waiting for its faces to be restored."""

    image: np.ndarray
    alpha: np.ndarray | None
    faces: list[Face]
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class Result:
    """One restored image: ``image`` is RGB uint8 at ``upscale``× the input size."""

    image: np.ndarray
    faces: list[Face]
    alpha: np.ndarray | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device not in ("cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise UsageError(f"unknown device '{device}'; use auto, cpu, cuda, cuda:N or mps")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device '{device}' asked for, but CUDA is not available here; use --device cpu")
    return torch.device(device)


def face_networks(options: RestoreOptions, device: torch.device) -> FaceNetworks | None:
    """Where the detector's and the parser's networks run: ``None`` (PyTorch, as built) or, with
    ``runtime="onnx"``, ONNX Runtime like the base model (same providers and threads)."""
    if options.runtime != "onnx":
        return None
    from bfrboost.onnx.faces import OnnxFaceNetworks

    return OnnxFaceNetworks(options.providers, options.threads, device)


class Restorer:
    """Restore every face of an image: a face finder, a face restorer and a paster, in that order.

    ``Restorer("codeformer", upscale=1, fidelity=0.7)`` builds the parts from option objects
    (:mod:`bfrboost.options`; any field by name); :meth:`from_options` takes the objects,
    :meth:`from_parts` the parts. ``base``: a registry name (``gfpgan``, ``codeformer``, …), ``none``
    (faces only aligned and pasted back), ``auto`` (GFPGAN when its weights are available, else
    ``none`` with a note in ``notes``) or a face-restorer entry such as ``pgdiff`` (``guidance``).
    """

    def __init__(
        self,
        base: str | None = None,
        *,
        detect_options: DetectOptions | None = None,
        restore_options: RestoreOptions | None = None,
        paste_options: PasteOptions | None = None,
        guidance: GuidanceOptions | None = None,
        **settings: Any,
    ) -> None:
        detect, restore, paste = restorer_options(base, detect_options, restore_options, paste_options, **settings)
        device = resolve_device(restore.device)
        networks = face_networks(restore, device)
        finder = FaceFinder(detect, device, networks)
        face_restorer = build_face_restorer(restore, device, guidance, align_reference=finder.reference_crop)
        paster = Paster(paste, device, aligned=detect.aligned, networks=networks)
        self._assemble(finder, face_restorer, paster, device)

    @classmethod
    def from_options(cls, restore: RestoreOptions | None = None, detect: DetectOptions | None = None,
                     paste: PasteOptions | None = None, guidance: GuidanceOptions | None = None) -> Restorer:
        """A restorer from option objects (what the CLI, the web app and the Ray job build)."""
        return cls(detect_options=detect, restore_options=restore, paste_options=paste, guidance=guidance)

    @classmethod
    def from_parts(cls, finder: FaceFinder, face_restorer: FaceRestorer, paster: Paster, device: torch.device) -> Restorer:
        """A restorer from parts already built (e.g. a custom face restorer following the protocol)."""
        restorer = cls.__new__(cls)
        restorer._assemble(finder, face_restorer, paster, device)
        return restorer

    def _assemble(self, finder: FaceFinder, face_restorer: FaceRestorer, paster: Paster, device: torch.device) -> None:
        self.finder, self.face_restorer, self.paster, self.device = finder, face_restorer, paster, device
        self.notes: list[str] = [*face_restorer.notes, *paster.notes]

    # What runners and the web app read; each belongs to one part.

    @property
    def upscale(self) -> float:
        return self.paster.upscale

    @property
    def aligned(self) -> bool:
        return self.finder.aligned

    @property
    def keeps_gray(self) -> bool:
        """A gray input is written gray (bases may tint it); colourising face restorers turn this off."""
        return self.face_restorer.keeps_gray

    @property
    def face_upsampler(self) -> Any:
        return self.paster.face_upsampler

    @property
    def base(self) -> Any:
        """The base model of a :class:`~bfrboost.restorers.base.BaseRestorer` (``none`` otherwise)."""
        return getattr(self.face_restorer, "base", None)

    @property
    def refiner_strength(self) -> float:
        return getattr(self.face_restorer, "refiner_strength", 1.0)

    @refiner_strength.setter
    def refiner_strength(self, value: float) -> None:
        self.face_restorer.refiner_strength = RestoreOptions(refiner_strength=value).refiner_strength

    # ---- public API --------------------------------------------------------------------------

    def restore(self, image: np.ndarray, alpha: np.ndarray | None = None, extras: Mapping[str, Any] | None = None) -> Result:
        """Restore one RGB uint8 image (H×W×3); ``alpha`` (H×W) is resized and returned alongside.
        ``extras``: e.g. ``{"mask": mask}`` (H×W or 512×512, 1 = fill) for guided inpainting."""
        return self.restore_batch([image], [alpha], [extras])[0]

    def restore_batch(
        self, images: Sequence[np.ndarray], alphas: Sequence[np.ndarray | None] | None = None,
        targets: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[Result]:
        """Restore many images; all their faces go through the base model and refiner together.

        ``targets``: per-image extras (e.g. a guidance mask, an array in photo coordinates) copied
        into the ``extras`` of each of that image's faces, for face restorers that use them.
        """
        alphas = list(alphas) if alphas is not None else [None] * len(images)
        targets = list(targets) if targets is not None else [None] * len(images)
        prepared = [self.prepare(image, alpha, extras) for image, alpha, extras in zip(images, alphas, targets)]
        self.restore_faces(prepared)
        return [self.finish(item) for item in prepared]

    # The three stages, public so runners can overlap them (decode/detect of the next images while
    # the device restores this batch) and batch faces across frames or images.

    def prepare(
        self,
        image: np.ndarray,
        alpha: np.ndarray | None = None,
        extras: Mapping[str, Any] | None = None,
        landmark_filter: Callable[[list[Face]], list[Face]] | None = None,
        detector: Detector | None = None,
        person_memo: dict[Any, np.ndarray] | None = None,
    ) -> Prepared:
        """Stage 1 (CPU, per image): detect and align; ``image`` is RGB uint8 H×W×3.

        ``extras`` (e.g. a guidance mask in photo coordinates) are copied into each face's ``extras``.
        ``landmark_filter`` sees the detected faces before alignment and may move their landmarks
        (video: :class:`bfrboost.faces.track.FaceTracker` smooths them over time so crops don't jitter).
        ``detector`` replaces the restorer's own for this image (video: a
        :class:`bfrboost.faces.keyframes.KeyframeDetector` that detects on key frames and follows faces between).
        ``person_memo``: see :meth:`~bfrboost.faces.select.FaceSelector.by_person` (video: one identity match per track).
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise UsageError(f"images must be RGB uint8 H×W×3 arrays, got {image.dtype} {image.shape}")
        timer = Timer()
        with timer("align" if self.aligned else "detect"):
            faces = self.finder.find(image, detector)
        if landmark_filter is not None and not self.aligned:
            with timer("smooth"):
                faces = landmark_filter(faces)
        if not self.aligned:
            with timer("align"):
                self.finder.align(image, faces)
            if self.finder.selector.person is not None:
                with timer("identify"):
                    faces = self.finder.identify(faces, person_memo)
        extras = self.face_restorer.image_extras(image, extras)
        for face in faces:
            face.extras.update(extras)
        return Prepared(image=image, alpha=alpha, faces=faces, seconds=timer.seconds)

    def restore_faces(self, prepared: Sequence[Prepared]) -> None:
        """Stage 2 (device, batched): base + refiner over every face of ``prepared``, in place.

        Batched stages are charged to each image in proportion to its share of the faces.
        """
        faces = [face for item in prepared for face in item.faces]
        shared = Timer()
        restored = iter(self.face_restorer.restore_faces(faces, shared))
        for item in prepared:
            for face in item.faces:
                face.restored = next(restored)
            blend_faces(item.faces, self.paster.blend)
            for stage, secs in shared.seconds.items():
                item.seconds[stage] = item.seconds.get(stage, 0.0) + secs * len(item.faces) / max(len(faces), 1)

    def finish(self, prepared: Prepared) -> Result:
        """Stage 3 (CPU, per image): upscale the frame and paste the restored faces back."""
        timer = Timer()
        with timer("paste"):
            out, out_alpha = self.paster.paste(prepared.image, prepared.faces, prepared.alpha)
        return Result(image=out, faces=prepared.faces, alpha=out_alpha, seconds={**prepared.seconds, **timer.seconds})
