"""read_image: every kind of file a user may bring, checked against independent decoders."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps, features

from bfrboost.errors import InputError
from bfrboost.io.read import read_image
from bfrboost.io.write import write_image
from tests.io.helpers import png_bytes

MAKE = 0x010F
ORIENTATION = 0x0112


def _save(image: Image.Image, path: Path, fmt: str | None = None, **options) -> Path:
    image.save(path, format=fmt, **options)
    return path


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    exif[MAKE] = "bfrboost-test"
    return exif


# ---- orientation and metadata ----------------------------------------------------------------


def test_exif_rotated_jpeg_is_upright_and_keeps_other_tags(tmp_path: Path, blocks: np.ndarray) -> None:
    path = _save(Image.fromarray(blocks), tmp_path / "phone.jpg", quality=95, subsampling=0, exif=_exif(6))
    loaded = read_image(path)
    assert loaded.rgb.shape == (64, 48, 3) and loaded.rgb.flags.c_contiguous and loaded.rgb.flags.writeable
    # orientation 6: the stored pixels must be turned 90° clockwise to look upright
    error = {k: np.abs(loaded.rgb.astype(int) - np.rot90(blocks, k)).mean() for k in (-1, 1)}
    assert error[-1] < 2 and error[1] > 30
    carried = Image.Exif()
    carried.load(loaded.exif)
    assert ORIENTATION not in carried and carried[MAKE] == "bfrboost-test"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillow_exif_transpose(tmp_path: Path, blocks: np.ndarray, orientation: int) -> None:
    path = _save(Image.fromarray(blocks), tmp_path / "o.png", exif=_exif(orientation))
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    np.testing.assert_array_equal(read_image(path).rgb, expected)


def test_rgb_icc_profile_is_carried_other_colour_spaces_are_not(tmp_path: Path, blocks: np.ndarray) -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    path = _save(Image.fromarray(blocks), tmp_path / "srgb.png", icc_profile=srgb)
    assert read_image(path).icc == srgb
    cmyk_profile = bytes(16) + b"CMYK" + bytes(108)  # only the colour-space field matters here
    cmyk = Image.fromarray(np.zeros((8, 8, 4), np.uint8), "CMYK")
    path = _save(cmyk, tmp_path / "print.jpg", icc_profile=cmyk_profile)
    assert read_image(path).icc is None


# ---- pixel formats -----------------------------------------------------------------------------


def test_rgba_alpha_is_kept_aside_and_round_trips(tmp_path: Path, rng: np.random.Generator) -> None:
    rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    loaded = read_image(_save(Image.fromarray(rgba), tmp_path / "a.png"))
    assert loaded.mode == "RGBA" and loaded.bits == 8
    np.testing.assert_array_equal(loaded.rgb, rgba[..., :3])
    np.testing.assert_array_equal(loaded.alpha, rgba[..., 3])
    again = read_image(write_image(tmp_path / "out" / "a.png", loaded.rgb, loaded.alpha))
    np.testing.assert_array_equal(again.rgb, rgba[..., :3])
    np.testing.assert_array_equal(again.alpha, rgba[..., 3])


def test_opaque_alpha_of_the_real_photos_is_dropped(testdata: Path) -> None:
    """whole/*.png are RGBA with alpha 255 everywhere: outputs should be plain RGB."""
    photos = sorted((testdata / "whole").glob("*.png"))
    assert photos
    for path in photos:
        loaded = read_image(path)
        assert loaded.mode == "RGBA" and loaded.alpha is None
        np.testing.assert_array_equal(loaded.rgb, np.asarray(Image.open(path).convert("RGB")))
    assert read_image(testdata / "whole" / "Solvay_conference_1927.png").gray  # a B/W photo stored as RGBA
    assert not read_image(testdata / "whole" / "02.png").gray


def test_gray_la_and_bilevel(tmp_path: Path, rng: np.random.Generator) -> None:
    gray = rng.integers(0, 256, (10, 12), dtype=np.uint8)
    loaded = read_image(_save(Image.fromarray(gray), tmp_path / "g.png"))
    assert loaded.mode == "L" and loaded.gray and loaded.alpha is None
    np.testing.assert_array_equal(loaded.rgb, np.stack([gray] * 3, axis=-1))

    alpha = rng.integers(0, 256, (10, 12), dtype=np.uint8)
    loaded = read_image(_save(Image.fromarray(np.dstack([gray, alpha])), tmp_path / "la.png"))
    assert loaded.mode == "LA" and loaded.gray
    np.testing.assert_array_equal(loaded.rgb[..., 1], gray)
    np.testing.assert_array_equal(loaded.alpha, alpha)

    loaded = read_image(_save(Image.fromarray(gray > 127), tmp_path / "bw.png"))
    assert loaded.mode == "1"
    np.testing.assert_array_equal(loaded.rgb[..., 0], np.where(gray > 127, 255, 0))


def test_gray_photo_stored_as_rgb_is_recognised(tmp_path: Path, rng: np.random.Generator, blocks: np.ndarray) -> None:
    gray = rng.integers(0, 256, (40, 40), dtype=np.uint8)
    assert read_image(_save(Image.fromarray(np.stack([gray] * 3, -1)), tmp_path / "g.png")).gray
    almost = np.stack([gray] * 3, -1)
    almost[39, 39, 2] ^= 1  # one pixel off, outside the sparse sample: the full check must catch it
    assert not read_image(_save(Image.fromarray(almost), tmp_path / "c.png")).gray
    assert not read_image(_save(Image.fromarray(blocks), tmp_path / "b.png")).gray


SIXTEEN = np.array([0, 128, 129, 257, 32767, 32768, 65279, 65535], np.uint16)


def _round16(values: np.ndarray) -> np.ndarray:
    return np.round(values / 257.0).astype(np.uint8)


def test_16bit_gray_png_and_tiff_scale_with_rounding(tmp_path: Path) -> None:
    gray = np.tile(SIXTEEN, (3, 1))
    for name in ("g16.png", "g16.tif"):
        path = tmp_path / name
        assert cv2.imwrite(str(path), gray)
        loaded = read_image(path)
        assert loaded.mode.startswith("I;16") and loaded.bits == 16 and loaded.gray
        np.testing.assert_array_equal(loaded.rgb, np.stack([_round16(gray)] * 3, -1))


RGB48 = np.stack([SIXTEEN, SIXTEEN[::-1], np.full_like(SIXTEEN, 40000)], -1)[None]  # 1×8×3, RGB order


@pytest.mark.parametrize("name", ["rgb48.png", "rgb48.tif"])
def test_48bit_rgb_keeps_all_16_bits(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    assert cv2.imwrite(str(path), RGB48[..., ::-1])  # OpenCV writes BGR
    loaded = read_image(path)
    assert loaded.bits == 16 and not loaded.gray
    np.testing.assert_array_equal(loaded.rgb, _round16(RGB48))  # Pillow alone would give 40000 >> 8 = 156


def test_16bit_falls_back_to_pillow_when_opencv_cannot_decode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "rgb48.png"
    assert cv2.imwrite(str(path), RGB48[..., ::-1])
    monkeypatch.setattr(cv2, "imdecode", lambda *args: None)
    loaded = read_image(path)
    assert loaded.bits == 16
    np.testing.assert_array_equal(loaded.rgb, RGB48 >> 8)  # Pillow's high byte: off by at most one


def test_64bit_rgba_png_keeps_all_16_bits(tmp_path: Path) -> None:
    alpha = SIXTEEN[::-1][None]
    path = tmp_path / "rgba64.png"
    assert cv2.imwrite(str(path), np.dstack([RGB48[..., ::-1], alpha]))
    loaded = read_image(path)
    np.testing.assert_array_equal(loaded.rgb, _round16(RGB48))
    np.testing.assert_array_equal(loaded.alpha, _round16(alpha))


def test_cmyk_jpeg_colours_match_independent_conversions(tmp_path: Path) -> None:
    patches = [(0, 0, 0, 0), (255, 0, 0, 0), (0, 255, 0, 0), (0, 0, 255, 0), (0, 0, 0, 128), (100, 50, 20, 30)]
    cmyk = np.zeros((16, 16 * len(patches), 4), np.uint8)
    for i, value in enumerate(patches):
        cmyk[:, 16 * i:16 * (i + 1)] = value
    path = _save(Image.fromarray(cmyk, "CMYK"), tmp_path / "print.jpg", quality=100)
    loaded = read_image(path)
    assert loaded.mode == "CMYK" and loaded.rgb.shape == (16, 96, 3)
    opencv = cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]  # libjpeg's own Adobe-CMYK handling
    for i, value in enumerate(patches):
        c = np.array(value, float)
        formula = (255 - c[:3]) * (255 - c[3]) / 255
        got = loaded.rgb[8, 16 * i + 8].astype(float)
        np.testing.assert_allclose(got, formula, atol=2)
        np.testing.assert_allclose(got, opencv[8, 16 * i + 8], atol=2)


def test_palette_png_with_transparency(tmp_path: Path) -> None:
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (253 * 3)
    indices = np.array([[0, 1, 2, 1]] * 3, np.uint8)
    image = Image.fromarray(indices, "P")
    image.putpalette(palette)
    loaded = read_image(_save(image, tmp_path / "p.png", transparency=1))  # index 1 fully transparent
    np.testing.assert_array_equal(loaded.alpha, np.where(indices == 1, 0, 255))
    np.testing.assert_array_equal(loaded.rgb[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(loaded.rgb[0, 2], [0, 0, 255])
    loaded = read_image(_save(image, tmp_path / "tr.png", transparency=bytes([255, 128, 0])))  # per-entry alpha
    np.testing.assert_array_equal(loaded.alpha[0], [255, 128, 0, 128])
    plain = read_image(_save(image, tmp_path / "plain.png"))
    assert plain.mode == "P" and plain.alpha is None
    np.testing.assert_array_equal(plain.rgb[0, 1], [0, 255, 0])


def test_colour_key_transparency_of_gray_and_rgb_png(tmp_path: Path, blocks: np.ndarray) -> None:
    gray = blocks[..., 0]
    loaded = read_image(_save(Image.fromarray(gray), tmp_path / "g.png", transparency=int(gray[0, 0])))
    np.testing.assert_array_equal(loaded.alpha, np.where(gray == gray[0, 0], 0, 255))
    key = tuple(int(v) for v in blocks[0, 0])
    loaded = read_image(_save(Image.fromarray(blocks), tmp_path / "rgb.png", transparency=key))
    np.testing.assert_array_equal(loaded.alpha, np.where((blocks == key).all(-1), 0, 255))
    np.testing.assert_array_equal(loaded.rgb, blocks)


def test_animated_gif_gives_its_first_frame(tmp_path: Path) -> None:
    red, blue = (Image.new("RGB", (8, 6), colour) for colour in ((255, 0, 0), (0, 0, 255)))
    path = tmp_path / "anim.gif"
    red.save(path, save_all=True, append_images=[blue], duration=100, loop=0)
    loaded = read_image(path)
    assert loaded.rgb.shape == (6, 8, 3)
    np.testing.assert_array_equal(np.unique(loaded.rgb.reshape(-1, 3), axis=0), [[255, 0, 0]])


@pytest.mark.parametrize(("name", "options"), [("x.webp", {"lossless": True}), ("x.tif", {}), ("x.bmp", {})])
def test_webp_tiff_bmp(tmp_path: Path, blocks: np.ndarray, name: str, options: dict) -> None:
    loaded = read_image(_save(Image.fromarray(blocks), tmp_path / name, **options))
    np.testing.assert_array_equal(loaded.rgb, blocks)


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow has no AVIF codec")
def test_avif(tmp_path: Path, blocks: np.ndarray) -> None:
    loaded = read_image(_save(Image.fromarray(blocks), tmp_path / "x.avif", quality=95, subsampling="4:4:4"))
    assert loaded.format == "AVIF" and np.abs(loaded.rgb.astype(int) - blocks).mean() < 3


# ---- refusals ----------------------------------------------------------------------------------


def test_decompression_bomb_guard_and_override(tmp_path: Path, blocks: np.ndarray) -> None:
    bomb = png_bytes(20000, 15000, 8, 0, bytes(1000))  # claims 300 MP, holds a few bytes
    limit = Image.MAX_IMAGE_PIXELS
    with pytest.raises(InputError) as info:
        read_image(bomb, name="bomb.png")
    assert str(info.value) == (
        "bomb.png: image is 20000x15000 (300 MP), above the 200 MP safety limit; pass --max-pixels 300000000 to allow it"
    )
    truncated = r"^bomb\.png: truncated image data \(the file is cut short\); re-download or re-export it$"
    with pytest.raises(InputError, match=truncated):  # past the guard: decoding starts
        read_image(bomb, name="bomb.png", max_pixels=300_000_000)
    assert Image.MAX_IMAGE_PIXELS == limit  # Pillow's own guard is restored
    # 190 MP is under our limit but over Pillow's (2 x 89.5 MP): ours decides, Pillow's does not interfere
    with pytest.raises(
        InputError, match=r"^big\.png: truncated image data \(the file is cut short\); re-download or re-export it$"
    ):
        read_image(png_bytes(19000, 10000, 8, 0, bytes(1000)), name="big.png")

    path = _save(Image.fromarray(blocks), tmp_path / "small.png")
    with pytest.raises(InputError) as info:
        read_image(path, max_pixels=3000)
    assert str(info.value) == (
        f"{path}: image is 64x48 (0.00307 MP), above the 0.003 MP safety limit; pass --max-pixels 3072 to allow it"
    )
    np.testing.assert_array_equal(read_image(path, max_pixels=3072).rgb, blocks)


def _encoded(blocks: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(blocks).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated_files(tmp_path: Path, blocks: np.ndarray, fmt: str) -> None:
    data = _encoded(blocks, fmt)
    path = tmp_path / "cut.img"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as info:
        read_image(path)
    assert str(info.value) == f"{path}: truncated image data (the file is cut short); re-download or re-export it"


def test_damaged_header_and_non_images(tmp_path: Path, blocks: np.ndarray) -> None:
    cases = {
        "header.png": (_encoded(blocks, "PNG")[:30], "damaged image data (unreadable PNG header); re-download or re-export it"),
        "empty.jpg": (b"", "empty file (0 bytes); re-export or re-download it"),
        "notes.jpg": (
            b"shopping list: eggs, milk\n",
            "not an image (unrecognised file format); give a JPEG, PNG, WebP, TIFF, BMP, GIF or AVIF file",
        ),
        "sound.webp": (
            b"RIFF\x24\x00\x00\x00WAVEfmt ",
            "not an image (unrecognised file format); give a JPEG, PNG, WebP, TIFF, BMP, GIF or AVIF file",
        ),
        "cut.webp": (b"RIFF\x24\x00\x00\x00WEBP", "damaged image data (unreadable WEBP header); re-download or re-export it"),
    }
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InputError) as info:
            read_image(tmp_path / name)
        assert str(info.value) == f"{tmp_path / name}: {reason}"
    with pytest.raises(InputError) as info:
        read_image(b"")
    assert str(info.value) == "<stdin>: no data (0 bytes); pipe an image in, e.g. bfrboost restore - < photo.jpg > restored.png"
    with pytest.raises(InputError) as info:
        read_image(tmp_path / "missing.png")
    assert str(info.value) == f"{tmp_path / 'missing.png'}: no such file; check the path"
    with pytest.raises(InputError) as info:
        read_image(tmp_path)
    assert (
        str(info.value)
        == f"{tmp_path}: is a folder, not an image file; give the folder itself as an input to restore the images in it"
    )


def test_unreadable_and_special_files_say_what_to_do(tmp_path: Path, blocks: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(InputError) as info:  # never opened: reading a FIFO would block
        read_image(tmp_path / "pipe.png")
    assert (
        str(info.value)
        == f"{tmp_path / 'pipe.png'}: is a named pipe (FIFO), not a regular file; "
        "save the image to a file, or pipe it in with '-'"
    )
    path = _save(Image.fromarray(blocks), tmp_path / "locked.png")

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(InputError) as info:
        read_image(path)
    assert str(info.value) == f"{path}: permission denied; make it readable (chmod u+r) or copy it somewhere you can read"


def test_control_characters_in_names_stay_on_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        read_image(b"", name="a\nb\x1b.png")
    assert str(info.value) == "a\\nb\\x1b.png: empty file (0 bytes); re-export or re-download it"


def test_32bit_float_tiff_is_refused_with_advice(tmp_path: Path) -> None:
    path = _save(Image.fromarray(np.zeros((4, 4), np.float32)), tmp_path / "depth.tif")
    with pytest.raises(InputError) as info:
        read_image(path, name="depth.tif")
    assert str(info.value) == "depth.tif: unsupported pixel format F (32-bit); save it as an 8- or 16-bit image first"


def test_read_face_is_upright_and_guarded_like_every_photo(tmp_path: Path) -> None:
    """Training and statistics read faces through read_image: EXIF orientation applied (and its bomb guard)."""
    from bfrboost.io.read import read_face

    rgb = np.zeros((40, 20, 3), np.uint8)
    rgb[:20] = 255  # top half white as stored
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[0x0112] = 3  # rotate 180° to view: the white half is at the bottom once upright
    image.save(tmp_path / "face.jpg", exif=exif, quality=100)
    face = read_face(tmp_path / "face.jpg", 8)
    assert face.shape == (8, 8, 3) and face[:3].mean() < 30 and face[-3:].mean() > 225
