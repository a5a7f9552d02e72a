"""The overlapped runner against the sequential one on the real photos: same bytes, same reports, same order."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import cv2
import pytest
from typer.testing import CliRunner

from bfrboost.cli import app
from bfrboost.options import OutputOptions
from bfrboost.pipeline import Restorer
from bfrboost.runners.files import FileRunner
from bfrboost.runners.overlap import OverlapRunner, opencv_threads


@pytest.fixture(scope="module")
def restorer() -> Restorer:
    return Restorer("none", device="cpu")


@pytest.fixture
def inputs(testdata: Path, tmp_path: Path) -> list[Path]:
    """Every whole/ photo with an undecodable file in the middle (in its own folder: no name clash)."""
    bad = tmp_path / "bad" / "broken.jpg"
    bad.parent.mkdir()
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    photos = sorted((testdata / "whole").iterdir())
    return photos[:3] + [bad] + photos[3:]


def comparable(report, outdir: Path) -> dict:
    """A report's JSON line without timings, its output relative to the output folder."""
    line = report.to_json()
    line.pop("seconds")
    if line["output"]:
        line["output"] = str(Path(line["output"]).relative_to(outdir))
    line["files"] = [str(Path(f).relative_to(outdir)) for f in line.get("files", [])]
    return line


def test_overlapped_outputs_and_reports_equal_sequential(restorer: Restorer, inputs: list[Path], tmp_path: Path) -> None:
    seq_dir, ovl_dir = tmp_path / "seq", tmp_path / "ovl"
    sequential = list(FileRunner(restorer, OutputOptions(outdir=seq_dir)).run(inputs))
    with OverlapRunner(restorer, OutputOptions(outdir=ovl_dir), workers=2) as runner:
        assert runner.mode == "thread"
        overlapped = list(runner.run(inputs))

    assert [r.input for r in overlapped] == [str(p) for p in inputs]
    assert [comparable(r, ovl_dir) for r in overlapped] == [comparable(r, seq_dir) for r in sequential]
    failed = [r for r in overlapped if r.error]
    assert [r.input for r in failed] == [str(inputs[3])]
    assert failed[0].error.startswith(f"{inputs[3]}: truncated image data")
    done = [r for r in overlapped if r.done]
    assert len(done) == 8 and sum(len(r.faces) for r in done) >= 40
    for seq, ovl in zip(sequential, overlapped):
        if seq.done:
            assert Path(ovl.output).read_bytes() == Path(seq.output).read_bytes(), ovl.input
            assert list(ovl.seconds) == list(seq.seconds)  # decode, detect, align, base, paste, encode


def test_process_mode_and_skips_match(restorer: Restorer, inputs: list[Path], tmp_path: Path) -> None:
    """Forked processes instead of threads give the same files; a second run skips every existing output."""
    small = [p for p in inputs if p.name in ("01.jpg", "03.jpg", "broken.jpg", "05.jpg")]
    seq = list(FileRunner(restorer, OutputOptions(outdir=tmp_path / "seq")).run(small))
    with OverlapRunner(restorer, OutputOptions(outdir=tmp_path / "thr"), workers=2, mode="process", queue_size=1) as runner:
        first = list(runner.run(small))
        again = list(runner.run(small))
    assert [comparable(r, tmp_path / "thr") for r in first] == [comparable(r, tmp_path / "seq") for r in seq]
    for a, b in zip(seq, first):
        if a.done:
            assert Path(a.output).read_bytes() == Path(b.output).read_bytes()
    assert [bool(r.skipped) for r in again] == [r.done for r in first]
    assert [r.error for r in again] == [r.error for r in first]


