"""Paste restored faces back into the (upscaled) frame, touching only each face's region.

By default the *residual* ``restored − crop`` is warped back and added to the frame instead of the
restored face itself. The restorer only ever saw the 512 crop, so it owns exactly the detail the
crop can hold; everything finer that the frame has (a face larger than 512 px, an upscaled frame
from a background upsampler) is kept instead of being replaced by an interpolated copy, and the
frame's own pixels are never re-sampled twice (frame → crop → frame), so an unchanged face comes
back bit-exact. ``residual=False`` pastes the restored pixels directly (facexlib's behaviour); its
identity round trip is 47–60 dB on the test photos (facexlib: 47–55 dB), see bench/bench_faces.py.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import cv2
import numpy as np

from bfrboost.errors import UsageError
from bfrboost.faces.align import compose, invert, quad_bounds, scale_of, translate, warp_affine
from bfrboost.faces.types import Face


@functools.lru_cache(maxsize=8)
def soft_square_mask(size: int) -> np.ndarray:
    """Square blend mask in crop coordinates, fading to 0 over the outer ~10 % of the crop.

    Same shape as facexlib's (erode by size/20, Gaussian blur of that radius) but built once in
    crop space and warped with the face, so no full-frame erosion or blur is ever needed.
    """
    edge = max(size // 20, 1)
    step = np.zeros(size, dtype=np.float32)
    step[edge : size - edge] = 1.0
    kernel = cv2.getGaussianKernel(2 * edge + 1, 0).ravel().astype(np.float32)
    profile = np.convolve(step, kernel, mode="same")
    mask = np.outer(profile, profile)
    mask.setflags(write=False)
    return mask


def match_color(restored: np.ndarray, original: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Give ``restored`` the per-channel mean and spread (in Lab) of ``original`` inside ``mask``.

    Restorers shift skin tones and often colourise gray photos; matching Lab statistics of the
    aligned original keeps the photo's colours (a gray photo stays gray) and the restored detail.
    """
    weights = np.ones(restored.shape[:2], np.float32) if mask is None else np.asarray(mask, np.float32)
    weights = weights[..., None] / max(float(weights.sum()), 1e-6)

    def lab_stats(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lab = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
        mean = (lab * weights).sum(axis=(0, 1))
        std = np.sqrt(((lab - mean) ** 2 * weights).sum(axis=(0, 1)))
        return lab, mean, std

    lab, mean, std = lab_stats(restored)
    _, target_mean, target_std = lab_stats(original)
    matched = (lab - mean) * (target_std / np.maximum(std, 1e-3)) + target_mean
    rgb = cv2.cvtColor(matched.astype(np.float32), cv2.COLOR_Lab2RGB)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def paste_faces(
    frame: np.ndarray,
    faces: Sequence[Face],
    upscale: float = 1.0,
    masks: Sequence[np.ndarray | None] | None = None,
    residual: bool = True,
    color_match: bool = False,
) -> np.ndarray:
    """Blend every ``face.restored`` into a copy of ``frame``, in order (later faces on top).

    ``frame`` is the input image already upscaled by ``upscale`` (pixel-centre aligned, as
    ``cv2.resize`` does); ``face.affine`` maps input pixels to the crop. ``masks[i]`` (crop-sized,
    0–1, e.g. from ``parse.FaceParser``) replaces the soft square for face ``i``. Faces without a
    ``restored`` image are left as they are. Each face is warped into its own region of interest
    (the crop square in the frame plus a 2-pixel margin); shrinking is anti-aliased.
    """
    if masks is not None and len(masks) != len(faces):
        raise UsageError(f"got {len(masks)} masks for {len(faces)} faces; pass one mask (or None) per face")
    out = frame.copy()
    centre_shift = (upscale - 1.0) / 2.0
    to_upscaled = np.array([[upscale, 0.0, centre_shift], [0.0, upscale, centre_shift]])
    for index, face in enumerate(faces):
        if face.restored is None:
            continue
        colour, mask = _face_layers(index, face, None if masks is None else masks[index], residual, color_match)
        crop_to_frame = compose(to_upscaled, invert(face.affine))
        x0, y0, x1, y1 = quad_bounds(crop_to_frame, colour.shape[0], out.shape, margin=2)
        colour, alpha = _warped_layers(colour, mask, compose(translate(-x0, -y0), crop_to_frame), (x1 - x0, y1 - y0))
        region = out[y0:y1, x0:x1].astype(np.float32)
        if residual:
            region += alpha * colour
        else:
            region += alpha * (colour - region)
        out[y0:y1, x0:x1] = np.clip(np.rint(region), 0, 255).astype(np.uint8)
    return out


def _face_layers(
    index: int, face: Face, mask: np.ndarray | None, residual: bool, color_match: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """What gets warped for one face, in crop space: its colour (``restored − crop`` when ``residual``,
    else the restored pixels) as float32, and its blend mask (None: the soft square)."""
    restored = face.restored
    size = restored.shape[0]
    if face.affine is None or face.crop is None or face.crop.shape != restored.shape:
        raise UsageError(f"face {index}: paste needs the aligned crop and a restored face of the same size ({restored.shape})")
    if mask is not None:
        mask = np.asarray(mask, np.float32)
        if mask.shape != (size, size):
            raise UsageError(f"face {index}: mask is {mask.shape}, expected ({size}, {size}) like the restored face")
    if color_match:
        restored = match_color(restored, face.crop, soft_square_mask(size) if mask is None else mask)
    colour = cv2.subtract(restored, face.crop, dtype=cv2.CV_32F) if residual else restored.astype(np.float32)
    return colour, mask


def _warped_layers(
    colour: np.ndarray, mask: np.ndarray | None, matrix: np.ndarray, dsize: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """``colour`` and ``mask`` (None: the soft square) warped by ``matrix`` into
    a ``dsize`` region: (colour, alpha clipped to 0–1, H×W×1).

    A face shrunk more than 2× (a small face in a photo) is first box-filtered by a whole factor ``k``
    (:func:`_box_shrink`; the soft square's shrunk copies are cached) so that the bicubic warp shrinks
    it by less than 2× (no aliasing), and colour and mask then travel in one small 4-channel image:
    a fractional ``INTER_AREA`` of the full 512 crop cost more than the rest of the paste on small photos.
    """
    size = colour.shape[0]
    scale = scale_of(matrix)
    if scale < 0.5:
        k = min(math.ceil(0.5 / scale), size)  # a face under a pixel wide (degenerate landmarks) keeps one block
        mask = _soft_mask_shrunk(size, k) if mask is None else _box_shrink(mask, k)
        # box pixel j averages crop pixels [o + jk, o + jk + k), o = (size % k) // 2: its centre is o + jk + (k − 1) / 2
        shift = (size % k) // 2 + (k - 1) / 2.0
        matrix = compose(matrix, np.array([[k, 0.0, shift], [0.0, k, shift]]))
        warped = cv2.warpAffine(cv2.merge([_box_shrink(colour, k), mask]), matrix, dsize, flags=cv2.INTER_CUBIC)
        return warped[..., :3], np.clip(warped[..., 3:], 0.0, 1.0)
    colour = warp_affine(colour, matrix, dsize)
    alpha = warp_affine(soft_square_mask(size) if mask is None else mask, matrix, dsize)
    return colour, np.clip(alpha, 0.0, 1.0)[..., None]


def _box_shrink(image: np.ndarray, k: int) -> np.ndarray:
    """Mean of every ``k``×``k`` block of a square image, the blocks centred (the ``size % k`` pixels left over
    at the border, where blend masks are 0, are dropped): OpenCV's fast integer ``INTER_AREA`` on a view."""
    size = image.shape[0]
    n, start = size // k, (size % k) // 2
    return cv2.resize(image[start : start + n * k, start : start + n * k], (n, n), interpolation=cv2.INTER_AREA)


@functools.lru_cache(maxsize=32)
def _soft_mask_shrunk(size: int, k: int) -> np.ndarray:
    mask = _box_shrink(soft_square_mask(size), k)
    mask.setflags(write=False)
    return mask
