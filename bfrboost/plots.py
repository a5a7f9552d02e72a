"""Matplotlib plumbing shared by every chart the tool writes (training curves, boost bar charts).

A leaf module (imports nothing from bfrboost), so both the trainer and the reports can use it
without an import circle.
"""

from __future__ import annotations

import io
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the headless Agg backend (imported lazily: matplotlib is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig: Any, dpi: float | str = "figure") -> bytes:
    """Lay out, render and close ``fig``; the PNG bytes (``dpi="figure"`` keeps the figure's own)."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    pyplot().close(fig)
    return buffer.getvalue()
