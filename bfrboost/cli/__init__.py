"""Thin Typer layer: one module per command group parses options, loops, reports progress and exit
codes. The logic lives in the library; every command here is a documented Python call too."""

from __future__ import annotations

import gc
import os
import sys
import warnings

import typer

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="bfrboost: restore faces, then boost them with the InfoBFR refiner."
)

from bfrboost.cli import (  # noqa: E402  (each module adds its commands to ``app``)
    dataset,
    degrade,
    eval,
    export,
    guided,
    refiner,
    restore,
    train,
    ui,
    weights,
)

__all__ = ["app", "dataset", "degrade", "eval", "export", "guided", "main", "refiner", "restore", "train", "ui", "weights"]


def main() -> None:
    """The ``bfrboost`` console script: the Typer app plus Unix stream manners.

    - fds 0–2 closed at start (``bfrboost ... >&-``) are reopened on ``/dev/null``, so nothing we open
      later (an output image!) gets fd 1 and receives printed text, and printing is no traceback;
    - the reader of stdout gone (``| head``): stop quietly with exit code 141 (128 + SIGPIPE), as
      other tools die of SIGPIPE (the files finished so far stay; the one being written is removed);
    - SIGTERM/SIGINT/SIGHUP end the run within 2 s (:mod:`bfrboost.cli.stop`).
    """
    try:
        _run()
    except KeyboardInterrupt:  # Ctrl-C before a command's own handling is set up (e.g. starting the watcher): 130
        raise SystemExit(130) from None
    finally:
        # The interpreter's last garbage collections would walk every object PyTorch's import made
        # (0.5 s at every exit); frozen objects are skipped, and nothing of ours needs them collected.
        gc.freeze()


def _run() -> None:
    # spandrel's architectures still call torch.jit.script at import: not the user's concern
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    _reopen_closed_std_streams()
    from bfrboost.cli import stop

    # the web app's server stops in its own orderly way (closing connections, removing its work folder)
    with stop.watching(enabled=sys.argv[1:2] != ["ui"]):
        try:
            app()
        except KeyboardInterrupt:  # Ctrl-C outside a command's own handling (startup, a second Ctrl-C): still 130
            raise SystemExit(130) from None
        except SystemExit as exc:
            if exc.code in stop.INTERRUPTED_CODES:
                stop.exit_now(int(exc.code))
            # Click (vendored by Typer) swaps stdout for a PacifyFlushWrapper when a write hit EPIPE
            if type(sys.stdout).__name__ == "PacifyFlushWrapper":
                _silence_stdout()
                raise SystemExit(141) from None
            raise


def _reopen_closed_std_streams() -> None:
    from bfrboost.cli import common

    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
        except OSError:
            devnull = os.open(os.devnull, os.O_RDWR)
            if devnull != fd:
                os.dup2(devnull, fd)
                os.close(devnull)
            setattr(sys, name, open(fd, mode, closefd=False))  # noqa: SIM115 - lives as long as the process
            if fd == 1:
                common.STDOUT_CLOSED = True


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null so the interpreter's final flush of stdout cannot raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
