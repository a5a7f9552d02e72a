"""`restore_paths`: what `bfrboost restore` does (images and clips, bad inputs reported), as one Python call;
and the Restorer as three parts with a face restorer that follows the small protocol."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import bfrboost
from bfrboost.errors import InputError
from bfrboost.faces.finder import FaceFinder
from bfrboost.faces.paster import Paster
from bfrboost.io.read import read_image
from bfrboost.options import DetectOptions, OutputOptions, PasteOptions, VideoOptions
from bfrboost.pipeline import Restorer
from bfrboost.restorers import FACE_RESTORERS
from tests.support.clips import make_pan_clip

REPO = Path(__file__).resolve().parents[1]


def test_restore_paths_restores_images_and_clips_and_reports_bad_inputs(testdata: Path, tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    shutil.copy(testdata / "whole" / "04.jpg", source / "04.jpg")
    make_pan_clip(read_image(testdata / "whole" / "03.jpg").rgb, source / "pan.mp4", (160, 96), 3, audio=False)
    started: list[int] = []
    out = tmp_path / "out"
    reports = list(bfrboost.restore_paths(
        [source, tmp_path / "missing.jpg"], lambda: Restorer("none", upscale=1, device="cpu", detector="dlib"),
        OutputOptions(outdir=out), VideoOptions(outdir=out), on_start=lambda restorer, count: started.append(count),
    ))
    assert started == [3]  # the restorer was built once every input was found
    missing, image, clip = reports
    assert missing.input == str(tmp_path / "missing.jpg") and missing.error.startswith(f"{tmp_path / 'missing.jpg'}: ")
    assert image.error is None and Path(image.output) == out / "restored_imgs" / "04.jpg" and Path(image.output).is_file()
    assert clip.error is None and Path(clip.output) == out / "restored_videos" / "pan.mp4" and Path(clip.output).is_file()
    with pytest.raises(InputError, match="^no input images found; check the paths$"):
        list(bfrboost.restore_paths([], Restorer("none", upscale=1, device="cpu", aligned=True)))


class Negative:
    """A face restorer that follows the protocol and is no Restorer subclass: it inverts each crop."""

    name, keeps_gray, reports_steps, on_step = "negative", True, False, None

    def __init__(self) -> None:
        self.notes = ["negative restorer"]

    def image_extras(self, image, extras):
        return dict(extras or {})

    def restore_faces(self, faces, timer):
        return [255 - face.crop for face in faces]


def test_restorer_is_composed_of_finder_face_restorer_and_paster() -> None:
    device = torch.device("cpu")
    restorer = Restorer.from_parts(
        FaceFinder(DetectOptions(aligned=True), device), Negative(), Paster(PasteOptions(upscale=1), device, aligned=True), device
    )
    crop = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    assert np.array_equal(restorer.restore(crop).image, 255 - crop)
    assert restorer.notes == ["negative restorer"]
    assert set(FACE_RESTORERS) == {"pgdiff"}  # guided diffusion is a registry entry, not a Restorer subclass


def test_no_module_imports_another_modules_private_names() -> None:
    offenders = []
    for path in sorted((REPO / "bfrboost").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bfrboost"):
                offenders += [f"{path.relative_to(REPO)}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert offenders == []
