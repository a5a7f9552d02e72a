"""Seconds per face on PyTorch vs the ONNX graph for every exportable base, and whole photos through `restore`.

The graph runs on each ``--providers`` engine (default: ONNX Runtime's CPU provider, and OpenVINO where
it is installed: ``pip install 'bfrboost[openvino]'``), each timed against PyTorch in the same loop.

Each base is built in its released configuration with random weights (no downloads), exported with
``bfrboost.onnx.export.export_onnx`` (parity checked on a real face) and timed at each batch size and
thread count, PyTorch and ONNX Runtime **interleaved** (A, B, B, A, …) and the median of ``--repeat``
pairs reported, because the machine is shared. "Batch 4" is one session run of four faces
(``OnnxBase.restore``; the graphs' batch axis is dynamic), against PyTorch's one forward of 4.

Then the photo's other networks (``--parts``): RetinaFace R50 seconds per photo on the ``--photos``
photos (the detector's own resize to a 640 px short side) and ParseNet seconds per face, random
weights, PyTorch vs ONNX Runtime (:mod:`bfrboost.onnx.faces`), at the largest ``--threads``.

Then whole photos: ``Restorer(base, runtime=…)`` on the smallest ``--photos`` of ``whole/``, GFPGAN
v1.4 and ParseNet random weights loaded from a temporary weights cache (the cache's SHA-256 pin is
skipped for these random files), faces found by dlib (random RetinaFace weights find none), both
runtimes interleaved, images/s (median).

    python bench/bench_onnx.py                                 # every base, batch 1 4, threads 1 2
    python bench/bench_onnx.py --only gfpgan --only gpen --repeat 2 --photos 4 --parts
    python bench/bench_onnx.py --only restoreformer --only codeformer --only vqfr --repeat 1 --photos 0
    python bench/bench_onnx.py --no-bases --threads 2 --repeat 2 --photo-files a.jpg b.jpg c.jpg   # another photo set

Writes ``results/bench_onnx/onnx.json`` and prints Markdown tables with the load average.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch

from bfrboost.backbones.registry import LoadedBase, get_spec, validate_knobs
from bfrboost.onnx import runtime
from bfrboost.onnx.export import NOT_EXPORTABLE, export_onnx

TESTDATA = Path(os.environ.get("BFRBOOST_TESTDATA", Path(__file__).resolve().parents[2] / "shared" / "testdata"))
BASES = ["gfpgan", "restoreformer", "codeformer", "gpen", "vqfr"]  # gfpgan-1.3 is gfpgan's graph with other weights


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def interleaved(runs: dict[str, Callable[[], object]], repeat: int, cpu_seconds: dict[str, float] | None = None
                ) -> dict[str, float]:
    """Median wall seconds of each run, in alternating order (a b c, c b a, …); the caller has run each once.
    ``cpu_seconds``, if given, receives each run's median CPU seconds (this process, all its threads)."""
    times: dict[str, list[float]] = {key: [] for key in runs}
    cpu: dict[str, list[float]] = {key: [] for key in runs}
    for i in range(repeat):
        for key in list(runs) if i % 2 == 0 else list(reversed(runs)):
            start = time.process_time()
            times[key].append(timed(runs[key]))
            cpu[key].append(time.process_time() - start)
    if cpu_seconds is not None:
        cpu_seconds.update({key: statistics.median(t) for key, t in cpu.items()})
    return {key: statistics.median(t) for key, t in times.items()}


def engines(requested: list[str] | None) -> list[str]:
    """Short provider names to time the graphs on: ``requested``, or the CPU provider and OpenVINO if installed."""
    have = runtime.available_providers()
    return requested or [p for p in ("cpu", "openvino") if p in have]


def _ratios(row: dict, seconds: dict[str, float], per: int) -> None:
    """``row[ENGINE + "_s"]`` per face/photo and ``row[ENGINE + "_ratio"]`` against PyTorch, for each engine timed."""
    for key, t in seconds.items():
        row[f"{key}_s"] = t / per
        if key != "torch":
            row[f"{key}_ratio"] = t / seconds["torch"]


