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


RebuildManifest = Annotated[bool, typer.Option(
    "--rebuild-manifest", help="Ignore DST/manifest.parquet (a damaged one) and rebuild it from the outputs.")]
#: ``restore-dataset``'s options in ``--help`` order, each made from its field in bfrboost/options.py.
OPTIONS = opt.parameters(
    "base refine refiner refiner_strength sd_model upscale bg_upsampler aligned only_center_face min_face paste color_match "
    "detector weights fidelity knobs batch_size runtime providers threads images_per_batch gpus ext quality max_pixels "
    "overwrite rebuild_manifest as_json",
    RestoreOptions, PasteOptions, DetectOptions, RunnerOptions, OutputOptions,
    base=opt.option(str, RestoreOptions, "base", help="Base restorer, as for `restore`."),
    refiner=OnWorkers("refiner", "Trained InfoBFR refiner folder"),
    sd_model=OnWorkers("sd_model", "Local Stable Diffusion 2.1 diffusers folder"),
    weights=OnWorkers("weights", "Custom base checkpoint"),
    ext=(opt.option(ExtChoice, OutputOptions, "ext", help="Output format; auto keeps the input's."), ExtChoice(opt.OUTPUT.ext)),
    overwrite=opt.option(
        bool, OutputOptions, "overwrite", help="Redo images whose output exists (default: skip them, so a killed job resumes)."
    ),
    rebuild_manifest=(RebuildManifest, False),
)


@app.command("restore-dataset")
@opt.with_parameters(OPTIONS)
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
    **params: Any,
) -> None:
    """Restore every image of SRC into DST on Ray Data (local Ray, or a cluster with --ray)."""
    from bfrboost.reports import summary
    from bfrboost.runners.dataset.cluster import restore_dataset as run

    start = time.perf_counter()
    runtime = opt.runtime_options(params["runtime"], params["providers"], params["threads"])
    with interruptible(resume="re-run the same command: finished outputs are skipped"):
        try:
            reports = run(
                src, dst, ray_address, images_per_batch=params["images_per_batch"], gpus=params["gpus"],
                rebuild_manifest=params["rebuild_manifest"],
                output=OutputOptions(**opt.pick(OutputOptions, params, ext=params["ext"].value)),
                detect_options=DetectOptions(**opt.pick(DetectOptions, params)),
                restore_options=RestoreOptions(
                    **opt.pick(RestoreOptions, params, knobs=opt.parse_knobs(params["knobs"] or []), **runtime)
                ),
                paste_options=PasteOptions(**opt.pick(PasteOptions, params)),
            )
        except BfrboostError as exc:
            raise fail(exc) from None
    for report in reports:
        if report.error:
            err(report.error if report.input in report.error else f"{report.input}: {report.error}")
        if params["as_json"]:
            sys.stdout.write(json.dumps(report.to_json()) + "\n")
    sys.stderr.write(summary(reports, time.perf_counter() - start) + "\n")
    if any(r.error for r in reports):
        raise typer.Exit(1)

