"""Seconds per face and peak memory of every base restorer, next to the upstream implementation.

Each registry adapter is built in its released config with random weights (no downloads) and run on
random 512 px crops through ``LoadedBase.restore`` at each batch size. Where the network is a
spandrel architecture, spandrel's own descriptor call on the same weights is timed too: that is the
upstream code path a user of spandrel would run, so the ratio shows what our wrapper costs (it
should be ~1.0; the descriptor skips the normalisation, which costs nothing measurable).

    python bench/bench_backbones.py                      # every adapter, batch 1 and 4, CPU
    python bench/bench_backbones.py --only gfpgan --only codeformer --batch 1 --device cuda

Peak memory is the largest resident-set growth during the forward (sampled every 5 ms) on CPU, and
``torch.cuda.max_memory_allocated`` growth on CUDA. Without warm-up, a model's first cell (ours,
smallest batch) also pays one-time allocator/oneDNN growth, ~100 MB on CPU.

On a shared machine, time is noise-dominated: compare ratios from runs at low load, or use
``--threads 1`` (two threads on an oversubscribed CPU can spin against each other).
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from bfrboost.backbones.registry import LoadedBase, get_spec, names, validate_knobs
from bfrboost.errors import BfrboostError

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


@dataclass
class Measure:
    seconds: float
    peak_bytes: int


def measure(run: Callable[[], object], device: torch.device) -> Measure:
    """Wall time of ``run()`` and the peak memory it added (RSS on CPU, allocator on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        run()
        torch.cuda.synchronize(device)
        return Measure(time.perf_counter() - start, torch.cuda.max_memory_allocated(device) - base)

    base = peak = rss_bytes()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.005):
            peak = max(peak, rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    return Measure(seconds, max(peak, rss_bytes()) - base)


def spandrel_call(net: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """spandrel's descriptor for the same weights, when the network is one of spandrel's architectures."""
    if not type(net).__module__.startswith(("spandrel.", "spandrel_extra_arches.")):
        return None
    import spandrel
    import spandrel_extra_arches

    spandrel_extra_arches.install(ignore_duplicates=True)
    descriptor = spandrel.ModelLoader().load_from_state_dict(net.state_dict()).eval()
    descriptor.to(next(net.parameters()).device)
    return descriptor


def _inference(call: Callable[[torch.Tensor], torch.Tensor], crops: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return call(crops)


#: DifFace runs 100 prior passes per face by default (~35 min per face on a 2-core CPU): bench it at
#: its minimum of 10 steps and batch 1; seconds per step = the table's s/face / 10 (plus the SwinIR pass).
SLOW = {"difface": ({"steps": 10}, [1])}


def bench_one(name: str, batches: list[int], device: torch.device, repeat: int, warmup: int) -> list[dict]:
    spec = get_spec(name)
    knobs, batches = SLOW.get(name, ({}, batches)) if device.type == "cpu" else ({}, batches)
    torch.manual_seed(0)
    net = spec.build(None).eval().requires_grad_(False).to(device)
    params = sum(p.numel() for p in net.parameters())
    upstream = spandrel_call(net)
    rows = []
    for batch in batches:
        base = LoadedBase(spec, net, device, torch.float32, batch, validate_knobs(name, knobs))
        crops = torch.rand(batch, 3, spec.input_size, spec.input_size, device=device)
        runs = {"ours": partial(base.restore, crops)}
        if upstream is not None:
            runs["upstream"] = partial(_inference, upstream, crops)
        row = {"name": name + "".join(f" ({k}={v})" for k, v in knobs.items()), "batch": batch, "params": params}
        for label, run in runs.items():
            for _ in range(warmup):
                run()
            row[label] = min((measure(run, device) for _ in range(repeat)), key=lambda m: m.seconds)
        rows.append(row)
    del net, upstream
    return rows


HEADER = [
    "| base | batch | params (M) | ours s/face | upstream s/face | ours / upstream "
    "| peak mem ours (MB) | peak mem upstream (MB) |",
    "|---|---:|---:|---:|---:|---:|---:|---:|",
]


def markdown(rows: list[dict]) -> list[str]:
    lines = []
    for r in rows:
        ours, up = r["ours"], r.get("upstream")
        per_face = ours.seconds / r["batch"]
        lines.append(
            f"| {r['name']} | {r['batch']} | {r['params'] / 1e6:.1f} | {per_face:.3f} | "
            + (f"{up.seconds / r['batch']:.3f} | {ours.seconds / up.seconds:.2f} | " if up else "— | — | ")
            + f"{ours.peak_bytes / 2**20:.0f} | "
            + (f"{up.peak_bytes / 2**20:.0f} |" if up else "— |")
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", metavar="NAME", help="bench only this base (repeatable); default: all")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="batch sizes (default: 1 4)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per cell; the fastest is reported")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs first (default: 0 on CPU, 1 on CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    warmup = args.warmup if args.warmup is not None else int(device.type == "cuda")
    selected = args.only or [n for n in names() if n != "none"]
    for name in selected:
        get_spec(name)  # unknown names fail before the first (slow) model

    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, device {device}, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}, warmup {warmup}, best of {args.repeat}\n"
    )
    print("\n".join(HEADER), flush=True)
    for name in selected:
        print("\n".join(markdown(bench_one(name, args.batch, device, args.repeat, warmup))), flush=True)


if __name__ == "__main__":
    try:
        main()
    except BfrboostError as exc:
        raise SystemExit(f"error: {exc}") from None
