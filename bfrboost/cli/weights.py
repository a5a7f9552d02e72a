"""`bfrboost weights`: list, download, verify, locate and import checkpoints."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from bfrboost.cli import app
from bfrboost.cli.common import RESUME, interruptible
from bfrboost.cli.common import err as _err
from bfrboost.errors import BfrboostError, UsageError

weights_app = typer.Typer(no_args_is_help=True, help="List, download, verify and import model weights.")
app.add_typer(weights_app, name="weights")

if TYPE_CHECKING:
    from bfrboost.weights import WeightFile

_WEIGHTS_NAME_HELP = "Card name (e.g. gfpgan), file name (e.g. GFPGANv1.4.pth) or 'all'."


def _weights_files(name: str) -> list[WeightFile]:
    """Files meant by NAME; an unknown name is a usage error (exit 2) with the known names."""
    from bfrboost import weights

    try:
        return weights.resolve(name)
    except BfrboostError as exc:  # UsageError: unknown name; WeightsError: a broken model card
        _err(str(exc))
        raise typer.Exit(2 if isinstance(exc, UsageError) else 1) from None


def _hash_source(entry: WeightFile) -> str:
    if entry.sha256 is None:
        return "unknown: pinned on first download"
    return "pinned on first download" if entry.pinned else "card"


@weights_app.command("list")
def weights_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array instead of a table.")] = False,
) -> None:
    """Every file of every model card: size, cached?, verified?, licence, where its hash comes from."""
    from rich.table import Table

    from bfrboost import weights

    try:
        entries = list(weights.manifest().values())
        rows = [
            {
                "card": e.card, "file": e.file, "size": e.size, "cached": e.path.exists(),
                "verified": weights.status(e), "license": e.license, "commercial_use": e.commercial_use,
                "sha256": e.sha256, "hash_source": _hash_source(e), "path": str(e.path), "url": e.url,
            }
            for e in entries
        ]
    except BfrboostError as exc:
        _err(str(exc))
        raise typer.Exit(1) from None
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
        return
    table = Table("card", "file", "size", "cached", "verified", "licence", "hash", title=f"weights cache: {weights.home()}")
    for row in rows:
        size = f"{row['size'] / 1e6:.1f} MB" if row["size"] else "?"
        licence = row["license"] + ("" if row["commercial_use"] else " (non-commercial)")
        table.add_row(
            row["card"], row["file"], size, "yes" if row["cached"] else "no", row["verified"], licence, row["hash_source"]
        )
    Console(width=None if sys.stdout.isatty() else 200).print(table)


@weights_app.command("download")
def weights_download(
    names: Annotated[list[str], typer.Argument(help=_WEIGHTS_NAME_HELP, show_default=False)],
    offline: Annotated[
        bool, typer.Option("--offline", help="Only check the cache; never open a connection (also BFRBOOST_OFFLINE=1).")
    ] = False,
) -> None:
    """Download (or, offline, check) weights; prints each verified path."""
    from bfrboost import weights

    entries = [e for name in names for e in _weights_files(name)]
    resume = "re-run the same command to resume (a partial download continues where it stopped)"
    _print_each(entries, lambda entry: weights.ensure(entry.file, offline=True if offline else None), resume)


def _print_each(items: list[Any], action: Callable[[Any], Path], resume: str = RESUME) -> None:
    """Run ``action`` on every item, print each resulting path, one line per failure, exit 1 if any.

    Interruptible: SIGINT/SIGTERM remove what is half-written and say how many were finished."""
    failed = False
    with interruptible(total=len(items), noun="file", resume=resume) as progress:
        for item in items:
            try:
                sys.stdout.write(f"{action(item)}\n")
                sys.stdout.flush()
            except BfrboostError as exc:
                _err(str(exc))
                failed = True
            progress.finished += 1
    if failed:
        raise typer.Exit(1)


@weights_app.command("verify")
def weights_verify(
    name: Annotated[
        str | None, typer.Argument(help=_WEIGHTS_NAME_HELP + " Default: every cached file.", show_default=False)
    ] = None,
) -> None:
    """Check size and SHA-256 of cached files; exit 1 with one line per problem."""
    from bfrboost import weights

    entries = _weights_files(name) if name is not None else None
    try:
        problems = weights.verify(name)
        checked = len(entries) if entries is not None else sum(e.path.exists() for e in weights.manifest().values())
    except BfrboostError as exc:
        problems = [str(exc)]
    for problem in problems:
        _err(problem)
    if problems:
        raise typer.Exit(1)
    sys.stdout.write(f"{checked} file(s) match their model cards\n")


@weights_app.command("path")
def weights_path(name: Annotated[str, typer.Argument(help=_WEIGHTS_NAME_HELP, show_default=False)]) -> None:
    """Print where each file of NAME lives in the cache (whether or not it is there yet)."""
    for entry in _weights_files(name):
        sys.stdout.write(f"{entry.path}\n")


@weights_app.command("import")
def weights_import(
    files: Annotated[
        list[Path],
        typer.Argument(help="Checkpoints downloaded by hand; matched to a card by name, size and SHA-256.", show_default=False),
    ],
) -> None:
    """Copy manually downloaded files into the cache after checking them."""
    from bfrboost import weights

    _print_each(files, weights.import_file)
