"""Scratch masks for old photos: a classical thin-bright-line detector on the aligned face crop.

No public scratch-detection network's weights can be fetched and loaded safely here (the one PGDiff
recommends, Microsoft's "Bringing Old Photos Back to Life" detector, ships as a zip on a GitHub
release of pickled checkpoints), so ``--scratch-mask auto`` uses this documented method instead:

1. gray crop, morphological white top-hat (opening with a 15 px disc removes every bright structure
   thinner than the disc, so the top-hat keeps them: scratches, and also highlights);
2. threshold at max(``min_contrast``, mean + ``k``·std of the top-hat);
3. keep connected components that are line-like (long side of the rotated bounding box
   ≥ ``elongation`` × short side, or ≥ ``min_length`` px), at least ``min_span`` px long, whose mean
   top-hat is ≥ ``line_contrast`` (a scratch is far brighter than its surroundings; skin shine and
   hair highlights are not) and whose surroundings are not textured (fewer than ``max_texture`` of
   the pixels on a ring around the line have a top-hat ≥ 10: hair and beards are);
4. dilate by 3 px so the guidance also fills the scratch's soft edges;
5. clear the eyes, the mouth (ellipses around the FFHQ template's landmarks, where every aligned crop
   has them) and a ``border`` px frame: there guidance must never be switched off.

Thresholds were tuned on ``testdata/aligned`` and PGDiff's ``0_7.jpg``, and checked on faces they
were not tuned on (docs/guided.md). It finds bright scratches and creases, not dark ones or broad
stains; draw a mask for those.
"""

from __future__ import annotations

import cv2
import numpy as np

from bfrboost.faces.align import template


def feature_mask(size: int = 512) -> np.ndarray:
    """1 on the eyes and the mouth of an aligned crop (ellipses around the FFHQ template landmarks)."""
    points = template(size)
    s = size / 512
    mask = np.zeros((size, size), np.uint8)
    for x, y in points[:2]:
        cv2.ellipse(mask, (round(x), round(y)), (round(44 * s), round(26 * s)), 0, 0, 360, 1, -1)
    mx, my = (points[3] + points[4]) / 2
    cv2.ellipse(mask, (round(mx), round(my)), (round(76 * s), round(38 * s)), 0, 0, 360, 1, -1)
    return mask.astype(bool)


def _ring_texture(component: np.ndarray, weak: np.ndarray) -> float:
    """Fraction of weakly bright (top-hat ≥ 10) pixels on a 2–7 px ring around ``component``."""
    c = component.astype(np.uint8)
    ring = (cv2.dilate(c, np.ones((15, 15), np.uint8)) > 0) & ~(cv2.dilate(c, np.ones((5, 5), np.uint8)) > 0)
    return float(weak[ring].mean()) if ring.any() else 0.0


def detect_scratches(
    crop: np.ndarray,
    *,
    kernel: int = 15,
    k: float = 2.0,
    min_contrast: float = 18.0,
    line_contrast: float = 45.0,
    elongation: float = 4.0,
    min_length: int = 40,
    min_span: int = 30,
    min_area: int = 12,
    max_texture: float = 0.3,
    border: int = 6,
    dilate: int = 3,
) -> np.ndarray:
    """H×W float32 mask (1 = scratch) of an RGB uint8 aligned crop."""
    gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel, kernel))
    tophat = cv2.morphologyEx(gray, cv2.MORPH_TOPHAT, disc).astype(np.float32)
    threshold = max(min_contrast, float(tophat.mean() + k * tophat.std()))
    count, labels, stats, _ = cv2.connectedComponentsWithStats((tophat >= threshold).astype(np.uint8), connectivity=8)
    weak = tophat >= 10
    keep = np.zeros(count, dtype=bool)
    for label in range(1, count):
        if stats[label, cv2.CC_STAT_AREA] < min_area:
            continue
        component = labels == label
        (_, _), (w, h), _ = cv2.minAreaRect(np.column_stack(np.nonzero(component)[::-1]).astype(np.float32))
        long_side, short_side = max(w, h), max(min(w, h), 1.0)
        line_like = (long_side >= elongation * short_side or long_side >= min_length) and long_side >= min_span
        keep[label] = (
            line_like and float(tophat[component].mean()) >= line_contrast and _ring_texture(component, weak) <= max_texture
        )
    mask = keep[labels].astype(np.uint8)
    if dilate:
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate + 1, 2 * dilate + 1)))
    h, w = mask.shape
    if h == w:
        mask[feature_mask(h)] = 0
    if border:
        mask[:border], mask[-border:], mask[:, :border], mask[:, -border:] = 0, 0, 0, 0
    return mask.astype(np.float32)
