"""`restore --workers 2` against sequential on larger real photos, with where the time goes per stage.

Run: ``python bench/bench_workers.py [--set family|second|both] [--repeat N] [--base none|gfpgan] [--photos N] [--cli]``.

- ``family``: 24 photos of 0.3–2.5 MP from ``faces/whole`` (spread evenly over that range by pixel
  count; read in place, never copied) plus one undecodable file in the middle, like a real folder.
- ``second``: ``whole/`` + ``gray/`` + ``old_photo/`` photos resized (Lanczos) to 0.4–2.4 MP, written
  into a temporary folder: the claim checked on photos it was not tuned on.

Each repeat runs the sequential runner and the overlapped one (2 workers) back to back on a fresh
output folder, in alternating order, from a warmed restorer (``--cli``: the ``bfrboost restore``
command itself, so start-up is in the wall time too). Prints the wall times, their ratio (median of
the repeats is the number to quote), the 1-minute load average, and the per-stage seconds summed
over the photos (decode, detect, align, base, paste, encode) with the CPU seconds each run used.
``--base gfpgan`` (or any base with weights) runs that base in its official configuration with random
weights (seeded, written to a temporary ``--weights`` file), so a real network's stage is in the
pipeline without a download; ``--photos N`` takes N photos of the family set instead of 24 (a real
base costs seconds per face on a CPU).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from bfrboost.options import OutputOptions
from bfrboost.pipeline import Restorer
from bfrboost.runners.files import FileRunner
from bfrboost.runners.overlap import OverlapRunner

TESTDATA = Path(os.environ.get("BFRBOOST_TESTDATA", Path(__file__).resolve().parents[2] / "shared" / "testdata"))
STAGES = ("decode", "detect", "align", "base", "paste", "encode")


def megapixels(path: Path) -> float:
    with Image.open(path) as image:
        return image.size[0] * image.size[1] / 1e6


def family_set(folder: Path, count: int = 24, low: float = 0.3, high: float = 2.5) -> list[Path]:
    """``count`` photos of ``faces/whole`` between ``low`` and ``high`` MP, evenly spread by size, in name
    order, with an undecodable file (written into ``folder``) in the middle."""
    sized = sorted((megapixels(p), p) for p in sorted((TESTDATA / "faces" / "whole").iterdir()) if p.suffix != ".md")
    inside = [p for mp, p in sized if low <= mp <= high]
    picked = sorted({inside[round(i * (len(inside) - 1) / (count - 1))] for i in range(count)})
    bad = folder / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return picked[: len(picked) // 2] + [bad] + picked[len(picked) // 2 :]


def second_set(folder: Path, low: float = 0.4, high: float = 2.4) -> list[Path]:
    """whole/, gray/ and old_photo/ photos, each at two sizes spread over ``low``–``high`` MP (temporary copies)."""
    sources = [p for sub in ("whole", "gray", "old_photo") for p in sorted((TESTDATA / sub).iterdir())
               if p.is_file() and p.suffix != ".md"]
    jobs = [(path, copy) for copy in range(2) for path in sources]
    out = []
    for index, (path, copy) in enumerate(jobs):
        image = np.asarray(Image.open(path).convert("RGB"))
        target = low + (high - low) * ((index * 7) % len(jobs)) / (len(jobs) - 1)  # sizes interleaved, not sorted
        zoom = (target * 1e6 / (image.shape[0] * image.shape[1])) ** 0.5
        size = (round(image.shape[1] * zoom), round(image.shape[0] * zoom))
        resized = cv2.resize(image, size, interpolation=cv2.INTER_LANCZOS4 if zoom > 1 else cv2.INTER_AREA)
        dest = folder / f"{path.parent.name}_{path.stem}_{copy}.jpg"
        Image.fromarray(resized).save(dest, quality=92)
        out.append(dest)
    return out


def cpu_seconds() -> float:
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def random_weights(base: str, folder: Path) -> Path | None:
    """A seeded random checkpoint of ``base`` in its official configuration (``None`` for ``none``)."""
    import torch

    from bfrboost.backbones.registry import get_spec

    spec = get_spec(base)
    if not spec.weight_file:
        return None
    torch.manual_seed(0)
    path = folder / f"random-{spec.weight_file}"
    torch.save(spec.build(None).state_dict(), path)
    return path


def in_process(restorer: Restorer, paths: list[Path], outdir: Path, workers: int) -> tuple[float, float, dict]:
    """(wall s, CPU s, stage seconds summed over the photos) of one run from a warmed restorer."""
    options = OutputOptions(outdir=outdir, overwrite=True)
    cpu, start = cpu_seconds(), time.perf_counter()
    if workers > 1:
        with OverlapRunner(restorer, options, workers=workers) as runner:
            reports = list(runner.run(paths))
    else:
        reports = list(FileRunner(restorer, options).run(paths))
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    stages = {s: sum(r.seconds.get(s, 0.0) for r in reports) for s in STAGES}
    errors = [r for r in reports if r.error]
    if len(errors) > 1:
        raise SystemExit(f"bench run failed: {errors[0].error}")
    return wall, cpu, stages


def by_cli(base: str, weights: Path | None, paths: list[Path], outdir: Path, workers: int) -> tuple[float, float, dict]:
    """(wall s, CPU s, {}) of ``bfrboost restore`` as a user runs it: start-up (imports, models) included."""
    command = [sys.executable, "-m", "bfrboost", "restore", *map(str, paths), "-o", str(outdir), "--overwrite",
               "--base", base, "--workers", str(workers), *(["--weights", str(weights)] if weights else [])]
    cpu, start = cpu_seconds(), time.perf_counter()
    subprocess.run(command, check=False, capture_output=True)
    return time.perf_counter() - start, cpu_seconds() - cpu, {}


def compare(name: str, paths: list[Path], args: argparse.Namespace, work: Path) -> dict:
    if args.cv2_threads is not None:
        cv2.setNumThreads(args.cv2_threads)
    weights = random_weights(args.base, work)
    restorer = Restorer(args.base, device="cpu", weights=weights)
    restorer.prepare(np.zeros((64, 64, 3), np.uint8))  # models loaded before timing
    rows = []
    for index in range(args.repeat):
        order = [1, 2] if index % 2 == 0 else [2, 1]
        run = {}
        for workers in order:
            outdir = work / f"{name}-{index}-w{workers}"
            if args.cli:
                run[workers] = by_cli(args.base, weights, paths, outdir, workers)
            else:
                run[workers] = in_process(restorer, paths, outdir, workers)
        (s_wall, s_cpu, s_stages), (o_wall, o_cpu, o_stages) = run[1], run[2]
        load = os.getloadavg()[0]
        rows.append((s_wall, o_wall, s_wall / o_wall, s_cpu, o_cpu, load, s_stages, o_stages))
        print(f"  {name} repeat {index + 1}: sequential {s_wall:.2f} s ({s_cpu:.1f} CPU s), --workers 2 {o_wall:.2f} s "
              f"({o_cpu:.1f} CPU s), ratio {s_wall / o_wall:.2f}, load {load:.2f}", flush=True)
        if s_stages:
            print("    stage seconds (sequential | workers 2): " + ", ".join(
                f"{s} {s_stages[s]:.2f} | {o_stages[s]:.2f}" for s in STAGES), flush=True)
    median = statistics.median(r[2] for r in rows)
    loads = [r[5] for r in rows]
    print(f"| {name} | {len(paths)} | {statistics.median(r[0] for r in rows):.2f} | {statistics.median(r[1] for r in rows):.2f} "
          f"| **{median:.2f}** ({', '.join(f'{r[2]:.2f}' for r in rows)}) | {min(loads):.2f}–{max(loads):.2f} |")
    return {"median_ratio": median}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=("family", "second", "both"), default="both")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--base", default="none", help="base model; one with weights runs on seeded random weights")
    parser.add_argument("--photos", type=int, default=24, help="photos of the family set (0.3–2.5 MP, evenly spread)")
    parser.add_argument("--cli", action="store_true", help="time the bfrboost restore command (start-up included)")
    parser.add_argument("--cv2-threads", type=int, default=None, help="cv2.setNumThreads for the in-process runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sets = {}
        if args.set in ("family", "both"):
            (work / "family").mkdir()
            sets["family"] = family_set(work / "family", count=args.photos)
        if args.set in ("second", "both"):
            (work / "second").mkdir()
            sets["second"] = second_set(work / "second")
        print(f"base {args.base}, {'CLI' if args.cli else 'in-process'}, {os.cpu_count()} cores, load {os.getloadavg()}")
        print("| set | photos | sequential s | --workers 2 s | ratio (median; each repeat) | load (1 min) |")
        print("|---|---|---|---|---|---|")
        for name, paths in sets.items():
            compare(name, paths, args, work)


if __name__ == "__main__":
    main()
