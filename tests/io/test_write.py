"""encode_image / write_image / output naming: formats, alpha, atomicity, overwrite and guard rules."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from bfrboost.errors import OutputError, UsageError
from bfrboost.io import write as images
from bfrboost.io.read import read_image
from bfrboost.io.write import encode_image, output_ext, write_image
from bfrboost.runners.outputs import plan_output
from bfrboost.safety import InputGuard


def _decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def test_encode_formats_and_alpha_rules(blocks: np.ndarray) -> None:
    alpha = np.zeros(blocks.shape[:2], np.uint8)
    alpha[:, 16:32], alpha[:, 32:] = 128, 255
    black = np.zeros_like(blocks)

    png = _decode(encode_image(blocks, alpha, fmt="png"))
    assert png.format == "PNG" and png.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(png)[..., 3], alpha)

    webp = _decode(encode_image(blocks, alpha, fmt="webp", quality=90))
    assert webp.format == "WEBP" and webp.mode == "RGBA"
    assert np.abs(np.asarray(webp)[..., 3].astype(int) - alpha).max() <= 2

    # JPEG has no alpha: composite on white, so transparent black becomes white, not black
    jpg = np.asarray(_decode(encode_image(black, alpha, fmt="jpg", quality=100)))
    assert jpg.shape == blocks.shape
    np.testing.assert_allclose(jpg[24, [4, 24, 48]].astype(float), [[255] * 3, [127] * 3, [0] * 3], atol=2)

    # chroma subsampling only below quality 90: restored faces keep their colour detail
    assert JpegImagePlugin.get_sampling(_decode(encode_image(blocks, fmt="jpg", quality=95))) == 0
    assert JpegImagePlugin.get_sampling(_decode(encode_image(blocks, fmt="jpg", quality=80))) == 2

    gray = _decode(encode_image(blocks[..., 0], fmt="png"))
    assert gray.mode == "L"
    np.testing.assert_array_equal(np.asarray(gray), blocks[..., 0])


def test_encode_rejects_unknown_format_and_bad_arrays(blocks: np.ndarray) -> None:
    with pytest.raises(UsageError, match=r"^unknown image format 'gif'; use png, jpg or webp$"):
        encode_image(blocks, fmt="gif")
    with pytest.raises(ValueError, match="expected an H×W×3 or H×W uint8 image"):
        encode_image(blocks.astype(np.float32))
    with pytest.raises(ValueError, match="alpha must be uint8"):
        encode_image(blocks, np.zeros((2, 2), np.uint8))


def test_write_image_round_trip_and_metadata(tmp_path: Path, blocks: np.ndarray) -> None:
    exif = Image.Exif()
    exif[0x010F] = "bfrboost-test"
    out = write_image(tmp_path / "new" / "deeper" / "x.jpg", blocks, quality=90, exif=exif.tobytes())
    assert out == tmp_path / "new" / "deeper" / "x.jpg"  # missing folders are created
    loaded = read_image(out)
    assert np.abs(loaded.rgb.astype(int) - blocks).mean() < 6
    carried = Image.Exif()
    carried.load(loaded.exif)
    assert carried[0x010F] == "bfrboost-test"
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # usual permissions, not a temp file's 0600


def test_overwrite_rules(tmp_path: Path, blocks: np.ndarray) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(b"keep me")
    with pytest.raises(OutputError) as info:
        write_image(path, blocks)
    assert str(info.value) == f"{path}: already exists; pass --overwrite to replace it"
    assert path.read_bytes() == b"keep me"
    write_image(path, blocks, overwrite=True)
    np.testing.assert_array_equal(read_image(path).rgb, blocks)
    assert sorted(os.listdir(tmp_path)) == ["x.png"]


def test_unwritable_folder_fails_even_as_root(tmp_path: Path, blocks: np.ndarray) -> None:
    """chmod does not stop root, a regular file standing where the folder should be does."""
    blocker = tmp_path / "results"
    blocker.write_text("a file, not a folder")
    out = blocker / "restored_imgs" / "x.png"
    with pytest.raises(OutputError) as info:
        write_image(out, blocks)
    assert str(info.value) == (
        f"{out}: cannot write into {out.parent} ({blocker} is a file, not a folder); choose another output folder"
    )


def test_unknown_output_extension(tmp_path: Path, blocks: np.ndarray) -> None:
    with pytest.raises(OutputError) as info:
        write_image(tmp_path / "x.gif", blocks)
    assert str(info.value) == f"{tmp_path / 'x.gif'}: cannot write '.gif' images; use .png, .jpg or .webp"


def _fail_midway(error: BaseException):
    def save(image, file, *args) -> None:
        file.write(b"\x89PNG half an image")
        file.flush()
        raise error

    return save


@pytest.mark.parametrize("overwrite", [False, True])
def test_failed_write_leaves_no_partial_or_temp_file(
    tmp_path: Path, blocks: np.ndarray, monkeypatch: pytest.MonkeyPatch, overwrite: bool
) -> None:
    path = tmp_path / "x.png"
    if overwrite:
        path.write_bytes(b"previous result")
    monkeypatch.setattr(images, "_save", _fail_midway(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(OutputError) as info:
        write_image(path, blocks, overwrite=overwrite)
    assert str(info.value) == f"{path}: no space left on the device holding {tmp_path}; free space there or choose another -o"
    assert os.listdir(tmp_path) == (["x.png"] if overwrite else [])
    if overwrite:
        assert path.read_bytes() == b"previous result"  # the old output survives a failed replacement

    monkeypatch.setattr(images, "_save", _fail_midway(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        write_image(path, blocks, overwrite=overwrite)
    assert os.listdir(tmp_path) == (["x.png"] if overwrite else [])


@pytest.mark.parametrize(
    ("source", "ext", "has_alpha", "expected"),
    [
        ("a.jpg", "auto", False, "jpg"),
        ("a.JPEG", "auto", False, "jpeg"),
        ("a.jpg", "auto", True, "png"),  # alpha must be kept: JPEG cannot hold it
        ("a.webp", "auto", True, "webp"),
        ("a.tif", "auto", True, "tif"),
        ("a.bmp", "auto", False, "bmp"),
        ("a.gif", "auto", False, "png"),  # we do not write GIF
        ("-", "auto", False, "png"),  # stdin
        (None, "auto", False, "png"),
        ("a.png", "jpg", True, "jpg"),  # an explicit choice wins (alpha is composited on white)
        ("a.png", "WEBP", False, "webp"),
    ],
)
def test_output_ext(source: str | None, ext: str, has_alpha: bool, expected: str) -> None:
    assert output_ext(source, ext, has_alpha) == expected


def test_output_ext_rejects_unknown_format() -> None:
    with pytest.raises(UsageError, match=r"^unknown image format 'heic'; use png, jpg or webp$"):
        output_ext("a.jpg", "heic", False)


def test_plan_output_follows_gfpgan_layout(tmp_path: Path) -> None:
    assert plan_output(Path("photos/dad.jpg"), tmp_path) == tmp_path / "restored_imgs" / "dad.png"
    assert plan_output("photos/dad.jpg", tmp_path, suffix="boost", ext="jpg") == tmp_path / "restored_imgs" / "dad_boost.jpg"
    assert plan_output("photos/dad.jpg", tmp_path, subdir=None, ext="jpg") == tmp_path / "dad.jpg"
    assert plan_output("-", tmp_path) == tmp_path / "restored_imgs" / "stdin.png"


def test_input_guard_refuses_a_planned_output_over_an_input(tmp_path: Path) -> None:
    photo = tmp_path / "dad.jpg"
    photo.write_bytes(b"jpeg")
    inputs = [tmp_path / "mum.jpg", photo]
    out = plan_output(photo, tmp_path, subdir=None, ext="jpg")
    with pytest.raises(OutputError) as info:
        InputGuard(inputs).check(out)
    assert str(info.value) == f"{out}: would overwrite the input {photo}; choose another -o or --suffix"
    with pytest.raises(OutputError, match="would overwrite the input"):  # same file, spelled differently
        InputGuard([Path(os.path.relpath(photo))]).check(tmp_path / "sub" / ".." / "dad.jpg")
    InputGuard(inputs).check(plan_output(photo, tmp_path, subdir=None, suffix="boost", ext="jpg"))
    InputGuard(inputs).check(plan_output(photo, tmp_path, ext="jpg"))
