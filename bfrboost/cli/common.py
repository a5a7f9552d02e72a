"""What every command module shares: one-line errors on stderr and the exit-code convention."""

from __future__ import annotations

import sys

import typer

from bfrboost.errors import BfrboostError, UsageError


def err(message: str) -> None:
    """One line on stderr; the only way errors reach the user."""
    sys.stderr.write(f"bfrboost: {message}\n")


def fail(exc: BfrboostError) -> typer.Exit:
    """One line on stderr; exit 2 for usage errors, 1 otherwise."""
    err(str(exc))
    return typer.Exit(2 if isinstance(exc, UsageError) else 1)
