"""The `restore` command end to end on real photos (CliRunner), with `--base none` (identity)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from bfrboost.cli import app
from bfrboost.faces.align import estimate_affine

runner = CliRunner()


def run(*args: str, input: bytes | None = None):
    return runner.invoke(app, ["restore", *map(str, args)], input=input, catch_exceptions=False)


def load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture
def photos(tmp_path: Path, testdata: Path) -> Path:
    """A folder with two small real photos (4 faces and 1 face)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("01.jpg", "04.jpg"):
        shutil.copy(testdata / "whole" / name, folder / name)
    return folder


def face_regions(shape: tuple[int, int], faces: list[dict], upscale: float = 1.0) -> np.ndarray:
    """Union of the inverse-warped 512 crop squares: where pasting may change pixels."""
    mask = np.zeros(shape, np.uint8)
    square = np.full((512, 512), 255, np.uint8)
    for face in faces:
        affine = estimate_affine(np.array(face["landmarks"]) , size=512)
        inverse = cv2.invertAffineTransform(affine) * upscale
        mask |= cv2.warpAffine(square, inverse, shape[::-1], flags=cv2.INTER_NEAREST)
    return mask > 0


def test_layout_and_json_schema(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run(photos, "-o", out, "--base", "none", "--save-faces", "--save-cmp", "--json")
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(line["input"]).name for line in lines] == ["01.jpg", "04.jpg"]
    for line in lines:
        assert set(line) == {"input", "output", "width", "height", "faces", "seconds", "error", "skipped", "files"}
        assert line["error"] is None
        assert line["skipped"] is None
        assert Path(line["output"]).is_file()
        assert {"decode", "detect", "align", "base", "paste", "encode"} <= set(line["seconds"])
        for face in line["faces"]:
            assert len(face["box"]) == 4 and len(face["landmarks"]) == 5
            assert all(len(point) == 2 for point in face["landmarks"])
            assert 0 <= face["score"]
    assert lines[0]["width"] == 248 and lines[0]["height"] == 189
    assert len(lines[0]["faces"]) >= 3 and len(lines[1]["faces"]) == 1
    # GFPGAN's layout, auto extension keeps JPEG, -s 2 by default
    restored = out / "restored_imgs" / "04.jpg"
    assert Image.open(restored).size == (450, 450)
    assert Image.open(out / "cropped_faces" / "04_00.png").size == (512, 512)
    assert Image.open(out / "restored_faces" / "04_00.png").size == (512, 512)
    assert Image.open(out / "cmp" / "04_00.png").size == (1024, 512)
    assert "2 image(s) restored" in result.stderr
    assert not list(out.rglob("*.tmp*")) and not list(out.rglob(".*"))


@pytest.mark.parametrize("name", ["02.png", "06.png"])
def test_identity_round_trip_changes_only_faces(name: str, tmp_path: Path, testdata: Path) -> None:
    """`--base none -s 1`: pixels outside the pasted faces unchanged, PSNR ≥ 38 dB inside them."""
    source = testdata / "whole" / name
    result = run(source, "-o", tmp_path, "--base", "none", "-s", "1", "--json")
    assert result.exit_code == 0, result.stderr
    line = json.loads(result.stdout)
    before, after = load(source).astype(np.float64), load(Path(line["output"])).astype(np.float64)
    assert before.shape == after.shape
    inside = face_regions(before.shape[:2], line["faces"])
    assert inside.any()
    diff = np.abs(before - after).max(axis=2)
    assert diff[~inside].max() <= 1
    mse = ((before - after)[inside] ** 2).mean()
    assert 10 * np.log10(255**2 / max(mse, 1e-12)) >= 38


def test_stdin_to_stdout(testdata: Path) -> None:
    data = (testdata / "whole" / "04.jpg").read_bytes()
    result = run("-", "--base", "none", "-s", "1", input=data)
    assert result.exit_code == 0, result.stderr
    image = Image.open(io.BytesIO(result.stdout_bytes))
    assert image.format == "PNG" and image.size == (225, 225)


def test_stdin_with_json_is_a_usage_error(testdata: Path) -> None:
    result = run("-", "--json", "--base", "none", input=b"")
    assert result.exit_code == 2
    assert result.stderr.strip() == "bfrboost: --json prints to stdout, which '-' already uses for the image; drop one of them"


def test_unknown_base_lists_known_names(photos: Path, tmp_path: Path) -> None:
    result = run(photos, "-o", tmp_path, "--base", "nope")
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert "\n" not in line and "unknown base 'nope'" in line and "gfpgan" in line and "codeformer" in line


