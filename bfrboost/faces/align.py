"""Align faces to the FFHQ 512 template: similarity transform from 5 landmarks, then warp.

Each crop is warped from the face's region of interest only (a few hundred pixels), never from
the full frame, so the cost does not grow with the photo size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from bfrboost.errors import InputError
from bfrboost.faces.types import Face

# Five points (left eye, right eye, nose tip, left mouth corner, right mouth corner) of an FFHQ-aligned
# 512×512 face, in OpenCV pixel-centre coordinates; the template facexlib and the base restorers use.
FFHQ_TEMPLATE_512 = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.19360],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ],
    dtype=np.float64,
)

# Crop border outside the photo: the gray facexlib pads with (its BGR (135, 133, 132) written in RGB),
# so base restorers see the same padding they see upstream. Reflecting would invent mirrored faces.
BORDER_RGB = (132, 133, 135)

# Bicubic kernel radius plus one pixel, in pixels of the image being sampled.
_KERNEL_MARGIN = 3


def template(size: int = 512) -> np.ndarray:
    """The FFHQ template for a ``size``×``size`` crop (scaled about pixel centres)."""
    return (FFHQ_TEMPLATE_512 + 0.5) * (size / 512.0) - 0.5


def estimate_affine(landmarks: np.ndarray, size: int = 512) -> np.ndarray:
    """2×3 similarity transform mapping image points to the template (LMEDS, like facexlib).

    LMEDS keeps a single badly placed landmark (occluded mouth, profile nose) from tilting the crop.
    """
    points = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    matrix, _ = cv2.estimateAffinePartial2D(points, template(size), method=cv2.LMEDS)
    if matrix is None:
        raise InputError(f"face landmarks {np.round(points, 1).tolist()} are degenerate; cannot align this face")
    return matrix


def scale_of(matrix: np.ndarray) -> float:
    """Isotropic scale of a 2×3 similarity transform (destination pixels per source pixel)."""
    return math.sqrt(abs(float(np.linalg.det(matrix[:, :2]))))


def invert(matrix: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64))


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """2×3 matrix of ``outer ∘ inner`` (apply ``inner`` first)."""
    full = np.vstack([inner, [0.0, 0.0, 1.0]])
    return outer @ full


def translate(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])


def quad_bounds(matrix: np.ndarray, size: int, shape: Sequence[int], margin: int) -> tuple[int, int, int, int]:
    """Pixel box ``(x0, y0, x1, y1)`` (end exclusive, clipped to ``shape``) covering the square
    ``[-0.5, size - 0.5]²`` mapped by ``matrix``, grown by ``margin`` pixels."""
    corners = np.array([[-0.5, -0.5, 1], [size - 0.5, -0.5, 1], [-0.5, size - 0.5, 1], [size - 0.5, size - 0.5, 1]])
    mapped = corners @ np.asarray(matrix, dtype=np.float64).T
    h, w = int(shape[0]), int(shape[1])
    x0 = max(math.floor(mapped[:, 0].min()) - margin, 0)
    y0 = max(math.floor(mapped[:, 1].min()) - margin, 0)
    x1 = min(math.ceil(mapped[:, 0].max()) + margin + 1, w)
    y1 = min(math.ceil(mapped[:, 1].max()) + margin + 1, h)
    return x0, y0, max(x1, x0), max(y1, y0)


def warp_affine(
    src: np.ndarray,
    matrix: np.ndarray,
    dsize: tuple[int, int],
    interpolation: int = cv2.INTER_CUBIC,
    border_value: float | Sequence[float] = 0.0,
) -> np.ndarray:
    """``cv2.warpAffine`` that neither aliases when shrinking a lot nor pays bicubic cost when enlarging.

    A plain warp samples the source point-wise, so shrinking a 512 crop onto a 40-pixel face (or a
    huge face onto a 512 crop) aliases. When the transform shrinks more than 2×, the source is first
    box-filtered (``INTER_AREA``) down to *twice* the target scale, like a mipmap level, and the rest
    (≤ 2× shrink, rotation, shift) is interpolated with ``interpolation``: the box filter removes
    what would alias, the final bicubic step keeps the detail a full box filter would blur away
    (identity round trip 49–60 dB instead of 38–55 dB on the test photos). When the transform
    enlarges 2× or more (a small face onto a 512 crop), the source is first enlarged with SIMD
    ``cv2.resize`` bicubic; the remaining rotation runs on an image oversampled ≥ 2×, where bilinear
    is as accurate as bicubic and 5× faster than a bicubic ``warpAffine``.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    scale = scale_of(matrix)
    h, w = src.shape[:2]
    if scale < 0.5 or scale >= 2.0:
        target = 2.0 * scale if scale < 0.5 else scale
        new_w, new_h = max(round(w * target), 1), max(round(h * target), 1)
        fx, fy = new_w / w, new_h / h
        src = cv2.resize(src, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 0.5 else cv2.INTER_CUBIC)
        # cv2.resize maps pixel centres as x_resized = (x + 0.5) * fx - 0.5; undo that before ``matrix``.
        resize_inverse = np.array([[1.0 / fx, 0.0, 0.5 / fx - 0.5], [0.0, 1.0 / fy, 0.5 / fy - 0.5]])
        matrix = compose(matrix, resize_inverse)
        if scale >= 2.0:
            interpolation = cv2.INTER_LINEAR
    if np.isscalar(border_value):
        border = (float(border_value),) * 4
    else:
        border = tuple(float(v) for v in border_value) + (0.0,) * (4 - len(border_value))
    return cv2.warpAffine(src, matrix, dsize, flags=interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=border)


def warp_faces(image: np.ndarray, faces: Sequence[Face], size: int = 512) -> list[Face]:
    """Fill ``face.affine`` (image → crop) and ``face.crop`` (``size``×``size`` RGB uint8) in place.

    Only each face's region of interest (the crop square mapped into the image, plus the kernel
    margin, clipped to the image) is read; the part of a crop outside the photo is ``BORDER_RGB``.
    """
    for face in faces:
        affine = estimate_affine(face.landmarks, size)
        inverse = invert(affine)
        # Shrinking reads up to 1/scale source pixels per crop pixel, so the margin grows accordingly.
        margin = math.ceil(_KERNEL_MARGIN / min(scale_of(affine), 1.0))
        x0, y0, x1, y1 = quad_bounds(inverse, size, image.shape, margin)
        face.affine = affine
        roi = image[y0:y1, x0:x1]
        face.crop = warp_affine(roi, compose(affine, translate(x0, y0)), (size, size), border_value=BORDER_RGB)
    return list(faces)
