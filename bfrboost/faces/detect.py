"""Face detectors behind one registry: a name → a small spec that builds a ``Detector``.

Every detector takes an RGB uint8 H×W×3 image and returns ``list[Face]`` in input-image pixels with
the five points facexlib uses (image-left eye, image-right eye, nose tip, image-left mouth corner,
image-right mouth corner), best score first.

- ``dlib``: needs no download (HOG detector + 68-point predictor from the face-recognition-models
  wheel); the default while no RetinaFace file is cached.
- ``retinaface_resnet50`` / ``retinaface_mobile0.25``: facexlib's network with weights from the
  bfrboost cache, loaded tensor-only; facexlib is never allowed to download anything.
- ``auto``: RetinaFace R50 when its file is cached, else dlib.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import torch

from bfrboost import weights
from bfrboost.errors import UsageError
from bfrboost.faces import dlib_models
from bfrboost.faces.types import Face

RETINAFACE_FILES = {
    "resnet50": "detection_Resnet50_Final.pth",
    "mobile0.25": "detection_mobilenet0.25_Final.pth",
}


class Detector(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> list[Face]: ...


def _check_image(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise UsageError(f"face detectors take an RGB uint8 H×W×3 image, got {image.dtype} {image.shape}")


def _to_input_pixels(box: np.ndarray, points: np.ndarray, fx: float, fy: float) -> tuple[np.ndarray, np.ndarray]:
    """Map a box (pixel edges) and points (pixel centres) from a resized image back to the input."""
    box = np.asarray(box, dtype=np.float64) / [fx, fy, fx, fy]
    points = (np.asarray(points, dtype=np.float64).reshape(-1, 2) + 0.5) / [fx, fy] - 0.5
    return box, points


# ---- dlib ------------------------------------------------------------------------------------

# 68-point iBUG indices: contours of the image-left / image-right eye, nose tip, mouth corners. The
# FFHQ template itself was made from dlib's eye-contour centres and mouth corners.
_LEFT_EYE, _RIGHT_EYE, _NOSE_TIP, _MOUTH_LEFT, _MOUTH_RIGHT = slice(36, 42), slice(42, 48), 30, 48, 54


def five_points_from_68(points68: np.ndarray) -> np.ndarray:
    """FFHQ five points from the 68-point layout: eye-contour centres, nose tip, mouth corners."""
    p = np.asarray(points68, dtype=np.float64).reshape(68, 2)
    return np.stack([p[_LEFT_EYE].mean(0), p[_RIGHT_EYE].mean(0), p[_NOSE_TIP], p[_MOUTH_LEFT], p[_MOUTH_RIGHT]])


class DlibDetector:
    """dlib HOG detector on an enlarged copy of the image + the 68-point shape predictor.

    HOG finds faces of about 80 px and up, so the image is enlarged (bilinear) by up to
    ``max_zoom`` while it stays under ``pixel_budget`` pixels: 2.5× finds all 29 Solvay faces
    (2×: 28) and keeps tiny photos (200 px) workable, while big photos are not enlarged at all.
    The predictor runs on the enlarged copy too: on 30-pixel faces it then samples smooth
    values instead of a handful of raw pixels. CNN (mmod) was measured 10–30× slower on CPU for
    no extra face on our photos.
    """

    name = "dlib"

    def __init__(self, pixel_budget: float = 5e6, max_zoom: float = 2.5, min_score: float = 0.0) -> None:
        self.pixel_budget = pixel_budget
        self.max_zoom = max_zoom
        self.min_score = min_score

    def zoom_for(self, shape: Sequence[int]) -> float:
        return min(self.max_zoom, max(1.0, math.sqrt(self.pixel_budget / (shape[0] * shape[1]))))

    def detect(self, image: np.ndarray) -> list[Face]:
        _check_image(image)
        h, w = image.shape[:2]
        zoom = self.zoom_for(image.shape)
        big_w, big_h = round(w * zoom), round(h * zoom)
        big = cv2.resize(image, (big_w, big_h), interpolation=cv2.INTER_LINEAR) if zoom > 1 else np.ascontiguousarray(image)
        faces = []
        with dlib_models.detector() as detector:
            rects, scores, _ = detector.run(big, 0, self.min_score)
        predictor = dlib_models.predictor() if len(rects) else None
        for rect, score in zip(rects, scores):
            shape = predictor(big, rect)
            points68 = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
            edges = [rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1]
            box, points = _to_input_pixels(edges, five_points_from_68(points68), big_w / w, big_h / h)
            faces.append(Face(box=box, score=float(score), landmarks=points))
        return sorted(faces, key=lambda f: -f.score)


# ---- RetinaFace (facexlib) ----------------------------------------------------------------


def retinaface_path(network: str) -> Path:
    return weights.home() / RETINAFACE_FILES[network]


#: RetinaFace's network: a mean-subtracted BGR (1, 3, H, W) float tensor → (box offsets, class
#: probabilities, landmark offsets) per prior. The PyTorch module, or the same graph on ONNX Runtime.
RetinaFaceForward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


class RetinaFaceDetector:
    """facexlib's RetinaFace, weights from the bfrboost cache.

    Like GFPGAN and CodeFormer, the image is resized so its short side is ``short_side`` (640)
    before detection and faces scoring below ``score_threshold`` (0.97) are dropped; pass
    ``short_side=None`` to detect at the original size. Pre- and post-processing (prior boxes,
    decoding, NMS) are facexlib's ``detect_faces`` step for step; the network in between is
    ``forward`` (the PyTorch module ``net``; :meth:`with_forward` gives one on another runtime).
    """

    def __init__(
        self,
        network: str,
        device: str | torch.device = "cpu",
        score_threshold: float = 0.97,
        short_side: int | None = 640,
    ) -> None:
        # verified (size + SHA-256) before use; downloaded when missing unless offline
        path = weights.ensure(RETINAFACE_FILES[network])
        # facexlib imports slowly (numba), so only when a RetinaFace is really built.
        from facexlib.detection.retinaface import RetinaFace

        self.name = f"retinaface_{network}"
        self.device = torch.device(device)
        self.score_threshold = score_threshold
        self.short_side = short_side
        with warnings.catch_warnings():  # torchvision's deprecation notice for resnet50(pretrained=False)
            warnings.simplefilter("ignore", UserWarning)
            net = RetinaFace(network_name=network, half=False, device=self.device)
        weights.load_into(net, path, f"RetinaFace {network}", "retinaface")
        self.net = net.to(self.device).eval()
        self.forward: RetinaFaceForward = self.net

    def with_forward(self, forward: RetinaFaceForward) -> RetinaFaceDetector:
        """This detector with another network of the same graph (e.g. on ONNX Runtime); settings shared."""
        other = copy.copy(self)
        other.forward = forward
        return other

    def detect(self, image: np.ndarray) -> list[Face]:
        _check_image(image)
        h, w = image.shape[:2]
        bgr = np.ascontiguousarray(image[..., ::-1])
        if self.short_side is not None and min(h, w) != self.short_side:
            zoom = self.short_side / min(h, w)
            bgr = cv2.resize(bgr, (round(w * zoom), round(h * zoom)), interpolation=cv2.INTER_LINEAR)
        fx, fy = bgr.shape[1] / w, bgr.shape[0] / h
        with torch.inference_mode():
            rows = self._rows(bgr)
        faces = []
        for row in np.asarray(rows, dtype=np.float64):
            box, points = _to_input_pixels(row[:4], row[5:15], fx, fy)
            faces.append(Face(box=box, score=float(row[4]), landmarks=points))
        return sorted(faces, key=lambda f: -f.score)

    def _rows(self, bgr: np.ndarray, nms_threshold: float = 0.4) -> np.ndarray:
        """facexlib's ``detect_faces(bgr, score_threshold, 0.4, use_origin_size=True)`` with ``forward`` as the
        network: (N, 15) rows of box, score and five points, in ``bgr``'s pixels."""
        from facexlib.detection.retinaface_utils import PriorBox, decode, decode_landm, py_cpu_nms

        x = torch.from_numpy(bgr.astype(np.float32).transpose(2, 0, 1)).unsqueeze(0).to(self.device)
        x = x - self.net.mean_tensor
        height, width = x.shape[2:]
        loc, conf, landmarks = self.forward(x)
        priors = PriorBox(self.net.cfg, image_size=(height, width)).forward().to(self.device)
        variance = self.net.cfg["variance"]
        scale = torch.tensor([width, height] * 2, dtype=torch.float32, device=self.device)
        boxes = (decode(loc.squeeze(0), priors, variance) * scale).cpu().numpy()
        scores = conf.squeeze(0).cpu().numpy()[:, 1]
        scale = torch.tensor([width, height] * 5, dtype=torch.float32, device=self.device)
        points = (decode_landm(landmarks.squeeze(0), priors, variance) * scale).cpu().numpy()
        keep = np.where(scores > self.score_threshold)[0]
        order = keep[scores[keep].argsort()[::-1]]
        rows = np.hstack((boxes[order], scores[order, np.newaxis])).astype(np.float32, copy=False)
        kept = py_cpu_nms(rows, nms_threshold)
        return np.concatenate((rows[kept, :], points[order][kept]), axis=1)


