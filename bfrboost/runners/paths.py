"""`restore_paths`: everything ``bfrboost restore`` does with its INPUTS, as one Python call.

Files, folders and globs are collected (one report per input that cannot be used), images go to the
file runner (overlapped with ``workers`` > 1) and, with ``video`` options, clips to the video runner;
reports come back in input order, images first, as each input is done.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, nullcontext
from pathlib import Path

from bfrboost.errors import InputError
from bfrboost.io.inputs import collect_inputs
from bfrboost.io.video import is_video
from bfrboost.options import OutputOptions, VideoOptions
from bfrboost.pipeline import Restorer
from bfrboost.reports import FileReport, problem_report
from bfrboost.runners.files import FileRunner, Targets
from bfrboost.runners.overlap import OverlapRunner
from bfrboost.runners.video import ProgressCallback, VideoRunner


def restore_paths(
    inputs: Sequence[str | Path],
    restorer: Restorer | Callable[[], Restorer],
    output: OutputOptions | None = None,
    video: VideoOptions | None = None,
    *,
    recursive: bool = False,
    workers: int = 0,
    targets: Targets | None = None,
    on_start: Callable[[Restorer, int], None] | None = None,
    clip_progress: ProgressCallback | None = None,
) -> Iterator[FileReport]:
    """Restore image files (and, with ``video``, clips) of ``inputs`` into ``output.outdir``; one report each.

    ``restorer``: a :class:`Restorer`, or a function making one (called once, after the inputs are
    found, so a typo in a path fails before any model loads). ``targets(path, rgb)``: per-input extras
    for the restorer (e.g. the guidance mask of each file). ``on_start(restorer, count)`` is called
    before the first input is restored; ``clip_progress`` follows each clip's frames. Raises
    :class:`InputError` after the problem reports when no input can be restored.
    """
    output = output or OutputOptions()
    paths, problems = collect_inputs([str(i) for i in inputs], recursive=recursive, videos=video is not None)
    yield from (problem_report(problem) for problem in problems)
    if not paths:
        raise InputError("no input images found" + ("" if problems else "; check the paths"))
    videos = [p for p in paths if is_video(p)] if video is not None else []
    images = [p for p in paths if p not in videos]
    if not isinstance(restorer, Restorer):
        restorer = restorer()
    video_runner = VideoRunner(restorer, video, progress=clip_progress) if videos else None  # refuses --aligned
    if on_start is not None:
        on_start(restorer, len(paths) + len(problems))
    if workers > 1:
        runner: FileRunner | OverlapRunner = OverlapRunner(restorer, output, workers=workers, targets=targets)
    else:
        runner = FileRunner(restorer, output, targets=targets)
    with closing(runner) if isinstance(runner, OverlapRunner) else nullcontext():
        if images:
            yield from runner.run(images)
    if video_runner is not None:
        yield from video_runner.run(videos)
