"""Reading photos: robust decoding into RGB uint8 (+ alpha kept aside), EXIF orientation, a bomb guard.

Photos users bring are messier than the PNG/JPEG the research scripts expect: rotated phone JPEGs,
transparent PNGs, 16-bit scans, CMYK print files, palette GIFs, broken downloads. Everything here turns
them into one shape (RGB uint8 + optional alpha) or a one-line :class:`InputError`.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from bfrboost.errors import InputError
from bfrboost.safety import one_line, special_file

DEFAULT_MAX_PIXELS = 200_000_000
"""Decompression-bomb guard: larger images are refused unless the caller raises the limit."""


_EXIF_ORIENTATION = 0x0112
EXIF_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "MPO"})  # formats whose EXIF is a separate block, safe to carry
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I;16", "I;16L", "I;16B", "I;16N"})
_MAGIC = {  # file signatures, to tell "damaged PNG" from "not an image"
    b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF8": "GIF", b"BM": "BMP",
    b"II*\x00": "TIFF", b"MM\x00*": "TIFF",
}
_pillow_guard_lock = threading.Lock()
_REDO = "re-export or re-download it"
_REDO_DAMAGED = "re-download or re-export it"


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """A decoded image in the one layout the pipeline uses, plus what is worth carrying to the output."""

    rgb: np.ndarray  # H×W×3 uint8, EXIF orientation applied
    alpha: np.ndarray | None  # H×W uint8, None when absent or fully opaque
    name: str  # what error messages call it (the path, or e.g. "<stdin>")
    mode: str  # Pillow mode of the source ("RGB", "L", "CMYK", "I;16", "P", ...)
    format: str | None  # Pillow format of the source ("JPEG", "PNG", ...)
    bits: int  # bits per channel of the source: 8 or 16
    gray: bool  # single-channel source, or RGB whose three channels are identical
    exif: bytes | None = None  # EXIF block without the orientation tag (already applied)
    icc: bytes | None = None  # RGB ICC profile; profiles of other colour spaces are dropped

    @property
    def width(self) -> int:
        return self.rgb.shape[1]

    @property
    def height(self) -> int:
        return self.rgb.shape[0]




def read_image(
    source: Path | str | bytes,
    name: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    too_large: str | None = None,
) -> LoadedImage:
    """Decode a file (or its bytes, e.g. stdin) to RGB uint8 with alpha kept aside.

    Multi-frame files give their first frame. ``max_pixels=None`` disables the size guard; ``too_large``
    is the action its message gives (default: the ``--max-pixels`` option of the commands that have it).
    Raises :class:`InputError` with one line naming ``name`` (default: the path) and the reason.
    """
    if isinstance(source, bytes):
        name = one_line(name or "<stdin>")
        data = source
    else:
        name = one_line(name or source)
        data = _read_bytes(Path(source), name)
    if not data:
        if isinstance(source, bytes) and name == "<stdin>":
            raise InputError("<stdin>: no data (0 bytes); pipe an image in, e.g. bfrboost restore - < photo.jpg > restored.png")
        raise InputError(f"{name}: empty file (0 bytes); {_REDO}")
    image = _open(data, name)
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise InputError(
            f"{name}: image is {width}x{height} ({_megapixels(width * height)} MP), above the "
            f"{_megapixels(max_pixels)} MP safety limit; {too_large or f'pass --max-pixels {width * height} to allow it'}"
        )
    try:
        image.load()
        bits = _bits_per_channel(image, data)
        rgb, alpha = _decode_16bit(data) if bits == 16 and not image.mode.startswith("I;16") else (None, None)
        if rgb is None:
            rgb, alpha = _to_rgb(image, name)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _decode_error(name, exc, data) from None
    exif = _exif(image)
    orientation = exif.get(_EXIF_ORIENTATION, 1)
    rgb = _orient(rgb, orientation)
    if alpha is not None:
        alpha = None if alpha.min() == 255 else _orient(alpha, orientation)
    return LoadedImage(
        rgb=rgb, alpha=alpha, name=name, mode=image.mode, format=image.format, bits=bits,
        gray=image.mode in _GRAY_MODES or _channels_equal(rgb),
        exif=_carried_exif(image, exif), icc=_carried_icc(image),
    )


def _read_bytes(path: Path, name: str) -> bytes:
    special = special_file(path)
    if special is not None:
        raise InputError(f"{name}: {special}")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{name}: no such file; check the path") from None
    except IsADirectoryError:
        raise InputError(
            f"{name}: is a folder, not an image file; give the folder itself as an input to restore the images in it"
        ) from None
    except PermissionError:
        raise InputError(f"{name}: permission denied; make it readable (chmod u+r) or copy it somewhere you can read") from None
    except OSError as exc:
        raise InputError(
            f"{name}: cannot read ({exc.strerror or exc}); check the file and the disk it is on, or copy it elsewhere"
        ) from None


def _open(data: bytes, name: str) -> Image.Image:
    """Parse the header only; Pillow's own bomb check is lifted because ours (with an override) runs next."""
    with _pillow_guard_lock:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            kind = next((fmt for magic, fmt in _MAGIC.items() if data.startswith(magic)), None)
            if data[:4] == b"RIFF" and data[8:12] == b"WEBP":  # RIFF alone could be a WAV or AVI
                kind = "WEBP"
            if kind is None:
                raise InputError(
                    f"{name}: not an image (unrecognised file format); give a JPEG, PNG, WebP, TIFF, BMP, GIF or AVIF file"
                ) from None
            raise InputError(f"{name}: damaged image data (unreadable {kind} header); {_REDO_DAMAGED}") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise _decode_error(name, exc, data) from None
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _decode_error(name: str, exc: Exception, data: bytes) -> InputError:
    # WebP's decoder does not say "truncated", but its RIFF header states the full length
    riff_cut = data[:4] == b"RIFF" and int.from_bytes(data[4:8], "little") + 8 > len(data)
    if "truncated" in str(exc).lower() or isinstance(exc, EOFError) or riff_cut:
        return InputError(f"{name}: truncated image data (the file is cut short); {_REDO_DAMAGED}")
    return InputError(f"{name}: damaged image data ({one_line(exc)}); {_REDO_DAMAGED}")


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.3g}" if pixels < 1e9 else f"{pixels / 1e6:.0f}"


