"""Finding faces: the Restorer's first part — detect, select and align (or take an aligned crop as it is)."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch

from bfrboost.errors import InputError, UsageError
from bfrboost.faces.align import FFHQ_TEMPLATE_512, warp_faces
from bfrboost.faces.detect import Detector, get_detector
from bfrboost.faces.select import FaceSelector, PersonMatcher, Selection, load_embedder, read_references
from bfrboost.faces.types import FACE_SIZE, Face, FaceNetworks
from bfrboost.options import DetectOptions


class FaceFinder:
    """Faces of a photo with their aligned FACE_SIZE² crops, as :class:`~bfrboost.options.DetectOptions` asks."""

    def __init__(self, options: DetectOptions, device: torch.device, networks: FaceNetworks | None = None) -> None:
        """``networks``: where the detector's network runs (default: PyTorch on ``device``)."""
        self.aligned = options.aligned
        selection = Selection(face_index=options.face_index, largest=options.largest, only_center=options.only_center_face,
                              min_face=int(options.min_face))
        self.detector = None if options.aligned else get_detector(options.detector, device=str(device))
        if self.detector is not None and networks is not None:
            self.detector = networks.detector(self.detector)
        self.selector = FaceSelector(selection, self._person(options, device))
        self._detector_name, self._device, self._reference_detector = options.detector, device, self.detector

    def _person(self, options: DetectOptions, device: torch.device) -> PersonMatcher | None:
        if not options.person:
            return None
        if self.aligned:
            raise UsageError("restoring one person needs face detection: drop --aligned (an aligned crop is one face)")
        embedder = load_embedder(options.person_model, device=str(device))
        return PersonMatcher.from_photos(read_references(options.person), embedder, self.detector, options.person_threshold)

    def find(self, image: np.ndarray, detector: Detector | None = None) -> list[Face]:
        """Detected faces (boxes, landmarks), or the whole image as one face when ``aligned``;
        ``detector`` replaces this finder's own for this image (video: key frames and optical flow)."""
        if self.aligned:
            return [_whole_crop(image)]
        return self.selector.by_position((detector or self.detector).detect(image), image.shape)

    def identify(self, faces: list[Face], memo: dict[Any, np.ndarray] | None = None) -> list[Face]:
        """The aligned faces of the ``person`` references (all of them without references); ``memo``:
        see :meth:`~bfrboost.faces.select.FaceSelector.by_person` (video: one match per track)."""
        return self.selector.by_person(faces, memo)

    def align(self, image: np.ndarray, faces: list[Face]) -> None:
        """Cut each face's aligned crop (``face.crop``, ``face.affine``); aligned inputs already are."""
        if not self.aligned:
            warp_faces(image, faces, size=FACE_SIZE)

    def reference_crop(self, image: np.ndarray, problem: str, need_face: bool = True) -> np.ndarray:
        """An aligned crop of a reference photo: a square image is taken as aligned, else its largest face.

        ``need_face``: the photo must show a face (an identity reference), also when it is square and with
        ``aligned`` (a detector is then loaded for the references alone); refused with ``problem`` otherwise."""
        h, w = image.shape[:2]
        faces = []
        if need_face or h != w:
            if self._reference_detector is None:
                self._reference_detector = get_detector(self._detector_name, device=str(self._device))
            faces = self._reference_detector.detect(image)
            if not faces:
                raise InputError(f"{problem}; give a photo or an aligned 512×512 crop of the face")
        if h == w:
            return cv2.resize(image, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA if h > FACE_SIZE else cv2.INTER_CUBIC)
        largest = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
        warp_faces(image, [largest], size=FACE_SIZE)
        return largest.crop


def _whole_crop(image: np.ndarray) -> Face:
    """An aligned input as one face: resized to FACE_SIZE² when needed, with the matching affine."""
    crop = image
    if crop.shape[:2] != (FACE_SIZE, FACE_SIZE):
        crop = cv2.resize(crop, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_CUBIC)
    h, w = image.shape[:2]
    affine = np.array([[FACE_SIZE / w, 0, 0], [0, FACE_SIZE / h, 0]], dtype=np.float64)
    landmarks = FFHQ_TEMPLATE_512 * np.array([w / FACE_SIZE, h / FACE_SIZE])
    return Face(box=np.array([0, 0, w, h], float), score=1.0, landmarks=landmarks, affine=affine, crop=crop)


