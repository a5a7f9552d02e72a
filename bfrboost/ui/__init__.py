"""The browser app (``bfrboost ui``): the CLI's restore options on one page, over the same Restorer,
for photos and video clips.

Needs the ``ui`` extra (``pip install 'bfrboost[ui]'``, i.e. Gradio). :func:`build_app` returns the
``gradio.Blocks`` page, :func:`launch` serves it (on 127.0.0.1 unless told otherwise).
"""

from __future__ import annotations

from bfrboost.ui.app import DEFAULT_HOST, build_app, launch
from bfrboost.ui.engine import ClipOutcome, Engine, Outcome, RestorerCache, Settings

__all__ = ["DEFAULT_HOST", "ClipOutcome", "Engine", "Outcome", "RestorerCache", "Settings", "build_app", "launch"]
