"""bfrboost.safety and the CLI's interruptible(): all-or-none output sets, temp folders, signals."""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pytest
import typer

from bfrboost import safety
from bfrboost.cli.common import interruptible, writes_files
from bfrboost.errors import OutputError
from bfrboost.safety import InputGuard, OutputSet, atomic_dir, clean_stale_temps, deferred_signals


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_a_failing_writer_leaves_none_of_the_set(tmp_path: Path) -> None:
    def broken(file) -> None:
        file.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    outputs = OutputSet().add(tmp_path / "a" / "one.png", lambda f: f.write(b"1")).add(tmp_path / "b" / "two.png", broken)
    with pytest.raises(OutputError) as info:
        outputs.commit()
    assert (
        str(info.value)
        == f"{tmp_path / 'b' / 'two.png'}: no space left on the device holding {tmp_path / 'b'}; "
        "free space there or choose another -o"
    )
    assert _files(tmp_path) == []  # neither the finished one nor any temp


def test_a_failing_rename_removes_what_was_renamed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_replace = os.replace
    calls = []

    def second_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(safety.os, "replace", second_fails)
    outputs = OutputSet().add(tmp_path / "one.png", lambda f: f.write(b"1")).add(tmp_path / "two.png", lambda f: f.write(b"2"))
    with pytest.raises(OutputError, match="two.png: cannot write"):
        outputs.commit()
    assert _files(tmp_path) == []


def test_the_set_is_checked_before_anything_is_written(tmp_path: Path) -> None:
    source = tmp_path / "photo.png"
    source.write_bytes(b"the input")
    (tmp_path / "taken.png").write_bytes(b"old")
    written = []
    outputs = (
        OutputSet()
        .add(tmp_path / "new.png", lambda f: written.append(1))
        .add(tmp_path / "taken.png", lambda f: written.append(2))
    )
    with pytest.raises(OutputError, match="taken.png: already exists; pass --overwrite"):
        outputs.commit()
    guarded = (
        OutputSet(overwrite=True).add(tmp_path / "new.png", lambda f: written.append(3)).add(source, lambda f: written.append(4))
    )
    with pytest.raises(OutputError, match="would overwrite the input"):
        guarded.commit(InputGuard([source]))
    assert written == [] and source.read_bytes() == b"the input"
    assert OutputSet().add(tmp_path / "ok.png", lambda f: f.write(b"x")).commit() == [tmp_path / "ok.png"]


def test_atomic_dir_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "model") as temp:
        (temp / "weights.bin").write_bytes(b"half")
        raise RuntimeError("crash while saving")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "empty").mkdir()
    with atomic_dir(tmp_path / "empty") as temp:
        (temp / "config.json").write_text("{}")
    assert _files(tmp_path) == ["empty/config.json"]
    with pytest.raises(OutputError, match="not an empty folder"), atomic_dir(tmp_path / "empty"):
        pass


def test_stale_temps_of_dead_processes_go_live_ones_stay(tmp_path: Path) -> None:
    dead = 2**22 + 12345  # above Linux's default pid_max: never a live process
    stale_file = tmp_path / f".a.png.bfrboost-{dead}-0123abcd.partial"
    stale_dir = tmp_path / f".model.bfrboost-{dead}-89abcdef.partial"
    mine = tmp_path / f".b.png.bfrboost-{os.getpid()}-0123abcd.partial"
    other = tmp_path / ".c.png.1a2b.tmp"  # not ours: never touched
    stale_file.write_bytes(b"x")
    stale_dir.mkdir()
    (stale_dir / "inside").write_bytes(b"x")
    mine.write_bytes(b"x")
    other.write_bytes(b"x")
    assert sorted(clean_stale_temps(tmp_path)) == sorted([stale_file, stale_dir])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, other.name])


def test_deferred_signals_delivers_after_the_block() -> None:
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda *_: seen.append("handled"))
    try:
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # plenty of bytecode boundaries where a handler could have run
                pass
            seen.append("renames done")
        for _ in range(1000):
            pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == ["renames done", "handled"]


def test_interruptible_turns_sigterm_into_one_line_and_143(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    target = tmp_path / "out.png"
    with pytest.raises(typer.Exit) as info, interruptible(total=4, noun="image") as progress:
        progress.finished = 1
        with safety.atomic_open(target) as file:
            file.write(b"half")
            os.kill(os.getpid(), signal.SIGTERM)
    assert info.value.exit_code == 143
    assert capsys.readouterr().err == (
        "bfrboost: interrupted by SIGTERM: 1 of 4 image(s) finished, 3 not started or unfinished; "
        "re-run the same command to resume (finished outputs are skipped)\n"
    )
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored afterwards


def test_writes_files_decorator_keeps_the_signature_and_handles_ctrl_c(capsys: pytest.CaptureFixture) -> None:
    @writes_files
    def command(name: str, count: int = 1) -> None:
        raise KeyboardInterrupt

    import inspect

    assert list(inspect.signature(command).parameters) == ["name", "count"]
    with pytest.raises(typer.Exit) as info:
        command("x")
    assert info.value.exit_code == 130
    assert capsys.readouterr().err == "bfrboost: interrupted by SIGINT: nothing finished; re-run the same command\n"


def test_write_errors_say_what_to_do(tmp_path: Path) -> None:
    target = tmp_path / "out" / "a.png"
    assert safety.describe_write_error(target, OSError(errno.EACCES, "Permission denied")) == (
        f"{target}: permission denied writing into {target.parent}; choose a folder you can write to with -o"
    )
    assert safety.describe_write_error(target, OSError(errno.EROFS, "Read-only file system")).endswith(
        "choose a folder you can write to with -o"
    )
    (tmp_path / "out").write_text("a file where a folder should be")
    with pytest.raises(OutputError) as info:
        OutputSet().add(target, lambda f: f.write(b"x")).commit()
    assert (
        str(info.value)
        == f"{target}: cannot write into {target.parent} ({tmp_path / 'out'} is a file, not a folder); "
        "choose another output folder"
    )
    odd = tmp_path / "new\nline.png"
    assert "\n" not in safety.describe_write_error(odd, OSError(errno.ENOSPC, "No space left on device"))


@pytest.mark.parametrize(
    ("code", "ending"),
    [
        (errno.EDQUOT, "disk quota exceeded on the device holding {dir}; free space there or choose another -o"),
        (errno.ENAMETOOLONG, "name too long for the file system; use a shorter name or --suffix"),
        (errno.EISDIR, "a folder of that name is in the way; remove or rename it, or choose another -o"),
    ],
)
def test_more_write_errors_say_what_to_do(tmp_path: Path, code: int, ending: str) -> None:
    target = tmp_path / "a.png"
    message = safety.describe_write_error(target, OSError(code, os.strerror(code)))
    assert message == f"{target}: " + ending.format(dir=tmp_path)
