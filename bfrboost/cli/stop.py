"""Stop within 2 s of SIGTERM/SIGINT/SIGHUP, whatever the process is doing (the console script only).

Containers and systemd allow a stopped process a grace period (often 10 s) before SIGKILL, which
would leave a half-written file. Two things made a CLI run slower than that:

- the interpreter's own teardown after the command had already cleaned up and printed its line
  (freeing torch, dlib and FFmpeg state: seconds on a loaded machine) — an interrupted run now ends
  with ``os._exit`` right after flushing its output;
- a long native call that does not return to Python (one detector or model step on a big frame):
  Python runs signal handlers only between bytecodes. A watcher thread woken through
  :func:`signal.set_wakeup_fd` gives the main thread :data:`GRACE_S` to unwind; past that it removes
  the temp files itself and exits. What was in flight is dropped; finished outputs stay.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from bfrboost.safety import remove_live_temps

#: how long the main thread gets to unwind after a signal before the watcher ends the process
GRACE_S = 1.5
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
#: exit codes of a run stopped by a signal (128 + signal number, what :func:`bfrboost.cli.common.interruptible` exits with)
INTERRUPTED_CODES = frozenset(128 + int(sig) for sig in STOP_SIGNALS)


@contextmanager
def watching(enabled: bool = True) -> Iterator[None]:
    """Within the block, a watcher thread ends the process :data:`GRACE_S` after a stop signal unless
    the block has ended by then (main thread only; elsewhere, or not ``enabled``, nothing changes)."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    receive, send = socket.socketpair()
    send.setblocking(False)
    previous = signal.set_wakeup_fd(send.fileno(), warn_on_full_buffer=False)
    finished = threading.Event()
    threading.Thread(target=_watch, args=(receive, finished), name="bfrboost-stop", daemon=True).start()
    try:
        yield
    finally:
        finished.set()
        signal.set_wakeup_fd(previous)
        send.close()  # the watcher's recv returns b"": it ends


def _watch(receive: socket.socket, finished: threading.Event) -> None:
    with receive:
        while True:
            data = receive.recv(64)
            if not data:
                return
            signums = [n for n in data if n in STOP_SIGNALS]
            if signums:
                break
    if finished.wait(GRACE_S):
        return  # the command unwound in time
    remove_live_temps()
    name = signal.Signals(signums[0]).name
    os.write(2, f"bfrboost: interrupted by {name}: stopped the step in flight; re-run the same command to resume\n".encode())
    os._exit(128 + signums[0])


def exit_now(code: int) -> None:
    """End an interrupted run at once: output flushed, no interpreter teardown."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
