"""The one mechanism every writing command shares: atomic writes, the input guard, signals, one-line errors.

- :func:`atomic_path` / :func:`atomic_open`: write to a recognisable temp file beside the target
  (``.NAME.bfrboost-PID-RANDOM.partial``), fsync, rename. On any exception, Ctrl-C or SIGTERM the
  temp file is removed; a temp file left by a killed process (SIGKILL, power loss) is removed by the
  next run that writes into the same folder (:func:`clean_stale_temps`).
- :class:`OutputSet`: every file ONE input produces (restored image, face crops, comparisons, a
  video and its side files …), checked before the first byte is written and then committed all or
  none: each file goes to its temp, and only when every temp is complete are they renamed into
  place, with SIGINT/SIGTERM/SIGHUP held off during the renames (:func:`deferred_signals`). If a
  rename fails, the files of the set already renamed are removed again, so a failed input leaves
  none of its files (with ``overwrite`` their earlier versions are then gone too).
- :func:`atomic_dir`: the same for a whole folder (model folders from ``save_pretrained``).
- :func:`append_line`: the one writer that is not atomic, for logs that grow line by line.
- :class:`InputGuard`: refuses any planned output that is one of the run's inputs, whatever
  sub-folder it lands in.
- :func:`handle_signals`: SIGTERM (and SIGHUP) raise :class:`Interrupted` in the main thread, like
  Ctrl-C raises ``KeyboardInterrupt``, so ``finally`` blocks run and half-written files go.
- :func:`one_line`: file names with newlines or control characters escaped, so a message stays on
  one line.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from bfrboost.errors import OutputError

TEMP_MARK = ".bfrboost-"
TEMP_SUFFIX = ".partial"
_TEMP_RE = re.compile(r"^\..+\.bfrboost-(\d+)-[0-9a-f]{8}\.partial$")
#: Temp files of this process not yet renamed into place (removed on a signal too).
_LIVE: set[Path] = set()
_LIVE_LOCK = threading.Lock()
_CLEANED: set[Path] = set()


class Interrupted(BaseException):
    """SIGTERM/SIGHUP arrived; a ``BaseException`` like ``KeyboardInterrupt`` so nothing swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def one_line(text: object) -> str:
    """``text`` with control characters (newline, tab, escape…) written as ``\\n``, ``\\x1b`` …"""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(text))


_SPECIAL = (
    (stat.S_ISFIFO, "is a named pipe (FIFO), not a regular file; save the image to a file, or pipe it in with '-'"),
    (stat.S_ISSOCK, "is a socket, not a regular file; give an image file"),
    (stat.S_ISCHR, "is a character device, not a regular file; give an image file"),
    (stat.S_ISBLK, "is a block device, not a regular file; give an image file"),
)


def special_file(path: Path | str) -> str | None:
    """What a FIFO, socket or device file is (and what to do), or ``None`` for anything else.

    Checked before opening an input: reading a FIFO would block until something writes to it."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return next((what for test, what in _SPECIAL if test(mode)), None)


def describe_missing(path: Path | str) -> str:
    """Why ``path`` is not there: a dangling symbolic link (and where it points) or simply missing."""
    path = Path(path)
    if path.is_symlink():
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        target_path = Path(target) if os.path.isabs(target) else path.parent / target
        return f"broken symbolic link (its target {one_line(target_path)} does not exist); fix or remove the link"
    return "no such file or folder; check the path"


def temp_path(path: Path) -> Path:
    """A fresh temp name beside ``path``: hidden, recognisable, owned by this process."""
    return path.parent / f".{path.name}{TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(folder: Path) -> list[Path]:
    """Remove temp files of dead bfrboost processes in ``folder`` (once per folder and process)."""
    folder = Path(folder)
    key = folder.resolve() if folder.exists() else folder
    if key in _CLEANED or not folder.is_dir():
        return []
    _CLEANED.add(key)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        match = _TEMP_RE.match(entry.name)
        if match and not _pid_alive(int(match.group(1))):
            _remove(Path(entry.path))
            if not os.path.lexists(entry.path):
                removed.append(Path(entry.path))
    return removed


def _prepare_folder(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(describe_write_error(path, exc)) from None
    clean_stale_temps(path.parent)


def describe_write_error(path: Path, exc: OSError) -> str:
    """One line for a failed write that says what to do (free space, permissions, another folder)."""
    import errno

    name = one_line(path)
    if exc.errno == errno.ENOSPC:
        return f"{name}: no space left on the device holding {one_line(path.parent)}; free space there or choose another -o"
    if exc.errno == getattr(errno, "EDQUOT", None):
        return f"{name}: disk quota exceeded on the device holding {one_line(path.parent)}; free space there or choose another -o"
    if exc.errno == errno.ENAMETOOLONG:
        return f"{name}: name too long for the file system; use a shorter name or --suffix"
    if exc.errno == errno.EISDIR:
        return f"{name}: a folder of that name is in the way; remove or rename it, or choose another -o"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{name}: permission denied writing into {one_line(path.parent)}; choose a folder you can write to with -o"
    blocker = next((p for p in (path.parent, *path.parent.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        return (
            f"{name}: cannot write into {one_line(path.parent)} ({one_line(blocker)} is a file, not a folder); "
            "choose another output folder"
        )
    return f"{name}: cannot write ({exc.strerror or exc}); check the output folder or choose another with -o"


@contextmanager
def atomic_path(path: Path | str, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp path to write ``path`` through (for writers that need a file name: video encoders,
    ``safetensors.torch.save_file``, ``torch.save``); renamed into place when the block ends cleanly.

    An existing ``path`` is an :class:`OutputError` unless ``overwrite``.
    """
    path = Path(path)
    if not overwrite and os.path.lexists(path):
        raise OutputError(f"{one_line(path)}: already exists; pass --overwrite to replace it")
    _prepare_folder(path)
    try:
        with _live_temp(path) as temp:
            yield temp
            if temp.exists():
                _fsync(temp)
                os.replace(temp, path)
    except OSError as exc:
        raise OutputError(describe_write_error(path, exc)) from None