def test_bad_files_are_named_and_the_batch_goes_on(photos: Path, tmp_path: Path) -> None:
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "notes.png").write_text("not an image at all")
    good = (photos / "04.jpg").read_bytes()
    (photos / "cut.jpg").write_bytes(good[: len(good) // 3])
    out = tmp_path / "out"
    result = run(photos, "-o", out, "--base", "none", "-s", "1")
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("bfrboost: ")]
    for name in ("empty.jpg", "notes.png", "cut.jpg"):
        assert sum(name in line for line in errors) == 1, result.stderr
    assert (out / "restored_imgs" / "01.jpg").is_file() and (out / "restored_imgs" / "04.jpg").is_file()
    assert sorted(p.name for p in (out / "restored_imgs").iterdir()) == ["01.jpg", "04.jpg"]
    assert "failed:" in result.stderr and "3 failed" in result.stderr


def test_empty_folder_fails(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run(tmp_path / "empty", "-o", tmp_path / "out", "--base", "none")
    assert result.exit_code == 1
    assert "no input images found" in result.stderr


def test_existing_output_is_kept_unless_overwrite(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    target = out / "restored_imgs" / "04.jpg"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"keep me")
    result = run(photos / "04.jpg", "-o", out, "--base", "none")
    assert result.exit_code == 0
    assert target.read_bytes() == b"keep me"
    assert "pass --overwrite" in result.stderr
    result = run(photos / "04.jpg", "-o", out, "--base", "none", "--overwrite")
    assert result.exit_code == 0 and Image.open(target).size == (450, 450)


def test_output_equal_to_input_is_refused(tmp_path: Path, testdata: Path) -> None:
    source = tmp_path / "restored_imgs" / "04.jpg"
    source.parent.mkdir()
    shutil.copy(testdata / "whole" / "04.jpg", source)
    before = source.read_bytes()
    result = run(source, "-o", tmp_path, "--base", "none", "--overwrite")
    assert result.exit_code == 1
    assert "overwrite the input" in result.stderr
    assert source.read_bytes() == before


def test_unwritable_output_folder(photos: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output folder should be")
    result = run(photos / "04.jpg", "-o", blocker, "--base", "none", "-s", "1")
    assert result.exit_code == 1
    assert "04.jpg" in result.stderr
    assert blocker.read_text() == "a file where the output folder should be"


def test_aligned_crops_skip_detection(tmp_path: Path, testdata: Path) -> None:
    source = testdata / "aligned" / "0143.png"
    result = run(source, "-o", tmp_path, "--base", "none", "--aligned", "--json")
    assert result.exit_code == 0, result.stderr
    line = json.loads(result.stdout)
    assert "detect" not in line["seconds"] and len(line["faces"]) == 1
    assert np.array_equal(load(Path(line["output"])), load(source))


def test_only_center_face_and_min_face(photos: Path, tmp_path: Path) -> None:
    result = run(photos / "01.jpg", "-o", tmp_path / "a", "--base", "none", "--only-center-face", "--json")
    assert len(json.loads(result.stdout)["faces"]) == 1
    result = run(photos / "01.jpg", "-o", tmp_path / "b", "--base", "none", "--min-face", "1000", "--json")
    line = json.loads(result.stdout)
    assert line["faces"] == [] and Path(line["output"]).is_file()


def test_draw_boxes_suffix_ext_quality(photos: Path, tmp_path: Path) -> None:
    result = run(photos / "04.jpg", "-o", tmp_path, "--base", "none", "-s", "1", "--draw-boxes",
                 "--suffix", "boxed", "--ext", "png")
    assert result.exit_code == 0, result.stderr
    boxed = load(tmp_path / "restored_imgs" / "04_boxed.png")
    green = (boxed[..., 1] == 255) & (boxed[..., 0] == 0) & (boxed[..., 2] == 0)
    assert green.sum() > 50
    small = run(photos / "04.jpg", "-o", tmp_path, "--base", "none", "--ext", "webp", "--quality", "10")
    large = run(photos / "04.jpg", "-o", tmp_path / "hq", "--base", "none", "--ext", "webp", "--quality", "100")
    assert small.exit_code == large.exit_code == 0
    low, high = tmp_path / "restored_imgs" / "04.webp", tmp_path / "hq" / "restored_imgs" / "04.webp"
    assert Image.open(low).format == "WEBP" and low.stat().st_size < high.stat().st_size


def test_recursive_and_globs(photos: Path, tmp_path: Path) -> None:
    sub = photos / "sub"
    sub.mkdir()
    shutil.move(photos / "04.jpg", sub / "04.jpg")
    flat = run(photos, "-o", tmp_path / "flat", "--base", "none", "-s", "1", "--json")
    deep = run(photos, "-o", tmp_path / "deep", "--base", "none", "-s", "1", "--json", "--recursive")
    globbed = run(str(photos / "**" / "*.jpg"), "-o", tmp_path / "glob", "--base", "none", "-s", "1", "--json")
    assert len(flat.stdout.splitlines()) == 1
    assert len(deep.stdout.splitlines()) == 2
    assert len(globbed.stdout.splitlines()) == 2


def test_max_pixels_guard(photos: Path, tmp_path: Path) -> None:
    result = run(photos / "04.jpg", "-o", tmp_path, "--base", "none", "--max-pixels", "1000")
    assert result.exit_code == 1
    assert "04.jpg" in result.stderr and "--max-pixels" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--refine"], "--refine needs a refiner folder"),
        (["--device", "cuda:0"], "CUDA is not available"),
        (["--detector", "nope"], "nope"),
        (["--knob", "steps"], "--knob expects NAME=VALUE, got 'steps'"),
    ],
)
def test_usage_errors_exit_2(photos: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = run(photos, "-o", tmp_path, "--base", "none", *args)
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_auto_base_without_weights_says_what_is_missing(photos: Path, tmp_path: Path) -> None:
    result = run(photos / "04.jpg", "-o", tmp_path, "-s", "1")
    assert result.exit_code == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("bfrboost: note:")]
    assert len(notes) == 1 and "GFPGANv1.4.pth" in notes[0] and "base 'none'" in notes[0]


def test_gray_photo_stays_gray(tmp_path: Path, testdata: Path) -> None:
    gray = tmp_path / "gray.png"
    Image.open(testdata / "whole" / "04.jpg").convert("L").save(gray)
    result = run(gray, "-o", tmp_path / "out", "--base", "none", "--json")
    assert result.exit_code == 0, result.stderr
    out = load(Path(json.loads(result.stdout)["output"]))
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])


