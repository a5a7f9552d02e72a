"""Write the example photos that ``make demo`` restores: ``python -m bfrboost.demo DIR``.

The photos ship inside scikit-image's wheel, so the demo needs no download:

- ``astronaut.png``: Eileen Collins, NASA portrait (public domain), a clean colour face;
- ``astronaut_degraded.jpg``: the same photo blurred, halved and saved as JPEG quality 30, the kind
  of old web photo face restoration is for;
- ``cameraman.png``: Lav Varshney's "camera" photo (CC0), a grayscale man in profile behind a camera.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import cv2
import numpy as np
from skimage import data

from bfrboost.errors import BfrboostError
from bfrboost.io.write import write_image
from bfrboost.safety import Interrupted, handle_signals

DEGRADED_SCALE = 0.5
DEGRADED_BLUR_SIGMA = 1.5
DEGRADED_JPEG_QUALITY = 30


def degrade(rgb: np.ndarray) -> np.ndarray:
    """Blur, then downscale: the JPEG quality is applied when the result is written."""
    blurred = cv2.GaussianBlur(rgb, (0, 0), DEGRADED_BLUR_SIGMA)
    height, width = rgb.shape[:2]
    size = (round(width * DEGRADED_SCALE), round(height * DEGRADED_SCALE))
    return cv2.resize(blurred, size, interpolation=cv2.INTER_AREA)


def write_demo_photos(outdir: Path | str) -> list[Path]:
    """Write (or rewrite, byte-identical) the demo photos into ``outdir``; returns their paths."""
    outdir = Path(outdir)
    astronaut = data.astronaut()
    return [
        write_image(outdir / "astronaut.png", astronaut, overwrite=True),
        write_image(outdir / "astronaut_degraded.jpg", degrade(astronaut), quality=DEGRADED_JPEG_QUALITY, overwrite=True),
        write_image(outdir / "cameraman.png", data.camera(), overwrite=True),  # H×W: stays a gray PNG
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bfrboost.demo", description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path, help="folder to write the example photos into (created if missing)")
    args = parser.parse_args(argv)
    try:
        with handle_signals():
            paths = write_demo_photos(args.outdir)
    except BfrboostError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(1) from None
    except (KeyboardInterrupt, Interrupted) as exc:  # write_image has removed its temp file
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        print(f"interrupted by {signal.Signals(signum).name}; run the same command again", file=sys.stderr)
        raise SystemExit(128 + signum) from None
    for path in paths:
        print(path)


if __name__ == "__main__":
    main()
