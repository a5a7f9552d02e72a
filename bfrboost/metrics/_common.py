"""Metric weights come from the weights manager; a missing file names the command that fetches it."""

from __future__ import annotations

from pathlib import Path

from bfrboost import weights
from bfrboost.errors import WeightsError


def metric_weights(file: str, metric: str) -> Path:
    """Verified path of ``file``; offline and not cached → one line naming `bfrboost weights download CARD`."""
    entry = weights.manifest()[file]
    if not entry.path.exists() and weights.is_offline():
        raise WeightsError(f"{file}: the {metric} weights are not in the cache; run `bfrboost weights download {entry.card}`")
    return weights.ensure(file)


class MetricUnavailable(Exception):
    """A metric cannot run here (e.g. its optional package is absent); the message says why."""
