"""Calibrate ``--person-threshold``: cosine similarity of identity embeddings on real same-person and
different-person pairs, on one calibration set and two check sets from ``../shared/testdata``.

    python bench/calibrate_person.py                 # dlib (no download)
    python bench/calibrate_person.py --model arcface # needs `bfrboost weights download arcface`

Calibration: the dlib sample faces of five people in ``faces/whole/dlib_John_*`` (LFW photos, ~10 each;
detected and aligned as the restorer does). Checks: the DMDNet crops ``faces/aligned/dmdnet_000NN_*``
(9 people, degraded) and ``reference/lq`` vs ``reference/ref`` (3 people, heavily degraded vs clean).
Prints, per threshold, the share of same-person pairs accepted and of different-person pairs accepted.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from bfrboost.faces.detect import get_detector
from bfrboost.faces.select import PersonMatcher, load_embedder

TESTDATA = Path(os.environ.get("BFRBOOST_TESTDATA", Path(__file__).resolve().parents[2] / "shared" / "testdata"))


def rgb(path: Path, size: int | None = None) -> np.ndarray:
    image = Image.open(path).convert("RGB")
    return np.asarray(image.resize((size, size), Image.BICUBIC) if size else image)


def report(name: str, items: list[tuple[str, np.ndarray]], thresholds: list[float]) -> None:
    same, diff = [], []
    for (a, ea), (b, eb) in itertools.combinations(items, 2):
        (same if a == b else diff).append(float(ea @ eb))
    s, d = np.array(same), np.array(diff)
    print(f"{name}: {len(s)} same-person pairs (min {s.min():.3f}, median {np.median(s):.3f}), "
          f"{len(d)} different-person pairs (max {d.max():.3f}, median {np.median(d):.3f})")
    for t in thresholds:
        print(f"  threshold {t:.2f}: same accepted {np.mean(s >= t):6.1%}, different accepted {np.mean(d >= t):6.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dlib")
    parser.add_argument("--thresholds", default="0.88,0.90,0.91,0.92,0.93")
    args = parser.parse_args()
    thresholds = [float(t) for t in args.thresholds.split(",")]
    embedder, detector = load_embedder(args.model), get_detector("dlib")
    people = re.compile(r"dlib_(John_[A-Za-z]+)_\d")
    whole = sorted((TESTDATA / "faces" / "whole").glob("dlib_John_*"))
    calibration = [
        (people.match(p.name).group(1), PersonMatcher.from_photos([(p.name, rgb(p))], embedder, detector).references[0])
        for p in whole
    ]
    report("calibration (LFW, faces/whole/dlib_John_*)", calibration, thresholds)
    crops = sorted((TESTDATA / "faces" / "aligned").glob("dmdnet_000*_*.png"))
    report("check 1 (DMDNet crops)", [(p.name.split("_")[1], embedder.embed([rgb(p, 512)])[0]) for p in crops], thresholds)
    pairs = [p for folder in ("lq", "ref") for p in sorted((TESTDATA / "reference" / folder).iterdir())]
    refs = [(p.stem, embedder.embed([rgb(p, 512)])[0]) for p in pairs]
    report("check 2 (reference/ lq vs ref)", refs, thresholds)


if __name__ == "__main__":
    main()
