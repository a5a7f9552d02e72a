"""Images per second on the real ``whole/`` photos: sequential vs overlapped runner, and Ray Data local.

Run: ``python bench/bench_throughput.py [--repeat N] [--device cpu|cuda] [--no-ray] [--no-real-base]``.

- base ``none`` on every ``whole/`` photo: ``FileRunner`` then ``OverlapRunner(workers=2)``, back to
  back ``repeat`` times (the machine is shared, so each pair is compared, and the median ratio is the
  number to quote), also over ``--rounds`` copies of the photos (a longer stream); one more
  overlapped run with forked prepare processes instead of threads.
- a real-size base (GFPGAN v1.4, random weights saved as safetensors and loaded through
  ``load_base`` like a downloaded checkpoint) on ``--real-images`` of the photos.
- ``restore_dataset`` on a local Ray with 2 CPUs (after ``ray.init``, which is not timed).
- on CUDA, the GPU's busy fraction during each run, sampled from ``nvidia-smi`` every 100 ms.

Prints a Markdown table and writes ``throughput.json`` and ``throughput.png`` into ``--out``.
Runs start from a warmed restorer (models loaded), and every run's output folder is fresh.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bfrboost.options import OutputOptions
from bfrboost.pipeline import Restorer
from bfrboost.runners.files import FileRunner
from bfrboost.runners.overlap import OverlapRunner
from bfrboost.safety import write_bytes

TESTDATA = Path(os.environ.get("BFRBOOST_TESTDATA", Path(__file__).resolve().parents[2] / "shared" / "testdata"))


class GpuBusy:
    """Mean ``utilization.gpu`` reported by nvidia-smi while the block runs (None without a GPU)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and shutil.which("nvidia-smi") is not None
        self.samples: list[float] = []

    def __enter__(self) -> GpuBusy:
        if self.enabled:
            self._proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100", "-i", "0"],
                stdout=subprocess.PIPE, text=True,
            )
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:
            try:
                self.samples.append(float(line.strip()) / 100.0)
            except ValueError:
                pass

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._proc.terminate()
            self._proc.wait()
            self._reader.join(timeout=2)

    @property
    def fraction(self) -> float | None:
        return round(statistics.fmean(self.samples), 3) if self.samples else None


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the prepare processes, once closed)."""
    return sum(getattr(resource.getrusage(who), field) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for field in ("ru_utime", "ru_stime"))


def timed(run: Callable[[], list], gpu: bool) -> tuple[float, float, float | None, list]:
    """(wall seconds, CPU seconds, GPU busy fraction, reports): CPU seconds do not depend on how
    busy the machine is, so they show the runner's own overhead even when the wall time is noisy."""
    with GpuBusy(gpu) as busy:
        cpu = cpu_seconds()
        start = time.perf_counter()
        reports = run()
        seconds = time.perf_counter() - start
        cpu = cpu_seconds() - cpu
    failed = [r for r in reports if r.error]
    if failed:
        raise SystemExit(f"bench run failed: {failed[0].error}")
    return seconds, cpu, busy.fraction, reports


def sequential(restorer: Restorer, paths: list[Path], outdir: Path) -> list:
    return list(FileRunner(restorer, OutputOptions(outdir=outdir, overwrite=True)).run(paths))


def overlapped(restorer: Restorer, paths: list[Path], outdir: Path, workers: int, mode: str = "auto") -> list:
    """The pool start (fork) is inside the timing: the CLI pays it on every run."""
    with OverlapRunner(restorer, OutputOptions(outdir=outdir, overwrite=True), workers=workers, mode=mode) as runner:
        return list(runner.run(paths))


def random_gfpgan(folder: Path) -> Path:
    """GFPGAN v1.4's exact key names and shapes with random values, as a checkpoint file."""
    import torch
    from safetensors.torch import save_file

    from bfrboost.backbones.registry import get_spec

    torch.manual_seed(0)
    net = get_spec("gfpgan").build(None)
    path = folder / "gfpgan_random.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def _spin(seconds: float) -> float:
    start, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        pass
    return time.process_time() - cpu


