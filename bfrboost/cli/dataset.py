"""`bfrboost restore-dataset`: a folder, list file or object-storage URI through Ray Data
(:func:`bfrboost.runners.dataset.cluster.restore_dataset`)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from bfrboost.cli import app
from bfrboost.cli import options as opt
from bfrboost.cli.common import err, fail, interruptible
from bfrboost.cli.restore import ExtChoice
from bfrboost.errors import BfrboostError
from bfrboost.options import DetectOptions, OutputOptions, PasteOptions, RestoreOptions, RunnerOptions


def OnWorkers(name: str, what: str) -> Any:  # noqa: N802  (an option type, named like one)
    """A path option of RestoreOptions' field ``name`` that every Ray worker reads: the help says so."""
    return opt.option(Path | None, RestoreOptions, name, help=f"{what}; must exist on every worker.")


@app.command("restore-dataset")
def restore_dataset(
    src: Annotated[str, typer.Argument(
        help="Folder (searched recursively), text file with one path or URI per line, or a URI such as s3://bucket/photos.",
        show_default=False,
    )],
    dst: Annotated[str, typer.Argument(
        help="Output folder or URI: same relative paths as SRC, plus manifest.parquet.",
        show_default=False,
    )],
    ray_address: Annotated[str | None, typer.Option(
        "--ray",
        help="Ray cluster: auto (the one this machine belongs to) or ray://HOST:10001; default: start a local Ray.",
    )] = None,
    base: opt.option(str, RestoreOptions, "base", help="Base restorer, as for `restore`.") = opt.RESTORE.base,
    refine: opt.Refine = opt.RESTORE.refine,
    refiner: OnWorkers("refiner", "Trained InfoBFR refiner folder") = opt.RESTORE.refiner,
    refiner_strength: opt.RefinerStrength = opt.RESTORE.refiner_strength,
    sd_model: OnWorkers("sd_model", "Local Stable Diffusion 2.1 diffusers folder") = opt.RESTORE.sd_model,
    upscale: opt.Upscale = opt.PASTE.upscale,
    bg_upsampler: opt.BgUpsampler = opt.PASTE.bg_upsampler,
    aligned: opt.Aligned = opt.DETECT.aligned,
    only_center_face: opt.OnlyCenterFace = opt.DETECT.only_center_face,
    min_face: opt.MinFace = opt.DETECT.min_face,
    paste: opt.Paste = opt.PASTE.paste,
    color_match: opt.ColorMatch = opt.PASTE.color_match,
    detector: opt.Detector = opt.DETECT.detector,
    weights: OnWorkers("weights", "Custom base checkpoint") = opt.RESTORE.weights,
    fidelity: opt.Fidelity = opt.RESTORE.fidelity,
    knob: opt.Knob = None,
    batch_size: opt.BatchSize = opt.RESTORE.batch_size,
    runtime: opt.Runtime = opt.RESTORE.runtime,
    providers: opt.Providers = opt.RESTORE.providers,
    threads: opt.Threads = opt.RESTORE.threads,
    images_per_batch: opt.option(int, RunnerOptions, "images_per_batch") = opt.RUNNER.images_per_batch,
    gpus: opt.option(int | None, RunnerOptions, "gpus") = opt.RUNNER.gpus,
    ext: opt.option(ExtChoice, OutputOptions, "ext", help="Output format; auto keeps the input's.") = ExtChoice(opt.OUTPUT.ext),
    quality: opt.Quality = opt.OUTPUT.quality,
    max_pixels: opt.MaxPixels = opt.OUTPUT.max_pixels,
    overwrite: opt.option(
        bool, OutputOptions, "overwrite",
        help="Redo images whose output exists (default: skip them, so a killed job resumes).",
    ) = opt.OUTPUT.overwrite,
    rebuild_manifest: Annotated[bool, typer.Option(
        "--rebuild-manifest", help="Ignore DST/manifest.parquet (a damaged one) and rebuild it from the outputs.")] = False,
    as_json: opt.AsJson = False,
) -> None:
    """Restore every image of SRC into DST on Ray Data (local Ray, or a cluster with --ray)."""
    from bfrboost.reports import summary
    from bfrboost.runners.dataset.cluster import restore_dataset as run

    start, params = time.perf_counter(), dict(locals())  # the options by name: each options object takes its fields
    runtime_flags = (runtime, providers, threads)
    with interruptible(resume="re-run the same command: finished outputs are skipped"):
        try:
            reports = run(
                src, dst, ray_address, images_per_batch=images_per_batch, gpus=gpus, rebuild_manifest=rebuild_manifest,
                output=OutputOptions(**opt.pick(OutputOptions, params, ext=ext.value)),
                detect_options=DetectOptions(**opt.pick(DetectOptions, params)),
                restore_options=RestoreOptions(
                    **opt.pick(RestoreOptions, params, knobs=opt.parse_knobs(knob or []), **opt.runtime_options(*runtime_flags))
                ),
                paste_options=PasteOptions(**opt.pick(PasteOptions, params)),
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

