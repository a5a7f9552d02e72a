"""Writing images: encoding to the chosen format (EXIF/ICC carried), atomic writes, the output extension."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from bfrboost.errors import OutputError, UsageError
from bfrboost.io.read import EXIF_FORMATS
from bfrboost.safety import OutputSet, one_line

OUTPUT_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "tif": "TIFF", "tiff": "TIFF", "bmp": "BMP"}
"""Extensions we can write, and the Pillow format behind each."""
_ALPHA_FORMATS = frozenset({"PNG", "WEBP", "TIFF"})
_PNG_COMPRESS_LEVEL = 3  # ~3x faster than Pillow's default 6 on photos, for ~15 % larger files


def encode_image(
    rgb: np.ndarray, alpha: np.ndarray | None = None, fmt: str = "png", quality: int = 95,
    *, exif: bytes | None = None, icc: bytes | None = None,
) -> bytes:
    """Encode to PNG/JPEG/WebP/TIFF/BMP bytes (e.g. for stdout).

    ``rgb`` is H×W×3 (or H×W gray) uint8. Formats without alpha (JPEG, BMP) get the image composited
    on white, so transparent areas do not turn into whatever colour hid under them.
    """
    pil_format = _pil_format(fmt)
    buffer = io.BytesIO()
    _save(_to_pil(rgb, alpha, pil_format), buffer, pil_format, quality, exif, icc)
    return buffer.getvalue()


def image_writer(
    path: Path | str, rgb: np.ndarray, alpha: np.ndarray | None = None, quality: int = 95,
    *, exif: bytes | None = None, icc: bytes | None = None,
) -> Callable[[BinaryIO], None]:
    """``write(file)`` encoding the image in the format of ``path``'s extension, for
    :meth:`bfrboost.safety.OutputSet.add`; an extension we cannot write fails here, before any write."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in OUTPUT_FORMATS:
        raise OutputError(f"{one_line(path)}: cannot write '.{one_line(fmt)}' images; use .png, .jpg or .webp")
    pil_format = OUTPUT_FORMATS[fmt]
    image = _to_pil(rgb, alpha, pil_format)

    def write(file: BinaryIO) -> None:
        try:
            _save(image, file, pil_format, quality, exif, icc)
        except ValueError as exc:  # the encoder refused, e.g. WebP above 16383 px
            raise OutputError(f"{one_line(path)}: cannot encode as {pil_format} ({exc}); choose another --ext") from None

    return write


def write_image(
    path: Path | str, rgb: np.ndarray, alpha: np.ndarray | None = None, quality: int = 95, overwrite: bool = False,
    *, exif: bytes | None = None, icc: bytes | None = None,
) -> Path:
    """Write atomically (temp file in the same folder, fsync, rename); the format follows the extension.

    An existing file is kept unless ``overwrite``; missing folders are created. On any failure no
    partial or temporary file remains. Raises :class:`OutputError`.
    """
    write = image_writer(path, rgb, alpha, quality, exif=exif, icc=icc)
    OutputSet(overwrite).add(path, write).commit()
    return Path(path)


def _pil_format(fmt: str) -> str:
    try:
        return OUTPUT_FORMATS[fmt.lower().lstrip(".")]
    except KeyError:
        raise UsageError(f"unknown image format '{fmt}'; use png, jpg or webp") from None


def _to_pil(rgb: np.ndarray, alpha: np.ndarray | None, pil_format: str) -> Image.Image:
    if rgb.dtype != np.uint8 or not (rgb.ndim == 2 or (rgb.ndim == 3 and rgb.shape[2] == 3)):
        raise ValueError(f"expected an H×W×3 or H×W uint8 image, got {rgb.dtype} {rgb.shape}")
    if alpha is not None and (alpha.dtype != np.uint8 or alpha.shape != rgb.shape[:2]):
        raise ValueError(f"alpha must be uint8 {rgb.shape[:2]}, got {alpha.dtype} {alpha.shape}")
    if alpha is None:
        return Image.fromarray(rgb)
    if pil_format in _ALPHA_FORMATS:
        return Image.fromarray(np.dstack([rgb, alpha]))  # gray + alpha -> LA, RGB + alpha -> RGBA
    weight = alpha.astype(np.uint16) if rgb.ndim == 2 else alpha[..., None].astype(np.uint16)
    on_white = (rgb * weight + 255 * (255 - weight) + 127) // 255
    return Image.fromarray(on_white.astype(np.uint8))


def _save(image: Image.Image, file: BinaryIO, pil_format: str, quality: int, exif: bytes | None, icc: bytes | None) -> None:
    options: dict[str, object] = {
        "PNG": {"compress_level": _PNG_COMPRESS_LEVEL},
        "JPEG": {"quality": quality, "subsampling": 0 if quality >= 90 else 2},  # 4:4:4 at high quality, like ImageMagick
        "WEBP": {"quality": quality},
        "TIFF": {"compression": "tiff_deflate"},
        "BMP": {},
    }[pil_format]
    if icc and image.mode in ("RGB", "RGBA") and pil_format != "BMP":
        options["icc_profile"] = icc
    if exif and pil_format in EXIF_FORMATS:
        options["exif"] = exif
    image.save(file, format=pil_format, **options)


def output_ext(input_path: Path | str | None, ext: str, has_alpha: bool) -> str:
    """The output extension: ``ext`` itself, or for "auto" the input's (PNG for stdin, for formats we
    cannot write such as GIF, and when alpha must be kept but the input's format cannot hold it)."""
    ext = ext.lower().lstrip(".")
    if ext != "auto":
        _pil_format(ext)
        return ext
    if input_path is None or str(input_path) == "-":
        return "png"
    suffix = Path(input_path).suffix.lower().lstrip(".")
    fmt = OUTPUT_FORMATS.get(suffix)
    if fmt is None or (has_alpha and fmt not in _ALPHA_FORMATS):
        return "png"
    return suffix
