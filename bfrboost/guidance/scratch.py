"""Scratch masks for old photos: a classical thin-bright-line detector on the aligned face crop.

No public scratch-detection network's weights can be fetched and loaded safely here (the one PGDiff
recommends, Microsoft's "Bringing Old Photos Back to Life" detector, ships as a zip on a GitHub
release of pickled checkpoints), so ``--scratch-mask auto`` uses this documented method instead:

1. gray crop, morphological white top-hat (opening with a 15 px disc removes every bright structure
   thinner than the disc, so the top-hat keeps them: scratches, and also highlights);
2. threshold at max(``min_contrast``, mean + ``k``·std of the top-hat);
3. keep connected components that are line-like: elongated (long side of the rotated bounding box
   ≥ ``elongation`` × short side) or long (≥ ``min_length`` px), and not tiny;
4. dilate by 3 px so the guidance also fills the scratch's soft edges.

It finds bright scratches and creases, not dark ones or broad stains; draw a mask for those.
"""

from __future__ import annotations

import cv2
import numpy as np


def detect_scratches(
    crop: np.ndarray, *, kernel: int = 15, k: float = 2.0, min_contrast: float = 18.0,
    elongation: float = 4.0, min_length: int = 40, min_area: int = 12, dilate: int = 3,
) -> np.ndarray:
    """H×W float32 mask (1 = scratch) of an RGB uint8 crop."""
    gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel, kernel))
    tophat = cv2.morphologyEx(gray, cv2.MORPH_TOPHAT, disc).astype(np.float32)
    threshold = max(min_contrast, float(tophat.mean() + k * tophat.std()))
    candidates = (tophat >= threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(candidates, connectivity=8)
    keep = np.zeros(count, dtype=bool)
    for label in range(1, count):
        if stats[label, cv2.CC_STAT_AREA] < min_area:
            continue
        points = np.column_stack(np.nonzero(labels == label)[::-1]).astype(np.float32)
        (_, _), (w, h), _ = cv2.minAreaRect(points)
        long_side, short_side = max(w, h), max(min(w, h), 1.0)
        keep[label] = long_side >= elongation * short_side or long_side >= min_length
    mask = keep[labels].astype(np.uint8)
    if dilate:
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate + 1, 2 * dilate + 1)))
    return mask.astype(np.float32)
