"""Real processes killed mid-batch: SIGTERM/SIGINT stop cleanly with one line and 143/130, SIGKILL
leaves a recognisable temp file that the next run removes, a closed stdout is no traceback."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from bfrboost.cli import app

REPO = Path(__file__).resolve().parents[1]

# Runs the real CLI; the second image encode writes a few bytes, says so and then hangs, so the
# test can send its signal while a temp file is half-written.
SLOW_WRITER = """
import signal, sys, time
# Ctrl-C as at a terminal, even when the test runner itself was started with SIGINT ignored
# (a background job, as CI may be): Python then leaves SIGINT ignored in every child.
signal.signal(signal.SIGINT, signal.default_int_handler)
from pathlib import Path
import bfrboost.io.write as images
ready, calls, save = Path(sys.argv[1]), [], images._save
def slow_save(image, file, *args):
    calls.append(1)
    if len(calls) == 2:
        file.write(b"half an image"); file.flush()
        ready.write_text("writing")
        time.sleep(120)
    save(image, file, *args)
images._save = slow_save
from bfrboost.cli import main
sys.argv = ["bfrboost", *sys.argv[2:]]
main()
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "BFRBOOST_OFFLINE": "1"}


@pytest.fixture
def three(tmp_path: Path, testdata: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(testdata / "whole" / "04.jpg", folder / f"{name}.jpg")
    return folder


def _start(tmp_path: Path, args: list[str]) -> tuple[subprocess.Popen, Path]:
    ready = tmp_path / "ready"
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(ready), *args],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(process.communicate()[1].decode())
        time.sleep(0.05)
    return process, ready


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_batch_stops_cleanly_and_a_rerun_resumes(three: Path, tmp_path: Path, signum: int, code: int) -> None:
    out = tmp_path / "out"
    args = ["restore", str(three), "-o", str(out), "--base", "none", "-s", "1", "--json"]
    process, _ = _start(tmp_path, args)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    stderr_lines = [line for line in stderr.decode().splitlines() if line.startswith("bfrboost: ")]
    assert process.returncode == code, stderr.decode()
    assert stderr_lines == [
        f"bfrboost: interrupted by {signal.Signals(signum).name}: 1 of 3 input(s) finished, 2 not started or unfinished; "
        "re-run the same command to resume (finished outputs are skipped)"
    ]
    assert len(stdout.decode().splitlines()) == 1  # the finished input's JSON line
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["a.jpg"]  # no temp file left
    again = CliRunner().invoke(app, args, catch_exceptions=False)
    assert again.exit_code == 0, again.stderr
    assert "2 image(s) restored, 2 face(s), 0 failed, 1 skipped" in again.stderr


def test_a_killed_run_leaves_a_recognisable_temp_that_the_next_run_removes(three: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["restore", str(three), "-o", str(out), "--base", "none", "-s", "1"]
    process, _ = _start(tmp_path, args)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    (temp,) = [p for p in (out / "restored_imgs").iterdir() if p.name.startswith(".")]
    assert temp.name.startswith(".b.jpg.bfrboost-") and temp.name.endswith(".partial")
    skipped_only = CliRunner().invoke(app, ["restore", str(three / "a.jpg"), *args[2:]], catch_exceptions=False)
    assert "0 image(s) restored, 0 face(s), 0 failed, 1 skipped" in skipped_only.stderr
    assert not temp.exists()  # removed by a run that wrote nothing
    again = CliRunner().invoke(app, args, catch_exceptions=False)
    assert again.exit_code == 0, again.stderr
    assert sorted(p.name for p in (out / "restored_imgs").iterdir()) == ["a.jpg", "b.jpg", "c.jpg"]


def test_closed_stdout_is_no_traceback(three: Path, tmp_path: Path) -> None:
    """`bfrboost restore --json ... >&-`: the images are written, nothing crashes."""
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-c", "from bfrboost.cli import main; main()", "restore", str(three / "a.jpg"), "-o", str(out),
         "--base", "none", "-s", "1", "--json"],
        env=_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, preexec_fn=lambda: os.close(1), timeout=120,
    )
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    assert (out / "restored_imgs" / "a.jpg").stat().st_size > 1000


def test_sigterm_during_degrade_leaves_no_partial_output_and_exits_143(tmp_path: Path, testdata: Path) -> None:
    faces = tmp_path / "hq"
    faces.mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(testdata / "aligned" / "0143.png", faces / f"{name}.png")
    out = tmp_path / "lq"
    process, _ = _start(tmp_path, ["degrade", str(faces), "-o", str(out), "--seed", "3"])  # hangs inside b.png's write
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr.decode()
    assert [line for line in stderr.decode().splitlines() if line.startswith("bfrboost: ")] == [
        "bfrboost: interrupted by SIGTERM: 1 of 3 input(s) finished, 2 not started or unfinished; "
        "re-run with --overwrite (each file's degradation is reproducible from --seed)"
    ]
    assert sorted(p.name for p in out.iterdir()) == ["a.png"]  # no temp file, no half image, no log of a partial run
    with Image.open(out / "a.png") as image:
        image.load()  # complete and decodable


def test_sigterm_stops_the_web_app_server_cleanly(tmp_path: Path) -> None:
    """`bfrboost ui` on SIGTERM: the server stops, its work folder goes, one line, exit 143."""
    import socket

    pytest.importorskip("gradio")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**_env(), "TMPDIR": str(tmp_path)}  # the engine's work folder is a tempfile.mkdtemp
    process = subprocess.Popen(
        [sys.executable, "-c", "from bfrboost.cli import main; main()", "ui", "--port", str(port), "--device", "cpu"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 90
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError(process.communicate()[1].decode()) from None
            time.sleep(0.2)
    assert len(list(tmp_path.glob("bfrboost-ui-*"))) == 1
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr.decode()
    assert [line for line in stderr.decode().splitlines() if line.startswith("bfrboost: ")] == [
        "bfrboost: interrupted by SIGTERM: nothing finished; the server has stopped; start it again with `bfrboost ui`"
    ]
    assert not list(tmp_path.glob("bfrboost-ui-*"))  # results and uploads removed