@contextmanager
def _live_temp(path: Path) -> Iterator[Path]:
    """A temp name beside ``path``, registered so that a signal removes it (:func:`remove_live_temps`);
    whatever is still there when the block ends (not renamed into place) is removed."""
    temp = temp_path(path)
    with _LIVE_LOCK:
        _LIVE.add(temp)
    try:
        yield temp
    finally:
        with _LIVE_LOCK:
            _LIVE.discard(temp)
        _remove(temp)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path: Path | str, overwrite: bool = False) -> Iterator[BinaryIO]:
    """A binary file object whose content appears at ``path`` only when the block ends cleanly."""
    with atomic_path(path, overwrite) as temp:
        try:
            # 0o666 (not mkstemp's 0o600) so the result gets the user's usual permissions
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except OSError as exc:
            raise OutputError(describe_write_error(Path(path), exc)) from None
        with os.fdopen(fd, "wb") as file:
            yield file
            file.flush()


@contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield a temp folder that appears complete at ``path`` when the block ends cleanly, or not at all
    (a model folder written by ``save_pretrained``, a folder of frames). ``path`` must be missing or an
    empty folder (replaced); a killed run leaves a recognisable temp folder the next run removes."""
    path = Path(path)
    if os.path.lexists(path) and (not path.is_dir() or any(path.iterdir())):
        raise OutputError(f"{one_line(path)}: already exists and is not an empty folder; choose a new or empty folder")
    _prepare_folder(path)
    try:
        with _live_temp(path) as temp:
            temp.mkdir()
            yield temp
            with deferred_signals():
                os.replace(temp, path)
    except OSError as exc:
        raise OutputError(describe_write_error(path, exc)) from None


def _remove(path: Path) -> None:
    """Remove a temp file or folder if it is there; never raises."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def write_bytes(path: Path | str, data: bytes, overwrite: bool = False) -> Path:
    """Write ``data`` atomically (JSON reports, Markdown/CSV tables, HTML pages …)."""
    with atomic_open(path, overwrite) as file:
        file.write(data)
    return Path(path)


def append_line(path: Path | str, line: str) -> None:
    """Append one line to a log (``log.jsonl`` of a training run): a log grows every step, so it is not
    rewritten atomically each time; a kill can cut only its last line, and a resumed run rewrites the
    log atomically (:func:`write_bytes`) up to its checkpoint."""
    try:
        with open(path, "a", encoding="utf-8") as file:
            file.write(line.rstrip("\n") + "\n")
    except OSError as exc:
        raise OutputError(describe_write_error(Path(path), exc)) from None


