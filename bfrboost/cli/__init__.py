"""Thin Typer layer: one module per command group parses options, loops, reports progress and exit
codes. The logic lives in the library; every command here is a documented Python call too."""

from __future__ import annotations

import warnings

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="bfrboost: restore faces, then boost them with the InfoBFR refiner.")

from bfrboost.cli import dataset, refiner, restore, weights  # noqa: E402  (each module adds its commands to ``app``)

__all__ = ["app", "dataset", "main", "refiner", "restore", "weights"]


def main() -> None:
    # spandrel's architectures still call torch.jit.script at import: not the user's concern
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    app()
