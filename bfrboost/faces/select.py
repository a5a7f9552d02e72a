"""Which detected faces get restored: by position, by size, or by who they are.

A stage of its own between detection and restoration (the :class:`~bfrboost.pipeline.Restorer`
holds one :class:`FaceSelector` and calls it; nothing here knows about base models or pasting):

1. :meth:`FaceSelector.by_position` (before alignment, on boxes only): ``min_face`` drops small
   faces, then ``face_index`` keeps the N-th face counted **left to right** (by the box centre's x,
   0 = leftmost; ties by y), ``largest`` the face with the largest box area, ``only_center`` the
   face nearest the image centre. At most one of the three.
2. :meth:`FaceSelector.by_person` (after alignment, on the 512 crops): with reference photos, keeps
   for each reference the face most like it, if close enough (cosine similarity of L2-normalised
   embeddings ≥ the threshold). Faces that carry a track id (video) are embedded once per track
   through a ``memo`` the caller keeps.

Identity models (:data:`PERSON_MODELS`): ``dlib`` (the ResNet face descriptor shipped in the
face-recognition-models wheel: no download) and ``arcface`` (IR-SE50, ``bfrboost weights download
arcface``). Default thresholds in :data:`PERSON_THRESHOLDS`; docs/faces.md says how they were chosen.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from bfrboost.errors import InputError, UsageError
from bfrboost.faces.align import FFHQ_TEMPLATE_512, warp_faces
from bfrboost.faces.types import Face

PERSON_MODELS = ("dlib", "arcface")
#: Cosine similarity at or above which a face is the reference's person. dlib: calibrated on real
#: same/different-person pairs (docs/faces.md); arcface: not calibrated here (no weights offline).
PERSON_THRESHOLDS = {"dlib": 0.91, "arcface": 0.40}
_CROP = 512


def box_area(face: Face) -> float:
    return float(max(face.box[2] - face.box[0], 0) * max(face.box[3] - face.box[1], 0))


def left_to_right(faces: Sequence[Face]) -> list[Face]:
    """``faces`` in the order ``face_index`` counts them: box centre x, then y."""
    return sorted(faces, key=lambda f: (float(f.box[0] + f.box[2]), float(f.box[1] + f.box[3])))


@dataclass(frozen=True)
class Selection:
    """Position/size rules (no models): what :meth:`FaceSelector.by_position` applies."""

    face_index: int | None = None
    largest: bool = False
    only_center: bool = False
    min_face: int = 0

    def __post_init__(self) -> None:
        chosen = [name for name, on in (("face index", self.face_index is not None), ("largest", self.largest),
                                        ("only centre face", self.only_center)) if on]
        if len(chosen) > 1:
            raise UsageError(f"choose one of face index, largest face and centre face, not {' and '.join(chosen)}")
        if self.face_index is not None and self.face_index < 0:
            raise UsageError(f"face index counts from 0 (the leftmost face), got {self.face_index}")
        if self.min_face < 0:
            raise UsageError(f"minimum face size must be >= 0 pixels, got {self.min_face}")

    def pick(self, faces: Sequence[Face], image_shape: Sequence[int]) -> list[Face]:
        kept = [f for f in faces if max(f.box[2] - f.box[0], f.box[3] - f.box[1]) >= self.min_face]
        if self.face_index is not None:
            ordered = left_to_right(kept)
            return [ordered[self.face_index]] if self.face_index < len(ordered) else []
        if self.largest and kept:
            return [max(kept, key=box_area)]
        if self.only_center and kept:
            centre = np.array([image_shape[1] / 2, image_shape[0] / 2])
            return [min(kept, key=lambda f: float(np.hypot(*((f.box[:2] + f.box[2:]) / 2 - centre))))]
        return kept


class Embedder(Protocol):
    """Identity embeddings of aligned 512×512 RGB uint8 FFHQ crops: [N, D] float, L2-normalised."""

    name: str

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray: ...


class DlibEmbedder:
    """dlib's ResNet face descriptor (128-d) on our FFHQ crops: its 5-point predictor finds the eye
    corners and nose inside the crop (started from a box around the template's points), then dlib cuts
    its own 150 px chip. One lock: a dlib model must not be used by two threads at once."""

    name = "dlib"

    def __init__(self) -> None:
        import dlib

        from bfrboost.faces.dlib_models import dlib_model_dir

        folder = dlib_model_dir()
        self._predictor = dlib.shape_predictor(str(folder / "shape_predictor_5_face_landmarks.dat"))
        self._net = dlib.face_recognition_model_v1(str(folder / "dlib_face_recognition_resnet_model_v1.dat"))
        (x0, y0), (x1, y1) = FFHQ_TEMPLATE_512.min(0), FFHQ_TEMPLATE_512.max(0)
        w = x1 - x0
        self._box = dlib.rectangle(round(x0 - 0.45 * w), round(y0 - 0.6 * w), round(x1 + 0.45 * w), round(y1 + 0.35 * w))
        self._lock = threading.Lock()

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        out = []
        with self._lock:
            for crop in crops:
                crop = np.ascontiguousarray(crop)
                out.append(np.asarray(self._net.compute_face_descriptor(crop, self._predictor(crop, self._box))))
        return _normalised(np.array(out, dtype=np.float64).reshape(len(out), -1))


class ArcFaceEmbedder:
    """ArcFace IR-SE50 (:mod:`bfrboost.nets.arcface`) on the whole crop, as the ``ids`` metric uses it."""

    name = "arcface"

    def __init__(self, model: Any) -> None:
        self.model = model

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0
        with torch.inference_mode():
            return _normalised(self.model.embed(batch).double().cpu().numpy())


def _normalised(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def load_embedder(name: str, device: str = "cpu") -> Embedder:
    """``dlib`` (no download) or ``arcface`` (needs its cached weights; raises WeightsError without)."""
    if name == "dlib":
        return DlibEmbedder()
    if name == "arcface":
        from bfrboost.nets.arcface import load_arcface

        return ArcFaceEmbedder(load_arcface(device))
    raise UsageError(f"unknown identity model {name!r}; choose one of: {', '.join(PERSON_MODELS)}")


class PersonMatcher:
    """Reference embeddings of one or more photos of the person, and the threshold to match them."""

    def __init__(self, references: np.ndarray, embedder: Embedder, threshold: float | None = None) -> None:
        self.references = _normalised(np.asarray(references, dtype=np.float64))
        self.embedder = embedder
        self.threshold = PERSON_THRESHOLDS.get(embedder.name, 0.5) if threshold is None else float(threshold)
        if not -1.0 <= self.threshold <= 1.0:
            raise UsageError(f"person threshold is a cosine similarity in [-1, 1], got {self.threshold:g}")

    @classmethod
    def from_photos(
        cls, photos: Sequence[tuple[str, np.ndarray]], embedder: Embedder, detector: Any, threshold: float | None = None
    ) -> PersonMatcher:
        """One reference per photo: its largest detected face, aligned as the restorer aligns faces.
        ``photos``: (name for messages, RGB uint8 array)."""
        if not photos:
            raise UsageError("restoring one person needs at least one reference photo of them")
        crops = []
        for name, image in photos:
            faces = detector.detect(image)
            if not faces:
                raise InputError(f"{name}: no face found in this reference photo; use a photo where the face is clearly visible")
            face = max(faces, key=box_area)
            warp_faces(image, [face], size=_CROP)
            crops.append(face.crop)
        return cls(embedder.embed(crops), embedder, threshold)

    def similarities(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """[faces, references] cosine similarities."""
        if not crops:
            return np.zeros((0, len(self.references)))
        return self.embedder.embed(crops) @ self.references.T


class FaceSelector:
    """The selection stage the restorer calls: :meth:`by_position` after detection, :meth:`by_person`
    after alignment (a no-op without a :class:`PersonMatcher`)."""

    def __init__(self, selection: Selection | None = None, person: PersonMatcher | None = None) -> None:
        self.selection = selection or Selection()
        self.person = person

    def by_position(self, faces: Sequence[Face], image_shape: Sequence[int]) -> list[Face]:
        return self.selection.pick(faces, image_shape)

    def by_person(self, faces: Sequence[Face], memo: dict[Any, np.ndarray] | None = None) -> list[Face]:
        """Faces of the reference people. Each reference photo is one person, who is at most one face of
        a photo: per reference, the most similar face is kept if its similarity reaches the threshold
        (faces of one photo look alike, see docs/faces.md). Each face keeps its best similarity in
        ``face.extras["person_score"]``. ``memo`` (track id → similarities): a face whose
        ``extras["track"]`` is in it is not embedded again, so a video track is matched once."""
        if self.person is None or not faces:
            return list(faces)
        memo = {} if memo is None else memo
        todo = [f for f in faces if f.extras.get("track") is None or f.extras["track"] not in memo]
        for face, row in zip(todo, self.person.similarities([f.crop for f in todo]), strict=True):
            face.extras["person_similarities"] = row
            if face.extras.get("track") is not None:
                memo[face.extras["track"]] = row
        rows = np.stack([f.extras.get("person_similarities", memo.get(f.extras.get("track"))) for f in faces])
        keep = set()
        for column in rows.T:
            best = int(np.argmax(column))
            if column[best] >= self.person.threshold:
                keep.add(best)
        for face, row in zip(faces, rows, strict=True):
            face.extras["person_score"] = float(row.max())
        return [face for index, face in enumerate(faces) if index in keep]


def read_references(paths: Sequence[Path | str], max_pixels: int | None = None) -> list[tuple[str, np.ndarray]]:
    """Decode reference photos as inputs are decoded (EXIF rotation, gray, 16-bit); one line per bad file."""
    from bfrboost.io.read import read_image

    kwargs = {} if max_pixels is None else {"max_pixels": max_pixels}
    return [(str(path), read_image(Path(path), **kwargs).rgb) for path in paths]


def blend_faces(faces: Sequence[Face], weight: float) -> None:
    """``restored = crop + weight · (restored − crop)`` in place: 1 keeps the restored face, 0 the original
    (FaceFusion's face enhancer blend, on the aligned crop, so the paste-back is unchanged)."""
    if not 0.0 <= weight <= 1.0:
        raise UsageError(f"blend must be between 0 (original face) and 1 (restored face), got {weight:g}")
    if weight == 1.0:
        return
    for face in faces:
        if face.restored is None or face.crop is None:
            continue
        mixed = face.crop.astype(np.float32) + weight * (face.restored.astype(np.float32) - face.crop.astype(np.float32))
        face.restored = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


__all__ = [
    "PERSON_MODELS",
    "PERSON_THRESHOLDS",
    "ArcFaceEmbedder",
    "DlibEmbedder",
    "Embedder",
    "FaceSelector",
    "PersonMatcher",
    "Selection",
    "blend_faces",
    "left_to_right",
    "load_embedder",
    "read_references",
]