# ---- registry --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DetectorSpec:
    name: str
    summary: str
    weights: str | None  # file in the bfrboost cache, None when the detector ships with a package
    load: Callable[..., Detector]


def resolve(name: str) -> str:
    """The concrete detector ``name`` stands for (``auto`` → what is usable offline right now)."""
    if name != "auto":
        return name
    return "retinaface_resnet50" if retinaface_path("resnet50").is_file() else "dlib"


DETECTORS: dict[str, DetectorSpec] = {
    spec.name: spec
    for spec in (
        DetectorSpec(
            "auto",
            "RetinaFace R50 when its weights are cached, else dlib",
            None,
            lambda device="cpu", **options: get_detector(resolve("auto"), device, **options),
        ),
        DetectorSpec(
            "dlib",
            "dlib HOG + 68-point landmarks; no download, CPU",
            None,
            lambda device="cpu", **options: DlibDetector(**options),
        ),
        DetectorSpec(
            "retinaface_resnet50",
            "facexlib RetinaFace ResNet-50 (most accurate)",
            RETINAFACE_FILES["resnet50"],
            lambda device="cpu", **options: RetinaFaceDetector("resnet50", device, **options),
        ),
        DetectorSpec(
            "retinaface_mobile0.25",
            "facexlib RetinaFace MobileNet-0.25 (fast, 1.8 MB)",
            RETINAFACE_FILES["mobile0.25"],
            lambda device="cpu", **options: RetinaFaceDetector("mobile0.25", device, **options),
        ),
    )
}


def get_detector(name: str, device: str | torch.device = "cpu", **options: Any) -> Detector:
    """Build detector ``name``; ``options`` go to its class (e.g. ``score_threshold``, ``max_zoom``)."""
    spec = DETECTORS.get(name)
    if spec is None:
        raise UsageError(f"unknown face detector {name!r}; choose one of: {', '.join(DETECTORS)}")
    return spec.load(device=device, **options)