def test_two_inputs_with_one_output_name(tmp_path: Path, testdata: Path) -> None:
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        shutil.copy(testdata / "whole" / "04.jpg", tmp_path / sub / "04.jpg")
    result = run(tmp_path / "a" / "04.jpg", tmp_path / "b" / "04.jpg", "-o", tmp_path / "out", "--base", "none")
    assert result.exit_code == 1
    assert "is already taken by" in result.stderr and str(tmp_path / "b" / "04.jpg") in result.stderr


def test_direct_paste_mode(tmp_path: Path, testdata: Path) -> None:
    source = testdata / "whole" / "04.jpg"
    residual = run(source, "-o", tmp_path / "r", "--base", "none", "-s", "1", "--ext", "png")
    direct = run(source, "-o", tmp_path / "d", "--base", "none", "-s", "1", "--ext", "png", "--paste", "direct")
    assert residual.exit_code == direct.exit_code == 0
    a, b = load(tmp_path / "r" / "restored_imgs" / "04.png"), load(tmp_path / "d" / "restored_imgs" / "04.png")
    assert np.array_equal(a, load(source))  # identity + residual paste is exact
    assert not np.array_equal(a, b)  # direct paste re-samples the face
    assert run(source, "-o", tmp_path, "--base", "none", "--paste", "nope").exit_code == 2


def test_fidelity_needs_a_base_with_a_fidelity_knob(photos: Path, tmp_path: Path) -> None:
    result = run(photos, "-o", tmp_path, "--base", "gpen", "--fidelity", "0.5")
    assert result.exit_code == 2
    assert result.stderr.strip() == "bfrboost: base 'gpen' has no fidelity knob; --fidelity works with: codeformer, vqfr"


def test_fidelity_maps_to_each_base_knob() -> None:
    from bfrboost.backbones.registry import fidelity_knob

    assert fidelity_knob("codeformer") == "fidelity" and fidelity_knob("vqfr") == "fidelity_ratio"


def test_rgba_alpha_is_kept_and_upscaled(tmp_path: Path, testdata: Path) -> None:
    rgb = Image.open(testdata / "whole" / "04.jpg").convert("RGB")
    alpha = Image.linear_gradient("L").resize(rgb.size)
    source = tmp_path / "rgba.png"
    Image.merge("RGBA", (*rgb.split(), alpha)).save(source)
    result = run(source, "-o", tmp_path / "out", "--base", "none", "-s", "2")
    assert result.exit_code == 0, result.stderr
    out = Image.open(tmp_path / "out" / "restored_imgs" / "rgba.png")
    assert out.mode == "RGBA" and out.size == (450, 450)
    restored_alpha = np.asarray(out)[..., 3].astype(int)
    expected = np.asarray(alpha.resize((450, 450), Image.BILINEAR)).astype(int)
    assert np.abs(restored_alpha - expected).mean() < 2
