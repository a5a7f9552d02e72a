"""`bfrboost restore`: images, videos, folders, globs and stdin through :class:`bfrboost.Restorer`.

Images go to :class:`bfrboost.runners.files.FileRunner`, video clips (by extension) to
:class:`bfrboost.runners.video.VideoRunner`; one summary covers both."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from bfrboost.cli import app, common
from bfrboost.cli import options as opt
from bfrboost.cli.common import err as _err
from bfrboost.cli.common import fail as _fail
from bfrboost.cli.common import interruptible, write_stdout
from bfrboost.errors import BfrboostError, UsageError
from bfrboost.options import (
    VIDEO_FORMATS,
    DetectOptions,
    GuidanceOptions,
    OutputOptions,
    PasteOptions,
    RestoreOptions,
    RunnerOptions,
    VideoOptions,
)
from bfrboost.safety import one_line

if TYPE_CHECKING:
    from bfrboost.pipeline import Restorer
    from bfrboost.reports import FileReport
    from bfrboost.runners.files import Targets

_STDIN_EXAMPLE = "bfrboost restore - < photo.jpg > restored.png"


class ExtChoice(str, Enum):
    auto = "auto"
    png = "png"
    jpg = "jpg"
    webp = "webp"
    mp4 = "mp4"
    mkv = "mkv"
    mov = "mov"
    webm = "webm"
    avi = "avi"


_VIDEO_EXTS = tuple(VIDEO_FORMATS)


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the user gave parameter ``name`` (on the command line or from the environment), not its default."""
    source = ctx.get_parameter_source(name) if ctx is not None else None
    return source is not None and source.name != "DEFAULT"


def _flag(ctx: typer.Context, name: str) -> str:
    """The long flag of parameter ``name`` of the running command (``--guidance-scale``)."""
    return max(next(p for p in ctx.command.params if p.name == name).opts, key=len)


def _pgdiff(kind: Any, name: str, help: str, *flags: str, **settings: Any) -> Any:
    """Option of GuidanceOptions' field ``name`` whose help says it applies to ``--base pgdiff`` only."""
    return opt.option(kind, GuidanceOptions, name, *flags, help=f"--base pgdiff: {help}", **settings)


Ext = opt.option(
    ExtChoice,
    OutputOptions,
    "ext",
    help="Output format: png/jpg/webp for images (auto keeps the input's), mp4/mkv/mov/webm/avi for videos (auto: mp4).",
)
#: The options of ``--base pgdiff`` only: given without it they are a usage error.
_PGDIFF: dict[str, Any] = dict(
    guide=_pgdiff(
        str, "guide", "smooth-semantics restorer, rrdb (PGDiff's own) or a base name (gfpgan, codeformer, …); "
        "--weights/--fidelity/--knob apply to it."
    ),
    reference=(_pgdiff(
        list[Path] | None, "reference", "photo(s) of the same person, or one folder of references named like the inputs; "
        "guides each photo's largest face towards their ArcFace identity. Repeatable.", show_default=False
    ), None),
    prior=_pgdiff(Path | None, "prior", "diffusion prior checkpoint in the official IDDPM FFHQ-512 format (default: DifFace's)."),
    steps=_pgdiff(int, "steps", "denoising steps (respaced from 1000; upstream recommends >= 100)."),
    scale=(_pgdiff(
        float, "scale", "guidance scale s (0.05–0.1 usual; larger = closer to the guide).", "--guidance-scale", show_default="0.1"
    ), opt.GUIDANCE.scale),
    seed=_pgdiff(int, "seed", "seed of the diffusion noise."),
    ss_weight=_pgdiff(float, "ss_weight", "weight of the smooth-semantics property."),
    ref_weight=_pgdiff(
        float,
        "ref_weight",
        "weight of the identity property (default 5e3 with mse, 1e4 with cos: PGDiff's scale, docs/guided.md).",
        show_default=False,
    ),
    ref_loss=_pgdiff(str, "ref_loss", "identity distance, mse or cos."),
    repeats=_pgdiff(int, "repeats", "gradient steps N per timestep for t in (0.7T, T]."),
    tiny=_pgdiff(bool, "tiny", "demo with a small random prior and guide, no download (results are noise)."),
)
#: ``restore``'s options in ``--help`` order, each made from its field in bfrboost/options.py.
OPTIONS = opt.parameters(
    "outdir base refine refiner refiner_strength sd_model compile upscale face_upsample bg_upsampler bg_tile aligned "
    "only_center_face min_face face_index largest person person_model person_threshold blend paste color_match detector "
    "weights fidelity knobs batch_size save_faces save_cmp draw_boxes suffix ext quality device runtime providers threads "
    "max_pixels as_json overwrite recursive smooth crf preset start duration frames_per_batch detect_every "
    "guide reference prior steps scale seed ss_weight ref_weight ref_loss repeats tiny workers",
    OutputOptions, RestoreOptions, PasteOptions, DetectOptions, VideoOptions, RunnerOptions,
    ext=(Ext, ExtChoice(opt.OUTPUT.ext)), **_PGDIFF,
)