def remove_live_temps() -> None:
    """Delete every temp file this process has open (called on a signal before exiting)."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for temp in live:
        _remove(temp)


@contextmanager
def handle_signals() -> Iterator[None]:
    """Within the block SIGTERM and SIGHUP raise :class:`Interrupted` (exit code 128 + signal).

    Only the main thread can install handlers; elsewhere the block changes nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: object) -> None:
        remove_live_temps()
        raise Interrupted(signum)

    wanted = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {sig: signal.signal(sig, _raise) for sig in wanted}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_DEFERRED = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


@contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP until the block ends (a few renames that must happen together).

    A signal arriving meanwhile is recorded and re-delivered to the previous handler right after the
    block (``pthread_sigmask`` would not do: a process-directed signal may land on any other thread,
    and Python runs its handler in the main thread anyway). Main thread only; elsewhere no effect.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: pending.append(signum)) for sig in _DEFERRED}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if pending:
            _redeliver(pending[0], previous[pending[0]])


def _redeliver(signum: int, handler: Any) -> None:
    if callable(handler):
        handler(signum, None)
    elif handler == signal.SIG_DFL:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        os.kill(os.getpid(), signum)  # the default action (terminate) now that the renames are done


class OutputSet:
    """Every file one input produces: checked up front, then written all or none (see the module doc).

    ``add(path, write)``: ``write(file)`` fills a binary file object; ``add_path(path, write)``:
    ``write(temp)`` writes a file name (``torch.save``, ``safetensors``, video encoders).
    """

    def __init__(self, overwrite: bool = False) -> None:
        self.overwrite = overwrite
        self._writers: dict[Path, Callable[[Path], None]] = {}

    @property
    def paths(self) -> list[Path]:
        return list(self._writers)

    def add(self, path: Path | str, write: Callable[[BinaryIO], None]) -> OutputSet:
        def via_file(temp: Path) -> None:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            with os.fdopen(fd, "wb") as file:
                write(file)

        return self.add_path(path, via_file)

    def add_path(self, path: Path | str, write: Callable[[Path], None]) -> OutputSet:
        path = Path(path)
        if path in self._writers:
            raise OutputError(f"{one_line(path)}: planned twice in one output set; give the outputs distinct names")
        self._writers[path] = write
        return self

    def check(self, guard: InputGuard | None = None) -> None:
        """Refuse (before anything is written) an output that is an input or exists without ``overwrite``."""
        for path in self._writers:
            if guard is not None:
                guard.check(path)
            if not self.overwrite and os.path.lexists(path):
                raise OutputError(f"{one_line(path)}: already exists; pass --overwrite to replace it")

    def commit(self, guard: InputGuard | None = None) -> list[Path]:
        """Check, write every temp, rename them all; returns the paths written. Raises :class:`OutputError`."""
        self.check(guard)
        temps: list[tuple[Path, Path]] = []
        with ExitStack() as live:
            for path, write in self._writers.items():
                _prepare_folder(path)
                temp = live.enter_context(_live_temp(path))
                temps.append((temp, path))
                try:
                    write(temp)
                    _fsync(temp)
                except OSError as exc:
                    raise OutputError(describe_write_error(path, exc)) from None
            self._rename_all(temps)
        return [path for _, path in temps]

    def _rename_all(self, temps: list[tuple[Path, Path]]) -> None:
        done: list[Path] = []
        with deferred_signals():
            for temp, path in temps:
                try:
                    if not self.overwrite and os.path.lexists(path):  # appeared while we were writing
                        raise OutputError(f"{one_line(path)}: already exists; pass --overwrite to replace it")
                    os.replace(temp, path)
                except (OSError, OutputError) as exc:
                    for written in done:
                        written.unlink(missing_ok=True)
                    if isinstance(exc, OutputError):
                        raise
                    raise OutputError(describe_write_error(path, exc)) from None
                done.append(path)


class InputGuard:
    """Knows every input of a run; :meth:`check` refuses an output that would replace one of them.

    Indexed by file name, so checking n outputs against n inputs costs O(n), not O(n²).
    """

    def __init__(self, inputs: Iterable[Path | str] = ()) -> None:
        self._by_name: dict[str, list[Path]] = {}
        for item in inputs:
            self.add(item)

    def add(self, item: Path | str) -> None:
        path = Path(item)
        self._by_name.setdefault(path.name, []).append(path)

    def check(self, out: Path | str) -> None:
        out = Path(out)
        for candidate in self._by_name.get(out.name, ()):
            if _same_file(candidate, out):
                raise OutputError(
                    f"{one_line(out)}: would overwrite the input {one_line(candidate)}; choose another -o or --suffix"
                )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet)
        return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))
