"""`bfrboost degrade`: the paper's synthetic degradation, reproducible per seed and per file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from bfrboost.cli import app
from bfrboost.cli import options as opt
from bfrboost.cli.common import err, fail, interruptible
from bfrboost.errors import BfrboostError
from bfrboost.options import DegradeConfig, DegradeRunOptions

RANGES, RUN = opt.defaults(DegradeConfig), opt.defaults(DegradeRunOptions)


def Range(kind: type, name: str) -> Any:  # noqa: N802  (an option type, named like one)
    """A LOW HIGH range option of DegradeConfig's field ``name``."""
    return opt.option(tuple[kind, kind], DegradeConfig, name)


@app.command("degrade")
def degrade_command(
    inputs: Annotated[list[str], typer.Argument(help="Images, folders or globs of high-quality faces.")],
    out: Annotated[Path, typer.Option("-o", "--output", help="Output folder (PNG, same file stems).")],
    seed: opt.option(int, DegradeRunOptions, "seed") = RUN.seed,
    blur_sigma: Range(float, "blur_sigma") = RANGES.blur_sigma,
    kernel_size: opt.option(int, DegradeConfig, "kernel_size") = RANGES.kernel_size,
    anisotropic_prob: opt.option(float, DegradeConfig, "anisotropic_prob") = RANGES.anisotropic_prob,
    scale: Range(float, "scale") = RANGES.scale,
    noise: Range(float, "noise") = RANGES.noise,
    jpeg_quality: Range(int, "jpeg_quality") = RANGES.jpeg_quality,
    skip_prob: opt.option(float, DegradeConfig, "skip_prob") = RANGES.skip_prob,
    shuffle_prob: opt.option(float, DegradeConfig, "shuffle_prob") = RANGES.shuffle_prob,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Look into subfolders.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs (default: skip them).")] = False,
    log: opt.option(bool, DegradeRunOptions, "log", "--log/--no-log") = RUN.log,
    max_pixels: opt.MaxPixels = None,
) -> None:
    """Degrade HQ faces: y = JPEG_q((x ⊛ k_σ)↓r + n_δ)↑r with random order/skips (bfrboost.train.degrade)."""
    from bfrboost.io.inputs import collect_inputs
    from bfrboost.io.read import DEFAULT_MAX_PIXELS
    from bfrboost.runners.degrade import degrade_files, merge_log
    from bfrboost.safety import one_line

    try:
        config = DegradeConfig(blur_sigma, kernel_size, anisotropic_prob, scale, noise, jpeg_quality, skip_prob, shuffle_prob)
    except BfrboostError as exc:
        raise fail(exc) from None
    paths, problems = collect_inputs(inputs, recursive)
    for problem in problems:
        err(problem)
    failed, skipped, records = len(problems), 0, []
    with (
        interruptible(total=len(paths)) as done,
        Progress(
            TextColumn("degrade"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not sys.stderr.isatty(),
        ) as progress,
    ):
        task = progress.add_task("degrade", total=len(paths))
        try:
            for report in degrade_files(paths, out, seed, config, overwrite, max_pixels or DEFAULT_MAX_PIXELS):
                if report.error:
                    err(report.error)
                    failed += 1
                skipped += report.skipped is not None
                if report.done:
                    records.append(report.extra["record"])
                progress.advance(task)
                done.finished += 1
        finally:  # also when interrupted: the records of the finished files join the earlier ones
            if log and records:
                try:
                    merge_log(out, records)
                except BfrboostError as exc:
                    err(str(exc))
                    failed += 1
    kept = f", {skipped} skipped (already there)" if skipped else ""
    sys.stdout.write(f"{len(records)} image(s) degraded into {one_line(out)}{kept}, {failed} failed (seed {seed})\n")
    if failed:
        raise typer.Exit(1)
