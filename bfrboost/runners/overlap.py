"""Overlapped image files: decoding and detection of the next images, pasting and encoding of the
previous ones, while the device restores the current batch.

Three stages joined by bounded queues:

1. **prepare** (``workers`` threads, or forked processes): read + decode + detect + align one image
   (:meth:`FileRunner.decoded` and :meth:`Restorer.prepare`). dlib releases the GIL while it
   detects (measured: two threads, each with its own models, run 1.99× one), so threads scale
   with no copying; ``mode="process"`` is there for detectors that hold the GIL.
2. **restore** (the calling thread): base model + refiner over the faces of up to
   ``images_per_batch`` images at once (:meth:`Restorer.restore_faces`).
3. **finish** (``workers`` threads): paste back, encode, write (:meth:`Restorer.finish`,
   :meth:`FileRunner.deliver`); OpenCV, zlib and torch release the GIL there.

The stage threads already keep the cores busy, so while a run lasts OpenCV's own pool gets only the
cores left over per stage thread (:func:`opencv_threads`; 1 on a 2-core machine with 2 workers):
its parallel resizes and warps, which speed up the sequential runner, only added contention here
(second photo set, in-process: 10.6 → 9.3 s, 19.2 → 16.9 CPU s; the same bytes out).

Images are grouped into batches exactly as :class:`~bfrboost.runners.files.FileRunner` groups them
(a failed or skipped file closes the batch), so outputs are byte-identical and reports come in
input order. At most ``queue_size`` images are prepared at once and ``2 × queue_size`` planned ahead
(prepared ones among them wait for their turn), which bounds memory.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from bfrboost.errors import UsageError
from bfrboost.io.read import LoadedImage
from bfrboost.options import OutputOptions
from bfrboost.pipeline import Prepared, Restorer
from bfrboost.reports import FileReport
from bfrboost.runners.files import FileRunner, Targets
from bfrboost.runners.outputs import Claims, OutputPlan

MODES = ("auto", "process", "thread")

_Job = tuple[FileReport, "LoadedImage | None", "Prepared | None"]
#: The runner a forked prepare process works for (inherited through ``fork``, never pickled).
_WORKER_RUNNER: OverlapRunner | None = None


def _init_worker(runner: OverlapRunner) -> None:
    """Each prepare process runs one stage on one core: no intra-op thread pools of its own."""
    global _WORKER_RUNNER
    _WORKER_RUNNER = runner
    import torch

    # (cv2.setNumThreads hangs in a child forked after OpenCV's pool ran; its pool is rebuilt lazily)
    torch.set_num_threads(1)


def _prepare_in_worker(report: FileReport, path: Path) -> _Job:
    assert _WORKER_RUNNER is not None
    return _WORKER_RUNNER._prepare(report, path)


def _noop() -> int:
    return os.getpid()


class OverlapRunner:
    """:class:`FileRunner`'s public stages, overlapped (same outputs, same reports, same order).

    ``workers``: prepare threads (or processes) and finish threads, each. ``mode``: ``thread``
    (``auto``), or ``process`` (forked, Linux only; the detector must run on the CPU: CUDA does
    not survive ``fork``). ``queue_size`` (default ``2 × workers``) images may be in each stage at once.
    Use it as a context manager, or call :meth:`close`, to stop the workers.

    Within a window of ``2 × queue_size`` planned inputs the largest files are prepared first, and
    within a batch the largest images are pasted and encoded first (longest-processing-time first):
    one big photo at the end of a folder would otherwise run alone after the rest. Reports still
    come out in input order.
    """

    def __init__(
        self,
        restorer: Restorer,
        options: OutputOptions,
        workers: int = 2,
        images_per_batch: int = 4,
        mode: str = "auto",
        queue_size: int | None = None,
        targets: Targets | None = None,
    ) -> None:
        self.files = FileRunner(restorer, options, images_per_batch, targets)  # its public stages, run overlapped
        self.restorer, self.options, self.images_per_batch = restorer, options, images_per_batch
        if workers < 1:
            raise UsageError(f"workers must be >= 1, got {workers}")
        if mode not in MODES:
            raise UsageError(f"unknown worker mode '{mode}'; use {', '.join(MODES)}")
        self.workers = workers
        self.mode = self._resolve_mode(mode)
        self.queue_size = queue_size or 2 * workers
        self._prepare_pool: Executor | None = None

    def _resolve_mode(self, mode: str) -> str:
        if mode != "process":
            return "thread"
        if not (sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()):
            raise UsageError('worker processes need fork (Linux); use mode="thread"')
        if self.restorer.device.type == "cuda":
            raise UsageError('worker processes cannot share the CUDA device (it does not survive fork); use mode="thread"')
        return "process"

    # ---- pools --------------------------------------------------------------------------------

    def _prepare_executor(self) -> Executor:
        """The prepare pool, started once and kept across :meth:`run` calls until :meth:`close`."""
        if self._prepare_pool is None:
            if self.mode == "thread":
                self._prepare_pool = ThreadPoolExecutor(self.workers, thread_name_prefix="bfrboost-prepare")
            else:
                # Models load before the fork so every process shares them instead of loading its own.
                self.restorer.prepare(np.zeros((64, 64, 3), np.uint8))
                pool = ProcessPoolExecutor(
                    self.workers, mp_context=multiprocessing.get_context("fork"), initializer=_init_worker, initargs=(self,)
                )
                # fork every process now, before this run starts threads that could hold locks
                for future in [pool.submit(_noop) for _ in range(self.workers)]:
                    future.result()
                self._prepare_pool = pool
        return self._prepare_pool

    def close(self) -> None:
        """Stop the prepare processes (threads stop by themselves)."""
        if self._prepare_pool is not None:
            self._prepare_pool.shutdown(wait=True, cancel_futures=True)
            self._prepare_pool = None

    def __enter__(self) -> OverlapRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- stages -------------------------------------------------------------------------------

    def _prepare(self, report: FileReport, path: Path) -> _Job:
        """Stage 1: decode + detect + align (in a worker); a bad file comes back as ``error``."""
        decoded = self.files.decoded(report, path)
        if decoded is None:
            return report, None, None
        loaded, targets = decoded
        return report, loaded, self.restorer.prepare(loaded.rgb, loaded.alpha, targets)

    def _finish(
        self, report: FileReport, loaded: LoadedImage, prepared: Prepared, plan: OutputPlan, claims: Claims
    ) -> FileReport:
        """Stage 3: paste back, encode and write (in a worker thread)."""
        return self.files.deliver(report, loaded, plan, self.restorer.finish(prepared), claims)

    def run(self, inputs: Sequence[Path]) -> Iterator[FileReport]:
        """One report per input, in input order, as each is done (see the class docstring)."""
        inputs = list(inputs)
        claims = self.files.start(inputs)
        prepare_pool = self._prepare_executor()
        with ExitStack() as stack:
            stack.enter_context(opencv_threads(2 * self.workers))
            finish_pool = ThreadPoolExecutor(self.workers, thread_name_prefix="bfrboost-finish")
            stack.callback(finish_pool.shutdown, wait=True, cancel_futures=True)
            flow = _Flow(self, inputs, claims, prepare_pool, finish_pool)
            stack.callback(flow.cancel)
            yield from flow.reports()

    def _submit_target(self):  # noqa: ANN202 - a bound method for threads, a module function for processes
        return self._prepare if self.mode == "thread" else _prepare_in_worker


@dataclass
class _Planned:
    """An input whose outputs are planned (``plan`` None: failed or skipped), and its prepare job once submitted."""

    report: FileReport
    plan: OutputPlan | None
    path: Path
    cost: int
    future: Future[_Job] | None = None


class _Flow:
    """One :meth:`OverlapRunner.run`: inputs planned ahead, prepared images waiting for the device,
    and the reports (or their finish jobs) in input order."""

    def __init__(self, runner: OverlapRunner, inputs: list[Path], claims: Claims, prepare: Executor, finish: Executor) -> None:
        self.runner, self.claims, self.prepare_pool, self.finish_pool = runner, claims, prepare, finish
        self.todo = iter(inputs)
        self.ahead: deque[_Planned] = deque()  # planned inputs, in input order
        self.pending: list[tuple[FileReport, LoadedImage, Prepared, OutputPlan]] = []  # the next device batch
        self.out: deque[FileReport | Future[FileReport]] = deque()  # delivered or being finished, in order
        self.window = 2 * runner.queue_size

    def reports(self) -> Iterator[FileReport]:
        self.fill()
        while self.ahead:
            yield from self.step()
        yield from self.flush()
        while self.out:
            yield _result(self.out.popleft())

    def submit(self, entry: _Planned) -> None:
        entry.future = self.prepare_pool.submit(self.runner._submit_target(), entry.report, entry.path)

    def fill(self) -> None:
        """Plan inputs up to the window; start the costliest planned ones while fewer than ``queue_size`` run.

        Prepared images waiting for their turn do not count as running: behind one slow image (a group
        photo) the prepare threads go on with the rest of the window instead of standing idle.
        """
        while len(self.ahead) < self.window:
            path = next(self.todo, None)
            if path is None:
                break
            report, plan = self.runner.files.planned(path, self.claims)
            self.ahead.append(_Planned(report, plan, path, _cost(path)))
        waiting = sorted((e for e in self.ahead if e.plan is not None and e.future is None), key=lambda e: -e.cost)
        in_flight = sum(e.future is not None and not e.future.done() for e in self.ahead)
        for entry in waiting[: max(self.runner.queue_size - in_flight, 0)]:
            self.submit(entry)

    def prepared(self, future: Future[_Job]) -> _Job:
        """``future``'s result; while it runs, each other prepare job that ends lets :meth:`fill` start the next."""
        while not future.done():
            others = [e.future for e in self.ahead if e.future is not None and not e.future.done()]
            wait([future, *others], return_when=FIRST_COMPLETED)
            self.fill()
        return future.result()

    def step(self) -> Iterator[FileReport]:
        """Take the first planned input: into the device batch when it decoded, else its report in its place."""
        entry = self.ahead[0]
        if entry.plan is not None and entry.future is None:  # its turn came before a free slot did
            self.submit(entry)
        self.ahead.popleft()
        report = entry.report
        if entry.future is not None:
            report, loaded, prepared = self.prepared(entry.future)
            self.fill()
            if loaded is not None:
                self.pending.append((report, loaded, prepared, entry.plan))
                if len(self.pending) >= self.runner.images_per_batch:
                    yield from self.flush()
                yield from _ready(self.out)
                return
        self.fill()
        yield from self.flush()
        self.out.append(report)
        yield from _ready(self.out)

    def flush(self) -> Iterator[FileReport]:
        """Restore the pending batch on the device, hand its images to the finish threads (largest first),
        wait while more than ``queue_size`` images are being finished, and yield the reports that are ready."""
        pending = self.pending
        if pending:
            self.runner.restorer.restore_faces([prepared for _, _, prepared, _ in pending])
            finishing: list[Future[FileReport] | None] = [None] * len(pending)
            for i in sorted(range(len(pending)), key=lambda i: -pending[i][2].image.size):  # largest first
                finishing[i] = self.finish_pool.submit(self.runner._finish, *pending[i], self.claims)
            self.out.extend(finishing)
            self.pending = []
        # Wait for *any* image to finish, not the oldest: one slow paste (a group photo) must not keep this
        # thread from planning and preparing the next inputs. Reports still leave in input order; at most
        # 4 × queue_size wait behind a slow one (each holds its faces).
        limit = self.runner.queue_size
        while True:
            yield from _ready(self.out)
            futures = [item for item in self.out if isinstance(item, Future)]
            running = [future for future in futures if not future.done()]
            if len(running) <= limit and len(futures) <= 4 * limit:
                return
            wait(running, return_when=FIRST_COMPLETED)

    def cancel(self) -> None:
        """A run left early (error, Ctrl-C, consumer stopped): drop the images not started yet."""
        for entry in self.ahead:
            if entry.future is not None:
                entry.future.cancel()


