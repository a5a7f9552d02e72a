"""Scoring faces with the chosen metrics: :class:`Evaluator` streams images through them (so a large
folder is never held in memory) and shares loaded networks through :class:`MetricModels`, so several
evaluations (e.g. every base with and without the refiner) load each network once.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bfrboost.metrics import METRICS, MetricValue, parse_metrics
from bfrboost.metrics._common import MetricUnavailable, metric_weights
from bfrboost.metrics.inception import DEFAULT_SIZE, ReferenceStats, fid, inception_features, kid, load_inception
from bfrboost.metrics.niqe import niqe as niqe_score


class MetricModels:
    """Networks the metrics need, loaded on first use and shared by every :class:`Evaluator`."""

    def __init__(self, device: str | torch.device = "cpu", inception_feature: str = "2048") -> None:
        self.device = torch.device(device)
        self.inception_feature = inception_feature  # "2048" for real numbers; smaller layers for quick checks
        self._cache: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        if name not in self._cache:
            self._cache[name] = self._load(name)
        return self._cache[name]

    def _load(self, name: str) -> Any:
        if name == "inception":
            return load_inception(self.device, feature=self.inception_feature)
        if name == "lpips":
            from bfrboost.metrics.perceptual import load_lpips

            return load_lpips(self.device)
        if name == "ids":
            from bfrboost.nets.arcface import load_arcface

            return load_arcface(self.device)
        if name == "musiq":
            from bfrboost.metrics.musiq import load_musiq

            return load_musiq(self.device)
        raise KeyError(name)


@dataclass
class Evaluator:
    """Accumulate faces with :meth:`update`, then read :meth:`results`.

    ``reference_stats`` (from ``bfrboost eval stats`` or :func:`~bfrboost.metrics.inception.compute_reference_stats`)
    is the FID/KID reference set. Paired metrics need ``references`` in :meth:`update`, one per
    restored face, in the same order.
    """

    metrics: Sequence[str]
    models: MetricModels = field(default_factory=MetricModels)
    reference_stats: ReferenceStats | None = None
    size: int = DEFAULT_SIZE
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    _values: dict[str, list[float]] = field(default_factory=dict, init=False)
    _seconds: dict[str, float] = field(default_factory=dict, init=False)
    _skipped: dict[str, str] = field(default_factory=dict, init=False)
    _features: list[np.ndarray] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.metrics = parse_metrics(self.metrics)
        for name in self.metrics:
            self._values[name] = []
            self._seconds[name] = 0.0

    def check_weights(self) -> None:
        """Fail before any image is read when a chosen metric's weights are missing (one line each).
        MUSIQ without pyiqa is skipped later with its own line, so its weights are not asked for."""
        for name in self.metrics:
            file = METRICS[name].weight_file
            if name == "musiq" and importlib.util.find_spec("pyiqa") is None:
                continue
            if file is not None:
                metric_weights(file, METRICS[name].label)

    def _timed(self, name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            return fn()
        finally:
            self._seconds[name] += time.perf_counter() - start

    def _model(self, name: str) -> Any:
        if name in self._skipped:
            return None
        try:
            return self._timed(name, lambda: self.models.get(name))
        except MetricUnavailable as exc:
            self._skipped[name] = str(exc)
            return None

    def update(self, restored: Sequence[np.ndarray], references: Sequence[np.ndarray | None] | None = None) -> None:
        """Score a batch of RGB uint8 faces; ``references[i]`` (or ``None``) is face i's reference for
        the paired metrics."""
        references = list(references) if references is not None else [None] * len(restored)
        if len(references) != len(restored):
            raise ValueError(f"{len(restored)} restored faces but {len(references)} references")
        wanted = set(self.metrics)
        if wanted & {"fid", "kid"}:
            net = self._model_for_set()
            self._features.append(self._timed_set(lambda: inception_features(net, restored, self.size)))
        if "niqe" in wanted:
            self._values["niqe"] += self._timed("niqe", lambda: [niqe_score(img) for img in restored])
        if "musiq" in wanted and (net := self._model("musiq")) is not None:
            from bfrboost.metrics.musiq import musiq_score

            self._values["musiq"] += self._timed("musiq", lambda: [musiq_score(net, img) for img in restored])
        pairs = [(a, b) for a, b in zip(restored, references) if b is not None]
        if not pairs:
            return
        from bfrboost.metrics.fidelity import psnr, ssim

        if "psnr" in wanted:
            self._values["psnr"] += self._timed("psnr", lambda: [psnr(a, b) for a, b in pairs])
        if "ssim" in wanted:
            self._values["ssim"] += self._timed("ssim", lambda: [ssim(a, b) for a, b in pairs])
        if "lpips" in wanted and (net := self._model("lpips")) is not None:
            from bfrboost.metrics.perceptual import lpips_distance

            self._values["lpips"] += self._timed("lpips", lambda: [lpips_distance(net, a, b) for a, b in pairs])
        if "ids" in wanted and (net := self._model("ids")) is not None:
            from bfrboost.metrics.ids import identity_similarities

            restored, references = [a for a, _ in pairs], [b for _, b in pairs]
            self._values["ids"] += self._timed("ids", lambda: identity_similarities(net, restored, references))

    def _model_for_set(self) -> torch.nn.Module:
        name = "fid" if "fid" in self.metrics else "kid"
        return self._timed(name, lambda: self.models.get("inception"))

    def _timed_set(self, fn: Callable[[], np.ndarray]) -> np.ndarray:
        """Feature extraction serves FID and KID alike: its time is charged to both."""
        start = time.perf_counter()
        out = fn()
        elapsed = time.perf_counter() - start
        for name in ("fid", "kid"):
            if name in self._seconds:
                self._seconds[name] += elapsed
        return out

    def _set_metrics(self) -> dict[str, MetricValue]:
        out: dict[str, MetricValue] = {}
        features = np.concatenate(self._features) if self._features else np.zeros((0, 2048), np.float32)
        reference = self.reference_stats
        for name in ("fid", "kid"):
            if name not in self.metrics:
                continue
            skip = None
            if reference is None:
                skip = (
                    f"{name}: skipped, it needs a reference set: "
                    "pass --reference-stats FILE (from `bfrboost eval stats`) or --reference HQ_DIR"
                )
            elif len(features) < 2:
                skip = f"{name}: skipped, it needs at least 2 faces, got {len(features)}"
            elif (why := reference.mismatch(features, self.size)) is not None:
                skip = f"{name}: skipped, {why}; recompute them with `bfrboost eval stats` at --size {self.size}"
            if skip:
                out[name] = MetricValue(name, None, len(features), self._seconds[name], skip)
                continue
            start = time.perf_counter()
            if name == "fid":
                value = fid(ReferenceStats.from_features(features, self.size), reference)
            else:
                value = kid(features, reference.features, self.kid_subsets, self.kid_subset_size)
            self._seconds[name] += time.perf_counter() - start
            out[name] = MetricValue(name, value, len(features), self._seconds[name])
        return out

    def results(self) -> dict[str, MetricValue]:
        """Every chosen metric, in the order asked; skipped ones carry the one-line reason."""
        set_values = self._set_metrics()
        out = {}
        for name in self.metrics:
            if name in set_values:
                out[name] = set_values[name]
            elif name in self._skipped:
                out[name] = MetricValue(name, None, 0, self._seconds[name], self._skipped[name])
            elif not self._values[name] and METRICS[name].kind == "pair":
                reason = (
                    f"{name}: skipped, it compares each face with its reference: pass --reference HQ_DIR (files matched by name)"
                )
                out[name] = MetricValue(name, None, 0, self._seconds[name], reason)
            else:
                values = self._values[name]
                mean = float(np.mean(values)) if values else None
                out[name] = MetricValue(name, mean, len(values), self._seconds[name])
        return out
