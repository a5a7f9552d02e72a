"""Face-stage fixtures: the real photos decoded once and detected once (dlib) per test session."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from PIL import Image

from bfrboost.faces import Face, get_detector


def load_rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="session")
def _whole_detections(testdata) -> dict[str, tuple[np.ndarray, list[Face]]]:
    detector = get_detector("dlib")
    result = {}
    for path in sorted((testdata / "whole").iterdir()):
        image = load_rgb(path)
        result[path.name] = (image, detector.detect(image))
    return result


@pytest.fixture
def whole_detections(_whole_detections) -> dict[str, tuple[np.ndarray, list[Face]]]:
    """Fresh copies: tests fill ``affine`` / ``crop`` / ``restored`` in place."""
    return copy.deepcopy(_whole_detections)


@pytest.fixture
def trust_cache(monkeypatch):
    """Random test checkpoints cannot match the official SHA-256: skip only that check here
    (verification itself is tested in tests/test_weights.py); loading stays the real code path."""
    from bfrboost import weights

    monkeypatch.setattr(weights, "ensure", lambda file, **_: weights.home() / file)
