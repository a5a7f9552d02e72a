"""`bfrboost restore`: images, videos, folders, globs and stdin through :class:`bfrboost.Restorer`.

Images go to :class:`bfrboost.runners.files.FileRunner`, video clips (by extension) to
:class:`bfrboost.runners.video.VideoRunner`; one summary covers both."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from contextlib import closing, nullcontext
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
from bfrboost.cli.common import interruptible
from bfrboost.errors import BfrboostError, UsageError
from bfrboost.safety import one_line

if TYPE_CHECKING:
    from bfrboost.pipeline import Restorer
    from bfrboost.reports import FileReport
    from bfrboost.runners.files import OutputOptions
    from bfrboost.runners.video import VideoOptions

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


_VIDEO_EXTS = ("mp4", "mkv", "mov", "webm", "avi")


class RefLoss(str, Enum):
    mse = "mse"
    cos = "cos"


class Preset(str, Enum):
    ultrafast = "ultrafast"
    superfast = "superfast"
    veryfast = "veryfast"
    faster = "faster"
    fast = "fast"
    medium = "medium"
    slow = "slow"
    slower = "slower"
    veryslow = "veryslow"


def _parse_knobs(knob: list[str]) -> dict[str, Any]:
    knobs: dict[str, Any] = {}
    for item in knob:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--knob expects NAME=VALUE, got '{item}'")
        try:
            knobs[name] = json.loads(value)
        except json.JSONDecodeError:
            knobs[name] = value
    return knobs


@app.command()
def restore(
    inputs: Annotated[list[str], typer.Argument(help="Image or video files (.mp4 .mov .mkv .webm .avi), folders or globs; '-' reads one image from stdin and writes the result to stdout.", show_default=False)],
    outdir: Annotated[Path, typer.Option("-o", "--outdir", help="Output folder (restored_imgs/, restored_videos/, cropped_faces/, restored_faces/, cmp/).")] = Path("results"),
    base: Annotated[str, typer.Option("--base", help="Base restorer: auto, none, gfpgan, gfpgan-1.3, restoreformer, codeformer, gpen, vqfr, difface, or pgdiff (guided diffusion, see --guide).")] = "auto",
    refine: opt.Refine = None,
    refiner: Annotated[Path | None, typer.Option("--refiner", help="Trained InfoBFR refiner folder (save_pretrained layout).")] = None,
    refiner_strength: opt.RefinerStrength = 1.0,
    sd_model: Annotated[Path | None, typer.Option("--sd-model", help="Local Stable Diffusion 2.1 diffusers folder (vae/, unet/) instead of the weights cache.")] = None,
    compile_refiner: Annotated[bool, typer.Option("--compile", help="torch.compile the refiner (worth it on CUDA for long batches; slow first batch).")] = False,
    upscale: Annotated[float, typer.Option("-s", "--upscale", help="Upscale factor of the whole image or video (CodeFormer's rescaling factor: 1–4).")] = 2.0,
    face_upsample: Annotated[bool, typer.Option("--face-upsample", help="With -s > 1, also upsample the restored faces with the background upsampler (Real-ESRGAN) before pasting, as CodeFormer does.")] = False,
    bg_upsampler: opt.BgUpsampler = "none",
    bg_tile: Annotated[int, typer.Option("--bg-tile", min=0, help="Real-ESRGAN tile size in pixels (0 = whole image at once).")] = 400,
    aligned: opt.Aligned = False,
    only_center_face: opt.OnlyCenterFace = False,
    min_face: opt.MinFace = 0,
    paste: opt.Paste = "residual",
    color_match: opt.ColorMatch = False,
    detector: opt.Detector = "auto",
    weights: Annotated[Path | None, typer.Option("--weights", help="Custom checkpoint for the base model (.pth tensors only, or .safetensors).")] = None,
    fidelity: opt.Fidelity = None,
    knob: opt.Knob = None,
    batch_size: opt.BatchSize = None,
    save_faces: Annotated[bool, typer.Option("--save-faces", help="Also write cropped_faces/ and restored_faces/.")] = False,
    save_cmp: Annotated[bool, typer.Option("--save-cmp", help="Also write cmp/: each crop beside its restored face.")] = False,
    draw_boxes: Annotated[bool, typer.Option("--draw-boxes", help="Draw face boxes and landmarks on the output.")] = False,
    suffix: Annotated[str | None, typer.Option("--suffix", help="Suffix added to output names (NAME_SUFFIX.ext).")] = None,
    ext: Annotated[ExtChoice, typer.Option("--ext", help="Output format: png/jpg/webp for images (auto keeps the input's), mp4/mkv/mov/webm/avi for videos (auto: mp4).")] = ExtChoice.auto,
    quality: opt.Quality = 95,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    max_pixels: opt.MaxPixels = None,
    as_json: opt.AsJson = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs (default: keep them and skip).")] = False,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Look into sub-folders of folder inputs.")] = False,
    smooth: Annotated[bool, typer.Option("--smooth/--no-smooth", help="Video: smooth each tracked face's landmarks over time so the crops don't jitter.")] = True,
    crf: Annotated[int, typer.Option("--crf", min=0, max=51, help="Video quality (x264 CRF; NVENC cq): lower is better, 18 ≈ visually lossless.")] = 18,
    preset: Annotated[Preset, typer.Option("--preset", help="Video encoder speed/size trade-off (x264 names; mapped for NVENC and VP9).")] = Preset.medium,
    clip_start: Annotated[float | None, typer.Option("--start", min=0.0, help="Video: restore from this time on (seconds).")] = None,
    duration: Annotated[float | None, typer.Option("--duration", min=0.0, help="Video: restore this many seconds.")] = None,
    frames_per_batch: Annotated[int, typer.Option("--frames-per-batch", min=1, help="Video: frames whose faces go through the base model together.")] = 8,
    guide: Annotated[str, typer.Option("--guide", help="--base pgdiff: smooth-semantics restorer, rrdb (PGDiff's own) or a base name (gfpgan, codeformer, …); --weights/--fidelity/--knob apply to it.")] = "rrdb",
    reference: Annotated[list[Path] | None, typer.Option(
        "--reference",
        help="--base pgdiff: photo(s) of the same person, or one folder of references named like the inputs; "
        "guides each photo's largest face towards their ArcFace identity. Repeatable.",
    )] = None,
    prior: Annotated[Path | None, typer.Option("--prior", help="--base pgdiff: diffusion prior checkpoint in the official IDDPM FFHQ-512 format (default: DifFace's).")] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, max=1000, help="--base pgdiff: denoising steps (respaced from 1000; upstream recommends >= 100).")] = 1000,
    guidance_scale: Annotated[float, typer.Option("--guidance-scale", min=0.0, help="--base pgdiff: guidance scale s (0.05–0.1 usual; larger = closer to the guide).")] = 0.1,
    seed: Annotated[int, typer.Option("--seed", min=0, help="--base pgdiff: seed of the diffusion noise.")] = 1234,
    ss_weight: Annotated[float, typer.Option("--ss-weight", min=0.0, help="--base pgdiff: weight of the smooth-semantics property.")] = 1.0,
    ref_weight: Annotated[float | None, typer.Option(
        "--ref-weight", min=0.0, show_default=False,
        help="--base pgdiff: weight of the identity property (default 5e3 with mse, 1e4 with cos: PGDiff's scale, docs/guided.md).",
    )] = None,
    ref_loss: Annotated[RefLoss, typer.Option("--ref-loss", help="--base pgdiff: identity distance on unit ArcFace embeddings.")] = RefLoss.mse,
    tiny: Annotated[bool, typer.Option(
        "--tiny", help="--base pgdiff: demo with a small random prior and guide, no download (results are noise)."
    )] = False,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="--base pgdiff: gradient steps N per timestep for t in (0.7T, T].")] = 1,
    workers: Annotated[int, typer.Option("--workers", min=0, help="Overlap the stages: N processes decode and detect, N threads paste and encode, while the device restores (0 or 1: one stage at a time).")] = 0,
) -> None:
    """Restore every face in INPUT images and videos and paste them back."""
    from bfrboost.pipeline import Restorer
    from bfrboost.runners.files import OutputOptions, restore_bytes
    from bfrboost.runners.video import VideoOptions

    start = time.perf_counter()
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
        guided = {
            "--reference": bool(reference), "--prior": prior is not None, "--guide": guide != "rrdb", "--steps": steps != 1000,
            "--guidance-scale": guidance_scale != 0.1, "--seed": seed != 1234, "--ss-weight": ss_weight != 1.0,
            "--ref-weight": ref_weight is not None, "--ref-loss": ref_loss != RefLoss.mse, "--repeats": repeats != 1,
            "--tiny": tiny,
        }
        given = [name for name, changed in guided.items() if changed]
        if base != "pgdiff" and given:
            raise UsageError(f"{', '.join(given)} guide the diffusion prior: use them with --base pgdiff")
        knobs = _parse_knobs(knob or [])
        video_options = VideoOptions(
            outdir=outdir, suffix=suffix, ext=ext.value if ext.value in _VIDEO_EXTS else "mp4", overwrite=overwrite,
            crf=crf, preset=preset.value, start=clip_start, duration=duration, smooth=smooth, frames_per_batch=frames_per_batch,
        )
    except BfrboostError as exc:
        raise _fail(exc) from None
    shared = dict(
        refine=refine, refiner=refiner, refiner_strength=refiner_strength, sd_model=sd_model, compile=compile_refiner,
        device=device, detector=detector, upscale=upscale, aligned=aligned,
        only_center_face=only_center_face, min_face=min_face, weights=weights,
        batch_size=batch_size, knobs=knobs, fidelity=fidelity, paste=paste, color_match=color_match, bg_upsampler=bg_upsampler, bg_tile=bg_tile,
        face_upsample=face_upsample,
    )

    def make_restorer() -> Restorer:
        if base != "pgdiff":
            return Restorer(base, **shared)
        from bfrboost.guidance import GuidanceOptions, GuidedRestorer

        options = GuidanceOptions(
            scale=guidance_scale, steps=steps, seed=seed, repeats=repeats, ss_weight=ss_weight, ref_weight=ref_weight,
            ref_loss=ref_loss.value,
        )
        return GuidedRestorer(
            "restore", guide=guide, prior=prior, options=options, reference=reference or (), tiny=tiny, **shared
        )

    if stdin_mode:
        with interruptible():
            try:
                restorer = make_restorer()
                _notes(restorer, as_json)
                fmt = "png" if ext is ExtChoice.auto else ext.value
                data, _ = restore_bytes(restorer, sys.stdin.buffer.read(), fmt=fmt, quality=quality, max_pixels=max_pixels)
            except BfrboostError as exc:
                raise _fail(exc) from None
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        return
    options = OutputOptions(
        outdir=outdir, suffix=suffix, ext="auto" if ext.value in _VIDEO_EXTS else ext.value, quality=quality, overwrite=overwrite,
        save_faces=save_faces, save_cmp=save_cmp, draw_boxes=draw_boxes, max_pixels=max_pixels,
    )
    write_results(make_restorer, inputs, options, recursive=recursive, as_json=as_json, start=start, video_options=video_options, workers=workers)


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
) -> None:
    """What every image command does around its restorer: collect INPUTS (one report per bad one),
    build the restorer, restore into ``options.outdir`` with progress, JSON lines, a summary and
    the exit code; interruptible (SIGINT/SIGTERM leave nothing half-written). With
    ``video_options`` folders and globs also yield video clips, restored by the video runner;
    ``workers`` > 1 overlaps the image stages (:class:`~bfrboost.runners.overlap.OverlapRunner`)."""
    from bfrboost.io.inputs import collect_inputs
    from bfrboost.io.video import is_video
    from bfrboost.reports import problem_report, summary
    from bfrboost.runners.files import FileRunner
    from bfrboost.runners.overlap import OverlapRunner
    from bfrboost.runners.video import VideoRunner

    with interruptible() as progress:
        try:
            paths, problems = collect_inputs(inputs, recursive=recursive, videos=video_options is not None)
            progress.total = len(paths) + len(problems)
            failed = [problem_report(problem) for problem in problems]
            progress.finished = len(failed)  # reported: nothing more to do for them
            for report in failed:
                _emit(report, as_json)
            if not paths:
                _err("no input images found" + ("" if problems else "; check the paths"))
                raise typer.Exit(1)
            videos = [p for p in paths if is_video(p)] if video_options is not None else []
            images = [p for p in paths if p not in videos]
            restorer = make_restorer()
            video_runner = VideoRunner(restorer, video_options) if videos else None  # refuses --aligned
        except BfrboostError as exc:
            raise _fail(exc) from None
        _notes(restorer, as_json)
        reports: list[FileReport] = list(failed)
        console = Console(stderr=True)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"), TimeRemainingColumn())
        runner = OverlapRunner(restorer, options, workers=workers) if workers > 1 else FileRunner(restorer, options)
        with closing(runner) if isinstance(runner, OverlapRunner) else nullcontext(), \
                Progress(*columns, console=console, disable=not console.is_terminal, transient=True) as bar:
            task = bar.add_task("restoring", total=len(paths), rate="")
            if hasattr(restorer, "on_step"):  # guided restoration: a step-level bar across every face
                steps = bar.add_task("denoising", total=None, rate="")
                restorer.on_step = lambda done, total: bar.update(steps, completed=done, total=total)
            clip: dict[str, Any] = {}

            def clip_progress(name: str, frames: int, expected: int | None) -> None:
                """One bar per clip: frames done of the expected count, frames/s and time left."""
                if clip.get("name") != name:
                    if "id" in clip:
                        bar.remove_task(clip["id"])
                    clip.update(name=name, since=time.perf_counter(), id=bar.add_task(Path(name).name, total=expected, rate=""))
                fps = frames / max(time.perf_counter() - clip["since"], 1e-6)
                bar.update(clip["id"], completed=frames, total=max(expected or 0, frames) or None, rate=f"{fps:.1f} frames/s")

            runs = [runner.run(images)] if images else []
            if video_runner is not None:
                video_runner.progress = clip_progress
                runs.append(video_runner.run(videos))
            for run in runs:
                for report in run:
                    reports.append(report)
                    _emit(report, as_json)
                    progress.finished += 1
                    faces = sum(r.extra.get("face_count", len(r.faces)) for r in reports)
                    bar.update(task, advance=1, description=f"restoring ({faces} faces)")
        noun = "file" if videos else "image"
        sys.stderr.write(summary(reports, time.perf_counter() - start, noun=noun) + "\n")
        if any(r.error for r in reports):
            raise typer.Exit(1)


def _emit(report: FileReport, as_json: bool) -> None:
    """The input's line on stderr (failed or skipped) and its JSON object on stdout."""
    from bfrboost.reports import reason

    if report.error:
        _err(report.error if report.error.startswith(one_line(report.input)) else f"{report.input}: {report.error}")
    elif report.skipped:
        _err(f"skipped {report.input}: {reason(report)}")
    if as_json:
        sys.stdout.write(json.dumps(report.to_json()) + "\n")
        sys.stdout.flush()
