"""KeyframeDetector: the detector runs on key frames, scene cuts and lost faces only; between them the
faces follow the image. Frames are windows panning across a real photo, so the true motion is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bfrboost.faces import get_detector
from bfrboost.faces.keyframes import KeyframeDetector
from bfrboost.io.read import read_image
from tests.support.clips import pan_frame

SIZE, ORIGIN, PAN = (640, 360), np.array([40.0, 130.0]), np.array([1.0, 0.5])


class Counting:
    """dlib, remembering which frames it ran on."""

    name = "dlib"

    def __init__(self) -> None:
        self.dlib, self.calls, self.frame = get_detector("dlib"), [], 0

    def detect(self, image: np.ndarray) -> list:
        self.calls.append(self.frame)
        return self.dlib.detect(image)


@pytest.fixture(scope="module")
def photo(testdata: Path) -> np.ndarray:
    return read_image(testdata / "whole" / "06.png").rgb  # two faces


def frame(photo: np.ndarray, index: int) -> np.ndarray:
    return pan_frame(photo, SIZE, tuple(ORIGIN + index * PAN))


def run(follower: KeyframeDetector, counting: Counting, frames: list[np.ndarray]) -> list[list]:
    found = []
    for index, image in enumerate(frames):
        counting.frame = index
        found.append(follower.detect(image))
    return found


def test_detects_every_nth_frame_and_follows_the_motion_between(photo: np.ndarray) -> None:
    counting = Counting()
    follower = KeyframeDetector(counting, interval=5)
    found = run(follower, counting, [frame(photo, i) for i in range(11)])
    assert counting.calls == [0, 5, 10] and (follower.key_frames, follower.frames) == (3, 11)
    assert [len(faces) for faces in found] == [2] * 11
    first = sorted(found[0], key=lambda f: f.box[0])
    for index, faces in enumerate(found):
        for face, start in zip(sorted(faces, key=lambda f: f.box[0]), first, strict=True):
            # the photo moves by −index·PAN in the window: so do the followed landmarks (sub-pixel)
            assert np.abs(face.landmarks - (start.landmarks - index * PAN)).max() < 0.5, index
    assert all(face.extras.get("followed") for face in found[4]) and not any(face.extras.get("followed") for face in found[5])


def test_a_scene_cut_or_a_lost_face_runs_the_detector_at_once(photo: np.ndarray, testdata: Path) -> None:
    other = read_image(testdata / "whole" / "03.jpg").rgb  # another scene, one face
    cut = pan_frame(other, SIZE, (0.0, 0.0))
    frames = [frame(photo, i) for i in range(3)] + [cut, cut]
    counting = Counting()
    found = run(KeyframeDetector(counting, interval=8), counting, frames)
    assert counting.calls == [0, 3]
    assert [len(faces) for faces in found] == [2, 2, 2, 1, 1]

    covered = [frame(photo, i) for i in range(4)]
    x1, y1, x2, y2 = sorted(found[0], key=lambda f: f.box[0])[0].box.round().astype(int)
    covered[2] = covered[2].copy()
    covered[2][y1:y2, x1:x2] = 128  # one face hidden: its corners are lost
    counting = Counting()
    found = run(KeyframeDetector(counting, interval=8), counting, covered)
    assert counting.calls == [0, 2] and len(found[2]) == 1
