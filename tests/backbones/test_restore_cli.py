"""`bfrboost restore --base NAME --weights FILE` on a real photo, with a checkpoint in the official
format (official config and key names, random values, the official `params_ema` wrapper)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from bfrboost.backbones.registry import get_spec
from bfrboost.cli import app
from tests.test_cli import face_regions


def test_gfpgan_checkpoint_restores_a_real_photo(tmp_path: Path, testdata: Path) -> None:
    torch.manual_seed(0)
    checkpoint = tmp_path / "GFPGANv1.4.pth"
    torch.save({"params_ema": get_spec("gfpgan").build(None).state_dict()}, checkpoint)
    source = testdata / "whole" / "04.jpg"
    args = ["restore", str(source), "-o", str(tmp_path / "out"), "-s", "1", "--ext", "png", "--json",
            "--base", "gfpgan", "--weights", str(checkpoint)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    line = json.loads(result.stdout)
    before = np.asarray(Image.open(source).convert("RGB"), dtype=np.float64)
    after = np.asarray(Image.open(line["output"]), dtype=np.float64)
    inside = face_regions(before.shape[:2], line["faces"])
    changed = np.abs(before - after).max(axis=2) > 1
    assert changed[inside].mean() > 0.3  # the face really went through the network
    assert not changed[~inside].any()
    assert line["seconds"]["base"] > 0
