"""`bfrboost restore --base NAME --weights FILE` on a real photo for every base model, with a checkpoint in
the official format (official configuration and key names, random values, the official wrapper key)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from bfrboost.backbones import difface
from bfrboost.backbones.registry import get_spec
from bfrboost.cli import app
from tests.backbones.conftest import swap_spec
from tests.backbones.test_difface import TINY, _random_prior, _restorer_as_released
from tests.test_cli import face_regions

# wrapper key of each released file (None: a bare state dict)
WRAPPERS = {"gfpgan": "params_ema", "restoreformer": "params_ema", "codeformer": "params_ema", "gpen": None, "vqfr": "params"}


def restore(tmp_path: Path, source: Path, *args: str) -> tuple[np.ndarray, np.ndarray, dict]:
    argv = ["restore", str(source), "-o", str(tmp_path / "out"), "-s", "1", "--ext", "png", "--json", *args]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.stderr
    line = json.loads(result.stdout)
    before = np.asarray(Image.open(source).convert("RGB"), dtype=np.float64)
    return before, np.asarray(Image.open(line["output"]), dtype=np.float64), line


def assert_only_the_face_changed(before: np.ndarray, after: np.ndarray, line: dict) -> None:
    inside = face_regions(before.shape[:2], line["faces"])
    changed = np.abs(before - after).max(axis=2) > 1
    assert changed[inside].mean() > 0.3  # the face really went through the network
    assert not changed[~inside].any()
    assert line["seconds"]["base"] > 0


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_official_format_checkpoint_restores_a_real_photo(name: str, tmp_path: Path, testdata: Path) -> None:
    torch.manual_seed(0)
    spec = get_spec(name)
    state_dict = spec.build(None).state_dict()
    checkpoint = tmp_path / spec.weight_file
    torch.save(state_dict if WRAPPERS[name] is None else {WRAPPERS[name]: state_dict}, checkpoint)
    del state_dict
    extra = ["--fidelity", "0.5"] if name in ("codeformer", "vqfr") else []
    before, after, line = restore(tmp_path, testdata / "whole" / "04.jpg", "--base", name, "--weights", str(checkpoint), *extra)
    assert_only_the_face_changed(before, after, line)


def test_difface_restores_a_real_photo(tmp_path: Path, testdata: Path, monkeypatch) -> None:
    """DifFace at full size takes ~20 s per denoising step on this CPU: the same code with a reduced UNet."""
    restorer = _restorer_as_released(3)
    swap_spec(monkeypatch, "difface", build=lambda sd: difface.build(sd, restorer_state_dict=restorer, config=TINY))
    checkpoint = tmp_path / "iddpm_ffhq512_ema500000.pth"
    torch.save(_random_prior(TINY.unet, seed=1), checkpoint)
    args = ["--base", "difface", "--weights", str(checkpoint), "--knob", "steps=10", "--knob", "seed=3"]
    before, after, line = restore(tmp_path, testdata / "whole" / "04.jpg", *args)
    assert_only_the_face_changed(before, after, line)
