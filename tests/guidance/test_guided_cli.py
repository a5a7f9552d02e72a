"""`colorize`, `inpaint`, `old-photo` and `restore --base pgdiff` end to end (CliRunner) on real photos and
aligned crops, with the tiny prior in the official file format (4 respaced steps) and ``--guide none``
(the input itself as the smooth-semantics target) unless a test is about the guide."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from bfrboost.cli import app
from bfrboost.faces.align import warp_faces
from bfrboost.guidance import tasks
from bfrboost.guidance.masks import color_mask, mask_to_crop
from bfrboost.guidance.scratch import detect_scratches
from bfrboost.nets import rrdb as rrdb_module
from bfrboost.pipeline import FACE_SIZE
from tests.guidance.conftest import TINY_PRIOR, TINY_RRDB, load_rgb
from tests.test_cli import face_regions

runner = CliRunner()
STROKE = np.s_[62:69, 92:138]


@pytest.fixture(autouse=True)
def tiny_architecture(monkeypatch):
    monkeypatch.setattr(tasks, "PRIOR_CONFIG", TINY_PRIOR)
    monkeypatch.setattr(rrdb_module, "RRDB_CONFIG", TINY_RRDB)


def invoke(command: str, *args, prior: Path, steps: int = 4):
    argv = [command, *map(str, args), "--prior", str(prior), "--steps", str(steps), "--ext", "png", "-s", "1"]
    if command == "restore":
        argv += ["--base", "pgdiff"]
    if command in ("colorize", "inpaint"):
        argv += ["--method", "pgdiff"]
    return runner.invoke(app, argv)


def ok(result) -> list[dict]:
    assert result.exit_code == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def chroma(image: np.ndarray) -> float:
    return float(np.abs(image.astype(float) - image.astype(float).mean(axis=-1, keepdims=True)).mean())


def test_colorize_a_whole_gray_photo_pastes_colour_faces_in_place(tmp_path, testdata, prior_file):
    photo = tmp_path / "gray.png"
    Image.fromarray(load_rgb(testdata / "whole" / "04.jpg")).convert("L").convert("RGB").save(photo)
    [line] = ok(invoke("colorize", photo, "-o", tmp_path / "out", "--json", "--guidance-scale", "0.5", prior=prior_file))
    out = tmp_path / "out" / "restored_imgs" / "gray.png"
    assert line["output"] == str(out) and line["faces"] and line["seconds"]["guidance"] > 0
    before, after = load_rgb(photo), load_rgb(out)
    inside = face_regions(before.shape[:2], line["faces"])
    assert chroma(after[inside]) > 5  # colour in the face: not forced back to gray
    assert chroma(after[~inside]) < 1 and np.array_equal(before[~inside], after[~inside])


def test_colorize_aligned_crops_and_colour_references(tmp_path, testdata, prior_file):
    source = testdata / "gray" / "Hepburn01.png"
    [line] = ok(invoke("colorize", source, "--aligned", "-o", tmp_path / "a", "--json", prior=prior_file))
    default = load_rgb(Path(line["output"]))
    assert default.shape == (512, 512, 3) and chroma(default) > 1
    ref = tmp_path / "red.png"
    Image.new("RGB", (512, 512), (230, 40, 40)).save(ref)
    args = ("--aligned", "-o", tmp_path / "b", "--json", "--color-ref", ref, "--guidance-scale", "1")
    [line] = ok(invoke("colorize", source, *args, prior=prior_file))
    reddish = load_rgb(Path(line["output"])).astype(float)
    assert (reddish[..., 0] - reddish[..., 2]).mean() > (default[..., 0].astype(float) - default[..., 2]).mean()


def test_inpaint_aligned_with_a_mask_file_and_a_mask_folder(tmp_path, testdata, prior_file):
    face, mask = testdata / "masked" / "00059.png", testdata / "masked" / "masks" / "00059.png"
    args = ("--aligned", "--mask", mask, "-o", tmp_path / "one", "--json", "--guidance-scale", "1")
    [line] = ok(invoke("inpaint", face, *args, prior=prior_file))
    before, after, hole = load_rgb(face).astype(float), load_rgb(Path(line["output"])).astype(float), load_rgb(mask)[..., 0] > 127
    assert np.abs(after - before)[~hole].mean() < 15  # unmasked pixels kept (within 15/255 on average)
    assert np.abs(after - before)[hole].mean() > 40  # the white strokes are filled
    # a folder of masks named like the inputs; an input without its mask fails alone, the batch goes on
    lonely = tmp_path / "in" / "lonely.png"
    lonely.parent.mkdir()
    Image.open(face).save(lonely)
    result = invoke("inpaint", face, lonely, "--aligned", "--mask", mask.parent, "-o", tmp_path / "dir", prior=prior_file)
    assert result.exit_code == 1
    assert (tmp_path / "dir" / "restored_imgs" / "00059.png").is_file()
    assert not (tmp_path / "dir" / "restored_imgs" / "lonely.png").exists()
    assert f"no mask named lonely.* in {mask.parent}" in result.stderr


def test_inpaint_a_whole_photo_painted_white(tmp_path, testdata, prior_file):
    photo = load_rgb(testdata / "whole" / "04.jpg").copy()
    painted = photo.copy()
    painted[STROKE] = 255  # a white stroke across the forehead (the face is at x 84–145, y 58–118)
    src = tmp_path / "painted.png"
    Image.fromarray(painted).save(src)
    args = ("--mask-color", "white", "-o", tmp_path / "out", "--json", "--guidance-scale", "1")
    [line] = ok(invoke("inpaint", src, *args, prior=prior_file))
    after = load_rgb(Path(line["output"])).astype(float)
    assert np.abs(after[STROKE] - 255).mean() > 40  # no longer white
    outside = ~face_regions(photo.shape[:2], line["faces"])
    assert np.array_equal(after[outside], painted[outside])


def test_inpaint_refuses_a_mask_of_the_wrong_size_in_one_line(tmp_path, testdata, prior_file):
    mask = tmp_path / "small.png"
    Image.new("L", (100, 80), 255).save(mask)
    result = invoke("inpaint", testdata / "whole" / "04.jpg", "--mask", mask, "-o", tmp_path / "out", prior=prior_file)
    assert result.exit_code == 1
    assert "is 100×80, but the photo is 225×225; give a mask of the photo's size" in result.stderr
    assert invoke("inpaint", testdata / "whole" / "04.jpg", "-o", tmp_path / "o2", prior=prior_file).exit_code == 2


def test_old_photo_with_auto_scratches_a_mask_folder_and_the_rrdb_guide(tmp_path, testdata, prior_file):
    source = testdata / "old_photo" / "0_7.jpg"
    guide = ("--aligned", "--guide", "none", "--scratch-mask")
    [line] = ok(invoke("old-photo", source, *guide, "auto", "-o", tmp_path / "auto", "--json", prior=prior_file))
    assert Path(line["output"]) == tmp_path / "auto" / "restored_imgs" / "0_7.png"
    ok(invoke("old-photo", source, *guide, testdata / "old_photo" / "masks", "-o", tmp_path / "dir", prior=prior_file))
    torch.manual_seed(0)
    rrdb_file = tmp_path / "rrdb_iter_100000.pth"
    torch.save({"state_dict": rrdb_module.TimeRRDB(TINY_RRDB).state_dict()}, rrdb_file)
    args = ("--aligned", "--weights", rrdb_file, "-o", tmp_path / "rrdb", "--json")
    [line] = ok(invoke("old-photo", source, *args, prior=prior_file))
    assert chroma(load_rgb(Path(line["output"]))) > 1  # old photos come out in colour
    assert "base" not in line["seconds"]  # the RRDB guide runs inside the sampler


def test_restore_base_pgdiff_whole_photo_with_a_guide_and_a_reference(tmp_path, testdata, prior_file, monkeypatch):
    from bfrboost.nets import arcface as identity

    monkeypatch.setattr(identity, "load_arcface", lambda device="cpu", weights=None: identity.random_arcface(0))
    source = testdata / "whole" / "04.jpg"
    args = ["--guide", "none", "--reference", testdata / "reference" / "ref" / "00010.png", "-o", tmp_path / "out", "--json"]
    [line] = ok(invoke("restore", source, *args, prior=prior_file))
    assert line["seconds"]["guidance"] > 0 and line["seconds"]["base"] >= 0
    before, after = load_rgb(source), load_rgb(Path(line["output"]))
    inside = face_regions(before.shape[:2], line["faces"])
    assert np.array_equal(before[~inside], after[~inside])
    assert (np.abs(before.astype(int) - after).max(axis=2) > 1)[inside].mean() > 0.3
    result = runner.invoke(app, ["restore", str(source), "--reference", str(source), "-o", str(tmp_path / "x")])
    assert result.exit_code == 2 and "use them with --base pgdiff" in result.stderr
    result = runner.invoke(app, ["restore", str(source), "--steps", "50", "--seed", "3", "-o", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert result.stderr == "bfrboost: --steps, --seed guide the diffusion prior: use them with --base pgdiff\n"
    assert not (tmp_path / "x").exists()


def test_a_wrong_prior_fails_in_one_line(tmp_path, testdata):
    bad = tmp_path / "prior.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    result = invoke("colorize", testdata / "gray" / "Einstein01.png", "--aligned", "-o", tmp_path / "o", prior=bad)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"bfrboost: {bad}: not an IDDPM FFHQ-512 prior (")


# ---- masks and scratches -------------------------------------------------------------------------


def test_photo_masks_are_warped_into_each_crop_like_the_photo(testdata):
    """A white stroke painted on the photo and the photo mask of that stroke land on the same crop pixels."""
    from bfrboost.faces.detect import get_detector

    photo = load_rgb(testdata / "whole" / "04.jpg").copy()
    photo[STROKE] = 255
    [face] = get_detector("dlib").detect(photo)[:1]
    warp_faces(photo, [face], size=FACE_SIZE)
    from_crop = color_mask(face.crop, "white") > 0
    warped = mask_to_crop(color_mask(photo, "white"), face, photo.shape) > 0
    assert (from_crop & warped).sum() / from_crop.sum() > 0.97  # every white crop pixel is to be filled
    assert (from_crop & warped).sum() / (from_crop | warped).sum() > 0.75  # measured 0.80: the warp is generous at edges
    crop_mask = np.zeros((FACE_SIZE, FACE_SIZE), np.float32)
    crop_mask[:10] = 1  # a 512² mask on a 225² photo is in crop coordinates already
    assert np.array_equal(mask_to_crop(crop_mask, face, photo.shape), crop_mask)


def test_scratch_detector_finds_bright_scratches_and_leaves_clean_faces(testdata):
    crop = load_rgb(testdata / "old_photo" / "0_7.jpg")
    truth = load_rgb(testdata / "old_photo" / "masks" / "0_7.jpg")[..., 0] > 127
    found = detect_scratches(crop) > 0
    precision, recall = (found & truth).sum() / found.sum(), (found & truth).sum() / truth.sum()
    assert precision > 0.7 and recall > 0.2  # measured 0.83 / 0.31
    assert (detect_scratches(load_rgb(testdata / "aligned" / "0143.png")) > 0).mean() < 0.02
    assert detect_scratches(cv2.cvtColor(np.full((64, 64), 128, np.uint8), cv2.COLOR_GRAY2RGB)).sum() == 0


# ---- Python API ----------------------------------------------------------------------------------


def test_python_api_inpaints_a_crop_and_colorizes_a_whole_photo(tiny_prior, testdata):
    from bfrboost.options import GuidanceOptions
    from bfrboost.pipeline import Restorer

    face = load_rgb(testdata / "masked" / "00059.png")
    mask = load_rgb(testdata / "masked" / "masks" / "00059.png")
    inpainter = Restorer("pgdiff", aligned=True, guidance=GuidanceOptions(task="inpaint", prior=tiny_prior, steps=4, scale=1.0))
    result = inpainter.restore(face, extras={"mask": mask})  # arrays in, arrays out
    hole = mask[..., 0] > 127
    assert result.image.shape == (512, 512, 3)
    assert np.abs(result.image.astype(float) - face)[~hole].mean() < 15
    assert np.abs(result.image.astype(float) - face)[hole].mean() > 40
    photo = np.asarray(Image.open(testdata / "whole" / "04.jpg").convert("L").convert("RGB"))
    colorizer = Restorer("pgdiff", upscale=1, guidance=GuidanceOptions(task="colorize", prior=tiny_prior, steps=4, scale=0.5))
    assert colorizer.keeps_gray is False
    result = colorizer.restore(photo)
    assert len(result.faces) == 1 and result.image.shape == photo.shape and chroma(result.image) > 0.5


def test_guided_weights_are_non_commercial_cards():
    from bfrboost import weights

    cards = weights.cards()
    assert "rrdb_iter_100000.pth" in [w.file for w in cards["pgdiff"].weights]
    assert cards["pgdiff"].license == cards["difface"].license == "S-Lab License 1.0"
    assert not cards["pgdiff"].commercial_use and not cards["difface"].commercial_use  # licence shown before the first download