class _OpenCVThreads:
    """OpenCV's thread count before the first of the runs now limiting it, and how many are running."""

    lock = threading.Lock()
    saved = 0
    running = 0


@contextmanager
def opencv_threads(stage_threads: int) -> Iterator[int]:
    """OpenCV's pool limited, for the block, to the cores left to each of ``stage_threads`` busy threads
    (at least 1, never more than it had). Runs may overlap: the count from before the first comes back
    when the last one ends. Yields the count in effect."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    state = _OpenCVThreads
    with state.lock:
        if state.running == 0:
            state.saved = cv2.getNumThreads()
        state.running += 1
        _set_opencv_threads(max(1, min(cv2.getNumThreads(), cores // max(stage_threads, 1))))
        count = cv2.getNumThreads()
    try:
        yield count
    finally:
        with state.lock:
            state.running -= 1
            if state.running == 0:
                _set_opencv_threads(state.saved)


def _set_opencv_threads(count: int) -> None:
    """Only a real change: resizing the pool while another run's threads use it is best avoided."""
    if cv2.getNumThreads() != count:
        cv2.setNumThreads(count)


def _cost(path: Path) -> int:
    """What preparing ``path`` costs, roughly: its size in bytes (0 when it cannot be read)."""
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _result(item: FileReport | Future[FileReport]) -> FileReport:
    return item.result() if isinstance(item, Future) else item


def _ready(out: deque[FileReport | Future[FileReport]]) -> Iterator[FileReport]:
    """Reports whose turn has come and that are complete, without waiting."""
    while out and (not isinstance(out[0], Future) or out[0].done()):
        yield _result(out.popleft())
