"""Make the README's before/after picture with bfrboost itself: ``python docs/make_figures.py [--base NAME]``.

The photo is scikit-image's public-domain *astronaut* (Eileen Collins, NASA), degraded exactly as
``make demo`` degrades it (``bfrboost.demo.degrade``: blur, half size, JPEG quality 30), then restored
by ``bfrboost.Restorer``. The caption under the picture names the base model and the weights file that
made it, so a picture made without weights says so instead of pretending to be a restoration.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

import bfrboost
from bfrboost.demo import DEGRADED_JPEG_QUALITY, degrade
from bfrboost.plots import figure_png, pyplot

OUT = Path(__file__).resolve().parent / "before_after.jpg"


def degraded_astronaut() -> np.ndarray:
    """The demo's degraded photo, decoded again so the JPEG artefacts are in the pixels."""
    buffer = io.BytesIO()
    Image.fromarray(degrade(data.astronaut())).save(buffer, format="JPEG", quality=DEGRADED_JPEG_QUALITY)
    return np.asarray(Image.open(buffer).convert("RGB"))


def made_with(restorer: bfrboost.Restorer) -> str:
    """One line naming the base and its weights file: the caption's honesty clause."""
    base = restorer.base
    if base.name == "none":
        return "base none: no restoration model, faces are only detected, aligned and pasted back (Lanczos ×2)"
    weights = base.weights.name if base.weights is not None else "built-in weights"
    refiner = " + InfoBFR refiner" if restorer.refiner is not None else ""
    return f"base {base.name} ({weights}){refiner}"


def before_after(before: np.ndarray, restorer: bfrboost.Restorer) -> bytes:
    """Four panels: the input, the aligned face the base gets, what the base returns, the pasted-back output."""
    result = restorer.restore(before)
    if not result.faces:
        raise SystemExit("no face found in the demo photo; the detector weights or dlib are missing")
    face = result.faces[0]
    panels = [
        ("before: the input", before),
        ("the aligned face (512×512)", face.crop),
        ("what the base returns", face.restored),
        ("after: faces pasted back", result.image),
    ]
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(16, 4.6))
    for ax, (title, image) in zip(axes, panels):
        ax.imshow(image, interpolation="lanczos")
        ax.set_title(title, fontsize=13)
        ax.axis("off")
    fig.text(0.5, 0.01, f"made by docs/make_figures.py with {made_with(restorer)}", ha="center", fontsize=11)
    fig.subplots_adjust(bottom=0.08)
    return figure_png(fig, dpi=80)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="auto", help="base model (default auto: GFPGAN when cached, else none)")
    parser.add_argument("--refiner", type=Path, help="an InfoBFR refiner folder to boost the base with")
    parser.add_argument("--out", type=Path, default=OUT, help=f"where to write the JPEG (default {OUT.name} here)")
    args = parser.parse_args(argv)
    restorer = bfrboost.Restorer(base=args.base, refiner=args.refiner, device="cpu")
    png = before_after(degraded_astronaut(), restorer)
    Image.open(io.BytesIO(png)).convert("RGB").save(args.out, format="JPEG", quality=88)
    print(f"{args.out}: {made_with(restorer)}")


if __name__ == "__main__":
    main()
