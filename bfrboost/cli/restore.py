"""`bfrboost restore`: images, folders, globs and stdin through :class:`bfrboost.Restorer`."""

from __future__ import annotations

import json
import sys
import time
from contextlib import closing, nullcontext
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress

from bfrboost.cli import app, common
from bfrboost.cli.common import err as _err
from bfrboost.cli.common import fail as _fail
from bfrboost.cli.common import interruptible
from bfrboost.errors import BfrboostError, UsageError
from bfrboost.safety import one_line

if TYPE_CHECKING:
    from bfrboost.reports import FileReport

_STDIN_EXAMPLE = "bfrboost restore - < photo.jpg > restored.png"


class ExtChoice(str, Enum):
    auto = "auto"
    png = "png"
    jpg = "jpg"
    webp = "webp"


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
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders or globs; '-' reads one image from stdin and writes the result to stdout.", show_default=False)],
    outdir: Annotated[Path, typer.Option("-o", "--outdir", help="Output folder (restored_imgs/, cropped_faces/, restored_faces/, cmp/).")] = Path("results"),
    base: Annotated[str, typer.Option("--base", help="Base restorer: auto, none, gfpgan, gfpgan-1.3, restoreformer, codeformer, gpen, vqfr, difface.")] = "auto",
    refine: Annotated[bool | None, typer.Option("--refine/--no-refine", help="Run the InfoBFR refiner after the base model (default: when --refiner is given).", show_default=False)] = None,
    refiner: Annotated[Path | None, typer.Option("--refiner", help="Trained InfoBFR refiner folder (save_pretrained layout).")] = None,
    refiner_strength: Annotated[float, typer.Option("--refiner-strength", min=0.0, max=1.0, help="Blend: 0 = base output, 1 = fully refined.")] = 1.0,
    sd_model: Annotated[Path | None, typer.Option("--sd-model", help="Local Stable Diffusion 2.1 diffusers folder (vae/, unet/) instead of the weights cache.")] = None,
    compile_refiner: Annotated[bool, typer.Option("--compile", help="torch.compile the refiner (worth it on CUDA for long batches; slow first batch).")] = False,
    upscale: Annotated[float, typer.Option("-s", "--upscale", help="Upscale factor of the whole image.")] = 2.0,
    bg_upsampler: Annotated[str, typer.Option("--bg-upsampler", help="Background upsampler: none (Lanczos resize) or realesrgan (Real-ESRGAN x2/x4plus).")] = "none",
    bg_tile: Annotated[int, typer.Option("--bg-tile", min=0, help="Real-ESRGAN tile size in pixels (0 = whole image at once).")] = 400,
    aligned: Annotated[bool, typer.Option("--aligned", help="Inputs are aligned 512×512 face crops: skip detection.")] = False,
    only_center_face: Annotated[bool, typer.Option("--only-center-face", help="Restore only the face nearest the image centre.")] = False,
    min_face: Annotated[int, typer.Option("--min-face", min=0, help="Ignore faces whose box is smaller than PX pixels.")] = 0,
    paste: Annotated[str, typer.Option("--paste", help="Paste-back: residual (adds restored − crop to the photo, keeps detail finer than the 512 crop) or direct (replaces pixels, like facexlib).")] = "residual",
    color_match: Annotated[bool, typer.Option("--color-match", help="Match each restored face's colour statistics to the original face.")] = False,
    detector: Annotated[str, typer.Option("--detector", help="Face detector: auto, dlib, retinaface_resnet50, retinaface_mobile0.25.")] = "auto",
    weights: Annotated[Path | None, typer.Option("--weights", help="Custom checkpoint for the base model (.pth tensors only, or .safetensors).")] = None,
    fidelity: Annotated[float | None, typer.Option("--fidelity", help="Fidelity of the base: CodeFormer w, VQFR fidelity_ratio, in [0, 1].")] = None,
    knob: Annotated[list[str] | None, typer.Option("--knob", help="Base-model knob NAME=VALUE (e.g. steps=50, seed=0); repeatable.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Faces per base-model batch (default by device).")] = None,
    save_faces: Annotated[bool, typer.Option("--save-faces", help="Also write cropped_faces/ and restored_faces/.")] = False,
    save_cmp: Annotated[bool, typer.Option("--save-cmp", help="Also write cmp/: each crop beside its restored face.")] = False,
    draw_boxes: Annotated[bool, typer.Option("--draw-boxes", help="Draw face boxes and landmarks on the output.")] = False,
    suffix: Annotated[str | None, typer.Option("--suffix", help="Suffix added to output names (NAME_SUFFIX.ext).")] = None,
    ext: Annotated[ExtChoice, typer.Option("--ext", help="Output format; auto keeps the input's.")] = ExtChoice.auto,
    quality: Annotated[int, typer.Option("--quality", min=1, max=100, help="JPEG/WebP quality.")] = 95,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    max_pixels: Annotated[int | None, typer.Option("--max-pixels", min=1, help="Refuse images larger than this many pixels (decompression-bomb guard).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per image on stdout (JSON lines).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs (default: keep them and skip).")] = False,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Look into sub-folders of folder inputs.")] = False,
    workers: Annotated[int, typer.Option("--workers", min=0, help="Overlap the stages: N processes decode and detect, N threads paste and encode, while the device restores (0 or 1: one stage at a time).")] = 0,
) -> None:
    """Restore every face in INPUT images and paste them back."""
    from bfrboost.io.images import collect_inputs
    from bfrboost.pipeline import Restorer
    from bfrboost.reports import problem_report, summary
    from bfrboost.runners.files import FileRunner, OutputOptions, restore_bytes
    from bfrboost.runners.overlap import OverlapRunner

    start = time.perf_counter()
    stdin_mode = inputs == ["-"]
    with interruptible() as progress:
        try:
            if "-" in inputs and not stdin_mode:
                raise UsageError("'-' (stdin) cannot be mixed with other inputs")
            if stdin_mode and as_json:
                raise UsageError("--json prints to stdout, which '-' already uses for the image; drop one of them")
            if stdin_mode and sys.stdin.isatty():  # reading would wait for the keyboard
                raise UsageError("'-' reads the image from stdin, which is a terminal; pipe an image in: " + _STDIN_EXAMPLE)
            if stdin_mode and sys.stdout.isatty():
                raise UsageError("'-' writes the restored image to stdout, which is a terminal; redirect it: " + _STDIN_EXAMPLE)
            knobs = _parse_knobs(knob or [])
            paths, problems = ([], []) if stdin_mode else collect_inputs(inputs, recursive=recursive)
            progress.total = len(paths) + len(problems)
            failed = [problem_report(problem) for problem in problems]
            progress.finished = len(failed)  # reported: nothing more to do for them
            for report in failed:
                _emit(report, as_json)
            if not stdin_mode and not paths:
                _err("no input images found" + ("" if problems else "; check the paths"))
                raise typer.Exit(1)
            restorer = Restorer(
                base, refine=refine, refiner=refiner, refiner_strength=refiner_strength, sd_model=sd_model, compile=compile_refiner,
                device=device, detector=detector, upscale=upscale, aligned=aligned,
                only_center_face=only_center_face, min_face=min_face, weights=weights,
                batch_size=batch_size, knobs=knobs, fidelity=fidelity, paste=paste, color_match=color_match, bg_upsampler=bg_upsampler, bg_tile=bg_tile,
            )
        except BfrboostError as exc:
            raise _fail(exc) from None
        for note in restorer.notes:
            _err(f"note: {note}")
        if as_json and common.STDOUT_CLOSED:
            _err("note: stdout is closed; the --json lines are discarded")

        if stdin_mode:
            fmt = "png" if ext is ExtChoice.auto else ext.value
            try:
                data, _ = restore_bytes(restorer, sys.stdin.buffer.read(), fmt=fmt, quality=quality, max_pixels=max_pixels)
            except BfrboostError as exc:
                raise _fail(exc) from None
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
            return

        options = OutputOptions(
            outdir=outdir, suffix=suffix, ext=ext.value, quality=quality, overwrite=overwrite,
            save_faces=save_faces, save_cmp=save_cmp, draw_boxes=draw_boxes, max_pixels=max_pixels,
        )
        reports: list[FileReport] = list(failed)
        console = Console(stderr=True)
        runner = OverlapRunner(restorer, options, workers=workers) if workers > 1 else FileRunner(restorer, options)
        with closing(runner) if isinstance(runner, OverlapRunner) else nullcontext(), \
                Progress(console=console, disable=not console.is_terminal, transient=True) as bar:
            task = bar.add_task("restoring", total=len(paths))
            for report in runner.run(paths):
                reports.append(report)
                _emit(report, as_json)
                progress.finished += 1
                faces = sum(len(r.faces) for r in reports)
                bar.update(task, advance=1, description=f"restoring ({faces} faces)")
        sys.stderr.write(summary(reports, time.perf_counter() - start) + "\n")
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
