"""Masks for PGDiff guidance: read, painted in a colour, warped into each face crop, found by input name.

Masks given for a photo are warped into every face crop with that face's affine (``Face.affine``),
exactly as the crop itself was cut; with ``--aligned`` the photo *is* the crop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bfrboost.errors import InputError, UsageError
from bfrboost.faces.align import warp_affine
from bfrboost.faces.types import FACE_SIZE, Face

#: Guide name of PGDiff's own restorer (``rrdb_iter_100000.pth``), which is not a registered base.
RRDB_GUIDE = "rrdb"
#: Pixels of a ``mask_color`` at least this close to the colour (every channel) are to be filled.
COLOR_TOLERANCE = 8
COLORS = {"white": (255, 255, 255), "black": (0, 0, 0)}

ImageLike = Path | str | np.ndarray


def read_mask(source: ImageLike, name: str = "mask") -> np.ndarray:
    """A mask image as a float32 H×W array in {0, 1}: every non-zero pixel (any channel) is 1 = fill.

    As PGDiff (``mask > 0`` after reading): a 0/1 mask from a segmentation tool works, and a soft
    (anti-aliased) edge is filled entirely — any value ≥ 1 of 255 counts, never "> 127".
    """
    if isinstance(source, np.ndarray):
        array = source if source.ndim == 2 else source.max(axis=2)
        return (array > 0).astype(np.float32)
    from bfrboost.io.read import read_image

    return read_mask(read_image(Path(source)).rgb, name)


def require_marked(mask: np.ndarray, name: str) -> np.ndarray:
    """``mask`` if it marks at least one pixel; an all-black mask would inpaint nothing, so it is refused."""
    if not mask.any():
        raise InputError(
            f"{name}: the mask is all black, so there is nothing to fill; mark the pixels to fill with any non-black value"
        )
    return mask


#: A photo whose colour beyond a tint (:func:`colour_beyond_tint`) exceeds this many levels is "in
#: colour": gray and sepia scans measure 0–4.1 on the test photos, colour photos 3.9–18.5 (docs/guided.md).
IN_COLOUR = 5.0


def colour_beyond_tint(image: np.ndarray) -> float:
    """RMS (0–255 levels) of what an affine map of the lightness does not explain, per channel.

    Gray and tinted monochrome (sepia, a faded cast) are each channel = a·lightness + b, so they
    measure ~0 whatever their tint; a colour photo has hues the lightness cannot predict.
    """
    x = image.reshape(-1, 3).astype(np.float64)[:: max(1, image.shape[0] * image.shape[1] // 262144)]
    basis = np.stack([x.mean(axis=1), np.ones(len(x))], axis=1)
    coef, *_ = np.linalg.lstsq(basis, x, rcond=None)
    return float(np.sqrt(((x - basis @ coef) ** 2).mean()))


def check_gray(image: np.ndarray, name: str) -> None:
    """Refuse to colourise ``image`` when it is already in colour (re-colouring it loses its colours)."""
    level = colour_beyond_tint(image)
    if level > IN_COLOUR:
        raise InputError(
            f"{name}: already in colour ({level:.1f} levels of colour beyond a tint > {IN_COLOUR:g}); "
            "colorize would replace its colours — pass --force to do it anyway"
        )


def color_mask(image: np.ndarray, color: str) -> np.ndarray:
    """1 where ``image`` (RGB uint8) is the named colour (e.g. white strokes painted over a face)."""
    if color not in COLORS:
        raise UsageError(f"unknown mask colour {color!r}; use {', '.join(COLORS)}")
    diff = np.abs(image.astype(np.int16) - np.array(COLORS[color], dtype=np.int16)).max(axis=2)
    return (diff <= COLOR_TOLERANCE).astype(np.float32)


def check_mask_shape(mask: np.ndarray, photo_shape: Sequence[int], name: str = "mask") -> None:
    """A mask must be the photo's size (photo coordinates) or FACE_SIZE² (aligned-crop coordinates)."""
    h, w = photo_shape[:2]
    if mask.shape[:2] not in ((h, w), (FACE_SIZE, FACE_SIZE)):
        raise InputError(
            f"{name}: is {mask.shape[1]}×{mask.shape[0]}, but the photo is {w}×{h}; give a mask of the photo's size "
            f"(photo coordinates) or {FACE_SIZE}×{FACE_SIZE} (aligned-crop coordinates)"
        )


def mask_to_crop(mask: np.ndarray, face: Face, photo_shape: Sequence[int], name: str = "mask") -> np.ndarray:
    """A photo-coordinate mask warped into ``face``'s aligned crop (1 = fill); a FACE_SIZE² mask on a
    photo of another size is taken to be in crop coordinates already."""
    check_mask_shape(mask, photo_shape, name)
    if mask.shape[:2] != tuple(photo_shape[:2]):
        return mask.astype(np.float32)
    warped = warp_affine(mask.astype(np.float32), face.affine, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_LINEAR)
    return (warped > 0.25).astype(np.float32)  # thin strokes survive a shrinking warp


_MISSING_MASK = {
    "--mask": "give --mask an image (white = fill) or a folder of masks named like the inputs, or use --mask-color",
    "--scratch-mask": "give --scratch-mask an image (white = scratch), a folder of masks named like the inputs, or auto",
}


def mask_targets(
    source: Path | str | None, references: Path | str | None = None, option: str = "--mask"
) -> Callable[[Path, np.ndarray], dict[str, Any]]:
    """Per-input targets for a runner: the mask of each input file, read from ``source`` (one mask file
    for every input, or a folder of masks named like the inputs), checked against the photo's size, and
    the reference photo named like the input in the folder ``references`` (identity guidance).

    Files stay with the runners: a :class:`~bfrboost.pipeline.Restorer` only sees the mask array."""
    source = Path(source) if source is not None else None
    if source is not None and not source.exists():
        what = "scratch-mask" if option == "--scratch-mask" else "mask"
        raise InputError(f"{source}: no such {what} file or folder; {_MISSING_MASK[option]}")

    def targets(path: Path, image: np.ndarray) -> dict[str, Any]:
        out: dict[str, Any] = {"name": str(path)}
        if source is not None:
            advice = "(white = fill) or leave the folder out"
            mask = read_mask(source) if source.is_file() else read_mask(named_like(path, source, "mask", advice))
            check_mask_shape(mask, image.shape, str(source))
            out.update(mask=mask, mask_name=str(source))
        if references is not None:
            out["reference"] = named_like(path, Path(references), "reference", "(a photo of the same person)")
        return out

    return targets


def named_like(path: Path, folder: Path, what: str = "mask", advice: str = "(white = fill) or leave the folder out") -> Path:
    """The file of ``folder`` with ``path``'s stem (an input's mask or reference), or one line on what to add."""
    matches = sorted(p for p in folder.iterdir() if p.stem == path.stem and p.is_file())
    if not matches:
        raise InputError(f"{path}: no {what} named {path.stem}.* in {folder}; add one {advice}")
    return matches[0]
