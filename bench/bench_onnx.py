"""Seconds per face on PyTorch vs ONNX Runtime for every exportable base, and whole photos through `restore`.

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


def interleaved(a: Callable[[], object], b: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median seconds of ``a`` and ``b``, run in alternating order (a b, b a, …); the caller has run both once."""
    times: dict[str, list[float]] = {"a": [], "b": []}
    for i in range(repeat):
        order = (("a", a), ("b", b)) if i % 2 == 0 else (("b", b), ("a", a))
        for key, run in order:
            times[key].append(timed(run))
    return statistics.median(times["a"]), statistics.median(times["b"])


def bench_base(name: str, batches: list[int], threads: list[int], repeat: int, folder: Path) -> list[dict]:
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
        onnx_base = runtime.OnnxBase(spec, runtime.open_session(path, ["CPUExecutionProvider"], n), dict(knobs), path)
        for i, batch in enumerate(batches):
            crops = torch.rand(batch, 3, spec.input_size, spec.input_size, generator=torch.Generator().manual_seed(batch))
            torch_base = LoadedBase(spec, net, torch.device("cpu"), torch.float32, batch, dict(knobs))
            onnx_base.batch_size = batch
            diff = None  # checked (and both warmed up) on the first batch size only: the heavy bases take minutes per cell
            if i == 0:
                diff = float((torch_base.restore(crops) - onnx_base.restore(crops)).abs().max())
            t_torch, t_onnx = interleaved(partial(torch_base.restore, crops), partial(onnx_base.restore, crops), repeat)
            rows.append({"base": name, "threads": n, "batch": batch, "torch_s_per_face": t_torch / batch,
                         "onnx_s_per_face": t_onnx / batch, "ratio": t_onnx / t_torch, "max_abs_diff": diff,
                         "export_parity": report.max_abs_diff, "load": os.getloadavg()[0]})
            print(row_line(rows[-1]), flush=True)
        del onnx_base
    del net
    gc.collect()  # the next base's network and session replace these: keep one in memory at a time
    return rows


def row_line(r: dict) -> str:
    diff = "—" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}"
    return (f"| {r['base']} | {r['threads']} | {r['batch']} | {r['torch_s_per_face']:.2f} | {r['onnx_s_per_face']:.2f} | "
            f"**{r['ratio']:.2f}** | {diff} | {r['load']:.1f} |")


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


def bench_parts(count: int, repeat: int, threads: int) -> list[dict]:
    """RetinaFace R50 s/photo and ParseNet s/face on both runtimes (the same parts, each with its network)."""
    from bfrboost.faces.detect import RetinaFaceDetector
    from bfrboost.faces.parse import load_parser
    from bfrboost.io.read import read_image
    from bfrboost.onnx import faces

    torch.set_num_threads(threads)
    images = [read_image(p).rgb for p in photo_paths(count)]
    detector = RetinaFaceDetector("resnet50")
    parser = load_parser(required=True)
    crops = [cv2.resize(im, (512, 512), interpolation=cv2.INTER_AREA) for im in images]  # face-sized pixels
    on_onnx = faces.onnx_detector(detector, threads=threads), faces.onnx_parser(parser, threads=threads)
    rows = []
    for what, torch_run, onnx_run, per in (
        ("RetinaFace R50, s/photo", lambda: [detector.detect(im) for im in images],
         lambda: [on_onnx[0].detect(im) for im in images], len(images)),
        ("ParseNet, s/face (batch 4)", lambda: parser.masks(crops), lambda: on_onnx[1].masks(crops), len(crops)),
    ):
        t_torch, t_onnx = interleaved(torch_run, onnx_run, repeat)
        rows.append({"part": what, "threads": threads, "torch_s": t_torch / per, "onnx_s": t_onnx / per,
                     "ratio": t_onnx / t_torch, "same": _same(torch_run(), onnx_run()), "load": os.getloadavg()[0]})
        r = rows[-1]
        print(f"| {r['part']} | {threads} | {r['torch_s']:.3f} | {r['onnx_s']:.3f} | **{r['ratio']:.2f}** | {r['same']} | "
              f"{r['load']:.1f} |", flush=True)
    return rows