def bench_base(name: str, batches: list[int], threads: list[int], repeat: int, folder: Path, providers: list[str]) -> list[dict]:
    spec = get_spec(name)
    torch.manual_seed(0)
    net = spec.build(None).eval().requires_grad_(False)
    path = folder / f"{name}.onnx"
    report = export_onnx(name, path, net=net, overwrite=True)
    print(f"<!-- {report.summary()} -->", flush=True)
    knobs = validate_knobs(name, {})
    rows = []
    for n in threads:
        torch.set_num_threads(n)
        graphs = {p: runtime.OnnxBase(spec, runtime.open_session(path, runtime.choose_providers([p]), n), dict(knobs), path)
                  for p in providers}
        for i, batch in enumerate(batches):
            crops = torch.rand(batch, 3, spec.input_size, spec.input_size, generator=torch.Generator().manual_seed(batch))
            bases = {"torch": LoadedBase(spec, net, torch.device("cpu"), torch.float32, batch, dict(knobs)), **graphs}
            for graph in graphs.values():
                graph.batch_size = batch
            row = {"base": name, "threads": n, "batch": batch, "export_parity": report.max_abs_diff}
            if i == 0:  # checked (and all warmed up) on the first batch size only: the heavy bases take minutes per cell
                reference = bases["torch"].restore(crops)
                for p, graph in graphs.items():
                    row[f"{p}_max_abs_diff"] = float((reference - graph.restore(crops)).abs().max())
            _ratios(row, interleaved({k: partial(b.restore, crops) for k, b in bases.items()}, repeat), batch)
            rows.append({**row, "load": os.getloadavg()[0]})
            print(row_line(rows[-1], providers), flush=True)
        del graphs
    del net
    gc.collect()  # the next base's network and session replace these: keep one in memory at a time
    return rows


#: Column names of the engines (``--providers`` short names).
ENGINE_NAMES = {"cpu": "ONNX Runtime (CPU)", "openvino": "OpenVINO"}


def _engine(p: str) -> str:
    return ENGINE_NAMES.get(p, f"ONNX Runtime ({p})")


def _cells(r: dict, providers: list[str], digits: int = 2) -> str:
    """``PyTorch | engine s | engine ÷ PyTorch | …`` for one row."""
    cells = [f"{r['torch_s']:.{digits}f}"] + [f"{r[f'{p}_s']:.{digits}f} | **{r[f'{p}_ratio']:.2f}**" for p in providers]
    return " | ".join(cells)


def _header(first: str, providers: list[str], last: str) -> str:
    engines_ = " | ".join(f"{_engine(p)} s | ÷ PyTorch" for p in providers)
    columns = f"| {first} | PyTorch s | {engines_} | {last} |"
    return columns + "\n|" + "---|" * (first.count("|") + 1) + "---:|" * (columns.count("|") - first.count("|") - 2)


def row_line(r: dict, providers: list[str]) -> str:
    diffs = ", ".join(f"{r[f'{p}_max_abs_diff']:.1e}" if f"{p}_max_abs_diff" in r else "—" for p in providers)
    return f"| {r['base']} | {r['threads']} | {r['batch']} | {_cells(r, providers)} | {diffs} | {r['load']:.1f} |"


def photo_paths(count: int) -> list[Path]:
    return sorted((TESTDATA / "whole").glob("*.jpg"), key=lambda p: p.stat().st_size)[:count]


