"""FID and KID on InceptionV3 pool features, computed by torch-fidelity (Apache-2.0).

torch-fidelity is the reference the other packages are checked against (torchmetrics wraps the same
extractor); its InceptionV3 reproduces the TensorFlow graph of the original FID code, including the
TF1-style bilinear resize to 299. Features are extracted here so that a reference set (FFHQ) is read
once and kept as a statistics file (:class:`ReferenceStats`, ``bfrboost eval stats``).

Every image is first brought to ``size`` (default 512, the resolution BFR papers evaluate faces at)
with area (shrinking) or bicubic (enlarging) resampling, so FFHQ's 1024 px originals and 512 px
restorations are compared at the same scale.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from bfrboost.errors import InputError
from bfrboost.metrics._common import metric_weights, weights_only_torch_load
from bfrboost.options import EvalOptions, default_of
from bfrboost.safety import atomic_open

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
FEATURE = "2048"  # the pool3 layer every FID/KID number in the literature uses
FEATURES = ("64", "192", "768", "2048")  # torch-fidelity's pooled layers (smaller ones: quick checks only)
DEFAULT_SIZE = default_of(EvalOptions, "size")
STATS_FORMAT = "bfrboost-inception-stats-1"


def load_inception(device: str | torch.device = "cpu", weights: Path | None = None, feature: str = FEATURE) -> torch.nn.Module:
    """torch-fidelity's InceptionV3 feature extractor (``feature``-d pool features) from the verified cache."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    if feature not in FEATURES:
        raise ValueError(f"feature must be one of {', '.join(FEATURES)}, not {feature!r}")
    path = Path(weights) if weights is not None else metric_weights(INCEPTION_FILE, "FID/KID")
    with weights_only_torch_load():
        net = FeatureExtractorInceptionV3("inception-v3-compat", [feature], feature_extractor_weights_path=str(path))
    return net.to(device).eval()


def to_size(rgb: np.ndarray, size: int) -> np.ndarray:
    """Square ``size``×``size`` RGB uint8 (area when shrinking, bicubic when enlarging)."""
    if rgb.shape[:2] == (size, size):
        return rgb
    shrink = rgb.shape[0] > size or rgb.shape[1] > size
    return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


@torch.inference_mode()
def inception_features(
    net: torch.nn.Module, images: Iterable[np.ndarray], size: int = DEFAULT_SIZE, batch_size: int = 16
) -> np.ndarray:
    """[N, D] float32 pool features of RGB uint8 images (D = the extractor's feature layer)."""
    device = next(net.parameters()).device
    out: list[np.ndarray] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous().to(device)
        out.append(net(x)[0].float().cpu().numpy())
        batch.clear()

    for rgb in images:
        batch.append(to_size(rgb, size))
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return np.concatenate(out) if out else np.zeros((0, int(net.features_list[0])), np.float32)


@dataclass
class ReferenceStats:
    """Mean and covariance of a reference set's features (FID) and the features themselves (KID)."""

    mu: np.ndarray  # [D] float64 (D = 2048 for the standard pool3 features)
    sigma: np.ndarray  # [D, D] float64
    features: np.ndarray  # [M, D] float32, M ≤ count (a seeded subset when capped)
    count: int  # images the mean and covariance were computed on
    size: int  # resolution the images were brought to

    @classmethod
    def from_features(cls, features: np.ndarray, size: int, max_kid_features: int | None = None, seed: int = 0) -> ReferenceStats:
        if len(features) < 2:
            raise ValueError(f"FID needs at least 2 images, got {len(features)}")
        f64 = features.astype(np.float64)
        kept = features
        if max_kid_features is not None and len(features) > max_kid_features:
            kept = features[np.sort(np.random.default_rng(seed).choice(len(features), max_kid_features, replace=False))]
        return cls(
            mu=f64.mean(axis=0), sigma=np.cov(f64, rowvar=False), features=kept.astype(np.float32), count=len(features), size=size
        )

    def save(self, path: Path | str, overwrite: bool = False) -> Path:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            format=np.array(STATS_FORMAT),
            mu=self.mu,
            sigma=self.sigma,
            features=self.features,
            count=np.array(self.count),
            size=np.array(self.size),
        )
        with atomic_open(path, overwrite) as file:
            file.write(buffer.getvalue())
        return Path(path)

    def mismatch(self, features: np.ndarray, size: int) -> str | None:
        """Why ``features`` (at ``size`` px) cannot be compared with these statistics, or ``None``."""
        if features.shape[1] != self.mu.shape[0] or size != self.size:
            return (
                f"the reference statistics hold {self.mu.shape[0]}-d features of {self.size} px images, "
                f"these faces give {features.shape[1]}-d at {size} px"
            )
        return None

    @classmethod
    def load(cls, path: Path | str) -> ReferenceStats:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data.get("format", "")) != STATS_FORMAT:
                    raise InputError(
                        f"{path}: not a bfrboost reference statistics file; "
                        f"make one with `bfrboost eval stats FFHQ_DIR -o {path.name}`"
                    )
                return cls(
                    mu=data["mu"],
                    sigma=data["sigma"],
                    features=data["features"],
                    count=int(data["count"]),
                    size=int(data["size"]),
                )
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(
                f"{path}: cannot read reference statistics ({exc}); make them with `bfrboost eval stats FFHQ_DIR -o {path.name}`"
            ) from None


def fid(a: ReferenceStats, b: ReferenceStats) -> float:
    """Fréchet Inception Distance between two feature distributions (torch-fidelity's formula)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    return fid_statistics_to_metric({"mu": a.mu, "sigma": a.sigma}, {"mu": b.mu, "sigma": b.sigma}, verbose=False)[KEY_METRIC_FID]


def kid(a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> float:
    """Kernel Inception Distance (unbiased MMD², cubic polynomial kernel) averaged over random subsets;
    the subset size shrinks to the smaller set when a set has fewer than ``subset_size`` images."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, kid_features_to_metric

    n = min(subset_size, len(a), len(b))
    if n < 2:
        raise ValueError(f"KID needs at least 2 images per set, got {len(a)} and {len(b)}")
    result = kid_features_to_metric(
        torch.from_numpy(np.ascontiguousarray(a)),
        torch.from_numpy(np.ascontiguousarray(b)),
        kid_subsets=subsets,
        kid_subset_size=n,
        rng_seed=seed,
        verbose=False,  # cubic kernel, γ = 1/2048, c = 1
    )
    return result[KEY_METRIC_KID_MEAN]


def compute_reference_stats(
    images: Sequence[np.ndarray] | Iterable[np.ndarray],
    device: str | torch.device = "cpu",
    size: int = DEFAULT_SIZE,
    max_kid_features: int | None = 10000,
    net: torch.nn.Module | None = None,
) -> ReferenceStats:
    """Statistics of a reference set (e.g. FFHQ) for later FID/KID against it."""
    net = net or load_inception(device)
    return ReferenceStats.from_features(inception_features(net, images, size), size, max_kid_features)
