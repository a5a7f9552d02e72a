"""Metric weights come from the weights manager; a missing file names the command that fetches it."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
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


@contextmanager
def weights_only_torch_load() -> Iterator[None]:
    """torch-fidelity and pyiqa call ``torch.load(weights_only=False)``; PyTorch's own switch forces
    the weights-only unpickler for every load inside the block, so a file cannot run code. Their
    progress prints go to stderr, keeping stdout for ``--json``."""
    key = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
    previous = os.environ.get(key)
    os.environ[key] = "1"
    try:
        with redirect_stdout(sys.stderr):
            yield
    finally:
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous
