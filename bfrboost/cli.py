"""Thin Typer layer: parse options, loop, report progress and exit codes. Logic lives in the library.

Sections are owned by different people while the foundation is built: edit only your section.
"""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="bfrboost: restore faces, then boost them with the InfoBFR refiner.")

# ---- restore (pipeline owner) ----------------------------------------------------------------

# ---- weights (weights owner) ------------------------------------------------------------------
weights_app = typer.Typer(no_args_is_help=True, help="List, download, verify and import model weights.")
app.add_typer(weights_app, name="weights")

# ---- refiner (refiner owner) ------------------------------------------------------------------
refiner_app = typer.Typer(no_args_is_help=True, help="InfoBFR refiner: statistics, info, tiny test refiners.")
app.add_typer(refiner_app, name="refiner")


def main() -> None:
    app()
