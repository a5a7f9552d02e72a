"""Seconds per face of every guided task and method, on this machine's CPU (and the released prior on CUDA).

Methods, side by side:

- ``codeformer``: CodeFormer's one-pass colourisation / inpainting network (the released
  architecture, random weights, 512 px): one forward per face, with upstream's pre/post-processing;
- ``pgdiff`` on the ``--tiny`` demo prior (64 px, random weights) at ``--steps`` steps;
- ``pgdiff`` on the released prior's architecture (512 px, random weights) at ``--real-steps``
  (a few) steps: the cost per step is constant, so s/face at N steps is N × s/step (printed for
  100 and PGDiff's default 1000 — extrapolated, not run).

Every task runs through :class:`bfrboost.guidance.PGDiff` / :class:`~bfrboost.guidance.onepass.OnePass`
on real aligned crops from ``../shared/testdata`` (random crops when it is absent), no downloads.
Cheap runs are repeated and interleaved across methods (median); the real-prior runs once.

    python bench/bench_guidance.py                       # CPU: codeformer, tiny pgdiff, real pgdiff at 1 and 2 steps
    python bench/bench_guidance.py --cuda                # + every task on CUDA at 100 steps when a GPU is present
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bfrboost.guidance import PGDiff, onepass
from bfrboost.guidance.tasks import tiny_prior
from bfrboost.nets import rrdb as rrdb_module
from bfrboost.nets.arcface import random_arcface
from bfrboost.nets.iddpm import IDDPMUNet, UNetConfig
from bfrboost.options import GuidanceOptions

TESTDATA = Path(os.environ.get("BFRBOOST_TESTDATA", Path(__file__).resolve().parents[1].parent / "shared" / "testdata"))
TASKS = ("colorize", "inpaint", "old-photo", "restore", "restore + reference")


def read(rel: str) -> np.ndarray:
    path = TESTDATA / rel
    if not path.is_file():
        return (np.random.default_rng(0).random((512, 512, 3)) * 255).astype(np.uint8)
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB").resize((512, 512)))


def tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)[None].to(device)


def pgdiff_runs(
    prior: IDDPMUNet, rrdb_config: rrdb_module.RRDBConfig, device: torch.device, steps: int
) -> dict[str, Callable[[], object]]:
    """One callable per task: a face through PGDiff at ``steps`` steps."""
    torch.manual_seed(0)
    arcface = random_arcface(0).to(device)
    model = PGDiff(prior.to(device), arcface=arcface)
    with_rrdb = PGDiff(prior, rrdb=rrdb_module.build(None, rrdb_config).to(device))
    gray, masked, old = (tensor(read(p), device) for p in ("gray/Einstein01.png", "masked/00059.png", "old_photo/0_7.jpg"))
    lq, mask = tensor(read("reference/lq/00010.png"), device), tensor(read("masked/masks/00059.png"), device)[:, :1].gt(0).float()
    reference = model.embed(tensor(read("reference/ref/00010.png"), device))
    options = GuidanceOptions(steps=steps)
    return {
        "colorize": lambda: model("colorize", gray, options),
        "inpaint": lambda: model("inpaint", masked, options, masks=mask),
        "old-photo": lambda: with_rrdb("old-photo", old, options),
        "restore": lambda: model("restore", lq, options, targets=lq),
        "restore + reference": lambda: model("restore", lq, options, targets=lq, reference=reference),
    }


def codeformer_runs(device: torch.device) -> dict[str, Callable[[], object]]:
    torch.manual_seed(0)
    color = onepass.OnePass("colorize", onepass.build("colorize"), device)
    fill = onepass.OnePass("inpaint", onepass.build("inpaint"), device)
    gray, masked = read("gray/Einstein01.png"), read("masked/00059.png")
    hole = (read("masked/masks/00059.png") > 0).any(axis=2).astype(np.float32)
    return {"colorize": lambda: color([gray]), "inpaint": lambda: fill([masked], [hole])}


def timed(run: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of ``run`` (on the CPU: the process's CPU seconds instead, see :func:`cpu_seconds`)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def cpu_seconds(run: Callable[[], object]) -> tuple[float, float]:
    """(wall, CPU) seconds of ``run``. With one torch thread the CPU seconds are what the run takes on
    an idle core; the wall seconds also count the time other processes held the (shared) cores."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def cpu_table(args: argparse.Namespace) -> None:
    cpu = torch.device("cpu")
    cf = codeformer_runs(cpu)
    tiny = pgdiff_runs(tiny_prior(), rrdb_module.TINY_RRDB_CONFIG, cpu, args.steps)
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):  # interleaved: each repeat runs every method once
        for task in TASKS:
            for method, runs in (("codeformer", cf), ("tiny", tiny)):
                if task in runs:
                    times.setdefault((method, task), []).append(cpu_seconds(runs[task]))
                    sys.stderr.write(f"{method} {task}: wall, CPU {times[method, task][-1]} s\n")
    real_prior = IDDPMUNet(UNetConfig()).eval().requires_grad_(False)
    real: dict[tuple[str, int], tuple[float, float]] = {}
    for steps in args.real_steps:
        runs = pgdiff_runs(real_prior, rrdb_module.RRDB_CONFIG, cpu, steps)
        for task in args.real_tasks:
            real[task, steps] = cpu_seconds(runs[task])
            sys.stderr.write(f"real {task} {steps} steps: wall, CPU {real[task, steps]} s\n")
    load = os.getloadavg()[0]
    print(
        f"\nCPU, torch threads {torch.get_num_threads()}, load average {load:.1f} at the end; "
        f"s/face as CPU seconds (wall seconds), median of {args.repeats} for the cheap runs\n"
    )
    steps_head = " | ".join(f"pgdiff real, {n} step{'s' * (n > 1)}" for n in args.real_steps)
    print(
        f"| task | codeformer (one pass) | pgdiff tiny, {args.steps} steps | {steps_head} "
        "| pgdiff real, 100 / 1000 steps (CPU s/step × N) |"
    )
    print("|---|---|---|" + "---|" * len(args.real_steps) + "---|")
    for task in TASKS:
        cells = [_cell(times.get((m, task), [])) for m in ("codeformer", "tiny")]
        measured = [_cell([real[task, n]]) if (task, n) in real else "—" for n in args.real_steps]
        per_step = [real[task, n][1] / n for n in args.real_steps if (task, n) in real]
        extrapolated = f"{100 * min(per_step) / 60:.0f} min / {1000 * min(per_step) / 3600:.1f} h" if per_step else "—"
        print(f"| {task} | {' | '.join(cells)} | {' | '.join(measured)} | {extrapolated} |")


