"""NIQE (Mittal et al., "Making a 'Completely Blind' Image Quality Analyzer", 2013), MATLAB-compatible.

Our own implementation of the published algorithm, driven by the pristine-model parameters
(``niqe_pris_params.npz``: 36-d mean, 36×36 covariance, 7×7 Gaussian window) that BasicSR ships
(Apache-2.0; the same file in the ``basicsr`` 1.4.2 and ``basicsr-fixed`` 1.4.2 sdists, converted from
the official MATLAB release). It follows BasicSR's ``calculate_niqe`` — the number BFR papers report:
Y of YCbCr rounded to integers, 96×96 blocks without overlap, two scales, MATLAB bicubic
antialiased ``imresize`` between them. Lower is better.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.ndimage import convolve
from scipy.special import gamma

from bfrboost.metrics._common import metric_weights
from bfrboost.metrics.fidelity import rgb_to_y

NIQE_FILE = "niqe_pris_params.npz"
BLOCK = 96
_GAM = np.arange(0.2, 10.001, 0.001)
_R_GAM = gamma(2 / _GAM) ** 2 / (gamma(1 / _GAM) * gamma(3 / _GAM))
_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))  # horizontal, vertical and both diagonal neighbours


@lru_cache(maxsize=1)
def pristine_params() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mu [36], cov [36, 36], gaussian window [7, 7]) from the verified cache."""
    with np.load(metric_weights(NIQE_FILE, "NIQE"), allow_pickle=False) as data:
        return data["mu_pris_param"].reshape(-1), data["cov_pris_param"], data["gaussian_window"]


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    near = (1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1)
    far = (-0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return near + far


def _resize_matrix(in_len: int, scale: float) -> np.ndarray:
    """Dense [out, in] matrix of MATLAB's ``imresize`` (bicubic, antialiased when shrinking,
    symmetric padding) along one axis."""
    out_len = int(np.ceil(in_len * scale))
    stretch = min(scale, 1.0)  # shrinking widens the kernel by 1/scale (antialiasing)
    width = 4.0 / stretch
    u = np.arange(1, out_len + 1) / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    idx = left[:, None] + np.arange(int(np.ceil(width)) + 2)[None, :]
    w = stretch * _cubic(stretch * (u[:, None] - idx))
    w /= w.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len)[::-1]])
    src = mirror[np.mod(idx - 1, 2 * in_len).astype(int)]
    matrix = np.zeros((out_len, in_len))
    np.add.at(matrix, (np.repeat(np.arange(out_len), idx.shape[1]), src.ravel()), w.ravel())
    return matrix


def imresize(img: np.ndarray, scale: float) -> np.ndarray:
    """2-D float image resized like MATLAB ``imresize(img, scale, 'bicubic')``."""
    return _resize_matrix(img.shape[0], scale) @ img @ _resize_matrix(img.shape[1], scale).T


def _aggd(block: np.ndarray) -> tuple[float, float, float]:
    """Asymmetric generalised Gaussian fit (shape α, left and right scales) by moment matching."""
    block = block.ravel()
    left_std = np.sqrt(np.mean(block[block < 0] ** 2))
    right_std = np.sqrt(np.mean(block[block > 0] ** 2))
    gamma_hat = left_std / right_std
    r_hat = np.mean(np.abs(block)) ** 2 / np.mean(block**2)
    r_norm = r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1) / (gamma_hat**2 + 1) ** 2
    alpha = _GAM[np.argmin((_R_GAM - r_norm) ** 2)]
    spread = np.sqrt(gamma(1 / alpha) / gamma(3 / alpha))
    return alpha, left_std * spread, right_std * spread


def _block_features(block: np.ndarray) -> list[float]:
    """18 natural-scene statistics of one normalised block (the NIQE paper's Eqs. 7–8)."""
    alpha, left, right = _aggd(block)
    feats = [alpha, (left + right) / 2]
    for shift in _SHIFTS:
        alpha, left, right = _aggd(block * np.roll(block, shift, axis=(0, 1)))
        mean = (right - left) * gamma(2 / alpha) / gamma(1 / alpha)
        feats += [alpha, mean, left, right]
    return feats


def niqe_gray(img: np.ndarray) -> float:
    """NIQE of a 2-D image in [0, 255] (at least 96×96; the part beyond whole blocks is ignored)."""
    mu_pris, cov_pris, window = pristine_params()
    rows, cols = img.shape[0] // BLOCK, img.shape[1] // BLOCK
    if rows < 1 or cols < 1:
        raise ValueError(f"NIQE needs images of at least {BLOCK}×{BLOCK} pixels, got {img.shape[1]}×{img.shape[0]}")
    img = img[: rows * BLOCK, : cols * BLOCK].astype(np.float64)
    scales = []
    for scale in (1, 2):
        mu = convolve(img, window, mode="nearest")
        sigma = np.sqrt(np.abs(convolve(img * img, window, mode="nearest") - mu * mu))
        normalised = (img - mu) / (sigma + 1)
        size = BLOCK // scale
        scales.append(
            [
                _block_features(normalised[r * size : (r + 1) * size, c * size : (c + 1) * size])
                for c in range(cols)
                for r in range(rows)
            ]
        )
        if scale == 1:
            img = imresize(img / 255.0, 0.5) * 255.0
    feats = np.concatenate([np.asarray(s) for s in scales], axis=1)
    mu_dist = np.nanmean(feats, axis=0)
    cov_dist = np.cov(feats[~np.isnan(feats).any(axis=1)], rowvar=False)
    diff = mu_pris - mu_dist
    return float(np.sqrt(diff @ np.linalg.pinv((cov_pris + cov_dist) / 2) @ diff))


def niqe(rgb: np.ndarray) -> float:
    """NIQE of an RGB uint8 image on its (rounded) Y channel, as BasicSR computes it."""
    return niqe_gray(np.round(rgb_to_y(rgb)))