def _bits_per_channel(image: Image.Image, data: bytes) -> int:
    if image.mode.startswith("I;16"):
        return 16
    if image.format == "PNG":  # IHDR bit depth; Pillow hides it for 16-bit colour PNGs
        return 16 if data[24] == 16 else 8
    if image.format == "TIFF":
        bits = image.tag_v2.get(258, 8)
        return 16 if max(bits if isinstance(bits, tuple) else (bits,)) == 16 else 8
    return 8


def _decode_16bit(data: bytes) -> tuple[np.ndarray | None, np.ndarray | None]:
    """16-bit decode via OpenCV, which keeps all 16 bits; Pillow keeps only the high byte of colour ones.

    Returns ``(None, None)`` when OpenCV cannot decode it, so the caller falls back to Pillow.
    """
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # also ignores EXIF orientation
    if array is None or array.dtype != np.uint16:
        return None, None
    array = _to_8bit(array)
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=2), None
    if array.shape[2] == 4:
        return np.ascontiguousarray(array[..., 2::-1]), np.ascontiguousarray(array[..., 3])
    return np.ascontiguousarray(array[..., ::-1]), None


def _to_8bit(array: np.ndarray) -> np.ndarray:
    """round(v / 257): maps 0..65535 onto 0..255 exactly, where v >> 8 would bias everything down."""
    return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _to_rgb(image: Image.Image, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    mode = image.mode
    if mode in ("I", "F"):
        raise InputError(f"{name}: unsupported pixel format {mode} (32-bit); save it as an 8- or 16-bit image first")
    if mode.startswith("I;16"):
        return np.repeat(_to_8bit(np.array(image))[..., None], 3, axis=2), None
    if "A" in mode or "a" in mode or "transparency" in image.info:  # RGBA, LA, PA, RGBa, La; P/L/RGB + tRNS
        rgba = np.array(image.convert("RGBA"))
        return np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3])
    if mode in ("1", "L"):
        return np.repeat(np.array(image.convert("L"))[..., None], 3, axis=2), None
    if mode == "RGB":
        return np.array(image), None
    return np.array(image.convert("RGB")), None  # P, CMYK (Pillow undoes Adobe's inverted CMYK), YCbCr, ...


_ORIENTATIONS = {  # EXIF orientation -> the view that shows the pixels upright
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, -1)[::-1],
    8: lambda a: np.rot90(a, 1),
}


def _orient(array: np.ndarray, orientation: int) -> np.ndarray:
    view = _ORIENTATIONS.get(orientation)
    return array if view is None else np.ascontiguousarray(view(array))


def _channels_equal(rgb: np.ndarray) -> bool:
    """A gray photo saved as RGB; a sparse sample rejects colour photos without a full pass."""
    sample = rgb[::17, ::17]
    if not (np.array_equal(sample[..., 0], sample[..., 1]) and np.array_equal(sample[..., 1], sample[..., 2])):
        return False
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]))


def _exif(image: Image.Image) -> Image.Exif:
    """EXIF is optional metadata: a damaged block must not make a good photo unreadable."""
    try:
        return image.getexif()
    except Exception:  # noqa: BLE001 - Pillow raises struct/Key/Type errors on malformed EXIF
        return Image.Exif()


def _carried_exif(image: Image.Image, exif: Image.Exif) -> bytes | None:
    # TIFF "EXIF" is the file's own structure (strip offsets, ...): never copy it into another file
    if image.format not in EXIF_FORMATS or not len(exif):
        return None
    exif.pop(_EXIF_ORIENTATION, None)  # pixels are already upright; a kept tag would rotate them twice
    try:
        return exif.tobytes()
    except Exception:  # noqa: BLE001 - same reason as _exif: drop what cannot be re-encoded
        return None


def _carried_icc(image: Image.Image) -> bytes | None:
    icc = image.info.get("icc_profile")
    return icc if icc and icc[16:20] == b"RGB " else None  # a CMYK/gray profile would mislabel RGB output


def read_face(path: Path | str, size: int) -> np.ndarray:
    """One aligned face as size×size×3 uint8 RGB, upright (EXIF) and bomb-guarded as every photo is,
    Lanczos-resized when it is not that size: training and statistics read faces alike."""
    rgb = read_image(Path(path)).rgb
    if rgb.shape[:2] != (size, size):
        # np.array copies: PIL's buffer is read-only, and torch.from_numpy warns on a read-only array
        rgb = np.array(Image.fromarray(rgb).resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)
    return rgb