def random_checkpoints(home: Path) -> None:
    """Random RetinaFace R50 (scoring no face) and ParseNet weights under their official names in ``home``
    (a temporary weights cache), let past the cache's SHA-256 pin: the bench times networks, not weights."""
    from facexlib.detection.retinaface import RetinaFace
    from facexlib.parsing.parsenet import ParseNet

    from bfrboost import weights
    from bfrboost.faces.detect import RETINAFACE_FILES
    from bfrboost.faces.parse import PARSENET_FILE

    torch.manual_seed(0)
    detector = RetinaFace(network_name="resnet50", half=False, device=torch.device("cpu"))
    for head in detector.ClassHead:  # random heads score thousands of boxes: NMS would be timed, not the network
        head.conv1x1.weight.data.zero_()
        head.conv1x1.bias.data = torch.tensor([8.0, -8.0] * (head.conv1x1.bias.numel() // 2))
    torch.save(detector.state_dict(), home / RETINAFACE_FILES["resnet50"])
    torch.save(ParseNet(in_size=512, out_size=512, parsing_ch=19).state_dict(), home / PARSENET_FILE)
    weights.ensure = lambda file, **_: weights.home() / file


def bench_parts(count: int, repeat: int, threads: int, providers: list[str]) -> list[dict]:
    """RetinaFace R50 s/photo and ParseNet s/face on PyTorch and each engine (the same parts, each with its network)."""
    from bfrboost.faces.detect import RetinaFaceDetector
    from bfrboost.faces.parse import load_parser
    from bfrboost.io.read import read_image
    from bfrboost.onnx import faces

    torch.set_num_threads(threads)
    images = [read_image(p).rgb for p in photo_paths(count)]
    detector = RetinaFaceDetector("resnet50")
    parser = load_parser(required=True)
    crops = [cv2.resize(im, (512, 512), interpolation=cv2.INTER_AREA) for im in images]  # face-sized pixels
    detectors = {"torch": detector, **{p: faces.onnx_detector(detector, [p], threads) for p in providers}}
    parsers = {"torch": parser, **{p: faces.onnx_parser(parser, [p], threads) for p in providers}}
    rows = []
    for what, runs, per in (
        ("RetinaFace R50, s/photo", {k: partial(lambda d: [d.detect(im) for im in images], d) for k, d in detectors.items()},
         len(images)),
        ("ParseNet, s/face (batch 4)", {k: partial(p.masks, crops) for k, p in parsers.items()}, len(crops)),
    ):
        reference = runs["torch"]()
        row = {"part": what, "threads": threads, "same": {p: _same(reference, runs[p]()) for p in providers}}
        _ratios(row, interleaved(runs, repeat), per)
        rows.append({**row, "load": os.getloadavg()[0]})
        print(f"| {what} | {threads} | {_cells(row, providers, 3)} | {'; '.join(row['same'].values())} | "
              f"{rows[-1]['load']:.1f} |", flush=True)
    return rows


def _same(ours: list, theirs: list) -> str:
    """Detections: how many on each runtime and the largest box difference; masks: the largest difference."""
    if ours and isinstance(ours[0], np.ndarray):
        return f"mask diff {max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs, strict=True)):.1e}"
    boxes = [(a.box, b.box) for fa, fb in zip(ours, theirs, strict=True) for a, b in zip(fa, fb, strict=False)]
    worst = max((float(np.abs(a - b).max()) for a, b in boxes), default=0.0)
    return f"{sum(map(len, ours))} / {sum(map(len, theirs))} faces, box diff {worst:.1e} px"


def bench_photos(paths: list[Path], repeat: int, threads: int, folder: Path, providers: list[str]) -> dict:
    """Seconds per photo through ``Restorer.restore`` with GFPGAN v1.4 (random weights) on PyTorch and each engine,
    each at its default batch size (what a user gets)."""
    from bfrboost.io.read import read_image
    from bfrboost.pipeline import Restorer

    images = [read_image(p).rgb for p in paths]
    torch.manual_seed(0)
    checkpoint = folder / "GFPGANv1.4.pth"
    torch.save({"params_ema": get_spec("gfpgan").build(None).state_dict()}, checkpoint)
    torch.set_num_threads(threads)
    common = {"weights": checkpoint, "threads": threads, "device": "cpu", "upscale": 1, "detector": "dlib"}
    restorers = {"torch": Restorer("gfpgan", **common),
                 **{p: Restorer("gfpgan", runtime="onnx", providers=(p,), **common) for p in providers}}
    assert all(r.paster.parser is not None for r in restorers.values())  # ParseNet from the temporary cache, on each engine
    results = {k: r.restore_batch(images) for k, r in restorers.items()}  # also the warm-up

    def level(p: str) -> int:
        pairs = zip(results["torch"], results[p], strict=True)
        return max(int(np.abs(a.image.astype(int) - b.image.astype(int)).max()) for a, b in pairs)

    row = {"photos": len(images), "files": [p.name for p in paths], "faces": sum(len(r.faces) for r in results["torch"]),
           "batch": {k: r.base.batch_size for k, r in restorers.items()}, "threads": threads,
           "max_level_diff": {p: level(p) for p in providers}}
    cpu: dict[str, float] = {}
    _ratios(row, interleaved({k: partial(r.restore_batch, images) for k, r in restorers.items()}, repeat, cpu), len(images))
    row["process_cpu_s"] = {k: t / len(images) for k, t in cpu.items()}  # CPU seconds per photo: spinning threads count here
    row["process_cpu_ratio"] = {p: cpu[p] / cpu["torch"] for p in providers}
    return {**row, "load": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", metavar="NAME", help="bench only this base (repeatable); default: all")
    parser.add_argument("--no-bases", action="store_true", help="skip the per-face table (e.g. --parts alone)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=3, help="interleaved pairs per cell; the median is reported")
    parser.add_argument("--photos", type=int, default=4, help="whole/ photos for the images/s run (0: skip)")
    parser.add_argument("--photo-files", type=Path, nargs="+", metavar="PHOTO",
                        help="whole photos for the images/s run instead of the smallest --photos of whole/")
    parser.add_argument("--parts", action="store_true", help="also RetinaFace R50 and ParseNet, on every engine")
    parser.add_argument("--providers", nargs="+", metavar="NAME",
                        help="engines for the graphs (--providers names); default: cpu, and openvino if installed")
    parser.add_argument("--out", type=Path, default=Path("results/bench_onnx"))
    args = parser.parse_args()
    for name in args.only or []:
        if name in NOT_EXPORTABLE or name not in BASES + ["gfpgan-1.3"]:
            parser.error(f"{name!r} has no ONNX graph; choose from {', '.join(BASES)}")

    import onnxruntime as ort

    providers = engines(args.providers)
    openvino = f", openvino {importlib.metadata.version('openvino')}" if "openvino" in providers else ""
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}{openvino}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start\n")
    print(_header("base | threads | batch", providers, "max abs diff (" + ", ".join(providers) + ") | load"), flush=True)
    rows: list[dict] = []
    parts: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in [] if args.no_bases else args.only or BASES:
            rows += bench_base(name, args.batch, args.threads, args.repeat, Path(tmp), providers)
        os.environ["BFRBOOST_HOME"] = str(Path(tmp))  # random RetinaFace/ParseNet weights, the ONNX graphs
        random_checkpoints(Path(tmp))
        if args.parts:
            print("\n" + _header("network | threads", providers, "same result (detections; max mask diff) | load"), flush=True)
            parts = bench_parts(args.photos or 4, args.repeat, max(args.threads), providers)
        paths = args.photo_files or photo_paths(args.photos)
        photos = bench_photos(paths, args.repeat, max(args.threads), Path(tmp), providers) if paths else None
    if photos:
        p = photos
        print(f"\nphotos: {', '.join(p['files'])}; batch size (default): {p['batch']}\n")
        print(_header("photos (faces) | threads", providers, "max level diff | load"))
        print(f"| {p['photos']} ({p['faces']}) | {p['threads']} | {_cells(p, providers)} | "
              f"{', '.join(map(str, p['max_level_diff'].values()))} | {p['load']:.1f} |")
        cpu = ", ".join(f"{_engine(e)} {p['process_cpu_s'][e]:.2f} s ({p['process_cpu_ratio'][e]:.2f})" for e in providers)
        print(f"\nCPU seconds per photo (process, all threads; ÷ PyTorch): PyTorch {p['process_cpu_s']['torch']:.2f} s, {cpu}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "onnx.json").write_text(json.dumps({"faces": rows, "parts": parts, "photos": photos}, indent=1))


if __name__ == "__main__":
    main()
