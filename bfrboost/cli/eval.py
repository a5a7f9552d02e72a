"""`bfrboost eval`: score restored faces; `eval stats`: reference statistics; `eval boost`: the boost table."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from bfrboost.cli import app
from bfrboost.cli import options as opt
from bfrboost.cli.common import err, fail, interruptible
from bfrboost.errors import BfrboostError, UsageError
from bfrboost.options import EvalOptions

if TYPE_CHECKING:  # imported when a command runs: the metrics pull in torch
    from bfrboost.evaluation.folders import FolderReport

eval_app = typer.Typer(
    invoke_without_command=True,
    no_args_is_help=False,
    help="Score restored faces (FID, KID, NIQE, MUSIQ, LPIPS, PSNR, SSIM, IDS); `stats` and `boost` below.",
)
app.add_typer(eval_app, name="eval")

E = opt.defaults(EvalOptions)
MetricsOpt = opt.option(str, EvalOptions, "metrics")
DeviceOpt = opt.option(str, EvalOptions, "device")
SizeOpt = opt.option(int, EvalOptions, "size")
ReferenceStats = opt.option(Path | None, EvalOptions, "reference_stats", show_default=False)
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")]


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
        transient=True,
    )


def _device(device: str) -> str:
    from bfrboost.pipeline import resolve_device

    return str(resolve_device(device))


@eval_app.callback()
def evaluate(
    ctx: typer.Context,
    restored: Annotated[
        Path | None, typer.Option("--restored", help="Folder of restored aligned faces.", show_default=False)
    ] = None,
    reference: Annotated[
        Path | None,
        typer.Option(
            "--reference",
            help="Folder of ground-truth faces, matched by file name "
            "(PSNR/SSIM/LPIPS/IDS; FID/KID set without --reference-stats).",
            show_default=False,
        ),
    ] = None,
    reference_stats: ReferenceStats = E.reference_stats,
    metrics: MetricsOpt = E.metrics,
    size: SizeOpt = E.size,
    batch_size: opt.option(int, EvalOptions, "batch_size") = E.batch_size,
    device: DeviceOpt = E.device,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object on stdout.")] = False,
) -> None:
    """Score a folder of restored faces (run with --restored DIR), or run a subcommand."""
    params = dict(locals())  # the options by name: the library call takes the ones it has
    if ctx.invoked_subcommand is not None:
        if restored is not None:
            err(
                f"--restored belongs to `bfrboost eval` itself, not to `eval {ctx.invoked_subcommand}`; "
                f"see `bfrboost eval {ctx.invoked_subcommand} --help`"
            )
            raise typer.Exit(2)
        return
    if restored is None:
        err("give the faces to score with --restored DIR (or use `bfrboost eval stats` / `bfrboost eval boost`; see --help)")
        raise typer.Exit(2)
    from bfrboost.evaluation.folders import evaluate_folder, list_images

    console = Console(stderr=True)
    try:
        with interruptible(noun="face", resume="re-run the same command (it writes nothing)"), _progress(console) as progress:
            total = len(list_images(restored, "restored faces"))
            task = progress.add_task("scoring", total=total)
            settings = opt.pick(evaluate_folder, params, device=_device(device), on_progress=lambda n: progress.advance(task, n))
            report = evaluate_folder(restored, reference, **settings)
    except BfrboostError as exc:
        raise fail(exc) from None
    for problem in report.problems:
        err(problem)
    for value in report.results.values():
        if value.skipped:
            err(value.skipped)
    if as_json:
        sys.stdout.write(
            json.dumps(
                {
                    "restored": str(restored),
                    "reference": str(reference) if reference else None,
                    "reference_stats": str(reference_stats) if reference_stats else None,
                    **report.as_dict(),
                }
            )
            + "\n"
        )
    else:
        _print_table(report)
    if report.problems:
        raise typer.Exit(1)


def _print_table(report: FolderReport) -> None:
    """The scores as a table on stdout: one row per metric computed (skipped ones were said on stderr)."""
    from bfrboost.evaluation.boost import format_value

    table = Table(title=f"{report.images} faces" + (f", {report.pairs} with references" if report.pairs else ""))
    for column in ("metric", "value", "better", "faces", "seconds"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name, value in report.results.items():
        if value.skipped:
            continue
        table.add_row(
            value.info.label,
            format_value(name, value.value),
            "higher" if value.info.higher_is_better else "lower",
            str(value.count),
            f"{value.seconds:.2f}",
        )
    Console().print(table)


@eval_app.command("stats")
def stats(
    folder: Annotated[Path, typer.Argument(help="Reference faces, e.g. FFHQ (any size; brought to --size).", show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="Statistics file to write (.npz).", show_default=False)],
    size: SizeOpt = E.size,
    max_kid_features: opt.option(int, EvalOptions, "max_kid_features") = E.max_kid_features,
    device: DeviceOpt = E.device,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing statistics file.")] = False,
) -> None:
    """Inception statistics of a reference folder, so FID/KID read FFHQ once."""
    params = dict(locals())  # the options by name: the library call takes the ones it has
    from bfrboost.evaluation.folders import compute_stats_folder, list_images

    console = Console(stderr=True)
    try:
        with interruptible(resume="re-run the same command (nothing was written)"), _progress(console) as progress:
            task = progress.add_task("features", total=len(list_images(folder, "reference faces")))
            advance = progress.advance
            settings = opt.pick(compute_stats_folder, params, device=_device(device), on_progress=lambda n: advance(task, n))
            result, problems = compute_stats_folder(out=output, **settings)
    except BfrboostError as exc:
        raise fail(exc) from None
    except ValueError as exc:  # fewer than 2 readable images
        raise fail(UsageError(f"{folder}: {exc}")) from None
    for problem in problems:
        err(problem)
    sys.stderr.write(f"{output}: statistics of {result.count} faces at {result.size} px ({len(result.features)} kept for KID)\n")
    if problems:
        raise typer.Exit(1)


@eval_app.command("boost")
def boost(
    base: Annotated[
        str, typer.Option("--base", help="Base restorer(s), comma-separated (e.g. gfpgan,codeformer).", show_default=False)
    ],
    refiner: Annotated[Path, typer.Option("--refiner", help="InfoBFR refiner folder.", show_default=False)],
    data: Annotated[
        Path,
        typer.Option("--data", help="Folder of low-quality aligned faces (e.g. `bfrboost degrade` output).", show_default=False),
    ],
    output: Annotated[
        Path,
        typer.Option("-o", "--output", help="Output folder (boost.md/.csv/.json/.png, index.html, faces/).", show_default=False),
    ],
    reference: Annotated[
        Path | None,
        typer.Option("--reference", help="Ground-truth faces with the same file names as --data.", show_default=False),
    ] = None,
    reference_stats: ReferenceStats = E.reference_stats,
    metrics: MetricsOpt = E.metrics,
    size: SizeOpt = E.size,
    batch_size: opt.option(int, EvalOptions, "boost_batch_size") = E.boost_batch_size,
    html_faces: opt.option(int, EvalOptions, "html_faces") = E.html_faces,
    sd_model: Annotated[
        Path | None,
        typer.Option("--sd-model", help="Local Stable Diffusion 2.1 diffusers folder for the refiner.", show_default=False),
    ] = None,
    device: DeviceOpt = E.device,
    overwrite: Overwrite = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON on stdout.")] = False,
) -> None:
    """Every base with and without the refiner on the same faces: the paper's Table I, as files."""
    params = dict(locals())  # the options by name: the library call takes the ones it has
    from bfrboost.evaluation.boost import markdown_table, run_boost
    from bfrboost.evaluation.folders import list_images

    console = Console(stderr=True)
    bases = [b.strip() for b in base.split(",") if b.strip()]
    try:
        with interruptible(resume="re-run the same command with --overwrite"), _progress(console) as progress:
            faces = len(list_images(data, "low-quality aligned faces"))
            task = progress.add_task("restoring", total=faces * 2 * max(len(bases), 1))

            def advance(label: str, n: int) -> None:
                progress.update(task, advance=n, description=label)

            report = run_boost(bases=bases, out=output, **opt.pick(run_boost, params, on_progress=advance))
    except BfrboostError as exc:
        raise fail(exc) from None
    for problem in report.problems:
        err(problem)
    for reason in report.skipped():
        err(reason)
    if as_json:
        sys.stdout.write(json.dumps(report.as_dict()) + "\n")
    else:
        sys.stdout.write(markdown_table(report))
    sys.stderr.write(f"wrote {', '.join(str(p) for p in report.files.values())}\n")
    if report.problems:
        raise typer.Exit(1)
