"""Metric fixtures: official-format checkpoints with random values in the isolated cache, real faces."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bfrboost import weights
from bfrboost.metrics.inception import INCEPTION_FILE
from bfrboost.metrics.perceptual import VGG16_FILE
from bfrboost.nets.arcface import ARCFACE_FILE, random_arcface


@pytest.fixture
def trust_cache(monkeypatch):
    """Random test checkpoints cannot match the cards' SHA-256: skip only that check (verification
    itself is tested in tests/test_weights.py); loading stays the real code path."""
    monkeypatch.setattr(weights, "ensure", lambda file, **_: weights.home() / file)


@pytest.fixture(scope="session")
def random_inception_state(tmp_path_factory) -> dict[str, torch.Tensor]:
    """State dict of torch-fidelity's real InceptionV3 architecture with seeded random values: the
    extractor is built with its loading step disabled, so nothing is downloaded."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    empty = tmp_path_factory.mktemp("inception") / "empty.pth"
    torch.save({}, empty)
    original = FeatureExtractorInceptionV3.load_state_dict
    FeatureExtractorInceptionV3.load_state_dict = lambda self, *a, **k: None  # type: ignore[method-assign]
    try:
        torch.manual_seed(0)
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    finally:
        FeatureExtractorInceptionV3.load_state_dict = original  # type: ignore[method-assign]
    state = {k: v.clone() for k, v in net.state_dict().items()}
    for value in state.values():
        if value.ndim == 4:  # He init keeps activations O(1) through the 94 convolutions
            value.normal_(0, (2.0 / value[0].numel()) ** 0.5)
    return state


def _save_once(tmp_path_factory, file: str, state: dict[str, torch.Tensor]) -> Path:
    """A checkpoint saved once per session, for :func:`_link_into_cache`."""
    path = tmp_path_factory.mktemp("checkpoint") / file
    torch.save(state, path)
    return path


def _link_into_cache(cache: Path, saved: Path) -> Path:
    """Each test's isolated cache gets a hard link, not a fresh save of tens of MB."""
    path = cache / saved.name
    os.link(saved, path)
    return path


@pytest.fixture(scope="session")
def _inception_checkpoint(tmp_path_factory, random_inception_state) -> Path:
    return _save_once(tmp_path_factory, INCEPTION_FILE, random_inception_state)


@pytest.fixture
def inception_file(_isolated_cache, trust_cache, _inception_checkpoint) -> Path:
    return _link_into_cache(_isolated_cache, _inception_checkpoint)


@pytest.fixture(scope="session")
def random_vgg16_state() -> dict[str, torch.Tensor]:
    """torchvision VGG16 with random weights: the official key layout of vgg16-397923af.pth."""
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.vgg16(weights=None).state_dict()


@pytest.fixture(scope="session")
def _vgg16_checkpoint(tmp_path_factory, random_vgg16_state) -> Path:
    return _save_once(tmp_path_factory, VGG16_FILE, random_vgg16_state)


@pytest.fixture
def vgg16_file(_isolated_cache, trust_cache, _vgg16_checkpoint) -> Path:
    return _link_into_cache(_isolated_cache, _vgg16_checkpoint)


@pytest.fixture(scope="session")
def _arcface_checkpoint(tmp_path_factory) -> Path:
    return _save_once(tmp_path_factory, ARCFACE_FILE, random_arcface(0).net.state_dict())


@pytest.fixture
def arcface_file(_isolated_cache, trust_cache, _arcface_checkpoint) -> Path:
    """An official-format (random) IR-SE50 checkpoint in the cache."""
    return _link_into_cache(_isolated_cache, _arcface_checkpoint)


@pytest.fixture(scope="session")
def basicsr_niqe_params() -> Path:
    """BasicSR's own NIQE parameter file when basicsr(-fixed) is installed (an independent reference)."""
    spec = importlib.util.find_spec("basicsr")
    if spec is None or spec.origin is None:
        pytest.skip("basicsr(-fixed) not installed: no NIQE parameter file to test against")
    path = Path(spec.origin).parent / "metrics" / "niqe_pris_params.npz"
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return path


@pytest.fixture
def niqe_file(_isolated_cache, basicsr_niqe_params) -> Path:
    """The real parameters, placed as `bfrboost weights import` would (the card's SHA-256 is checked)."""
    import importlib

    niqe = importlib.import_module("bfrboost.metrics.niqe")
    niqe.pristine_params.cache_clear()
    weights.import_file(basicsr_niqe_params)
    yield _isolated_cache / niqe.NIQE_FILE
    niqe.pristine_params.cache_clear()


def load_rgb(path: Path, size: int | None = None) -> np.ndarray:
    image = Image.open(path).convert("RGB")
    if size is not None:
        image = image.resize((size, size), Image.BICUBIC)
    return np.asarray(image)


@pytest.fixture(scope="session")
def aligned_faces(testdata) -> list[np.ndarray]:
    return [load_rgb(p) for p in sorted((testdata / "aligned").iterdir())]
