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
Guide = _pgdiff(
    str, "guide", "smooth-semantics restorer, rrdb (PGDiff's own) or a base name (gfpgan, codeformer, …); "
    "--weights/--fidelity/--knob apply to it."
)
Reference = _pgdiff(
    list[Path] | None, "reference", "photo(s) of the same person, or one folder of references named like the inputs; "
    "guides each photo's largest face towards their ArcFace identity. Repeatable.", show_default=False
)
Prior = _pgdiff(Path | None, "prior", "diffusion prior checkpoint in the official IDDPM FFHQ-512 format (default: DifFace's).")
Steps = _pgdiff(int, "steps", "denoising steps (respaced from 1000; upstream recommends >= 100).")
GuidanceScale = _pgdiff(
    float, "scale", "guidance scale s (0.05–0.1 usual; larger = closer to the guide).", "--guidance-scale", show_default="0.1"
)
Seed = _pgdiff(int, "seed", "seed of the diffusion noise.")
SsWeight = _pgdiff(float, "ss_weight", "weight of the smooth-semantics property.")
RefWeight = _pgdiff(
    float, "ref_weight", "weight of the identity property (default 5e3 with mse, 1e4 with cos: PGDiff's scale, docs/guided.md).",
    show_default=False,
)
RefLoss = _pgdiff(str, "ref_loss", "identity distance, mse or cos.")
Repeats = _pgdiff(int, "repeats", "gradient steps N per timestep for t in (0.7T, T].")
Tiny = _pgdiff(bool, "tiny", "demo with a small random prior and guide, no download (results are noise).")
#: The parameters above: given without --base pgdiff they are a usage error.
_GUIDED = (
    "reference", "prior", "guide", "steps", "guidance_scale", "seed", "ss_weight", "ref_weight", "ref_loss", "repeats", "tiny"
)


