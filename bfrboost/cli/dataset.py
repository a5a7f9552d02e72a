"""`bfrboost restore-dataset`: a folder, list file or object-storage URI through Ray Data
(:func:`bfrboost.runners.dataset.cluster.restore_dataset`)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from bfrboost.cli import app
from bfrboost.cli import options as opt
from bfrboost.cli.common import err, fail, interruptible
from bfrboost.cli.restore import ExtChoice, _parse_knobs
from bfrboost.errors import BfrboostError


@app.command("restore-dataset")
def restore_dataset(
    src: Annotated[str, typer.Argument(help="Folder (searched recursively), text file with one path or URI per line, or a URI such as s3://bucket/photos.", show_default=False)],
    dst: Annotated[str, typer.Argument(help="Output folder or URI: same relative paths as SRC, plus manifest.parquet.", show_default=False)],
    ray_address: Annotated[str | None, typer.Option("--ray", help="Ray cluster: auto (the one this machine belongs to) or ray://HOST:10001; default: start a local Ray.")] = None,
    base: Annotated[str, typer.Option("--base", help="Base restorer, as for `restore`.")] = "auto",
    refine: opt.Refine = None,
    refiner: Annotated[Path | None, typer.Option("--refiner", help="Trained InfoBFR refiner folder; must exist on every worker.")] = None,
    refiner_strength: opt.RefinerStrength = 1.0,
    sd_model: Annotated[Path | None, typer.Option("--sd-model", help="Local Stable Diffusion 2.1 diffusers folder on every worker.")] = None,
    upscale: Annotated[float, typer.Option("-s", "--upscale", help="Upscale factor of the whole image.")] = 2.0,
    bg_upsampler: opt.BgUpsampler = "none",
    aligned: opt.Aligned = False,
    only_center_face: opt.OnlyCenterFace = False,
    min_face: opt.MinFace = 0,
    paste: opt.Paste = "residual",
    color_match: opt.ColorMatch = False,
    detector: opt.Detector = "auto",
    weights: Annotated[Path | None, typer.Option("--weights", help="Custom base checkpoint; must exist on every worker.")] = None,
    fidelity: opt.Fidelity = None,
    knob: opt.Knob = None,
    batch_size: opt.BatchSize = None,
    images_per_batch: Annotated[int, typer.Option("--images-per-batch", min=1, help="Images whose faces go to a device actor together.")] = 4,
    gpus: Annotated[int | None, typer.Option("--gpus", min=0, help="Device actors, one GPU each (default: every GPU of the cluster; 0: one CPU actor).")] = None,
    ext: Annotated[ExtChoice, typer.Option("--ext", help="Output format; auto keeps the input's.")] = ExtChoice.auto,
    quality: opt.Quality = 95,
    max_pixels: opt.MaxPixels = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo images whose output exists (default: skip them, so a killed job resumes).")] = False,
    as_json: opt.AsJson = False,
) -> None:
    """Restore every image of SRC into DST on Ray Data (local Ray, or a cluster with --ray)."""
    from bfrboost.reports import summary
    from bfrboost.runners.dataset.cluster import restore_dataset as run

    start = time.perf_counter()
    with interruptible(resume="re-run the same command: finished outputs are skipped"):
        try:
            reports = run(
                src, dst, ray_address, ext=ext.value, quality=quality, overwrite=overwrite, max_pixels=max_pixels,
                images_per_batch=images_per_batch, gpus=gpus,
                base=base, refine=refine, refiner=str(refiner) if refiner else None, refiner_strength=refiner_strength,
                sd_model=str(sd_model) if sd_model else None, upscale=upscale, bg_upsampler=bg_upsampler, aligned=aligned,
                only_center_face=only_center_face, min_face=min_face, paste=paste, color_match=color_match, detector=detector,
                weights=str(weights) if weights else None, fidelity=fidelity, knobs=_parse_knobs(knob or []), batch_size=batch_size,
            )
        except BfrboostError as exc:
            raise fail(exc) from None
    for report in reports:
        if report.error:
            err(report.error if report.input in report.error else f"{report.input}: {report.error}")
        if as_json:
            sys.stdout.write(json.dumps(report.to_json()) + "\n")
    sys.stderr.write(summary(reports, time.perf_counter() - start) + "\n")
    if any(r.error for r in reports):
        raise typer.Exit(1)

