"""`bfrboost train`: cache base outputs, train the InfoBFR refiner (single or multi-GPU via accelerate)."""

from __future__ import annotations

from bfrboost.cli import app  # noqa: F401
