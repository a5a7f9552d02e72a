"""PSNR and SSIM as BasicSR (and so GFPGAN, CodeFormer, VQFR, DifFace) report them: on the Y channel
of ITU-R BT.601 YCbCr in the [16, 235] studio range, images in [0, 255] float64, no border crop.

pyiqa's default "Y" is the Y of YIQ, which gives about 1.3 dB lower PSNR on faces; these functions
keep the BasicSR convention so numbers can be set beside the base models' papers.
"""

from __future__ import annotations

import cv2
import numpy as np

# BT.601 luma for RGB in [0, 255] → Y in [16, 235] (MATLAB rgb2ycbcr, BasicSR `rgb2ycbcr(y_only=True)`)
_Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0
_Y_OFFSET = 16.0
_SSIM_C1 = (0.01 * 255) ** 2
_SSIM_C2 = (0.03 * 255) ** 2


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """H×W×3 RGB uint8 (or float in [0, 255]) → H×W float64 luma in [16, 235]."""
    return rgb.astype(np.float64) @ _Y_WEIGHTS + _Y_OFFSET


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.shape} vs {b.shape}")


def psnr(restored: np.ndarray, reference: np.ndarray) -> float:
    """Peak signal-to-noise ratio on Y in dB; ``inf`` for identical images."""
    _check_pair(restored, reference)
    mse = float(np.mean((rgb_to_y(restored) - rgb_to_y(reference)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def ssim(restored: np.ndarray, reference: np.ndarray) -> float:
    """Structural similarity on Y (Wang et al. 2004: 11×11 Gaussian window σ=1.5, valid region only)."""
    _check_pair(restored, reference)
    x, y = rgb_to_y(restored), rgb_to_y(reference)
    kernel = cv2.getGaussianKernel(11, 1.5)
    window = kernel @ kernel.T

    def blur(img: np.ndarray) -> np.ndarray:
        return cv2.filter2D(img, -1, window)[5:-5, 5:-5]  # drop the 5-pixel border the window overhangs

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + _SSIM_C1) * (2 * cov + _SSIM_C2)) / (
        (mu_x**2 + mu_y**2 + _SSIM_C1) * (var_x + var_y + _SSIM_C2)
    )
    return float(ssim_map.mean())