@app.command()
def restore(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Image or video files (.mp4 .mov .mkv .webm .avi), folders or globs; '-' reads one image from stdin and writes "
            "the result to stdout.",
            show_default=False,
        ),
    ],
    outdir: opt.Outdir = opt.OUTPUT.outdir,
    base: opt.Base = opt.RESTORE.base,
    refine: opt.Refine = opt.RESTORE.refine,
    refiner: opt.Refiner = opt.RESTORE.refiner,
    refiner_strength: opt.RefinerStrength = opt.RESTORE.refiner_strength,
    sd_model: opt.SdModel = opt.RESTORE.sd_model,
    compile_refiner: opt.Compile = opt.RESTORE.compile,
    upscale: opt.Upscale = opt.PASTE.upscale,
    face_upsample: opt.FaceUpsample = opt.PASTE.face_upsample,
    bg_upsampler: opt.BgUpsampler = opt.PASTE.bg_upsampler,
    bg_tile: opt.BgTile = opt.PASTE.bg_tile,
    aligned: opt.Aligned = opt.DETECT.aligned,
    only_center_face: opt.OnlyCenterFace = opt.DETECT.only_center_face,
    min_face: opt.MinFace = opt.DETECT.min_face,
    face_index: opt.FaceIndex = opt.DETECT.face_index,
    largest: opt.Largest = opt.DETECT.largest,
    person: opt.Person = None,
    person_model: opt.PersonModel = opt.DETECT.person_model,
    person_threshold: opt.PersonThreshold = opt.DETECT.person_threshold,
    blend: opt.Blend = opt.PASTE.blend,
    paste: opt.Paste = opt.PASTE.paste,
    color_match: opt.ColorMatch = opt.PASTE.color_match,
    detector: opt.Detector = opt.DETECT.detector,
    weights: opt.Weights = opt.RESTORE.weights,
    fidelity: opt.Fidelity = opt.RESTORE.fidelity,
    knob: opt.Knob = None,
    batch_size: opt.BatchSize = opt.RESTORE.batch_size,
    save_faces: opt.SaveFaces = opt.OUTPUT.save_faces,
    save_cmp: opt.SaveCmp = opt.OUTPUT.save_cmp,
    draw_boxes: opt.DrawBoxes = opt.OUTPUT.draw_boxes,
    suffix: opt.Suffix = opt.OUTPUT.suffix,
    ext: Ext = ExtChoice(opt.OUTPUT.ext),
    quality: opt.Quality = opt.OUTPUT.quality,
    device: opt.Device = opt.RESTORE.device,
    runtime: opt.Runtime = opt.RESTORE.runtime,
    providers: opt.Providers = opt.RESTORE.providers,
    threads: opt.Threads = opt.RESTORE.threads,
    max_pixels: opt.MaxPixels = opt.OUTPUT.max_pixels,
    as_json: opt.AsJson = False,
    overwrite: opt.Overwrite = opt.OUTPUT.overwrite,
    recursive: opt.Recursive = False,
    smooth: opt.Smooth = opt.VIDEO.smooth,
    crf: opt.Crf = opt.VIDEO.crf,
    preset: opt.VideoPreset = opt.Preset(opt.VIDEO.preset),
    clip_start: opt.Start = opt.VIDEO.start,
    duration: opt.Duration = opt.VIDEO.duration,
    frames_per_batch: opt.FramesPerBatch = opt.VIDEO.frames_per_batch,
    detect_every: opt.DetectEvery = opt.VIDEO.detect_every,
    guide: Guide = opt.GUIDANCE.guide,
    reference: Reference = None,
    prior: Prior = opt.GUIDANCE.prior,
    steps: Steps = opt.GUIDANCE.steps,
    guidance_scale: GuidanceScale = opt.GUIDANCE.scale,
    seed: Seed = opt.GUIDANCE.seed,
    ss_weight: SsWeight = opt.GUIDANCE.ss_weight,
    ref_weight: RefWeight = opt.GUIDANCE.ref_weight,
    ref_loss: RefLoss = opt.GUIDANCE.ref_loss,
    repeats: Repeats = opt.GUIDANCE.repeats,
    tiny: Tiny = opt.GUIDANCE.tiny,
    workers: opt.Workers = opt.RUNNER.workers,
    ctx: typer.Context = None,  # type: ignore[assignment]  # Typer passes it; a direct call has none
) -> None:
    """Restore every face in INPUT images and videos and paste them back."""
    from bfrboost.pipeline import Restorer
    from bfrboost.runners.files import restore_bytes

    start, params = time.perf_counter(), dict(locals())  # the options by name: each options object takes its fields
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
        given = [_flag(ctx, name) for name in _GUIDED if _given(ctx, name)]
        if base != "pgdiff" and given:
            raise UsageError(f"{', '.join(given)} guide the diffusion prior: use them with --base pgdiff")
        knobs, runtime_options = opt.parse_knobs(knob or []), opt.runtime_options(runtime, providers, threads)
        video_ext = ext.value if ext.value in _VIDEO_EXTS else "mp4"
        video_options = VideoOptions(**opt.pick(VideoOptions, params, ext=video_ext, preset=preset.value, start=clip_start))
        options = OutputOptions(**opt.pick(OutputOptions, params, ext="auto" if ext.value in _VIDEO_EXTS else ext.value))
        parts = dict(
            detect=DetectOptions(**opt.pick(DetectOptions, params, person=tuple(str(p) for p in person or ()))),
            restore=RestoreOptions(
                **opt.pick(RestoreOptions, params, knobs=knobs, compile=compile_refiner, **runtime_options)
            ),
            paste=PasteOptions(**opt.pick(PasteOptions, params)),
            guidance=GuidanceOptions(
                **opt.pick(
                    GuidanceOptions,
                    params,
                    task="restore",
                    scale=guidance_scale,
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
                data, _ = restore_bytes(restorer, sys.stdin.buffer.read(), fmt=fmt, quality=quality, max_pixels=max_pixels)
            except BfrboostError as exc:
                raise _fail(exc) from None
            write_stdout(data)
        return
    write_results(
        make_restorer,
        inputs,
        options,
        recursive=recursive,
        as_json=as_json,
        start=start,
        video_options=video_options,
        workers=workers,
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
