"""The Python API: `bfrboost.Restorer` does everything the CLI does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import bfrboost
from bfrboost.errors import UsageError
from bfrboost.options import OutputOptions
from bfrboost.pipeline import Restorer
from bfrboost.runners.files import restore_files


def rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def identity() -> Restorer:
    return Restorer("none", upscale=2, device="cpu")


def test_restore_one_image(identity: Restorer, testdata: Path) -> None:
    image = rgb(testdata / "whole" / "04.jpg")
    result = identity.restore(image)
    assert isinstance(result, bfrboost.Result)
    assert result.image.shape == (450, 450, 3) and result.image.dtype == np.uint8
    assert len(result.faces) == 1
    face = result.faces[0]
    assert face.crop.shape == face.restored.shape == (512, 512, 3)
    assert np.array_equal(face.crop, face.restored)  # base none is the identity
    assert face.affine.shape == (2, 3) and face.landmarks.shape == (5, 2)
    assert {"detect", "align", "base", "paste"} <= set(result.seconds)


def test_batch_gives_the_same_faces_as_one_by_one(identity: Restorer, testdata: Path) -> None:
    images = [rgb(testdata / "whole" / name) for name in ("01.jpg", "04.jpg")]
    batch = identity.restore_batch(images)
    single = [identity.restore(image) for image in images]
    for one, other in zip(batch, single):
        assert len(one.faces) == len(other.faces)
        assert np.array_equal(one.image, other.image)


def test_alpha_is_carried_and_upscaled(identity: Restorer, testdata: Path) -> None:
    image = rgb(testdata / "whole" / "04.jpg")
    alpha = np.full(image.shape[:2], 200, np.uint8)
    result = identity.restore(image, alpha)
    assert result.alpha.shape == (450, 450) and int(result.alpha.mean()) == 200


def test_base_output_reaches_the_pasted_face(testdata: Path, monkeypatch) -> None:
    """A base that inverts colours must change the face region and nothing far from it."""
    restorer = Restorer("none", upscale=1, device="cpu")
    monkeypatch.setattr(restorer.base, "restore", lambda crops: 1.0 - crops)
    image = rgb(testdata / "whole" / "04.jpg")
    result = restorer.restore(image)
    x1, y1, x2, y2 = result.faces[0].box.astype(int)
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    centre_before, centre_after = image[cy, cx].astype(int), result.image[cy, cx].astype(int)
    assert np.abs(centre_after - (255 - centre_before)).max() <= 3
    assert np.array_equal(result.image[:3, :3], image[:3, :3])


def test_restore_files_reports_and_writes(identity: Restorer, testdata: Path, tmp_path: Path) -> None:
    inputs = [testdata / "whole" / "04.jpg", tmp_path / "missing.jpg"]
    (tmp_path / "missing.jpg").write_bytes(b"\x00garbage")
    reports = list(restore_files(identity, inputs, OutputOptions(outdir=tmp_path / "out", ext="png")))
    assert [r.error is None for r in reports] == [True, False]
    assert "missing.jpg" in reports[1].error
    assert Path(reports[0].output).name == "04.png" and Path(reports[0].output).is_file()
    assert reports[0].to_json()["faces"][0]["landmarks"]


def test_bad_arguments(testdata: Path) -> None:
    with pytest.raises(UsageError, match=r"^--upscale must be in \[1, 4\], got 0$"):
        Restorer("none", upscale=0)
    with pytest.raises(UsageError, match=r"^--refiner-strength must be in \[0, 1\], got 2$"):
        Restorer("none", refiner_strength=2)
    with pytest.raises(TypeError, match="unexpected restorer setting 'upscal'"):
        Restorer("none", upscal=2)
    restorer = Restorer("none", upscale=1, device="cpu")
    with pytest.raises(UsageError, match="RGB uint8"):
        restorer.restore(np.zeros((10, 10), np.uint8))


def test_device_auto_is_cpu_here() -> None:
    restorer = Restorer("none", device="auto", upscale=1)
    assert restorer.device == torch.device("cuda" if torch.cuda.is_available() else "cpu")
