"""`bfrboost degrade` keeps restore's promises: no output over another's, re-runs resume and keep the log, --max-pixels."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from bfrboost.cli import app

runner = CliRunner()


def face(path, testdata, name="0143.png", size=64, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(testdata / "aligned" / name) as image:
        image.convert("RGB").resize((size, size)).save(path, format=fmt)


def records(folder):
    return [json.loads(line) for line in (folder / "degrade.jsonl").read_text().splitlines()]


def test_same_stems_from_two_folders_never_replace_each_other(testdata, tmp_path):
    face(tmp_path / "a" / "x.png", testdata, "0143.png")
    face(tmp_path / "b" / "x.jpg", testdata, "0368.png")
    result = runner.invoke(
        app,
        [
            "degrade",
            str(tmp_path / "a" / "x.png"),
            str(tmp_path / "b" / "x.jpg"),
            "-o",
            str(tmp_path / "lq"),
            "--overwrite",
            "--seed",
            "1",
        ],
    )
    assert result.exit_code == 1
    assert result.stderr == (
        f"bfrboost: {tmp_path / 'b' / 'x.jpg'}: its output {tmp_path / 'lq' / 'x.png'} is already taken by "
        f"{tmp_path / 'a' / 'x.png'}; degrade it separately into another -o, or rename it\n"
    )
    alone = runner.invoke(app, ["degrade", str(tmp_path / "a" / "x.png"), "-o", str(tmp_path / "alone"), "--seed", "1"])
    assert alone.exit_code == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "lq" / "x.png")), np.asarray(Image.open(tmp_path / "alone" / "x.png")))
    assert [r["file"] for r in records(tmp_path / "lq")] == ["x.png"]


def test_a_rerun_into_the_same_folder_skips_and_keeps_earlier_records(testdata, tmp_path):
    face(tmp_path / "hq" / "one.png", testdata, "0143.png")
    face(tmp_path / "hq2" / "two.png", testdata, "0368.png")
    first = runner.invoke(app, ["degrade", str(tmp_path / "hq" / "one.png"), "-o", str(tmp_path / "lq")])
    assert first.exit_code == 0, first.output
    second = runner.invoke(
        app, ["degrade", str(tmp_path / "hq" / "one.png"), str(tmp_path / "hq2" / "two.png"), "-o", str(tmp_path / "lq")]
    )
    assert second.exit_code == 0, second.output
    assert second.stdout == f"1 image(s) degraded into {tmp_path / 'lq'}, 1 skipped (already there), 0 failed (seed 0)\n"
    assert [r["output"] for r in records(tmp_path / "lq")] == ["one.png", "two.png"]
    redo = runner.invoke(
        app, ["degrade", str(tmp_path / "hq" / "one.png"), "-o", str(tmp_path / "lq"), "--overwrite", "--seed", "3"]
    )
    assert redo.exit_code == 0
    log = records(tmp_path / "lq")
    assert [r["output"] for r in log] == ["two.png", "one.png"] and log[1]["seed"] != log[0][
        "seed"
    ]  # one record per output, the newest


def test_the_pixel_limit_message_names_an_option_degrade_has(testdata, tmp_path):
    face(tmp_path / "hq" / "big.png", testdata, size=96)
    small = runner.invoke(app, ["degrade", str(tmp_path / "hq"), "-o", str(tmp_path / "lq"), "--max-pixels", "1000"])
    assert small.exit_code == 1
    assert small.stderr.startswith(f"bfrboost: {tmp_path / 'hq' / 'big.png'}: image is 96x96")
    assert small.stderr.endswith("pass --max-pixels 9216 to allow it\n")
    allowed = runner.invoke(app, ["degrade", str(tmp_path / "hq"), "-o", str(tmp_path / "lq"), "--max-pixels", "9216"])
    assert allowed.exit_code == 0, allowed.output
