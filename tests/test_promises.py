"""The promises of docs/reliability.md checked against every command (the command × promise table there).

Each cell is one parametrised case on tiny inputs (``--base none``, no weights): no input found → one
line and exit 1; a usage error → exit 2 and nothing written; an input is never overwritten; Ctrl-C →
one line and 130 (also a second Ctrl-C during the cleanup); the pixel limit; the reader of stdout gone → 141.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bfrboost.cli import app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def refiner(tmp_path_factory) -> Path:
    from bfrboost.refiner import init_tiny

    folder = tmp_path_factory.mktemp("refiner") / "tiny"
    init_tiny(folder)
    return folder


@pytest.fixture
def photo(testdata: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    return Path(shutil.copy(testdata / "whole" / "04.jpg", folder / "04.jpg"))


def invoke(args: list) -> object:
    return runner.invoke(app, [str(a) for a in args])


def one_line_each(stderr: str) -> None:
    assert stderr and "Traceback" not in stderr
    assert all(line.startswith(("bfrboost: ", "  ")) or " restored" in line or "faces" in line for line in stderr.splitlines()), (
        stderr
    )


# ---- no input found: one line naming it, exit 1 -------------------------------------------------------------------------

NO_INPUT = {
    "restore": lambda p, t, r: ["restore", p, "-o", t / "o", "--base", "none"],
    "restore-dataset": lambda p, t, r: ["restore-dataset", p, t / "o", "--base", "none"],
    "degrade": lambda p, t, r: ["degrade", p, "-o", t / "o"],
    "colorize": lambda p, t, r: ["colorize", p, "-o", t / "o"],
    "inpaint": lambda p, t, r: ["inpaint", p, "-o", t / "o", "--mask-color", "white"],
    "old-photo": lambda p, t, r: ["old-photo", p, "-o", t / "o"],
    "refiner stats": lambda p, t, r: ["refiner", "stats", "--faces", p, "--refiner", r],
    "train": lambda p, t, r: ["train", "--out", t / "run", "--data", p, "--tiny", "--base", "none", "--device", "cpu"],
    "train cache": lambda p, t, r: ["train", "cache", "--data", p, "-o", t / "cache", "--base", "none", "--device", "cpu"],
    "eval": lambda p, t, r: ["eval", "--restored", p, "--metrics", "psnr"],
    "eval stats": lambda p, t, r: ["eval", "stats", p, "-o", t / "s.npz"],
    "eval boost": lambda p, t, r: [
        "eval",
        "boost",
        "--base",
        "none",
        "--refiner",
        r,
        "--data",
        p,
        "-o",
        t / "b",
        "--device",
        "cpu",
    ],
    "weights import": lambda p, t, r: ["weights", "import", p],
}


@pytest.mark.parametrize("what", ["missing", "empty"])
@pytest.mark.parametrize("command", sorted(NO_INPUT))
def test_no_input_found_is_one_line_and_exit_1(command: str, what: str, tmp_path: Path, refiner: Path) -> None:
    if command == "weights import" and what == "empty":
        pytest.skip("weights import takes files, not folders (a folder: tests/test_weights_import.py)")
    given = tmp_path / what
    if what == "empty":
        given.mkdir()
    result = invoke(NO_INPUT[command](given, tmp_path, refiner))
    assert result.exit_code == 1, result.output
    one_line_each(result.stderr)
    assert result.stderr.startswith(f"bfrboost: {given}: "), result.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*.png"))


# ---- usage errors: exit 2, nothing written ------------------------------------------------------------------------------

USAGE = {
    "restore": (lambda p, t: ["restore", p, "-o", t / "o", "--base", "nosuch"], "unknown base"),
    "restore-dataset": (lambda p, t: ["restore-dataset", p.parent, p.parent, "--base", "none"], "choose a DST outside SRC"),
    "degrade": (lambda p, t: ["degrade", p, "-o", t / "o", "--kernel-size", "40"], "kernel size must be odd"),
    "train": (
        lambda p, t: ["train", "--out", t / "o", "--data", p.parent, "--schedule", "linear"],
        "unknown --schedule 'linear'; use one of: constant, cosine",
    ),
    "train --allow-changes": (
        lambda p, t: ["train", "--out", t / "o", "--data", p.parent, "--allow-changes", "colour"],
        "--allow-changes: unknown setting(s) colour",
    ),
    "eval": (lambda p, t: ["eval", "--restored", p.parent, "--metrics", "sharpness"], "unknown metric 'sharpness'"),
    "weights download": (lambda p, t: ["weights", "download", "nosuch"], "unknown weights name 'nosuch'"),
}


@pytest.mark.parametrize("command", sorted(USAGE))
def test_usage_errors_exit_2_and_write_nothing(command: str, photo: Path, tmp_path: Path) -> None:
    make, words = USAGE[command]
    before = sorted(photo.parent.iterdir())
    result = invoke(make(photo, tmp_path))
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and words in result.stderr, result.stderr
    assert not (tmp_path / "o").exists() and sorted(photo.parent.iterdir()) == before


# ---- inputs are never overwritten ----------------------------------------------------------------------------------------

OVER_INPUT = {
    # the output path of each command made to be its input, with --overwrite
    "restore": lambda p: (["restore", p, "-o", p.parent.parent, "--base", "none", "-s", "1", "--overwrite"], "restored_imgs"),
    "degrade": lambda p: (["degrade", p.with_suffix(".png"), "-o", p.parent, "--overwrite"], None),
    "restore-dataset": lambda p: (["restore-dataset", p.parent, p.parent, "--base", "none", "--overwrite"], None),
}


@pytest.mark.parametrize("command", sorted(OVER_INPUT))
def test_an_input_is_never_overwritten(command: str, photo: Path) -> None:
    if command == "degrade":
        from PIL import Image

        Image.open(photo).save(photo.with_suffix(".png"))
    if command == "restore":  # the input where restore would write its output
        (photo.parent / "restored_imgs").mkdir()
        photo = Path(shutil.move(photo, photo.parent / "restored_imgs" / photo.name))
    target = photo.with_suffix(".png") if command == "degrade" else photo
    before = target.read_bytes()
    args, _ = OVER_INPUT[command](photo)
    result = invoke(args)
    assert result.exit_code in (1, 2), result.output
    assert "would overwrite the input" in result.stderr or "choose a DST outside SRC" in result.stderr
    assert target.read_bytes() == before


# ---- Ctrl-C: one line, exit 130 ------------------------------------------------------------------------------------------


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


INTERRUPT = {
    "restore": ("bfrboost.runners.files.read_image", lambda p, t, r: ["restore", p, "-o", t / "o", "--base", "none"]),
    "restore-dataset": (
        "bfrboost.runners.dataset.stages.plan_dataset",
        lambda p, t, r: ["restore-dataset", p.parent, t / "o", "--base", "none"],
    ),
    "degrade": ("bfrboost.runners.degrade.read_image", lambda p, t, r: ["degrade", p, "-o", t / "o"]),
    "refiner stats": ("bfrboost.refiner.list_faces", lambda p, t, r: ["refiner", "stats", "--faces", p.parent, "--refiner", r]),
    "refiner init": ("bfrboost.refiner.init_tiny", lambda p, t, r: ["refiner", "init", "--tiny", t / "new"]),
    "train": ("bfrboost.train.loop.Trainer.run", lambda p, t, r: ["train", "--out", t / "run", "--data", p.parent, "--tiny"]),
    "train cache": (
        "bfrboost.train.loop.build_training_cache",
        lambda p, t, r: ["train", "cache", "--data", p.parent, "-o", t / "c"],
    ),
    "eval": ("bfrboost.evaluation.folders.read_image", lambda p, t, r: ["eval", "--restored", p.parent, "--metrics", "psnr"]),
    "eval stats": (
        "bfrboost.evaluation.folders.compute_stats_folder",
        lambda p, t, r: ["eval", "stats", p.parent, "-o", t / "s.npz"],
    ),
    "eval boost": (
        "bfrboost.evaluation.boost.run_boost",
        lambda p, t, r: ["eval", "boost", "--base", "none", "--refiner", r, "--data", p.parent, "-o", t / "b", "--device", "cpu"],
    ),
    "weights import": ("bfrboost.weights.import_file", lambda p, t, r: ["weights", "import", p]),
    "weights download": ("bfrboost.weights.ensure", lambda p, t, r: ["weights", "download", "arcface"]),
}


@pytest.mark.parametrize("command", sorted(INTERRUPT))
def test_ctrl_c_is_one_line_and_exit_130(command: str, photo: Path, tmp_path: Path, refiner: Path, monkeypatch) -> None:
    target, make = INTERRUPT[command]
    monkeypatch.setattr(target, _interrupt)
    result = invoke(make(photo, tmp_path, refiner))
    assert result.exit_code == 130, result.output
    last = result.stderr.splitlines()[-1]
    assert last.startswith("bfrboost: interrupted by SIGINT: ") and "re-run" in last, result.stderr
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".partial")]


def test_a_second_ctrl_c_during_the_cleanup_still_exits_130(photo: Path, tmp_path: Path, monkeypatch) -> None:
    from bfrboost.cli import common

    monkeypatch.setattr("bfrboost.runners.files.read_image", _interrupt)
    monkeypatch.setattr(common, "remove_live_temps", lambda: os.kill(os.getpid(), signal.SIGINT))  # pressed again meanwhile
    result = invoke(["restore", photo, "-o", tmp_path / "o", "--base", "none"])
    assert result.exit_code == 130, result.output
    assert result.stderr.splitlines()[-1].startswith("bfrboost: interrupted by SIGINT: ")
    assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN  # Ctrl-C works again after the command


# ---- limits ----------------------------------------------------------------------------------------------------------------


def test_video_frames_honour_max_pixels(testdata: Path, tmp_path: Path) -> None:
    from bfrboost.io.read import read_image
    from tests.support.clips import make_pan_clip

    clip = make_pan_clip(
        read_image(testdata / "whole" / "03.jpg").rgb, tmp_path / "clip.mp4", (96, 64), 2, pan=(1.0, 0.0), origin=(30, 20)
    )
    refused = invoke(["restore", clip, "-o", tmp_path / "o", "--base", "none", "--detector", "dlib", "--max-pixels", "1000"])
    assert refused.exit_code == 1
    assert (
        f"bfrboost: {clip}: video frames are 96x64 (0.0 MP), above the 0.001 MP safety limit; pass --max-pixels 6144 to allow it"
        in refused.stderr.splitlines()
    )
    assert not (tmp_path / "o" / "restored_videos" / "clip.mp4").exists()


def test_dataset_rows_honour_max_pixels(photo: Path) -> None:
    from bfrboost.options import DetectOptions, PasteOptions
    from bfrboost.runners.dataset import stages as ds

    source = {"source": str(photo), "rel": "04.jpg", "output": "/nowhere/04.jpg"}
    row = ds.prepare_row(source, DetectOptions(), PasteOptions(), max_pixels=1000)
    job = ds._unpack(row)
    assert job.report.error.startswith(f"{photo}: image is 225x225") and job.report.error.endswith(
        "pass --max-pixels 50625 to allow it"
    )


# ---- messages with the action that fits ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (
            "--mask",
            "no such mask file or folder; give --mask an image (white = fill) or a folder of masks named like the inputs, "
            "or use --mask-color",
        ),
        (
            "--scratch-mask",
            "no such scratch-mask file or folder; give --scratch-mask an image (white = scratch), a folder of masks named "
            "like the inputs, or auto",
        ),
    ],
)
def test_a_missing_mask_says_what_to_give(option: str, expected: str, photo: Path, tmp_path: Path) -> None:
    command = "inpaint" if option == "--mask" else "old-photo"
    result = invoke([command, photo, "-o", tmp_path / "o", option, tmp_path / "gone.png"])
    assert result.exit_code == 1
    assert result.stderr == f"bfrboost: {tmp_path / 'gone.png'}: {expected}\n"


def test_eval_against_references_of_another_size_names_the_sizes_not_the_option(testdata: Path, tmp_path: Path) -> None:
    from PIL import Image

    restored, reference = tmp_path / "restored", tmp_path / "reference"
    restored.mkdir()
    reference.mkdir()
    shutil.copy(testdata / "aligned" / "0143.png", restored / "a.png")
    Image.open(testdata / "aligned" / "0143.png").resize((256, 256)).save(reference / "a.png")
    result = invoke(["eval", "--restored", restored, "--reference", reference, "--metrics", "psnr"])
    assert result.exit_code == 1
    assert "pass --reference" not in result.stderr
    assert result.stderr.splitlines()[:2] == [
        f"bfrboost: {restored / 'a.png'}: 512×512 but its reference {reference / 'a.png'} is 256×256; left out of paired metrics "
        "(resize the references, or restore at the references' size)",
        f"bfrboost: psnr: skipped, no restored face has a same-named reference of its size in {reference} (see the lines above); "
        "fix the names or sizes",
    ]


# ---- the reader of stdout gone, Ctrl-C at startup: real processes -----------------------------------------------------------


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "BFRBOOST_OFFLINE": "1"}


def test_restore_to_a_pipe_whose_reader_leaves_exits_141(photo: Path) -> None:
    """`bfrboost restore - < photo | head -c 100`: the PNG is larger than the pipe, the reader leaves after 100 bytes."""
    with photo.open("rb") as stdin:
        process = subprocess.Popen(
            [sys.executable, "-m", "bfrboost", "restore", "-", "--base", "none"],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_env(),
        )
        assert len(process.stdout.read(100)) == 100
        process.stdout.close()
        stderr = process.stderr.read().decode()
        assert process.wait(timeout=120) == 141, stderr
    assert "Traceback" not in stderr


def test_ctrl_c_while_starting_up_exits_130() -> None:
    script = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.stderr.write('ready\\n'); sys.stderr.flush(); "
        # restore loads torch and the models' code first (seconds): the signal lands in that startup
        "sys.argv = ['bfrboost', 'restore', '/nonexistent/x.jpg', '-o', '/nonexistent/out']; "
        "import runpy; runpy.run_module('bfrboost', run_name='__main__')"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    assert process.stderr.readline() == b"ready\n"  # the handler is set; importing bfrboost.cli (torch, typer …) follows
    time.sleep(0.3)  # inside that import (it takes seconds)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr.decode()
    assert b"Traceback" not in stderr
