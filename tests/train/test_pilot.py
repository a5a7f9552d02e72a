"""`bfrboost train pilot` ranks β values on the CPU-scale configuration; ablation switches change what is trained."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from bfrboost.cli import app
from bfrboost.train.loop import TrainConfig, make_model
from bfrboost.train.pilot import rank_rows
from tests.train.conftest import SIZE, VAL_COUNT


def test_the_pilot_ranks_a_collapsing_beta_last_and_recommends_a_healthy_one(faces_dir, tiny_sd, tmp_path):
    out = tmp_path / "pilot"
    result = CliRunner().invoke(
        app,
        [
            "train",
            "pilot",
            "--tiny",
            "--tiny-sd",
            str(tiny_sd),
            "--data",
            str(faces_dir),
            "--base",
            "none",
            "-o",
            str(out),
            "--betas",
            "100,0.01",
            "--steps",
            "20",
            "--batch-size",
            "4",
            "--size",
            str(SIZE),
            "--val-count",
            str(VAL_COUNT),
            "--repeats",
            "1",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads((out / "pilot.json").read_text())
    assert [r["beta"] for r in data["ranked"]] == [0.01, 100.0]
    last, first = data["ranked"][-1], data["ranked"][0]
    assert (
        last["lambda_mean"] < first["lambda_mean"] < 0.98 and last["psnr"] < first["psnr"] - 1.0
    )  # β = 100 is on its way to collapse
    assert data["recommended"]["beta"] == 0.01 and data["recommended_healthy"]
    assert "pilot: " in result.stderr and " s per step (median of the first 3) → ≈ " in result.stderr  # the cost, up front
    assert result.stdout.startswith(f"{out / 'pilot.md'}: recommended --beta 0.01 --timestep 499 --lr 0.01 ")
    md = (out / "pilot.md").read_text()
    assert "| 1 | 0.01 | 499 | 0.01 |" in md and "| 2 | 100 | 499 | 0.01 |" in md
    assert Image.open(out / "pilot.png").format == "PNG"
    assert (out / "cache" / "cache.json").is_file()  # one cache for every value


def test_ranking_puts_healthy_lambda_first_then_psnr():
    rows = [
        {"lambda_mean": 0.01, "psnr": 30.0, "lpips": 0.1},
        {"lambda_mean": 0.5, "psnr": 20.0, "lpips": 0.2},
        {"lambda_mean": 0.6, "psnr": 21.0, "lpips": 0.3},
        {"lambda_mean": 0.999, "psnr": 25.0, "lpips": 0.2},
    ]
    assert [r["psnr"] for r in rank_rows(rows)] == [21.0, 20.0, 30.0, 25.0]


@pytest.mark.parametrize("switch, gone", [("no_transformer", "transformer"), ("no_mib", "lambda_head"), ("no_lora", "lora")])
def test_ablation_switches_remove_what_they_name_from_training(tiny_sd, tmp_path, switch, gone):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_sd, run / "sd-tiny")
    full = make_model(TrainConfig(out=run, tiny=True, size=SIZE), run).parameter_counts()
    ablated = make_model(TrainConfig(out=run, tiny=True, size=SIZE, **{switch: True}), run)
    counts = ablated.parameter_counts()
    assert full[gone] > 0 and counts[gone] == 0
    assert counts["trainable"] == full["trainable"] - full[gone] == sum(p.numel() for p in ablated.trainable_parameters())
    assert counts["frozen_unet"] == full["frozen_unet"]  # the frozen SD is the same
