"""What a clip carries besides its pictures (subtitles, metadata, languages) and what happens to a
damaged clip: synthetic clips from a real photo, restored with ``--base none`` and decoded again."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from bfrboost.cli import app
from bfrboost.io.read import read_image
from bfrboost.pipeline import Restorer
from bfrboost.runners.video import VideoOptions, VideoRunner
from tests.support.clips import make_pan_clip

runner = CliRunner()
CUES = [(100, 300, "Hello there"), (300, 380, "Second line")]
TAGS = {"title": "Holiday 2026", "comment": "restored for grandma"}
COMMON = ["--base", "none", "--detector", "dlib", "-s", "1", "--device", "cpu", "--json"]


@pytest.fixture(scope="module")
def photo(testdata: Path) -> np.ndarray:
    return read_image(testdata / "whole" / "03.jpg").rgb


@pytest.fixture(scope="module")
def subtitled(photo: np.ndarray, tmp_path_factory) -> Path:
    return make_pan_clip(
        photo, tmp_path_factory.mktemp("subs") / "talk.mkv", (320, 180), 10, pan=(1.0, 0.5), origin=(30, 20),
        subtitles=CUES, metadata=TAGS, audio_language="deu",
    )


def streams(path: Path) -> tuple[dict, list[tuple[str, str | None]], list[tuple[int, bytes]]]:
    """Container metadata, (type, language) per stream, and the subtitle packets (ms, text)."""
    with av.open(str(path)) as container:
        tags = {k.lower(): v for k, v in container.metadata.items()}
        kinds = [(s.type, s.metadata.get("language")) for s in container.streams]
        cues = []
        if container.streams.subtitles:
            stream = container.streams.subtitles[0]
            cues = [(round(float(p.pts * p.time_base) * 1000), bytes(p)) for p in container.demux(stream) if p.dts is not None]
        return tags, kinds, cues


def test_subtitles_metadata_and_languages_are_kept(subtitled: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["restore", str(subtitled), "-o", str(tmp_path), "--ext", "mkv", *COMMON], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert "warning" not in result.stderr
    assert json.loads(result.stdout)["copied_streams"] == 1
    tags, kinds, cues = streams(tmp_path / "restored_videos" / "talk.mkv")
    assert {k: tags[k] for k in TAGS} == TAGS
    assert kinds == [("video", None), ("audio", "deu"), ("subtitle", None)]
    assert cues == [(a, text.encode()) for a, _, text in CUES] == streams(subtitled)[2]


def test_what_the_container_cannot_hold_is_dropped_with_one_warning(subtitled: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["restore", str(subtitled), "-o", str(tmp_path), "--ext", "mp4", *COMMON], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    warning = f"bfrboost: warning: {subtitled}: .mp4 cannot hold its subtitle stream 2 (srt): dropped; choose --ext mkv to keep"
    assert [line for line in result.stderr.splitlines() if "warning" in line] == [warning]
    assert json.loads(result.stdout)["warnings"] == [warning.removeprefix("bfrboost: warning: ")]
    tags, kinds, cues = streams(tmp_path / "restored_videos" / "talk.mp4")
    assert {k: tags[k] for k in TAGS} == TAGS and kinds == [("video", "und"), ("audio", "deu")] and cues == []


def test_audio_the_container_cannot_hold_is_refused_before_decoding(subtitled: Path, tmp_path: Path, monkeypatch) -> None:
    def decoded(*args, **kwargs):
        raise AssertionError("a frame was decoded and prepared")

    monkeypatch.setattr(Restorer, "prepare", decoded)
    restorer = Restorer("none", device="cpu", detector="dlib")
    report = next(VideoRunner(restorer, VideoOptions(tmp_path, ext="webm")).run([subtitled]))
    assert report.error == f"{subtitled}: its aac audio cannot be copied into .webm; choose --ext mkv (takes any audio) or mp4"
    assert report.seconds.get("decode") is None and list((tmp_path / "restored_videos").iterdir()) == []


def test_a_damaged_clip_is_restored_around_its_gaps(photo: np.ndarray, tmp_path: Path) -> None:
    clip = make_pan_clip(photo, tmp_path / "good.mp4", (320, 180), 125, pan=(0.5, 0.25), origin=(10, 10), period=100, audio=False)
    data = bytearray(clip.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 20000] = np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes()
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    with av.open(str(clip)) as container:
        times = [round(float(f.time), 3) for f in container.decode(video=0)]
    assert len(times) == 125

    result = runner.invoke(app, ["restore", str(damaged), "-o", str(tmp_path / "out"), *COMMON], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr  # restored (around the damage): success, with a warning
    line = json.loads(result.stdout)
    out = tmp_path / "out" / "restored_videos" / "damaged.mp4"
    with av.open(str(out)) as container:
        kept = [round(float(f.time), 3) for f in container.decode(video=0)]
    missing = sorted(set(times) - set(kept))
    assert set(kept) <= set(times) and kept == sorted(kept)  # every output frame at its own time, in order
    assert 60 <= len(kept) == line["frames"] < 125
    assert line["damaged"]["missing_frames"] == len(missing) == 125 - len(kept)
    spans = line["damaged"]["spans"]
    assert sum(n for _, _, n in spans) == len(missing) and spans[0][0] == missing[0] and spans[-1][1] == missing[-1]
    warnings = [w for w in result.stderr.splitlines() if w.startswith("bfrboost: warning:")]
    assert len(warnings) == 1
    assert f"{damaged}: damaged: " in warnings[0] and f", {len(missing)} frame(s) missing ({missing[0]:.2f}–" in warnings[0]
    assert warnings[0].endswith("; the frames that decoded are restored at their times")
