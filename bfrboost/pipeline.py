"""`Restorer`: detect → align → base → refine → paste, batched over every face of many images.

Arrays in, arrays out. Files, stdin, video and datasets are runners over it (``bfrboost.runners``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from bfrboost.backbones.registry import LoadedBase, fidelity_knob, load_base
from bfrboost.background import load_upsampler
from bfrboost.errors import UsageError, WeightsError
from bfrboost.faces.align import FFHQ_TEMPLATE_512, warp_faces
from bfrboost.faces.detect import get_detector
from bfrboost.faces.paste import paste_faces
from bfrboost.faces.select import FaceSelector, PersonMatcher, Selection, blend_faces, load_embedder, read_references
from bfrboost.faces.types import Face

#: The base model ``base="auto"`` uses when its weights can be had; otherwise faces pass through.
AUTO_BASE = "gfpgan"
FACE_SIZE = 512


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


class _Timer:
    """Accumulates seconds per stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def _to_tensor(crops: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    array = np.stack(crops).astype(np.float32) / 255.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).to(device)


def _to_uint8(batch: torch.Tensor) -> list[np.ndarray]:
    array = (batch.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return list(array)


class Restorer:
    """Restore every face of an image with a base model, optionally boosted by the InfoBFR refiner.

    ``base``: a registry name (``gfpgan``, ``codeformer``, …), ``none`` (faces only aligned and pasted
    back) or ``auto`` (GFPGAN when its weights are available, else ``none`` with a note in
    ``self.notes``). ``refine``: ``None`` refines exactly when a ``refiner`` folder is given.
    ``fidelity`` sets the base's fidelity knob whatever its name (CodeFormer ``fidelity``, VQFR
    ``fidelity_ratio``); other knobs go in ``knobs``. ``bg_upsampler="realesrgan"`` upscales the
    whole photo with Real-ESRGAN (tiles of ``bg_tile`` px) instead of a Lanczos resize.
    ``face_upsample`` (with ``upscale`` > 1) also runs each restored face through that upsampler
    (Real-ESRGAN even when the background uses a plain resize) and pastes it directly, as CodeFormer
    does, so faces are as sharp as an upsampled background.

    Which faces (:mod:`bfrboost.faces.select`): ``min_face``, then one of ``face_index`` (0 = the
    leftmost face), ``largest`` or ``only_center_face``; ``person`` (reference photos) keeps only
    faces of that person (``person_model`` dlib or arcface, ``person_threshold`` its cosine
    similarity). ``blend`` mixes each restored face with the original (1 = restored, 0 = original).
    """

    #: A gray input is written gray (bases may tint it); colourising subclasses turn this off.
    keeps_gray: bool = True

    def __init__(
        self,
        base: str = "auto",
        *,
        refine: bool | None = None,
        refiner: str | Path | None = None,
        refiner_strength: float = 1.0,
        sd_model: str | Path | None = None,
        compile: bool = False,
        device: str = "auto",
        detector: str = "auto",
        upscale: float = 2.0,
        aligned: bool = False,
        only_center_face: bool = False,
        min_face: int = 0,
        weights: str | Path | None = None,
        batch_size: int | None = None,
        knobs: Mapping[str, Any] | None = None,
        fidelity: float | None = None,
        parse: bool = True,
        paste: str = "residual",
        color_match: bool = False,
        bg_upsampler: str = "none",
        bg_tile: int = 400,
        face_upsample: bool = False,
        face_index: int | None = None,
        largest: bool = False,
        person: Sequence[str | Path] = (),
        person_model: str = "dlib",
        person_threshold: float | None = None,
        blend: float = 1.0,
    ) -> None:
        if paste not in ("residual", "direct"):
            raise UsageError(f"unknown paste mode '{paste}'; use residual or direct")
        if upscale <= 0 or upscale > 8:
            raise UsageError(f"upscale must be in (0, 8], got {upscale}")
        if not 0.0 <= refiner_strength <= 1.0:
            raise UsageError(f"refiner strength must be in [0, 1], got {refiner_strength}")
        if refine and refiner is None:
            raise UsageError(
                "--refine needs a refiner folder: pass --refiner DIR "
                "(make a tiny test one with `bfrboost refiner init --tiny DIR`)"
            )
        self.device = resolve_device(device)
        self.upscale = float(upscale)
        self.aligned = aligned
        selection = Selection(face_index=face_index, largest=largest, only_center=only_center_face, min_face=int(min_face))
        blend_faces([], blend)  # checks the range before any model loads
        self.blend = float(blend)
        self.refiner_strength = float(refiner_strength)
        self.notes: list[str] = []
        knobs = dict(knobs or {})
        if fidelity is not None:
            knobs[fidelity_knob(AUTO_BASE if base == "auto" else base)] = fidelity
        self.base: LoadedBase = self._load_base(base, weights, batch_size, knobs)
        self.refiner = None
        if refine is not False and refiner is not None:
            from bfrboost.refiner import load_refiner

            self.refiner = load_refiner(Path(refiner), device=self.device, sd_model=sd_model, compile=compile)
            self.refine_batch = batch_size or (8 if self.device.type == "cuda" else 1)
            if self.device.type == "cpu":
                self.notes.append("the refiner runs on the CPU: about 40 s per face with SD 2.1 on 2 cores; a GPU is far faster")
        self.detector = None if aligned else get_detector(detector, device=str(self.device))
        self.selector = FaceSelector(selection, self._person(person, person_model, person_threshold))
        self.background = None if aligned else load_upsampler(bg_upsampler, self.upscale, device=self.device, tile=bg_tile)
        self.face_upsampler = None
        if face_upsample and not aligned:
            if self.upscale > 1:
                self.face_upsampler = self.background or load_upsampler("realesrgan", self.upscale, device=self.device, tile=bg_tile)
            else:
                self.notes.append(f"face upsampling does nothing at upscale {self.upscale:g}; pass -s 2 (up to 4) to use it")
        self.paste_mode = paste
        self.color_match = color_match
        self.parser = None
        if parse and not aligned:
            from bfrboost.faces.parse import load_parser

            self.parser = load_parser(device=self.device)

    def _person(self, person: Sequence[str | Path], model: str, threshold: float | None) -> PersonMatcher | None:
        if not person:
            return None
        if self.aligned:
            raise UsageError("restoring one person needs face detection: drop --aligned (an aligned crop is one face)")
        embedder = load_embedder(model, device=str(self.device))
        return PersonMatcher.from_photos(read_references(person), embedder, self.detector, threshold)

    def _load_base(self, base: str, weights: Any, batch_size: int | None, knobs: dict) -> LoadedBase:
        kwargs = dict(device=self.device, weights=weights, batch_size=batch_size, **knobs)
        if base != "auto":
            return load_base(base, **kwargs)
        try:
            return load_base(AUTO_BASE, **kwargs)
        except WeightsError as exc:
            self.notes.append(f"{exc} — restoring with base 'none' (faces aligned and pasted back only)")
            return load_base("none", device=self.device)

    # ---- stages -----------------------------------------------------------------------------

    def _find_faces(self, image: np.ndarray) -> list[Face]:
        if self.aligned:
            crop = image
            if crop.shape[:2] != (FACE_SIZE, FACE_SIZE):
                crop = cv2.resize(crop, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_CUBIC)
            h, w = image.shape[:2]
            affine = np.array([[FACE_SIZE / w, 0, 0], [0, FACE_SIZE / h, 0]], dtype=np.float64)
            landmarks = FFHQ_TEMPLATE_512 * np.array([w / FACE_SIZE, h / FACE_SIZE])
            return [Face(box=np.array([0, 0, w, h], float), score=1.0, landmarks=landmarks, affine=affine, crop=crop)]
        return self.selector.by_position(self.detector.detect(image), image.shape)

    def input_targets(self, path: Path, image: np.ndarray) -> dict[str, Any] | None:
        """Per-input extras beside the pixels, for runners to pass to :meth:`restore_batch` as ``targets``.

        Hook: guided inpainting finds each input's mask by its name. Raises ``InputError`` for a
        problem that fails this input only.
        """
        return None

    def _restore_faces(self, faces: list[Face], timer: _Timer) -> list[np.ndarray]:
        """Restored crops of aligned ``faces`` (hook: guided restoration also reads ``face.extras``)."""
        return self._restore_crops([face.crop for face in faces], timer)

    def _restore_crops(self, crops: list[np.ndarray], timer: _Timer) -> list[np.ndarray]:
        if not crops:
            return []
        if self._passes_through():
            with timer("base"):  # the uint8 → float → uint8 round trip is exact: skip it
                return [crop.copy() for crop in crops]
        with timer("base"):
            batch = _to_tensor(crops, self.device)
            restored = self.base.restore(batch)
        if self.refiner is not None:
            with timer("refine"):
                refined = torch.cat([self.refiner.refine(chunk) for chunk in restored.split(self.refine_batch)])
                if self.refiner_strength < 1.0:
                    refined = torch.lerp(restored, refined.to(restored.dtype), self.refiner_strength)
                restored = refined
        return _to_uint8(restored)

    def _passes_through(self) -> bool:
        """Base ``none`` (its own ``restore``, not a replacement) and no refiner: crops stay as they are."""
        restore = getattr(self.base.restore, "__func__", None)
        return self.base.name == "none" and self.refiner is None and restore is type(self.base).restore

    def _upscaled(self, image: np.ndarray) -> np.ndarray:
        if self.background is not None:  # Real-ESRGAN, also at 1× (it then cleans the background)
            return self.background.upscale(image, self.upscale)
        if self.upscale == 1:
            return image.copy()
        h, w = image.shape[:2]
        size = (round(w * self.upscale), round(h * self.upscale))
        return cv2.resize(image, size, interpolation=cv2.INTER_LANCZOS4)

    def _paste(self, image: np.ndarray, faces: list[Face], alpha: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        if self.aligned:
            return faces[0].restored, None
        frame = self._upscaled(image)
        if faces:
            masks = self.parser.masks([face.restored for face in faces]) if self.parser is not None else None
            residual = self.paste_mode == "residual"
            if self.face_upsampler is not None:
                faces, masks = self._upsampled_faces(faces, masks)
                residual = False  # the frame under the face is an upscale of the *degraded* face: replace it
            frame = paste_faces(frame, faces, self.upscale, masks=masks, residual=residual, color_match=self.color_match)
        if alpha is not None:
            alpha = cv2.resize(alpha, frame.shape[1::-1], interpolation=cv2.INTER_LINEAR) if self.upscale != 1 else alpha
        return frame, alpha

    def _upsampled_faces(self, faces: list[Face], masks: list[np.ndarray] | None) -> tuple[list[Face], list[np.ndarray] | None]:
        """Copies of ``faces`` whose restored crop is upsampled ``upscale``× by the face upsampler, with
        the crop, mask and affine scaled to match (about pixel centres, as ``cv2.resize``)."""
        s = self.upscale
        size = round(FACE_SIZE * s)
        zoom = np.array([[size / FACE_SIZE, 0.0, 0.5 * size / FACE_SIZE - 0.5], [0.0, size / FACE_SIZE, 0.5 * size / FACE_SIZE - 0.5]])
        out = []
        for face in faces:
            restored = self.face_upsampler.upscale(face.restored, s)
            crop = cv2.resize(face.crop, (size, size), interpolation=cv2.INTER_CUBIC)
            affine = zoom @ np.vstack([face.affine, [0.0, 0.0, 1.0]])
            out.append(Face(box=face.box, score=face.score, landmarks=face.landmarks, affine=affine, crop=crop, restored=restored, extras=face.extras))
        if masks is not None:
            masks = [cv2.resize(mask, (size, size), interpolation=cv2.INTER_LINEAR) for mask in masks]
        return out, masks

    # ---- public API --------------------------------------------------------------------------

    def restore(self, image: np.ndarray, alpha: np.ndarray | None = None) -> Result:
        """Restore one RGB uint8 image (H×W×3); ``alpha`` (H×W) is resized and returned alongside."""
        return self.restore_batch([image], [alpha])[0]

    def restore_batch(
        self, images: Sequence[np.ndarray], alphas: Sequence[np.ndarray | None] | None = None,
        targets: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[Result]:
        """Restore many images; all their faces go through the base model and refiner together.

        ``targets``: per-image extras (e.g. a guidance mask in photo coordinates) copied into the
        ``extras`` of each of that image's faces, for subclasses that restore faces with them.
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
        person_memo: dict[Any, np.ndarray] | None = None,
    ) -> Prepared:
        """Stage 1 (CPU, per image): detect and align; ``image`` is RGB uint8 H×W×3.

        ``extras`` (e.g. a guidance mask in photo coordinates) are copied into each face's ``extras``.
        ``landmark_filter`` sees the detected faces before alignment and may move their landmarks
        (video: :class:`bfrboost.faces.track.FaceTracker` smooths them over time so crops don't jitter).
        ``person_memo``: see :meth:`FaceSelector.by_person` (video: one identity match per track).
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise UsageError(f"images must be RGB uint8 H×W×3 arrays, got {image.dtype} {image.shape}")
        timer = _Timer()
        if self.aligned:
            with timer("align"):
                faces = self._find_faces(image)
        else:
            with timer("detect"):
                faces = self._find_faces(image)
            if landmark_filter is not None:
                with timer("smooth"):
                    faces = landmark_filter(faces)
            with timer("align"):
                warp_faces(image, faces, size=FACE_SIZE)
            if self.selector.person is not None:
                with timer("identify"):
                    faces = self.selector.by_person(faces, person_memo)
        for face in faces:
            face.extras.update(extras or {})
        return Prepared(image=image, alpha=alpha, faces=faces, seconds=timer.seconds)

    def restore_faces(self, prepared: Sequence[Prepared]) -> None:
        """Stage 2 (device, batched): base + refiner over every face of ``prepared``, in place.

        Batched stages are charged to each image in proportion to its share of the faces.
        """
        faces = [face for item in prepared for face in item.faces]
        shared = _Timer()
        restored = iter(self._restore_faces(faces, shared))
        for item in prepared:
            for face in item.faces:
                face.restored = next(restored)
            blend_faces(item.faces, self.blend)
            for stage, secs in shared.seconds.items():
                item.seconds[stage] = item.seconds.get(stage, 0.0) + secs * len(item.faces) / max(len(faces), 1)

    def finish(self, prepared: Prepared) -> Result:
        """Stage 3 (CPU, per image): upscale the frame and paste the restored faces back."""
        timer = _Timer()
        with timer("paste"):
            out, out_alpha = self._paste(prepared.image, prepared.faces, prepared.alpha)
        return Result(image=out, faces=prepared.faces, alpha=out_alpha, seconds={**prepared.seconds, **timer.seconds})
