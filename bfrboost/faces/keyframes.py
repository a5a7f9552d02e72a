"""Detect faces on key frames only and follow them by optical flow in between (video).

On the CPU the detector is most of a clip's time (dlib: ~70 % at 640×360), yet consecutive frames
differ by a pixel or two. :class:`KeyframeDetector` runs the real detector on every ``interval``-th
frame and, on the frames between, moves each face found there with the motion of the image inside
its box: corners picked in the box on the key frame (``cv2.goodFeaturesToTrack``) are followed frame
to frame by pyramidal Lucas–Kanade, each point checked forwards and backwards, and a similarity
transform (shift, rotation, scale; RANSAC) from the key frame's points to the current ones moves the
key frame's box and five landmarks. The transform is always taken from the key frame, so errors do
not compound from frame to frame. At the next key frame a face whose fresh landmarks lie within
``keep_within`` (3 % of its size) of the followed ones keeps the followed ones: a detector places the
points a pixel or two differently on every run, and taking them would make the crop jump once per
key frame; a face that turned or drifted further takes the detector's.

The detector runs again, before ``interval`` is up, when a check fails:

- a scene cut: the frame, shrunk to 64 px wide, differs from the last one by more than
  ``cut_threshold`` grey levels on average;
- a lost face: fewer than ``min_points`` of its points survive the forward–backward check
  (occlusion, a face leaving the frame, fast motion), or the transform scales it by more than
  ``max_zoom`` since the key frame.

A face that appears between key frames is picked up at the next one (at most ``interval − 1`` frames
late). ``interval=1`` is detection on every frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from bfrboost.faces.detect import Detector
from bfrboost.faces.track import iou
from bfrboost.faces.types import Face

_LK = {"winSize": (21, 21), "maxLevel": 3, "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03)}


@dataclass
class _Followed:
    """One face of the key frame and its corners: where they were then and where they are now."""

    face: Face
    key_points: np.ndarray  # (n, 2) float32, on the key frame
    points: np.ndarray  # (n, 2) float32, on the last frame


def _thumb(gray: np.ndarray) -> np.ndarray:
    h, w = gray.shape
    return cv2.resize(gray, (64, max(round(64 * h / w), 1)), interpolation=cv2.INTER_AREA).astype(np.float32)


def _moved(face: Face, matrix: np.ndarray) -> Face:
    """``face`` with its landmarks and box moved by the 2×3 similarity ``matrix``."""
    landmarks = face.landmarks @ matrix[:, :2].T + matrix[:, 2]
    x1, y1, x2, y2 = face.box
    corners = np.array([[x1, y1], [x2, y1], [x1, y2], [x2, y2]], np.float64) @ matrix[:, :2].T + matrix[:, 2]
    box = np.concatenate([corners.min(0), corners.max(0)])
    return Face(box=box, score=face.score, landmarks=landmarks, extras={"followed": True})


@dataclass
class KeyframeDetector:
    """A :class:`~bfrboost.faces.detect.Detector` for consecutive video frames (see the module doc).

    Call :meth:`detect` once per frame, in order; ``key_frames`` counts the frames the detector ran on.
    """

    detector: Detector
    interval: int  # frames per detector run (``--detect-every``; default in bfrboost.options.VideoOptions)
    cut_threshold: float = 20.0
    min_points: int = 8
    max_zoom: float = 1.3
    keep_within: float = 0.03
    key_frames: int = 0
    frames: int = 0
    _followed: list[_Followed] = field(default_factory=list)
    _gray: np.ndarray | None = None
    _thumb: np.ndarray | None = None
    _since_key: int = 0

    @property
    def name(self) -> str:
        return self.detector.name

    def detect(self, image: np.ndarray) -> list[Face]:
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        thumb = _thumb(gray)
        last = self._thumb
        cut = last is None or last.shape != thumb.shape or float(np.abs(thumb - last).mean()) > self.cut_threshold
        followed = None if cut else self._follow(gray)  # None: a face was lost
        if followed is None or self._since_key >= self.interval:
            faces = self._key_frame(image, gray, followed or [])
        else:
            faces = followed
        self._gray, self._thumb = gray, thumb
        self.frames += 1
        return faces

    def _key_frame(self, image: np.ndarray, gray: np.ndarray, predicted: list[Face]) -> list[Face]:
        """Detect; a face whose landmarks are within ``keep_within`` (× its size) of where the flow put
        them keeps the flow's (the detector's own differ by a pixel or two each run: no jump, no jitter)."""
        faces = [_copy(face) for face in self.detector.detect(image)]
        self.key_frames += 1
        self._since_key = 0
        self._followed = []
        for face in faces:
            size = max(float(face.box[2] - face.box[0]), float(face.box[3] - face.box[1]), 1.0)
            near = max(predicted, key=lambda p: iou(p.box, face.box), default=None)
            apart = float(np.linalg.norm(near.landmarks - face.landmarks, axis=1).mean()) if near is not None else math.inf
            if near is not None and apart < self.keep_within * size:
                face.landmarks = near.landmarks.copy()
            self._followed.append(_Followed(_copy(face), *_corners(gray, face.box, size)))
        return faces

    def _follow(self, gray: np.ndarray) -> list[Face] | None:
        """The key frame's faces moved onto ``gray``, or ``None`` when one of them is lost."""
        self._since_key += 1
        if not self._followed:
            return []
        start = np.concatenate([f.points for f in self._followed]).reshape(-1, 1, 2)
        if len(start) == 0:  # no corners to follow (flat faces): detect
            return None
        ahead, ok, _ = cv2.calcOpticalFlowPyrLK(self._gray, gray, start, None, **_LK)
        back, ok_back, _ = cv2.calcOpticalFlowPyrLK(gray, self._gray, ahead, None, **_LK)
        good = (ok[:, 0] == 1) & (ok_back[:, 0] == 1) & (np.linalg.norm((back - start)[:, 0], axis=1) < 1.0)
        ahead = ahead.reshape(-1, 2)
        moved, offset = [], 0
        for followed in self._followed:
            n = len(followed.points)
            keep = good[offset : offset + n]
            followed.key_points, followed.points = followed.key_points[keep], ahead[offset : offset + n][keep]
            offset += n
            matrix = self._transform(followed)
            if matrix is None:
                return None
            moved.append(_moved(followed.face, matrix))
        return moved

    def _transform(self, followed: _Followed) -> np.ndarray | None:
        if len(followed.points) < self.min_points:
            return None
        matrix, inliers = cv2.estimateAffinePartial2D(
            followed.key_points, followed.points, method=cv2.RANSAC, ransacReprojThreshold=2.0
        )
        if matrix is None or int(inliers.sum()) < self.min_points:
            return None
        zoom = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
        return matrix if 1 / self.max_zoom <= zoom <= self.max_zoom else None


def _corners(gray: np.ndarray, box: np.ndarray, size: float) -> tuple[np.ndarray, np.ndarray]:
    """Corners worth following inside ``box`` (key frame positions, and a copy for the current ones)."""
    x1, y1, x2, y2 = np.round(box).astype(int)
    mask = np.zeros_like(gray)
    mask[max(y1, 0) : max(y2, 0), max(x1, 0) : max(x2, 0)] = 255
    found = cv2.goodFeaturesToTrack(gray, maxCorners=60, qualityLevel=0.01, minDistance=max(size / 15, 2.0), mask=mask)
    points = found.reshape(-1, 2) if found is not None else np.zeros((0, 2), np.float32)
    return points, points.copy()


def _copy(face: Face) -> Face:
    """A fresh face (the pipeline fills in crops and may move landmarks; the key frame's stay as found)."""
    landmarks = np.array(face.landmarks, np.float64)
    return Face(box=np.array(face.box, np.float64), score=face.score, landmarks=landmarks, extras=dict(face.extras))