def cores_available(seconds: float = 1.0) -> float:
    """How many cores two busy processes actually get right now: on a shared machine this, not
    ``os.cpu_count()``, bounds what any parallel runner can gain (2.0 on an idle 2-core machine)."""
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(2) as pool:
        return round(sum(pool.map(_spin, [seconds, seconds])) / seconds, 2)


def rounds_of(paths: list[Path], rounds: int, folder: Path) -> list[Path]:
    """The photos ``rounds`` times over (links with distinct names): a longer stream, so the
    pipeline's fill and drain at both ends weigh less than with 8 photos, the largest one last."""
    folder.mkdir()
    links = []
    for index in range(rounds):
        for path in paths:
            link = folder / f"{path.stem}_r{index}{path.suffix}"
            os.symlink(path, link)
            links.append(link)
    return links


def compare(name: str, restorer: Restorer, paths: list[Path], work: Path, repeat: int, workers: int, gpu: bool) -> dict:
    rows = []
    for index in range(repeat):
        cores = cores_available()
        s_sec, s_cpu, s_busy, reports = timed(lambda i=index: sequential(restorer, paths, work / f"{name}-seq{i}"), gpu)
        o_sec, o_cpu, o_busy, _ = timed(lambda i=index: overlapped(restorer, paths, work / f"{name}-ovl{i}", workers), gpu)
        rows.append({"sequential_s": round(s_sec, 3), "overlapped_s": round(o_sec, 3), "ratio": round(s_sec / o_sec, 3),
                     "sequential_cpu_s": round(s_cpu, 3), "overlapped_cpu_s": round(o_cpu, 3),
                     "cores_available": cores, "gpu_busy_sequential": s_busy, "gpu_busy_overlapped": o_busy,
                     "load_avg_1min": round(os.getloadavg()[0], 2)})
        print(
            f"  {name} pair {index + 1}: sequential {s_sec:.2f} s ({s_cpu:.2f} CPU s), overlapped {o_sec:.2f} s "
            f"({o_cpu:.2f} CPU s), ratio {s_sec / o_sec:.2f}, cores available {cores}, load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    faces = sum(len(r.faces) for r in reports)
    best_seq = min(r["sequential_s"] for r in rows)
    best_ovl = min(r["overlapped_s"] for r in rows)
    return {
        "images": len(paths),
        "faces": faces,
        "pairs": rows,
        "median_ratio": round(statistics.median(r["ratio"] for r in rows), 3),
        "cpu_overhead": round(statistics.median(r["overlapped_cpu_s"] / r["sequential_cpu_s"] for r in rows), 3),
        "sequential_images_per_s": round(len(paths) / best_seq, 3),
        "overlapped_images_per_s": round(len(paths) / best_ovl, 3),
    }


def ray_local(paths: list[Path], work: Path) -> dict:
    import ray

    from bfrboost.runners.dataset.cluster import restore_dataset

    src = work / "ray-src"
    src.mkdir()
    for path in paths:
        os.symlink(path, src / path.name)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        start = time.perf_counter()
        reports = restore_dataset(str(src), str(work / "ray-dst"), base="none", device="cpu")
        seconds = time.perf_counter() - start
    finally:
        ray.shutdown()
    assert not any(r.error for r in reports), [r.error for r in reports if r.error]
    return {"images": len(paths), "seconds": round(seconds, 3), "images_per_s": round(len(paths) / seconds, 3)}


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values = [], []
    for name in [key for key in results if key.startswith("none") or key == "gfpgan"]:
        if isinstance(results[name], dict) and "sequential_images_per_s" in results[name]:
            labels += [f"{name}\nsequential", f"{name}\noverlapped"]
            values += [results[name]["sequential_images_per_s"], results[name]["overlapped_images_per_s"]]
    if "ray" in results:
        labels.append("none\nRay local 2 CPU")
        values.append(results["ray"]["images_per_s"])
    fig, ax = plt.subplots(figsize=(1.6 * len(labels) + 1, 3.2), dpi=120)
    ax.bar(labels, values, color=["#2a7" if "overlapped" in label else "#27a" if "Ray" in label else "#999" for label in labels])
    for x, v in enumerate(values):
        ax.text(x, v, f"{v:.2f}", ha="center", va="bottom")
    ax.set_ylabel("images / s (best run)")
    ax.set_title(f"whole/ photos, {results['device']}, {os.cpu_count()} cores")
    fig.tight_layout()
    with tempfile.TemporaryDirectory() as tmp:
        fig.savefig(Path(tmp) / "chart.png")
        write_bytes(path, (Path(tmp) / "chart.png").read_bytes(), overwrite=True)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="sequential/overlapped pairs for base none")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="also time whole/ this many times over (steady state)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--real-images", type=int, default=4, help="photos (smallest first) for the real-size base")
    parser.add_argument("--no-real-base", action="store_true")
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("results/bench_throughput"))
    args = parser.parse_args()

    paths = sorted((TESTDATA / "whole").iterdir())
    results: dict = {"cpu_count": os.cpu_count(), "load_avg_at_start": [round(v, 2) for v in os.getloadavg()]}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        restorer = Restorer("none", device=args.device)
        results["device"] = str(restorer.device)
        gpu = restorer.device.type == "cuda"
        restorer.prepare(np.zeros((64, 64, 3), np.uint8))  # load the detector before timing
        print(f"base none, {len(paths)} photos, {args.workers} workers, device {restorer.device}", flush=True)
        results["none"] = compare("none", restorer, paths, work, args.repeat, args.workers, gpu)
        if args.rounds > 1:
            stream = rounds_of(paths, args.rounds, work / "stream")
            print(f"base none, whole/ x{args.rounds} ({len(stream)} photos)", flush=True)
            results[f"none_x{args.rounds}"] = compare(
                f"none_x{args.rounds}", restorer, stream, work, args.repeat, args.workers, gpu
            )
        start = time.perf_counter()
        overlapped(restorer, paths, work / "processes", args.workers, mode="process")
        results["none"]["overlapped_processes_s"] = round(time.perf_counter() - start, 3)
        print(
            f"  overlapped with forked prepare processes instead of threads: {results['none']['overlapped_processes_s']:.2f} s",
            flush=True,
        )

        if not args.no_real_base:
            small = sorted(paths, key=lambda p: p.stat().st_size)[: args.real_images]
            real = Restorer("gfpgan", weights=random_gfpgan(work), device=args.device)
            real.prepare(np.zeros((64, 64, 3), np.uint8))
            print(f"base gfpgan (random weights), {len(small)} photos", flush=True)
            results["gfpgan"] = compare("gfpgan", real, small, work, 1, args.workers, gpu)
            del real

        if not args.no_ray:
            try:
                results["ray"] = ray_local(paths, work)
                print(f"  Ray local 2 CPUs: {results['ray']['seconds']:.2f} s", flush=True)
            except ImportError:
                print("  Ray local: skipped (pip install -e '.[cluster]')")

    results["load_avg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    print(
        "\n| run | images | sequential img/s | overlapped img/s | median ratio (pairs) | CPU s ovl / seq "
        "| cores available (pairs) | GPU busy seq / ovl |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in ("none", f"none_x{args.rounds}", "gfpgan"):
        if name in results:
            r = results[name]
            busy = " / ".join(str(r["pairs"][-1][k]) for k in ("gpu_busy_sequential", "gpu_busy_overlapped"))
            print(
                f"| base {name} | {r['images']} | {r['sequential_images_per_s']:.2f} | {r['overlapped_images_per_s']:.2f} | "
                f"{r['median_ratio']:.2f} ({', '.join(str(p['ratio']) for p in r['pairs'])}) | {r['cpu_overhead']:.2f} | "
                f"{', '.join(str(p['cores_available']) for p in r['pairs'])} | {busy} |"
            )
    if "ray" in results:
        print(f"| Ray local, 2 CPUs, base none | {results['ray']['images']} | | {results['ray']['images_per_s']:.2f} | | | | |")
    print(f"\nload average (1, 5, 15 min): start {results['load_avg_at_start']}, end {results['load_avg_at_end']}")
    write_bytes(args.out / "throughput.json", json.dumps(results, indent=2).encode(), overwrite=True)
    chart(results, args.out / "throughput.png")
    print(f"wrote {args.out / 'throughput.json'} and {args.out / 'throughput.png'}")


if __name__ == "__main__":
    main()
