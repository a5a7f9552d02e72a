"""Face-restoration metrics, each a thin wrapper over the field's standard implementation.

| metric | kind | better | implementation |
|---|---|---|---|
| fid, kid | set vs reference set | lower | torch-fidelity InceptionV3 (:mod:`.inception`) |
| niqe | no reference | lower | own code, BasicSR's MATLAB-converted parameters (:mod:`.niqe`) |
| musiq | no reference | higher | pyiqa, optional non-commercial extra (:mod:`.musiq`) |
| lpips | paired | lower | lpips VGG (:mod:`.perceptual`) |
| psnr, ssim | paired | higher | BasicSR convention on Y of YCbCr (:mod:`.fidelity`) |
| ids | paired | higher | ArcFace IR-SE50 cosine (:mod:`.ids`) |

Scoring a set of faces with them is :class:`bfrboost.evaluation.evaluator.Evaluator`'s job.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bfrboost.errors import UsageError
from bfrboost.metrics.inception import INCEPTION_FILE
from bfrboost.metrics.niqe import NIQE_FILE


@dataclass(frozen=True)
class MetricInfo:
    name: str
    label: str
    higher_is_better: bool
    kind: str  # "set" (against a reference distribution), "pair" (against each face's reference) or "none"
    weight_file: str | None = None


METRICS: dict[str, MetricInfo] = {
    m.name: m
    for m in (
        MetricInfo("fid", "FID", False, "set", INCEPTION_FILE),
        MetricInfo("kid", "KID", False, "set", INCEPTION_FILE),
        MetricInfo("niqe", "NIQE", False, "none", NIQE_FILE),
        MetricInfo("musiq", "MUSIQ", True, "none", "musiq_koniq_ckpt-e95806b9.pth"),
        MetricInfo("lpips", "LPIPS", False, "pair", "vgg16-397923af.pth"),
        MetricInfo("psnr", "PSNR", True, "pair"),
        MetricInfo("ssim", "SSIM", True, "pair"),
        MetricInfo("ids", "IDS", True, "pair", "recognition_arcface_ir_se50.pth"),
    )
}
ALL_METRICS = tuple(METRICS)


def parse_metrics(text: str | Sequence[str]) -> list[str]:
    """``"fid,psnr"`` → ``["fid", "psnr"]``; ``all`` → every metric; unknown names are a usage error."""
    names = [n.strip().lower() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if names == ["all"]:
        return list(ALL_METRICS)
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        problem = f"unknown metric {unknown[0]!r}" if unknown else "no metrics given"
        raise UsageError(f"{problem}; choose from {', '.join(ALL_METRICS)} (or all)")
    return list(dict.fromkeys(names))


@dataclass
class MetricValue:
    """One metric's mean over the faces (or its set value), how many faces, and the seconds it took."""

    name: str
    value: float | None
    count: int
    seconds: float
    skipped: str | None = None  # why the metric has no value

    @property
    def info(self) -> MetricInfo:
        return METRICS[self.name]

    def as_dict(self) -> dict[str, Any]:
        value = self.value
        return {
            "value": value if value is None or math.isfinite(value) else str(value),  # JSON has no inf
            "count": self.count,
            "seconds": round(self.seconds, 4),
            "better": "higher" if self.info.higher_is_better else "lower",
            **({"skipped": self.skipped} if self.skipped else {}),
        }


__all__ = [
    "ALL_METRICS",
    "METRICS",
    "Evaluator",
    "MetricInfo",
    "MetricModels",
    "MetricUnavailable",
    "MetricValue",
    "ReferenceStats",
    "parse_metrics",
]
