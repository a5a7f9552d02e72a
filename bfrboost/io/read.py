"""Image files in and out: robust decoding, input collection, output naming and atomic writes.

Photos users bring are messier than the PNG/JPEG the research scripts expect: rotated phone JPEGs,
transparent PNGs, 16-bit scans, CMYK print files, palette GIFs, broken downloads. Everything here turns
them into one shape (RGB uint8 + optional alpha) or a one-line :class:`InputError`, and writes results
so that a crash or a full disk never leaves a half-written file behind.
"""

from __future__ import annotations

import glob
import io
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from bfrboost.errors import InputError, OutputError, UsageError
from bfrboost.safety import InputGuard, OutputSet, describe_missing, one_line, special_file

DEFAULT_MAX_PIXELS = 200_000_000
"""Decompression-bomb guard: larger images are refused unless the caller raises the limit."""

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".avif"})
"""What folders and globs are searched for (compared lower-case). AVIF needs Pillow >= 11.2."""

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"})
"""Video clips folders and globs also yield with ``collect_inputs(..., videos=True)`` (``bfrboost restore``)."""

VIDEO_FORMATS = {"mp4": "mp4", "mov": "mov", "mkv": "matroska", "webm": "webm", "avi": "avi"}
"""Video extensions we can write → FFmpeg muxer (named explicitly: temp files end in ``.partial``)."""

OUTPUT_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "tif": "TIFF", "tiff": "TIFF", "bmp": "BMP"}
"""Extensions we can write, and the Pillow format behind each."""

_ALPHA_FORMATS = frozenset({"PNG", "WEBP", "TIFF"})
_PNG_COMPRESS_LEVEL = 3  # ~3x faster than Pillow's default 6 on photos, for ~15 % larger files
_EXIF_ORIENTATION = 0x0112
_EXIF_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "MPO"})  # formats whose EXIF is a separate block, safe to carry
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


# ---- reading -------------------------------------------------------------------------------------


