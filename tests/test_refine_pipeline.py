"""`restore --refiner DIR`: the InfoBFR refiner in the pipeline (tiny random refiner, no network)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from bfrboost.cli import app
from tests.test_cli import face_regions

runner = CliRunner()


def test_refiner_changes_only_faces(tmp_path: Path, testdata: Path) -> None:
    refiner = tmp_path / "tiny"
    assert runner.invoke(app, ["refiner", "init", "--tiny", str(refiner)]).exit_code == 0
    source = testdata / "whole" / "01.jpg"
    common = [str(source), "--base", "none", "-s", "1", "--ext", "png", "--json"]
    plain = runner.invoke(app, ["restore", *common, "-o", str(tmp_path / "plain"), "--no-refine"])
    boosted = runner.invoke(app, ["restore", *common, "-o", str(tmp_path / "boost"), "--refiner", str(refiner)])
    half = runner.invoke(
        app, ["restore", *common, "-o", str(tmp_path / "half"), "--refiner", str(refiner), "--refiner-strength", "0.5"]
    )
    for result in (plain, boosted, half):
        assert result.exit_code == 0, result.stderr
    line = json.loads(boosted.stdout)
    assert "refine" in line["seconds"] and "refine" not in json.loads(plain.stdout)["seconds"]
    a = np.asarray(Image.open(tmp_path / "plain" / "restored_imgs" / "01.png"), dtype=np.float64)
    b = np.asarray(Image.open(tmp_path / "boost" / "restored_imgs" / "01.png"), dtype=np.float64)
    c = np.asarray(Image.open(tmp_path / "half" / "restored_imgs" / "01.png"), dtype=np.float64)
    inside = face_regions(a.shape[:2], line["faces"])
    changed = np.abs(a - b).max(axis=2) > 1
    assert changed.any() and not changed[~inside].any()
    # strength 0.5 lies between the base output and the fully refined one
    assert 0 < np.abs(a - c).mean() < np.abs(a - b).mean()
    assert "refiner runs on the CPU" in boosted.stderr


def test_no_refine_ignores_the_refiner(tmp_path: Path, testdata: Path) -> None:
    result = runner.invoke(
        app,
        [
            "restore",
            str(testdata / "whole" / "04.jpg"),
            "--base",
            "none",
            "-o",
            str(tmp_path),
            "--refiner",
            str(tmp_path / "missing"),
            "--no-refine",
            "--json",
        ],
    )
    assert result.exit_code == 0 and "refine" not in json.loads(result.stdout)["seconds"]


def test_compile_flag_compiles_the_refiner_stages(tmp_path: Path, testdata: Path, monkeypatch) -> None:
    from bfrboost.refiner.model import InfoBFR

    compiled = []
    monkeypatch.setattr(InfoBFR, "compile_stages", lambda self: compiled.append(self))
    refiner = tmp_path / "tiny"
    runner.invoke(app, ["refiner", "init", "--tiny", str(refiner)])
    result = runner.invoke(
        app,
        [
            "restore",
            str(testdata / "aligned" / "0143.png"),
            "--aligned",
            "--base",
            "none",
            "-o",
            str(tmp_path / "out"),
            "--refiner",
            str(refiner),
            "--compile",
        ],
    )
    assert result.exit_code == 0, result.stderr
    assert len(compiled) == 1
