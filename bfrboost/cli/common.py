"""What every command module shares: one-line errors on stderr, the exit-code convention, and the
signal handling of commands that write files.

Exit codes: 0 everything done (or skipped), 1 some input or output failed, 2 usage error,
130 Ctrl-C (SIGINT), 143 SIGTERM, 129 SIGHUP, 141 the reader of stdout went away (EPIPE).

A command that writes files wraps its body in :func:`interruptible` (or is decorated with
:func:`writes_files` when it has no progress to tell)::

    @app.command()
    def degrade(...):
        with interruptible(total=len(paths)) as progress:
            for path in paths:
                ...  # write through bfrboost.safety (OutputSet, atomic_open, write_image)
                progress.finished += 1

    @app.command()
    @writes_files
    def init(...):
        ...

On SIGINT/SIGTERM/SIGHUP the files being written are removed (nothing half-written stays), one line
says what was finished and how to resume, and the command exits 128 + the signal number.
"""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import typer

from bfrboost.errors import BfrboostError, UsageError
from bfrboost.safety import Interrupted, handle_signals, one_line, remove_live_temps

#: stdout was closed when the process started (``bfrboost ... >&-``); it now leads to /dev/null.
STDOUT_CLOSED = False

RESUME = "re-run the same command to resume (finished outputs are skipped)"

F = TypeVar("F", bound=Callable[..., Any])


def err(message: str) -> None:
    """One line on stderr; the only way errors reach the user."""
    sys.stderr.write(f"bfrboost: {one_line(message)}\n")
    sys.stderr.flush()


def fail(exc: BfrboostError) -> typer.Exit:
    """One line on stderr; exit 2 for usage errors, 1 otherwise."""
    err(str(exc))
    return typer.Exit(2 if isinstance(exc, UsageError) else 1)


@dataclass
class RunProgress:
    """What an interrupted command reports: ``finished`` of ``total`` items (``noun``)."""

    total: int | None = None
    finished: int = 0
    noun: str = "input"
    resume: str = RESUME

    def describe(self) -> str:
        if self.total is None:
            return f"{self.finished} {self.noun}(s) finished" if self.finished else "nothing finished"
        left = self.total - self.finished
        return f"{self.finished} of {self.total} {self.noun}(s) finished, {left} not started or unfinished"


@contextmanager
def interruptible(total: int | None = None, noun: str = "input", resume: str = RESUME) -> Iterator[RunProgress]:
    """Run a writing command's body so that SIGTERM/SIGHUP behave like Ctrl-C: half-written temp
    files are removed, one line says what was finished and how to resume, exit 128 + signal."""
    progress = RunProgress(total, noun=noun, resume=resume)
    try:
        with handle_signals():
            yield progress
    except (KeyboardInterrupt, Interrupted) as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        with _ignoring_interrupts():  # a second Ctrl-C must not cut the cleanup short (or turn the exit code into -2)
            remove_live_temps()
            err(f"interrupted by {signal.Signals(signum).name}: {progress.describe()}; {progress.resume}")
        raise typer.Exit(128 + signum) from None


@contextmanager
def _ignoring_interrupts() -> Iterator[None]:
    """SIGINT/SIGTERM/SIGHUP are dropped within the block (main thread only), then handled as before."""
    wanted = [signal.SIGINT, signal.SIGTERM, *((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ())]
    try:
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in wanted}
    except ValueError:  # not the main thread: nothing to hold off
        previous = {}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def write_stdout(data: bytes) -> None:
    """Write all of ``data`` to stdout. A pipe whose reader went away can take part of a write without an
    error; the next write then raises ``BrokenPipeError``, which :func:`bfrboost.cli.main` turns into 141."""
    view = memoryview(data)
    while view:
        view = view[sys.stdout.buffer.write(view) or 0:]
    sys.stdout.buffer.flush()


def writes_files(command: F) -> F:
    """Decorator form of :func:`interruptible` for commands without a count to report."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with interruptible(resume="re-run the same command"):
            return command(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
