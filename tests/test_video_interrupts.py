"""A restore run stops within 2 s of SIGTERM or SIGINT, mid-clip and with the CPU busy, and leaves
no partial file (real processes, signals sent from outside, time measured from signal to exit)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bfrboost.io.read import read_image
from tests.support.clips import make_pan_clip

REPO = Path(__file__).resolve().parents[1]
LIMIT_S = 2.0


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def _wait_for(predicate, timeout: float = 180.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def clip(testdata: Path, tmp_path_factory) -> Path:
    photo = read_image(testdata / "whole" / "06.png").rgb
    folder = tmp_path_factory.mktemp("clip")
    return make_pan_clip(photo, folder / "long.mp4", (640, 360), 40, pan=(0.5, 0.2), origin=(40, 130), period=120)


@pytest.fixture
def busy():
    """Two processes spinning on the CPU for the length of the test (the 'under load' part)."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    yield
    for spinner in spinners:
        spinner.kill()
        spinner.wait()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_clip_stops_within_two_seconds_of_a_signal(clip: Path, tmp_path: Path, busy: None, signum: int) -> None:
    out = tmp_path / "restored_videos"
    command = [sys.executable, "-m", "bfrboost", "restore", str(clip), "-o", str(tmp_path), "--base", "none",
               "--detector", "dlib", "--device", "cpu", "-s", "1", "--frames-per-batch", "4", "--detect-every", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(), cwd=tmp_path)
    try:
        _wait_for(lambda: out.is_dir() and any(p.stat().st_size > 0 for p in out.iterdir()))  # frames encoded into the temp file
        time.sleep(0.3)  # mid-batch
        sent = time.monotonic()
        process.send_signal(signum)
        process.wait(timeout=30)
        elapsed = time.monotonic() - sent
    finally:
        process.kill()
    stderr = process.stderr.read().decode()
    assert process.returncode == 128 + signum, stderr
    assert f"interrupted by {signal.Signals(signum).name}" in stderr
    assert elapsed < LIMIT_S, f"{elapsed:.2f} s from {signal.Signals(signum).name} to exit"
    assert list(out.iterdir()) == []  # the temp file is gone, no partial clip


def test_a_step_that_does_not_return_is_cut_short(tmp_path: Path) -> None:
    """The watcher ends a run whose main thread cannot unwind (here: its handler swallows SIGTERM,
    as a long native call would hold it) 1.5 s after the signal, removing its temp files."""
    script = f"""
import signal, sys, time
from pathlib import Path
from bfrboost.cli import stop
from bfrboost.safety import atomic_path
signal.signal(signal.SIGTERM, lambda *args: None)
with stop.watching(), atomic_path(Path({str(tmp_path / 'out.bin')!r})) as temp:
    temp.write_bytes(b"partial")
    print("ready", flush=True)
    while True:
        time.sleep(0.05)
"""
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    try:
        ready = process.stdout.readline().strip()
        assert ready == b"ready", process.communicate(timeout=30)[1].decode()[-2000:]
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        elapsed = time.monotonic() - sent
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM
    assert 1.4 < elapsed < LIMIT_S
    assert "bfrboost: interrupted by SIGTERM: stopped the step in flight" in process.stderr.read().decode()
    assert list(tmp_path.iterdir()) == []