@app.command()
@opt.with_parameters(OPTIONS)
def restore(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Image or video files (.mp4 .mov .mkv .webm .avi), folders or globs; '-' reads one image from stdin and writes "
            "the result to stdout.",
            show_default=False,
        ),
    ],
    ctx: typer.Context = None,  # type: ignore[assignment]  # Typer passes it; a direct call has none
    **params: Any,
) -> None:
    """Restore every face in INPUT images and videos and paste them back."""
    from bfrboost.pipeline import Restorer
    from bfrboost.runners.files import restore_bytes

    start, as_json, ext, base, reference = (
        time.perf_counter(), params["as_json"], params["ext"], params["base"], params["reference"]
    )
    stdin_mode = inputs == ["-"]
    try:
        if "-" in inputs and not stdin_mode:
            raise UsageError("'-' (stdin) cannot be mixed with other inputs")
        if stdin_mode and as_json:
            raise UsageError("--json prints to stdout, which '-' already uses for the image; drop one of them")
        if stdin_mode and sys.stdin.isatty():  # reading would wait for the keyboard
            raise UsageError("'-' reads the image from stdin, which is a terminal; pipe an image in: " + _STDIN_EXAMPLE)
        if stdin_mode and sys.stdout.isatty():
            raise UsageError("'-' writes the restored image to stdout, which is a terminal; redirect it: " + _STDIN_EXAMPLE)
        given = [_flag(ctx, name) for name in _PGDIFF if _given(ctx, name)]
        if base != "pgdiff" and given:
            raise UsageError(f"{', '.join(given)} guide the diffusion prior: use them with --base pgdiff")
        knobs = opt.parse_knobs(params["knobs"] or [])
        runtime_options = opt.runtime_options(params["runtime"], params["providers"], params["threads"])
        video_ext = ext.value if ext.value in _VIDEO_EXTS else "mp4"
        video_options = VideoOptions(**opt.pick(VideoOptions, params, ext=video_ext, preset=params["preset"].value))
        options = OutputOptions(**opt.pick(OutputOptions, params, ext="auto" if ext.value in _VIDEO_EXTS else ext.value))
        parts = dict(
            detect=DetectOptions(**opt.pick(DetectOptions, params, person=tuple(str(p) for p in params["person"] or ()))),
            restore=RestoreOptions(**opt.pick(RestoreOptions, params, knobs=knobs, **runtime_options)),
            paste=PasteOptions(**opt.pick(PasteOptions, params)),
            guidance=GuidanceOptions(
                **opt.pick(
                    GuidanceOptions,
                    params,
                    task="restore",
                    reference=tuple(reference or ()),
                    batch_size=opt.GUIDANCE.batch_size,  # --batch-size is the base model's; the sampler keeps its own
                )
            )
            if base == "pgdiff"
            else None,
        )
    except BfrboostError as exc:
        raise _fail(exc) from None

    def make_restorer() -> Restorer:
        return Restorer.from_options(**parts)

    if stdin_mode:
        with interruptible():
            try:
                restorer = make_restorer()
                _notes(restorer, as_json)
                fmt = "png" if ext is ExtChoice.auto else ext.value
                data, _ = restore_bytes(
                    restorer, sys.stdin.buffer.read(), fmt=fmt, quality=params["quality"], max_pixels=params["max_pixels"]
                )
            except BfrboostError as exc:
                raise _fail(exc) from None
            write_stdout(data)
        return
    write_results(
        make_restorer,
        inputs,
        options,
        recursive=params["recursive"],
        as_json=as_json,
        start=start,
        video_options=video_options,
        workers=params["workers"],
        targets=_reference_targets(reference) if base == "pgdiff" else None,
    )