def read_image(source: Path | str | bytes, name: str | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Decode a file (or its bytes, e.g. stdin) to RGB uint8 with alpha kept aside.

    Multi-frame files give their first frame. ``max_pixels=None`` disables the size guard.
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
            f"{_megapixels(max_pixels)} MP safety limit; pass --max-pixels {width * height} to allow it"
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
        raise InputError(f"{name}: is a folder, not an image file; give the folder itself as an input to restore the images in it") from None
    except PermissionError:
        raise InputError(f"{name}: permission denied; make it readable (chmod u+r) or copy it somewhere you can read") from None
    except OSError as exc:
        raise InputError(f"{name}: cannot read ({exc.strerror or exc}); check the file and the disk it is on, or copy it elsewhere") from None


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
                raise InputError(f"{name}: not an image (unrecognised file format); give a JPEG, PNG, WebP, TIFF, BMP, GIF or AVIF file") from None
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
    if image.format not in _EXIF_FORMATS or not len(exif):
        return None
    exif.pop(_EXIF_ORIENTATION, None)  # pixels are already upright; a kept tag would rotate them twice
    try:
        return exif.tobytes()
    except Exception:  # noqa: BLE001 - same reason as _exif: drop what cannot be re-encoded
        return None


def _carried_icc(image: Image.Image) -> bytes | None:
    icc = image.info.get("icc_profile")
    return icc if icc and icc[16:20] == b"RGB " else None  # a CMYK/gray profile would mislabel RGB output


# ---- writing -------------------------------------------------------------------------------------


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
    if exif and pil_format in _EXIF_FORMATS:
        options["exif"] = exif
    image.save(file, format=pil_format, **options)


# ---- inputs and output names ---------------------------------------------------------------------


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


def plan_output(
    input_path: Path | str, outdir: Path | str, subdir: str | None = "restored_imgs", suffix: str | None = None, ext: str = "png"
) -> Path:
    """GFPGAN's layout: ``OUTDIR/SUBDIR/NAME[_SUFFIX].EXT`` (no SUBDIR level when it is empty)."""
    stem = "stdin" if str(input_path) == "-" else Path(input_path).stem
    name = f"{stem}_{suffix}.{ext}" if suffix else f"{stem}.{ext}"
    return Path(outdir) / subdir / name if subdir else Path(outdir) / name


def check_not_input(out: Path | str, inputs: Iterable[Path | str]) -> None:
    """Refuse an output that is one of the inputs (e.g. ``-o`` pointing at the photos with no subdir)."""
    InputGuard(inputs).check(out)


class InputProblem(str):
    """One input that failed while collecting: the one-line message (a ``str``), plus ``input``, the
    path or argument it is about, so a runner can give it its own report (one ``--json`` object)."""

    input: str

    def __new__(cls, input: Path | str, reason: str) -> InputProblem:
        problem = super().__new__(cls, f"{one_line(input)}: {reason}")
        problem.input = str(input)
        return problem


def collect_inputs(inputs: Iterable[str], recursive: bool = False, videos: bool = False) -> tuple[list[Path], list[InputProblem]]:
    """Expand files, folders (images by extension, sorted) and globs (``photos/**/*.png``) into paths;
    with ``videos`` folders and globs also yield video clips (:data:`VIDEO_EXTENSIONS`).

    Returns the paths in the order given, without duplicates, and one :class:`InputProblem` per input
    that cannot be used (missing path, dangling symbolic link, FIFO or other special file, folder
    without images, glob matching nothing) for the caller to report before going on.
    A file named explicitly is kept whatever its extension; reading it reports if it is no image.
    """
    paths: list[Path] = []
    problems: list[InputProblem] = []
    seen: set[str] = set()
    extensions = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS if videos else IMAGE_EXTENSIONS
    for item in inputs:
        path = Path(os.path.expanduser(item))
        special = special_file(path)
        if special is not None:
            problems.append(InputProblem(item, special))
            continue
        if path.is_file():
            found = [path]
        elif path.is_dir():
            try:
                found, inside = _scan(_folder_entries(path, recursive, problems), extensions)
                hint = "" if found or recursive or not any(_visible_dirs(path)) else " (pass --recursive to look in subfolders)"
            except OSError as exc:
                problems.append(InputProblem(item, f"cannot read folder ({exc.strerror}); check its permissions"))
                continue
            problems += inside
            if not found and not inside:
                problems.append(InputProblem(item, f"folder has no images{hint}"))
        elif any(char in item for char in "*?[") and not os.path.lexists(path):
            found, inside = _scan((Path(p) for p in sorted(glob.glob(os.path.expanduser(item), recursive=True))), extensions)
            problems += inside
            if not found and not inside:
                problems.append(InputProblem(item, "pattern matches no images; check the pattern (quote it so the shell does not expand it)"))
        else:
            problems.append(InputProblem(item, describe_missing(path)))
            continue
        for found_path in found:
            key = os.path.normcase(os.path.realpath(found_path))
            if key not in seen:
                seen.add(key)
                paths.append(found_path)
    return paths, problems


def _scan(candidates: Iterable[Path], extensions: frozenset[str] = IMAGE_EXTENSIONS) -> tuple[list[Path], list[InputProblem]]:
    """Files among ``candidates`` with one of ``extensions`` (not hidden) and those that are FIFOs,
    sockets, devices or dangling links: named like images, so the user expects them restored."""
    found: list[Path] = []
    problems: list[InputProblem] = []
    for path in candidates:
        if path.suffix.lower() not in extensions or path.name.startswith("."):
            continue
        if path.is_file():
            found.append(path)
        elif (special := special_file(path)) is not None:
            problems.append(InputProblem(path, special))
        elif path.is_symlink() and not path.exists():
            problems.append(InputProblem(path, describe_missing(path)))
    return found, problems


def _visible_dirs(folder: Path) -> Iterator[Path]:
    return (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _folder_entries(folder: Path, recursive: bool, problems: list[InputProblem]) -> list[Path]:
    """Entries of a folder, sorted; hidden files and folders (and our own temp files) are left out.

    An unreadable sub-folder is a problem reported, not a silent gap in the batch."""
    if not recursive:
        return sorted(folder.iterdir())

    def unreadable(exc: OSError) -> None:
        problems.append(InputProblem(exc.filename or folder, f"cannot read folder ({exc.strerror}); check its permissions"))

    found = []
    for root, dirs, files in os.walk(folder, onerror=unreadable):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(Path(root) / f for f in files)
    return sorted(found)