def _same(ours: list, theirs: list) -> str:
    """Detections: how many on each runtime and the largest box difference; masks: the largest difference."""
    if ours and isinstance(ours[0], np.ndarray):
        return f"mask diff {max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs, strict=True)):.1e}"
    boxes = [(a.box, b.box) for fa, fb in zip(ours, theirs, strict=True) for a, b in zip(fa, fb, strict=False)]
    worst = max((float(np.abs(a - b).max()) for a, b in boxes), default=0.0)
    return f"{sum(map(len, ours))} / {sum(map(len, theirs))} faces, box diff {worst:.1e} px"


def bench_photos(paths: list[Path], repeat: int, threads: int, folder: Path) -> dict:
    """Images/s of whole photos through ``Restorer.restore`` with GFPGAN v1.4 (random weights) on each runtime,
    each at its default batch size (what a user gets)."""
    from bfrboost.io.read import read_image
    from bfrboost.pipeline import Restorer

    images = [read_image(p).rgb for p in paths]
    torch.manual_seed(0)
    checkpoint = folder / "GFPGANv1.4.pth"
    torch.save({"params_ema": get_spec("gfpgan").build(None).state_dict()}, checkpoint)
    torch.set_num_threads(threads)
    restorers = {rt: Restorer("gfpgan", runtime=rt, weights=checkpoint, threads=threads, device="cpu", upscale=1,
                              detector="dlib") for rt in ("torch", "onnx")}
    assert restorers["onnx"].paster.parser is not None  # ParseNet from the temporary cache, on both runtimes
    results = {rt: restorers[rt].restore_batch(images) for rt in restorers}  # also the warm-up
    pairs = zip(results["torch"], results["onnx"], strict=True)
    level = max(int(np.abs(a.image.astype(int) - b.image.astype(int)).max()) for a, b in pairs)
    faces = sum(len(r.faces) for r in results["torch"])
    t_torch, t_onnx = interleaved(lambda: restorers["torch"].restore_batch(images),
                                  lambda: restorers["onnx"].restore_batch(images), repeat)
    return {"photos": len(images), "files": [p.name for p in paths], "faces": faces,
            "batch": {rt: r.base.batch_size for rt, r in restorers.items()}, "threads": threads,
            "torch_images_per_s": len(images) / t_torch, "onnx_images_per_s": len(images) / t_onnx,
            "ratio": t_onnx / t_torch, "max_level_diff": level, "load": os.getloadavg()[0]}


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
    parser.add_argument("--parts", action="store_true", help="also RetinaFace R50 and ParseNet, both runtimes")
    parser.add_argument("--out", type=Path, default=Path("results/bench_onnx"))
    args = parser.parse_args()
    for name in args.only or []:
        if name in NOT_EXPORTABLE or name not in BASES + ["gfpgan-1.3"]:
            parser.error(f"{name!r} has no ONNX graph; choose from {', '.join(BASES)}")

    import onnxruntime as ort

    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start\n")
    print("| base | threads | batch | PyTorch s/face | ONNX Runtime s/face | ONNX / PyTorch | max abs diff | load |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    rows: list[dict] = []
    parts: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in [] if args.no_bases else args.only or BASES:
            rows += bench_base(name, args.batch, args.threads, args.repeat, Path(tmp))
        os.environ["BFRBOOST_HOME"] = str(Path(tmp))  # random RetinaFace/ParseNet weights, the ONNX graphs
        random_checkpoints(Path(tmp))
        if args.parts:
            print("\n| network | threads | PyTorch s | ONNX Runtime s | ONNX / PyTorch | same result (detections; max mask diff) "
                  "| load |\n|---|---:|---:|---:|---:|---:|---:|", flush=True)
            parts = bench_parts(args.photos or 4, args.repeat, max(args.threads))
        paths = args.photo_files or photo_paths(args.photos)
        photos = bench_photos(paths, args.repeat, max(args.threads), Path(tmp)) if paths else None
    if photos:
        print(f"\nphotos: {', '.join(photos['files'])}; batch size (default): {photos['batch']}")
        print("\n| photos (faces) | threads | PyTorch images/s | ONNX Runtime images/s | ONNX / PyTorch time | max level diff "
              "| load |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        p = photos
        print(f"| {p['photos']} ({p['faces']}) | {p['threads']} | {p['torch_images_per_s']:.3f} | {p['onnx_images_per_s']:.3f} | "
              f"**{p['ratio']:.2f}** | {p['max_level_diff']} | {p['load']:.1f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "onnx.json").write_text(json.dumps({"faces": rows, "parts": parts, "photos": photos}, indent=1))


if __name__ == "__main__":
    main()
