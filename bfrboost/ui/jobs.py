"""The web app's own queue: one job runs at a time, first come first served, and every job can be
cancelled — while it waits, and while it runs (between two stages: frames, batches, faces).

Gradio's queue cannot do either: it estimates waits from past run times (a 3 s photo behind a long
clip was told 18 s and waited 164 s), and cancelling an event does not stop the worker thread that
runs it. So the page hands each Restore press to :class:`JobQueue`, shows what :meth:`JobQueue.wait`
reports about the jobs ahead (their kind and progress, never their file names), and cancels through
:meth:`JobQueue.cancel` (the Cancel button, or the tab's session ending). The restorer is wrapped in
:class:`Checked`, which raises :class:`Cancelled` at the next stage once a job is cancelled.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


class Cancelled(Exception):
    """The job was cancelled (Cancel button, closed or reloaded tab); nothing of it is kept."""


@dataclass(eq=False)
class Job:
    """One Restore press. ``kind``: ``photo`` or ``clip``; ``progress``: what it is doing now."""

    kind: str
    session: str = ""
    progress: str = "waiting"
    running: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)
    number: int = 0
    ended: float | None = None  # time.monotonic() when it stopped running (tests measure cancel latency with it)

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled

    def describe(self) -> str:
        return f"a {self.kind}, {self.progress}" if self.running else f"a {self.kind}, waiting"


class JobQueue:
    """First come, first served; one job at a time."""

    def __init__(self, poll_s: float = 0.25) -> None:
        self.poll_s = poll_s
        self._jobs: list[Job] = []
        self._cond = threading.Condition()
        self._numbers = itertools.count(1)
        self.last: Job | None = None  # the last job that ran (tests read its ``ended``)

    def submit(self, kind: str, session: str = "") -> Job:
        with self._cond:
            job = Job(kind=kind, session=session, number=next(self._numbers))
            self._jobs.append(job)
            return job

    def ahead(self, job: Job) -> list[Job]:
        with self._cond:
            return list(itertools.takewhile(lambda other: other is not job, self._jobs))

    def wait(self, job: Job) -> Iterator[str]:
        """Until it is ``job``'s turn: yields a line about the jobs ahead every ``poll_s`` (and when it
        changes). Raises :class:`Cancelled` if the job is cancelled while it waits."""
        said = None
        while True:
            job.check()
            ahead = self.ahead(job)
            if not ahead:
                with self._cond:
                    job.running, job.progress = True, "starting"
                    self.last = job
                return
            line = waiting_line(ahead)
            if line != said:
                said = line
                yield line
            with self._cond:
                self._cond.wait(self.poll_s)

    def done(self, job: Job) -> None:
        """Take ``job`` out of the queue (finished, failed or cancelled); the next one starts."""
        with self._cond:
            if job in self._jobs:
                self._jobs.remove(job)
            if job.running:
                job.ended = time.monotonic()
            job.running = False
            self._cond.notify_all()

    def cancel(self, session: str) -> int:
        """Cancel every job of ``session`` (waiting or running); how many there were."""
        with self._cond:
            jobs = [job for job in self._jobs if job.session == session]
            for job in jobs:
                job.cancelled.set()
            self._cond.notify_all()
            return len(jobs)

    def running(self) -> Job | None:
        with self._cond:
            return self._jobs[0] if self._jobs and self._jobs[0].running else None


def waiting_line(ahead: Sequence[Job]) -> str:
    """``waiting: 2 jobs ahead — a clip, restoring frames: 40 of 250; a photo, waiting``."""
    count = f"{len(ahead)} job{'s' if len(ahead) != 1 else ''} ahead"
    return f"waiting: {count} — " + "; ".join(job.describe() for job in ahead)


class Checked:
    """The restorer as the runners see it, checking ``job`` before every stage: a cancelled job stops
    at the next frame (prepare, finish) or batch (restore_faces). Everything else is the restorer's."""

    def __init__(self, restorer: Any, job: Job) -> None:
        self._restorer = restorer
        self._job = job

    def __getattr__(self, name: str) -> Any:
        return getattr(self._restorer, name)

    def prepare(self, *args: Any, **kwargs: Any) -> Any:
        self._job.check()
        return self._restorer.prepare(*args, **kwargs)

    def restore_faces(self, prepared: Sequence[Any]) -> None:
        self._job.check()
        self._restorer.restore_faces(prepared)

    def finish(self, prepared: Any) -> Any:
        self._job.check()
        return self._restorer.finish(prepared)

    def restore_batch(
        self,
        images: Sequence[Any],
        alphas: Sequence[Any] | None = None,
        targets: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[Any]:
        """The restorer's three stages, each checked (the restorer's own ``restore_batch`` runs them unchecked)."""
        alphas = list(alphas) if alphas is not None else [None] * len(images)
        targets = list(targets) if targets is not None else [None] * len(images)
        prepared = [self.prepare(image, alpha, extras) for image, alpha, extras in zip(images, alphas, targets, strict=True)]
        self.restore_faces(prepared)
        return [self.finish(item) for item in prepared]


__all__ = ["Cancelled", "Checked", "Job", "JobQueue", "waiting_line"]