def _cell(samples: list[tuple[float, float]]) -> str:
    if not samples:
        return "—"
    return f"{statistics.median(c for _, c in samples):.2f} ({statistics.median(w for w, _ in samples):.1f})"


def cuda_table(steps: int) -> None:
    device = torch.device("cuda")
    cf = codeformer_runs(device)
    runs = pgdiff_runs(IDDPMUNet(UNetConfig()).eval().requires_grad_(False), rrdb_module.RRDB_CONFIG, device, steps)
    print(
        f"\nCUDA ({torch.cuda.get_device_name(device)}), s/face\n\n"
        f"| task | codeformer | pgdiff real, {steps} steps | peak MB |\n|---|---|---|---|"
    )
    for task in TASKS:
        one = f"{timed(cf[task], device):.3f}" if task in cf else "—"
        torch.cuda.reset_peak_memory_stats(device)
        seconds = timed(runs[task], device)
        print(f"| {task} | {one} | {seconds:.1f} | {torch.cuda.max_memory_allocated(device) / 2**20:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="steps of the tiny-prior runs")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the cheap runs (median)")
    parser.add_argument(
        "--real-steps", type=int, nargs="+", default=[1, 2], help="step counts timed on the released prior's architecture"
    )
    parser.add_argument("--real-tasks", nargs="+", default=["colorize", "inpaint"], choices=TASKS)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--cuda", action="store_true", help="also every task on CUDA (100 steps) when a GPU is present")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu_table(args)
    if args.cuda and torch.cuda.is_available():
        cuda_table(100)
    elif args.cuda:
        print("\nno CUDA device here: the GPU table is not measured")


if __name__ == "__main__":
    main()