def _reference_targets(reference: list[Path] | None) -> Targets | None:
    """A folder of references named like the inputs: each input's reference, found by its name."""
    folders = [r for r in reference or () if Path(r).is_dir()]
    if not folders:
        return None
    from bfrboost.guidance.masks import mask_targets

    return mask_targets(None, folders[0])


def _notes(restorer: Restorer, as_json: bool) -> None:
    for note in restorer.notes:
        _err(f"note: {note}")
    if as_json and common.STDOUT_CLOSED:
        _err("note: stdout is closed; the --json lines are discarded")


def write_results(
    make_restorer: Callable[[], Restorer],
    inputs: list[str],
    options: OutputOptions,
    *,
    recursive: bool,
    as_json: bool,
    start: float,
    video_options: VideoOptions | None = None,
    workers: int = 0,
    targets: Targets | None = None,
) -> None:
    """:func:`bfrboost.runners.paths.restore_paths` for the terminal: progress bars, JSON lines, a
    summary and the exit code; interruptible (SIGINT/SIGTERM leave nothing half-written)."""
    from bfrboost.io.video import is_video
    from bfrboost.reports import summary
    from bfrboost.runners.paths import restore_paths

    reports: list[FileReport] = []
    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    with interruptible() as progress, Progress(*columns, console=console, disable=not console.is_terminal, transient=True) as bar:
        task = bar.add_task("restoring", total=None, rate="")
        clips = _ClipBars(bar)

        def started(restorer: Restorer, count: int) -> None:
            progress.total = count
            bar.update(task, total=count, completed=len(reports))
            _notes(restorer, as_json)
            face_restorer = restorer.face_restorer
            if face_restorer.reports_steps:  # guided restoration: a step-level bar across every face
                steps = bar.add_task("denoising", total=None, rate="")
                face_restorer.on_step = lambda done, total: bar.update(steps, completed=done, total=total)

        run = restore_paths(
            inputs,
            make_restorer,
            options,
            video_options,
            recursive=recursive,
            workers=workers,
            targets=targets,
            on_start=started,
            clip_progress=clips.update,
        )
        try:
            for report in run:
                reports.append(report)
                _emit(report, as_json)
                progress.finished += 1
                faces = sum(r.extra.get("face_count", len(r.faces)) for r in reports)
                bar.update(task, advance=1, description=f"restoring ({faces} faces)")
        except BfrboostError as exc:
            raise _fail(exc) from None
    noun = "file" if any(is_video(r.input) for r in reports) and video_options is not None else "image"
    sys.stderr.write(summary(reports, time.perf_counter() - start, noun=noun) + "\n")
    if any(r.error for r in reports):
        raise typer.Exit(1)


class _ClipBars:
    """One bar per clip: frames done of the expected count, frames/s and time left."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.clip: dict[str, Any] = {}

    def update(self, name: str, frames: int, expected: int | None) -> None:
        clip = self.clip
        if clip.get("name") != name:
            if "id" in clip:
                self.bar.remove_task(clip["id"])
            clip.update(name=name, since=time.perf_counter(), id=self.bar.add_task(Path(name).name, total=expected, rate=""))
        fps = frames / max(time.perf_counter() - clip["since"], 1e-6)
        self.bar.update(clip["id"], completed=frames, total=max(expected or 0, frames) or None, rate=f"{fps:.1f} frames/s")


def _emit(report: FileReport, as_json: bool) -> None:
    """The input's line on stderr (failed or skipped) and its JSON object on stdout."""
    from bfrboost.reports import reason

    if report.error:
        _err(report.error if report.error.startswith(one_line(report.input)) else f"{report.input}: {report.error}")
    elif report.skipped:
        _err(f"skipped {report.input}: {reason(report)}")
    for warning in report.extra.get("warnings", []):  # done, with something the user should know
        _err(f"warning: {warning}")
    if as_json:
        sys.stdout.write(json.dumps(report.to_json()) + "\n")
        sys.stdout.flush()
