"""The overlapped runner against the sequential one on the real photos: same bytes, same reports, same order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bfrboost.cli import app
from bfrboost.options import OutputOptions
from bfrboost.pipeline import Restorer
from bfrboost.runners.files import FileRunner
from bfrboost.runners.overlap import OverlapRunner


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
