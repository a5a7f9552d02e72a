"""The paper's synthetic degradation ``y = JPEG_q((x ⊛ k_σ)↓r + n_δ)↑r`` (GFPGAN/CodeFormer ranges).

One module feeds ``bfrboost degrade`` and training. Every random choice is drawn from a numpy
``Generator`` by :func:`sample_params`, then :func:`apply_degradation` is deterministic: the same seed
gives the same degraded image, and :func:`file_seed` derives a per-file seed from the run seed and the
file name, so a file degrades the same whatever else is in the batch or folder.

"Randomly integrated" (the paper) is read as: each of blur, down-sampling, noise and JPEG is skipped
with probability ``skip_prob``, and with probability ``shuffle_prob`` the four run in a random order
instead of the formula's; the result is always resized back to the input size.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from bfrboost.errors import UsageError
from bfrboost.options import DegradeConfig  # the ranges live with every other option (one copy of each default)

OPERATIONS = ("blur", "down", "noise", "jpeg")


@dataclass
class DegradeParams:
    """One draw of :class:`DegradeConfig`: what :func:`apply_degradation` does to one image."""

    order: list[str] = field(default_factory=lambda: list(OPERATIONS))  # operations that run, in order
    sigma: tuple[float, float] = (1.0, 1.0)  # (σx, σy); equal for an isotropic kernel
    theta: float = 0.0  # kernel angle (radians)
    scale: float = 1.0
    noise: float = 0.0
    quality: int = 100
    noise_seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """Isotropic Gaussian, size×size, float64, sums to 1."""
    return anisotropic_kernel(size, sigma, sigma, 0.0)


def anisotropic_kernel(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """Gaussian with axes σx, σy rotated by θ, size×size, float64, sums to 1."""
    half = size // 2
    ax = np.arange(-half, half + 1, dtype=np.float64)
    xx, yy = np.meshgrid(ax, ax)
    c, s = np.cos(theta), np.sin(theta)
    u, v = c * xx + s * yy, -s * xx + c * yy
    kernel = np.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    return kernel / kernel.sum()


def file_seed(seed: int, name: str) -> int:
    """A 63-bit seed from the run seed and a file name: per-file reproducible, independent of order."""
    digest = hashlib.sha256(f"{seed}\0{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1])) if bounds[1] > bounds[0] else float(bounds[0])


def sample_params(rng: np.random.Generator | int, config: DegradeConfig | None = None) -> DegradeParams:
    """Draw one degradation from the ranges of ``config`` (``rng`` may be a seed)."""
    config = config or DegradeConfig()
    rng = np.random.default_rng(rng) if isinstance(rng, (int, np.integer)) else rng
    order = [op for op in OPERATIONS if rng.random() >= config.skip_prob]
    if rng.random() < config.shuffle_prob:
        order = [order[i] for i in rng.permutation(len(order))]
    if rng.random() < config.anisotropic_prob:
        sigma = (_uniform(rng, config.blur_sigma), _uniform(rng, config.blur_sigma))
        theta = float(rng.uniform(0, np.pi))
    else:
        s = _uniform(rng, config.blur_sigma)
        sigma, theta = (s, s), 0.0
    return DegradeParams(
        order=order,
        sigma=sigma,
        theta=theta,
        scale=_uniform(rng, config.scale),
        noise=_uniform(rng, config.noise),
        quality=int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1)),
        noise_seed=int(rng.integers(0, 2**63 - 1)),
    )


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode and decode as JPEG at ``quality`` (RGB uint8 in and out)."""
    ok, data = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise UsageError(f"degrade: JPEG encoding failed at quality {quality}")
    return cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1]


def apply_degradation(image: np.ndarray, params: DegradeParams, kernel_size: int = 41) -> np.ndarray:
    """Run the operations of ``params`` on an H×W×3 uint8 RGB image; uint8 of the same size out."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise UsageError(f"degrade: expected an H×W×3 uint8 RGB image, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    x = image.astype(np.float32)
    for op in params.order:
        if op == "blur":
            kernel = anisotropic_kernel(kernel_size, params.sigma[0], params.sigma[1], params.theta).astype(np.float32)
            x = cv2.filter2D(x, -1, kernel, borderType=cv2.BORDER_REFLECT_101)
        elif op == "down":
            size = (max(1, round(width / params.scale)), max(1, round(height / params.scale)))
            x = cv2.resize(x, size, interpolation=cv2.INTER_LINEAR if params.scale < 1 else cv2.INTER_AREA)
        elif op == "noise":
            noise = np.random.default_rng(params.noise_seed).standard_normal(x.shape, dtype=np.float32)
            x = x + params.noise * noise
        elif op == "jpeg":
            x = jpeg(np.clip(np.rint(x), 0, 255).astype(np.uint8), params.quality).astype(np.float32)
    if x.shape[:2] != (height, width):
        x = cv2.resize(x, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


TINY_NOISE = (20.0, 50.0)  # Gaussian noise σ (0..255) of the CPU-scale degradation


def tiny_degradation(size: int) -> DegradeConfig:
    """The CPU-scale (``--tiny``) degradation, applied at the training size ``size``.

    At 512 px the paper's ranges (blur σ ≤ 10 px, down-sampling ≤ 8×) keep at least a 64 px face, which is
    more than a whole 32 px face holds: applied to 32 px faces (or 64 px, then resized) they remove what no
    model learns back from 80 faces (a direct residual CNN trained on such pairs gains +0.14 dB). Here the
    blur is scaled to the face (σ ≤ 10 · size / 512 px), there is no down-sampling, and strong noise (σ 20–50)
    and the paper's JPEG range make the restoration to learn: the same CNN gains ≈ 1.8 dB on it
    (docs/training.md), so a refiner run can be asked to beat the base output.
    """
    high = DegradeConfig().blur_sigma[1] * size / 512
    return DegradeConfig(blur_sigma=(min(0.1, high), high), scale=(1.0, 1.0), noise=TINY_NOISE)


def degrade(image: np.ndarray, rng: np.random.Generator | int, config: DegradeConfig | None = None) -> np.ndarray:
    """One random degradation of an H×W×3 uint8 RGB image (``rng``: a numpy Generator or a seed)."""
    config = config or DegradeConfig()
    return apply_degradation(image, sample_params(rng, config), config.kernel_size)
