"""Checkpoints that a kill, a full disk or a damaged file never turn into a run that cannot go on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bfrboost.cli import app
from tests.train.conftest import SIZE

runner = CliRunner()
TINY = [
    "--tiny",
    "--base",
    "none",
    "--batch-size",
    "2",
    "--lr",
    "3e-2",
    "--warmup",
    "1",
    "--val-count",
    "2",
    "--repeats",
    "1",
    "--checkpoint-every",
    "1",
    "--val-every",
    "100",
    "--device",
    "cpu",
]


@pytest.fixture(scope="module", autouse=True)
def _fitted_tiny_sd(tiny_sd) -> None:
    """Every run here reuses the session's fitted tiny SD (a --tiny run would otherwise fit its own)."""
    TINY.extend(["--tiny-sd", str(tiny_sd), "--size", str(SIZE)])


@pytest.fixture(scope="module")
def base_run(testdata, tmp_path_factory) -> Path:
    """A two-step tiny run with a checkpoint after each step."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    result = runner.invoke(app, ["train", "--out", str(out), "--data", str(testdata / "aligned"), "--steps", "2", *TINY])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def run(base_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(base_run, copy, symlinks=True)
    shutil.rmtree(copy / "refiner")
    return copy


def steps(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def resume(run: Path, *extra: str, total: int = 3):
    return runner.invoke(app, ["train", "--out", str(run), "--resume", "--steps", str(total), *TINY, *extra])


def test_a_kill_during_the_first_checkpoint_leaves_a_run_that_resumes_from_step_zero(run):
    shutil.rmtree(run / "checkpoints")
    # what a SIGKILL during the first save leaves: the temps of a dead process (old per-file and whole-folder layouts)
    half = run / "checkpoints" / "step-00000001"
    half.mkdir(parents=True)
    (half / ".trainable.safetensors.bfrboost-999999999-0123abcd.partial").write_bytes(b"half")
    (run / "checkpoints" / ".step-00000001.bfrboost-999999999-89abcdef.partial").mkdir()
    with (run / "log.jsonl").open("a") as log:
        log.write('{"step": 3, "lo')  # a line cut short by the kill
    fresh = runner.invoke(app, ["train", "--out", str(run), "--steps", "2", *TINY])
    assert fresh.exit_code == 2 and "already holds a training run; pass --resume to continue it" in fresh.stderr
    result = resume(run, total=2)
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[0] == (
        f"bfrboost: {run / 'checkpoints'}: no complete checkpoint (the run stopped before its "
        "first one); starting again from step 0"
    )
    assert steps(run / "log.jsonl") == [1, 2] and steps(run / "val.jsonl") == [0, 2]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001", "step-00000002"]
    assert not [p for p in run.rglob("*") if p.name.endswith(".partial")]


def test_a_damaged_latest_checkpoint_is_skipped_with_one_line(run, base_run):
    latest = run / "checkpoints" / "step-00000002" / "trainable.safetensors"
    latest.write_bytes(latest.read_bytes()[:100])  # cut short
    result = resume(run)
    assert result.exit_code == 0, result.output
    line = result.stderr.splitlines()[0]
    assert line.startswith(f"bfrboost: {latest}: damaged (cut short or not a safetensors file")
    assert line.endswith("; skipped, resuming from step-00000001 instead") and "Traceback" not in result.output
    assert steps(run / "log.jsonl") == [1, 2, 3]
    # step 2 is recomputed from step 1: the same loss as the first run's step 2, bit for bit
    first = [json.loads(line) for line in (base_run / "log.jsonl").read_text().splitlines()]
    again = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert again[1]["loss"] == first[1]["loss"]


@pytest.mark.parametrize("damage", ["truncated trainable", "hostile optimizer"])
def test_resume_on_the_only_damaged_checkpoint_is_one_line(run, tmp_path, damage):
    shutil.rmtree(run / "checkpoints" / "step-00000001")
    folder = run / "checkpoints" / "step-00000002"
    if damage == "truncated trainable":
        (folder / "trainable.safetensors").write_bytes((folder / "trainable.safetensors").read_bytes()[:64])
        bad = folder / "trainable.safetensors"
    else:

        class Payload:
            def __reduce__(self):
                return (print, ("this ran code",))

        torch.save({"state": {}, "param_groups": Payload()}, folder / "optimizer.pt")
        bad = folder / "optimizer.pt"
    result = resume(run)
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output and "weights_only=False" not in result.output
    assert result.stderr.startswith(f"bfrboost: {bad}: ")
    assert (
        "refused: this checkpoint needs code execution" in result.stderr
        if damage == "hostile optimizer"
        else "damaged" in result.stderr
    )
    assert result.stderr.endswith(
        f"no usable checkpoint in {run / 'checkpoints'}: remove that folder and re-run with --resume "
        "to start again from step 0, or choose another --out\n"
    )
    assert "this ran code" not in result.output


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_previous_one(run, monkeypatch):
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )

    monkeypatch.setattr("safetensors.torch.save_file", full)
    result = resume(run)
    assert result.exit_code == 1
    folder = run / "checkpoints" / "step-00000003"
    assert "Traceback" not in result.output
    assert result.stderr.splitlines()[-1] + "\n" == (
        f"bfrboost: {folder}: no space left on the device holding {run / 'checkpoints'}; free space there or choose "
        "another -o (the checkpoint step-00000002 is kept; re-run with --resume to continue from it)\n"
    )
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001", "step-00000002"]  # no .partial left
    monkeypatch.undo()
    again = resume(run)
    assert again.exit_code == 0, again.output
    assert steps(run / "log.jsonl") == [1, 2, 3]


def test_resume_refuses_settings_that_break_exact_resumption_unless_allowed(run):
    changed = resume(run, "--lr", "1e-3", "--batch-size", "1")
    assert changed.exit_code == 2
    state = run / "checkpoints" / "step-00000002" / "state.json"
    assert changed.stderr == (
        f"bfrboost: {state}: --resume with other settings than the run (--batch-size 2 → 1, --lr 0.03 → 0.001) "
        "would not continue it exactly; pass the run's values, or --allow-changes batch_size,lr to accept the change\n"
    )
    unknown = resume(run, "--allow-changes", "colour")
    assert (
        unknown.exit_code == 2 and "--allow-changes: unknown setting(s) colour; choose from bases, batch_size" in unknown.stderr
    )
    allowed = resume(run, "--lr", "1e-3", "--allow-changes", "lr")
    assert allowed.exit_code == 0, allowed.output
    assert steps(run / "log.jsonl") == [1, 2, 3]
