"""Face tracking and landmark smoothing on synthetic tracks with known truth, and the Restorer hook."""

from __future__ import annotations

import numpy as np

from bfrboost.faces.align import estimate_affine
from bfrboost.faces.track import FaceTracker, OneEuroFilter, iou
from bfrboost.faces.types import Face
from bfrboost.io.read import read_image
from bfrboost.pipeline import Restorer

FPS = 25.0
POINTS = np.array([[40.0, 45.0], [60.0, 45.0], [50.0, 58.0], [42.0, 70.0], [58.0, 70.0]])  # a 100 px face


def face_at(offset: np.ndarray, noise: np.ndarray | None = None) -> Face:
    points = POINTS + offset + (0 if noise is None else noise)
    return Face(box=np.array([0.0, 0.0, 100.0, 100.0]) + np.tile(offset, 2), score=1.0, landmarks=points)


def smooth_track(offsets: np.ndarray, noise: np.ndarray, tracker: FaceTracker | None = None) -> np.ndarray:
    tracker = tracker or FaceTracker()
    out = []
    for i, (offset, jitter) in enumerate(zip(offsets, noise)):
        (face,) = tracker.update([face_at(offset, jitter)], i / FPS)
        out.append(face.landmarks)
    return np.array(out)


def test_iou() -> None:
    assert iou(np.array([0, 0, 10, 10]), np.array([5, 0, 15, 10])) == 1 / 3
    assert iou(np.array([0, 0, 10, 10]), np.array([20, 20, 30, 30])) == 0.0


def test_a_still_face_stays_exactly_still() -> None:
    offsets = np.zeros((30, 2))
    smoothed = smooth_track(offsets, np.zeros((30, 5, 2)))
    assert np.array_equal(smoothed, np.broadcast_to(POINTS, smoothed.shape))


def test_jitter_on_a_still_face_is_removed() -> None:
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1.5, (60, 5, 2))
    raw = POINTS + noise
    smoothed = smooth_track(np.zeros((60, 2)), noise)
    raw_step = np.abs(np.diff(raw, axis=0)).mean()
    smooth_step = np.abs(np.diff(smoothed, axis=0)).mean()
    assert smooth_step < 0.25 * raw_step  # frame-to-frame motion of a still face: 1.65 px → 0.37 px
    assert np.abs(smoothed[10:] - POINTS).mean() < 0.6 * np.abs(raw[10:] - POINTS).mean()  # and closer to the truth (0.55×)


def test_a_moving_face_is_followed_with_little_lag() -> None:
    rng = np.random.default_rng(1)
    offsets = np.stack([np.arange(50) * 3.0, np.zeros(50)], axis=1)  # 75 px/s, 0.75 face sizes per second
    noise = rng.normal(0, 1.0, (50, 5, 2))
    smoothed = smooth_track(offsets, noise)
    truth = POINTS + offsets[:, None, :]
    assert np.abs(smoothed[10:] - truth[10:]).mean() < 0.8  # 0.44 px behind (one frame of motion is 3 px)
    raw_jerk = np.abs(np.diff(truth + noise, n=2, axis=0)).mean()
    assert np.abs(np.diff(smoothed, n=2, axis=0)).mean() < 0.35 * raw_jerk  # and far steadier (0.29×)
    published = smooth_track(offsets, noise, FaceTracker(predict=False))  # One-Euro without prediction lags
    assert np.abs(published[10:] - truth[10:]).mean() > 1.5  # 1.73 px


def test_tracks_keep_their_ids_and_end_after_missed_frames() -> None:
    tracker = FaceTracker(max_missed=2)
    left, right = np.array([0.0, 0.0]), np.array([300.0, 0.0])
    first = tracker.update([face_at(left), face_at(right)], 0.0)
    ids = {f.extras["track"] for f in first}
    swapped = tracker.update([face_at(right + 2), face_at(left + 2)], 0.04)  # order of detections changes
    assert [f.extras["track"] for f in swapped] == [first[1].extras["track"], first[0].extras["track"]]
    assert np.array_equal(swapped[0].extras["raw_landmarks"], POINTS + right + 2)
    for i in range(3):  # the right face leaves for 3 frames > max_missed
        (face,) = tracker.update([face_at(left + 2)], 0.08 + 0.04 * i)
        assert face.extras["track"] == first[0].extras["track"]
    back = tracker.update([face_at(left + 2), face_at(right + 2)], 0.2)
    assert back[1].extras["track"] not in ids and tracker.count == 3


def test_one_euro_restarts_when_time_goes_back() -> None:
    f = OneEuroFilter()
    f(np.zeros(2), 0.0)
    assert np.array_equal(f(np.ones(2) * 5, 0.0), np.ones(2) * 5)


def test_restorer_aligns_on_the_filtered_landmarks(testdata) -> None:
    image = read_image(testdata / "whole" / "03.jpg").rgb
    restorer = Restorer("none", device="cpu", detector="dlib", upscale=1)
    seen = []

    def shift(faces: list[Face]) -> list[Face]:
        seen.append([f.affine for f in faces])  # not aligned yet
        for face in faces:
            face.landmarks = face.landmarks + [4.0, -3.0]
        return faces

    plain = restorer.prepare(image)
    shifted = restorer.prepare(image, landmark_filter=shift)
    assert seen == [[None]] and "smooth" in shifted.seconds
    (face,) = shifted.faces
    np.testing.assert_allclose(face.landmarks, plain.faces[0].landmarks + [4.0, -3.0])
    np.testing.assert_allclose(face.affine, estimate_affine(plain.faces[0].landmarks + [4.0, -3.0]))
