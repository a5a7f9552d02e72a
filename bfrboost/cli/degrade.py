"""`bfrboost degrade`: the paper's synthetic degradation, reproducible per seed and per file."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from bfrboost.cli import app
from bfrboost.cli.common import err, fail, interruptible
from bfrboost.errors import BfrboostError


@app.command("degrade")
def degrade_command(
    inputs: Annotated[list[str], typer.Argument(help="Images, folders or globs of high-quality faces.")],
    out: Annotated[Path, typer.Option("-o", "--output", help="Output folder (PNG, same file stems).")],
    seed: Annotated[int, typer.Option("--seed", help="Run seed; each file's seed is derived from it and the file name.")] = 0,
    blur_sigma: Annotated[tuple[float, float], typer.Option("--blur-sigma", help="Blur σ range LOW HIGH.")] = (0.1, 10.0),
    kernel_size: Annotated[int, typer.Option("--kernel-size", help="Blur kernel size (odd).")] = 41,
    anisotropic_prob: Annotated[float, typer.Option("--anisotropic-prob", help="Probability of an anisotropic kernel.")] = 0.5,
    scale: Annotated[tuple[float, float], typer.Option("--scale", help="Down-sampling factor range LOW HIGH.")] = (0.8, 8.0),
    noise: Annotated[tuple[float, float], typer.Option("--noise", help="Gaussian noise σ range LOW HIGH (0..255 scale).")] = (0.0, 20.0),
    jpeg_quality: Annotated[tuple[int, int], typer.Option("--jpeg-quality", help="JPEG quality range LOW HIGH.")] = (60, 100),
    skip_prob: Annotated[float, typer.Option("--skip-prob", help="Each operation is skipped with this probability.")] = 0.1,
    shuffle_prob: Annotated[float, typer.Option("--shuffle-prob", help="Probability of a random operation order.")] = 0.0,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Look into subfolders.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
    log: Annotated[bool, typer.Option("--log/--no-log", help="Write degrade.jsonl (parameters per file) into OUT.")] = True,
) -> None:
    """Degrade HQ faces: y = JPEG_q((x ⊛ k_σ)↓r + n_δ)↑r with random order/skips (bfrboost.train.degrade)."""
    from bfrboost.io.inputs import collect_inputs
    from bfrboost.io.read import read_image
    from bfrboost.io.write import write_image
    from bfrboost.safety import InputGuard, one_line, write_bytes
    from bfrboost.train.degrade import DegradeConfig, apply_degradation, file_seed, sample_params

    try:
        config = DegradeConfig(blur_sigma, kernel_size, anisotropic_prob, scale, noise, jpeg_quality, skip_prob, shuffle_prob)
    except BfrboostError as exc:
        raise fail(exc) from None
    paths, problems = collect_inputs(inputs, recursive)
    for problem in problems:
        err(problem)
    guard = InputGuard(paths)
    failed, records = len(problems), []
    resume = "re-run with --overwrite (each file's degradation is reproducible from --seed)"
    with interruptible(total=len(paths), resume=resume) as done, \
            Progress(TextColumn("degrade"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                     TimeRemainingColumn(), console=Console(stderr=True), disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task("degrade", total=len(paths))
        for path in paths:
            target = out / f"{path.stem}.png"
            try:
                guard.check(target)
                image = read_image(path)
                face_seed = file_seed(seed, path.name)
                params = sample_params(face_seed, config)
                write_image(target, apply_degradation(image.rgb, params, config.kernel_size), overwrite=overwrite)
                records.append({"file": path.name, "output": target.name, "seed": face_seed, **params.to_dict()})
            except BfrboostError as exc:
                err(str(exc))
                failed += 1
            progress.advance(task)
            done.finished += 1
        if log and records:
            text = "".join(json.dumps(r) + "\n" for r in records)
            try:
                write_bytes(out / "degrade.jsonl", text.encode(), overwrite=True)
            except BfrboostError as exc:
                err(str(exc))
                failed += 1
    sys.stdout.write(f"{len(records)} image(s) degraded into {one_line(out)}, {failed} failed (seed {seed})\n")
    if failed:
        raise typer.Exit(1)