def test_cli_workers_json_lines_in_input_order(testdata: Path, tmp_path: Path) -> None:
    names = ["01.jpg", "03.jpg", "04.jpg", "05.jpg"]
    paths = [str(testdata / "whole" / n) for n in names]
    result = CliRunner().invoke(
        app, ["restore", *paths, "-o", str(tmp_path), "--base", "none", "--workers", "2", "--json"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["input"] for line in lines] == paths
    assert all((tmp_path / "restored_imgs" / n).is_file() for n in names)
    assert "4 image(s) restored" in result.stderr


def test_the_largest_photo_is_prepared_and_finished_first(restorer: Restorer, testdata: Path, tmp_path: Path) -> None:
    """Longest-processing-time first within the window: the largest file, given last, starts first
    instead of running alone at the end; the reports keep input order."""
    photos = sorted((testdata / "whole").iterdir(), key=lambda p: p.stat().st_size)
    inputs = [photos[0], photos[1], photos[-1]]  # two small ones, then the largest
    runner = OverlapRunner(restorer, OutputOptions(outdir=tmp_path), workers=1, queue_size=2, images_per_batch=3)  # a window of 4
    prepared, finished = [], []
    prepare, finish = runner._prepare, runner._finish
    runner._prepare = lambda report, path: prepared.append(Path(path).name) or prepare(report, path)
    runner._finish = lambda report, *rest: finished.append(Path(report.input).name) or finish(report, *rest)
    with runner:
        reports = list(runner.run(inputs))
    assert [Path(r.input).name for r in reports] == [p.name for p in inputs]
    assert all(r.done for r in reports)
    assert prepared[0] == photos[-1].name and finished[0] == photos[-1].name
    assert sorted(prepared) == sorted(p.name for p in inputs)


def test_prepare_threads_go_on_behind_a_slow_image(restorer: Restorer, testdata: Path, tmp_path: Path) -> None:
    """The first image's preparation only ends once three others are prepared: the runner must keep starting
    inputs while it waits for that image (it used to stop at ``queue_size`` prepared-but-waiting images)."""
    photos = sorted((testdata / "whole").iterdir(), key=lambda p: p.stat().st_size)[:5]
    inputs = [photos[0], *photos[1:]]  # the smallest first: the largest-first order starts it late
    runner = OverlapRunner(restorer, OutputOptions(outdir=tmp_path), workers=2, queue_size=2, images_per_batch=1)
    others_done, head_waited = threading.Semaphore(0), []
    prepare = runner._prepare

    def slow_head(report, path):
        if Path(path) == inputs[0]:
            head_waited.append(all(others_done.acquire(timeout=30) for _ in range(3)))
            return prepare(report, path)
        job = prepare(report, path)
        others_done.release()
        return job

    runner._prepare = slow_head
    with runner:
        reports = list(runner.run(inputs))
    assert head_waited == [True]
    assert [Path(r.input) for r in reports] == inputs and all(r.done for r in reports)


def test_opencv_runs_one_thread_per_core_left_while_a_run_lasts(restorer: Restorer, testdata: Path, tmp_path: Path) -> None:
    """During a run OpenCV's pool shrinks to the cores per stage thread (never grows); the count from before
    comes back after the run, and after the last of two overlapping limits."""
    cores = len(os.sched_getaffinity(0))
    before = cv2.getNumThreads()
    cv2.setNumThreads(8)
    try:
        seen = []
        runner = OverlapRunner(restorer, OutputOptions(outdir=tmp_path), workers=2)
        finish = runner._finish
        runner._finish = lambda *job: seen.append(cv2.getNumThreads()) or finish(*job)
        with runner:
            assert all(r.done for r in runner.run(sorted((testdata / "whole").iterdir())[:2]))
        assert seen == [max(1, min(8, cores // 4))] * 2
        assert cv2.getNumThreads() == 8
        with opencv_threads(1) as outer:
            with opencv_threads(8) as inner:
                assert inner == max(1, min(outer, cores // 8))
            assert cv2.getNumThreads() == inner  # the other run still goes on: no growing back under it
        assert cv2.getNumThreads() == 8
    finally:
        cv2.setNumThreads(before)
