from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from bfrboost.cli import app
from bfrboost.refiner import InfoBFR

runner = CliRunner()


def test_init_writes_a_loadable_tiny_refiner(tmp_path):
    result = runner.invoke(app, ["refiner", "init", "--tiny", str(tmp_path / "t"), "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert {p.name for p in (tmp_path / "t").iterdir()} == {"config.json", "refiner.safetensors", "vae", "unet"}
    refiner = InfoBFR.from_pretrained(tmp_path / "t")
    assert refiner.refine(torch.rand(1, 3, 64, 64)).shape == (1, 3, 64, 64)
    again = runner.invoke(app, ["refiner", "init", "--tiny", str(tmp_path / "t")])
    assert again.exit_code == 2
    assert again.stderr == f"bfrboost: {tmp_path / 't'}: already holds a refiner; choose an empty folder\n"


def test_info_matches_the_paper_size_and_the_measured_lora_counts():
    counts = {}
    for rank in (2, 4, 8):
        result = runner.invoke(app, ["refiner", "info", "--rank", str(rank), "--json", "--no-flops"])
        assert result.exit_code == 0, result.output
        counts[rank] = json.loads(result.stdout)
    lora = {rank: info["parameters"]["lora"] for rank, info in counts.items()}
    assert lora[4] == 2 * lora[2] and lora[8] == 4 * lora[2]
    assert [round(lora[r] / 1e6, 2) for r in (2, 4, 8)] == [2.03, 4.05, 8.11]  # standard one-step targets, measured with peft
    mb = {r: info["trainable_mb_fp32"] for r, info in counts.items()}
    assert mb[4] == counts[4]["parameters"]["trainable"] * 4 / 1e6
    assert abs(mb[4] / 16.4 - 1) < 0.05  # the paper's "16.4 M" = 16.4 MB of fp32 weights
    for rank, paper in ((2, 8.0), (4, 16.4), (8, 32.0)):
        assert abs(mb[rank] / paper - 1) < 0.10, (rank, mb[rank])


def test_info_text_prints_the_size_of_every_studied_rank():
    result = runner.invoke(app, ["refiner", "info", "--no-flops"])
    assert result.exit_code == 0, result.output
    assert (
        "trainable fp32 size by rank (paper: 8 / 16.4 / 32 MB): rank 2: 8.31 MB, rank 4: 16.42 MB, rank 8: 32.64 MB"
        in result.stdout
    )


def test_info_flops_per_stage():
    result = runner.invoke(app, ["refiner", "info", "--json"])
    assert result.exit_code == 0, result.output
    flops = json.loads(result.stdout)["flops_per_face"]
    assert set(flops) == {"vae_encoder", "bottleneck", "unet", "vae_decoder", "total"}
    assert flops["total"] == sum(v for k, v in flops.items() if k != "total")
    # the bottleneck by hand: 4096 tokens, width 64, 4·64 MLP, 8 channels (FLOPs = 2 × MACs)
    n, d, c, hidden = 64 * 64, 64, 8, 256
    per_token = 2 * (c * d + 3 * d * d + 2 * n * d + d * d + 2 * d * hidden + d * c + c * c)
    assert flops["bottleneck"] == n * per_token
    assert flops["vae_decoder"] > flops["vae_encoder"] > flops["unet"] > 50 * flops["bottleneck"]
    text = runner.invoke(app, ["refiner", "info", "--no-flops"]).stdout
    assert "LoRA        4.054 M params    16.22 MB fp32" in text


def test_stats_command_stores_statistics(testdata, tiny_dir, tmp_path):
    import shutil

    shutil.copytree(tiny_dir, tmp_path / "r")
    stats = ["refiner", "stats", "--faces", str(testdata / "aligned"), "--refiner", str(tmp_path / "r"), "-n", "2"]
    stats += ["--size", "64", "--device", "cpu"]
    result = runner.invoke(app, stats)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{tmp_path / 'r'}: per-element statistics of r over 2 faces stored")  # the default
    assert json.loads((tmp_path / "r" / "config.json").read_text())["stats_mode"] == "element"
    result = runner.invoke(app, [*stats, "--per-channel"])
    assert result.stdout.startswith(f"{tmp_path / 'r'}: per-channel statistics of r over 2 faces stored")
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["stats_faces"] == 2


@pytest.mark.parametrize("bad", ["faces", "refiner"])
def test_stats_command_errors_are_one_line(tiny_dir, tmp_path, bad, testdata):
    faces = tmp_path / "missing" if bad == "faces" else testdata / "aligned"
    refiner = tiny_dir if bad == "faces" else tmp_path
    result = runner.invoke(app, ["refiner", "stats", "--faces", str(faces), "--refiner", str(refiner)])
    expected = {
        "faces": (
            1,
            f"bfrboost: {faces}: not a folder of aligned faces; give --faces a folder of aligned 512 face crops "
            "(e.g. cropped_faces/ of `bfrboost restore --save-faces`)\n",
        ),
        "refiner": (
            2,
            f"bfrboost: {tmp_path}: not a bfrboost refiner (no config.json); run `bfrboost refiner init` or train one first\n",
        ),
    }[bad]
    assert (result.exit_code, result.stderr) == expected


def test_init_sd21_writes_an_untrained_refiner_for_stats_then_training(tiny_dir, tmp_path, testdata):
    from tests.refiner.conftest import make_sd_folder

    sd = tmp_path / "sd"
    make_sd_folder(tiny_dir, sd)
    result = runner.invoke(app, ["refiner", "init", "--sd21", str(tmp_path / "r"), "--sd-model", str(sd), "--rank", "2"])
    assert result.exit_code == 0, result.output
    assert (
        result.stdout == f"{tmp_path / 'r'}: untrained refiner written (rank 2); "
        f"next: `bfrboost refiner stats --faces HQ_DIR --refiner {tmp_path / 'r'}`\n"
    )
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["rank"] == 2 and config["stats_faces"] == 0 and not (tmp_path / "r" / "unet").exists()
    stats = runner.invoke(
        app,
        [
            "refiner",
            "stats",
            "--faces",
            str(testdata / "aligned"),
            "--refiner",
            str(tmp_path / "r"),
            "--sd-model",
            str(sd),
            "-n",
            "2",
            "--size",
            "64",
            "--device",
            "cpu",
        ],
    )
    assert stats.exit_code == 0, stats.output
    assert json.loads((tmp_path / "r" / "config.json").read_text())["stats_faces"] == 2
    both = runner.invoke(app, ["refiner", "init", "--sd21", str(tmp_path / "x"), "--tiny", str(tmp_path / "y")])
    assert both.exit_code == 2 and both.stderr == "bfrboost: give exactly one of --tiny DIR or --sd21 DIR\n"
