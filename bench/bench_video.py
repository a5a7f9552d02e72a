"""Video: frames/s split by stage, peak memory vs clip length, and temporal stability of the faces.

Run: ``python bench/bench_video.py [--out bench/results/video] [--frames 60] [--lengths 10 60]``.
Clips are made from the real photo ``whole/06.png`` (two faces): a 640×360 window panning across it
(``tests.support.clips``), 25 fps, with an AAC track.

1. Speed: base ``none`` on the CPU (dlib detector), seconds per frame for decode, detect, smooth,
   align, base, paste, encode; on CUDA also with NVDEC/NVENC (``--device cuda``). Detection on every
   frame (``--detect-every 1``, what every version before key frames did) and on key frames with
   optical-flow following between (the default), run alternately ``--repeats`` times (median): the
   machine is shared, so only numbers from the same run compare; the load average is recorded.
2. Memory: peak RSS (``VmHWM``) of a child process restoring a 10 s and a 60 s clip. The child's
   detector is a stub that returns the faces' known landmarks (shifted with the pan), so 1500 frames
   take a minute instead of ten on 2 cores; decode, audio copy, batching, align, paste and encode —
   everything whose memory could grow with the clip — run for real.
3. Stability: mean absolute frame-to-frame difference inside the face regions, per-frame landmarks
   (``--no-smooth``) vs smoothed, each with detection on every frame and on key frames, on a 1 px/frame
   pan. ``none`` would paste the crop back unchanged,
   so a stand-in base makes crop placement visible the way a real restorer does: it blends each crop
   50 % with one fixed sharp face in template coordinates (a restorer's face prior). Reported raw and
   motion-compensated (frame t shifted back by the known pan), and for the input clip itself.

Writes ``video.json`` and ``video.png`` (stage bars, RSS vs length) into ``--out``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bfrboost.faces import get_detector
from bfrboost.faces.types import Face
from bfrboost.io.read import read_image
from bfrboost.options import VideoOptions
from bfrboost.pipeline import Restorer
from bfrboost.runners.video import VideoRunner
from bfrboost.safety import write_bytes
from tests.support.clips import make_pan_clip, pan_offset

TESTDATA = Path(os.environ.get("BFRBOOST_TESTDATA", Path(__file__).resolve().parents[2] / "shared" / "testdata"))
SIZE = (640, 360)
ORIGIN = (40.0, 130.0)  # both faces of 06.png inside the window
STABLE_ORIGIN = (20.0, 130.0)  # the stability pan (1 px/frame to the right) stays inside the 726 px photo
PAN, PERIOD = (0.5, 0.2), 120  # px per frame, back and forth every 120 frames
DETECT_EVERY = VideoOptions().detect_every  # the default key-frame interval
STAGES = ("decode", "detect", "smooth", "align", "base", "paste", "encode")


def photo() -> np.ndarray:
    return read_image(TESTDATA / "whole" / "06.png").rgb


def restore(clip: Path, outdir: Path, restorer: Restorer, **options: Any) -> dict:
    start, cpu = time.perf_counter(), time.process_time()
    report = next(VideoRunner(restorer, VideoOptions(outdir, overwrite=True, **options)).run([clip]))
    cpu = time.process_time() - cpu
    if report.error:
        raise SystemExit(report.error)
    wall = time.perf_counter() - start
    frames = report.extra["frames"]
    return {
        "frames": frames,
        "faces": report.extra["face_count"],
        "fps": round(frames / wall, 2),
        "frames_per_cpu_second": round(frames / cpu, 2),  # all of this process's threads: less hit by other jobs
        "ms_per_frame": {k: round(1000 * report.seconds.get(k, 0.0) / frames, 2) for k in STAGES},
        "key_frames": report.extra["key_frames"],
        "decoder": report.extra["decoder"],
        "encoder": report.extra["encoder"],
        "output": report.output,
    }


class StubDetector:
    """The photo's faces, found once, moved with the pan of :func:`tests.support.clips.pan_offset`."""

    name = "stub"

    def __init__(self, faces: list[Face]) -> None:
        self.faces, self.index = faces, 0

    def detect(self, image: np.ndarray) -> list[Face]:
        shift = pan_offset(self.index, PAN, ORIGIN, PERIOD)
        self.index += 1
        return [Face(box=f.box - np.tile(shift, 2), score=f.score, landmarks=f.landmarks - shift) for f in self.faces]


def rss_child(clip: str, outdir: str) -> None:
    """Restore ``clip`` with the stub detector, then print this process's peak RSS in MiB."""
    torch.set_num_threads(1)
    restorer = Restorer("none", device="cpu", detector="dlib", upscale=1)
    restorer.finder.detector = StubDetector(get_detector("dlib").detect(photo()))
    restore(Path(clip), Path(outdir), restorer, detect_every=1)  # the stub counts its calls as frames
    with open("/proc/self/status") as status:
        hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
    print(json.dumps({"peak_rss_mib": round(hwm / 1024, 1)}))


class TemplateBase:
    """Stand-in base: each crop blended 50 % with one fixed face in template coordinates."""

    name = "template"

    def __init__(self, template: np.ndarray) -> None:
        self.template = torch.from_numpy(template).permute(2, 0, 1).float().div(255)[None]

    def restore(self, crops: torch.Tensor) -> torch.Tensor:
        return 0.5 * crops + 0.5 * self.template.to(crops.device)


def face_mask(faces: list[Face], shift: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The faces' boxes (found once on the photo) in the frame whose window starts at ``shift``."""
    mask = np.zeros(shape, bool)
    for face in faces:
        x1, y1, x2, y2 = (face.box - np.tile(shift, 2)).round().astype(int)
        mask[max(y1, 0) : max(y2, 0), max(x1, 0) : max(x2, 0)] = True
    return mask


def flicker(path: Path, faces: list[Face], pan: int) -> dict:
    """Mean |frame t − frame t−1| over the face boxes: raw, and with frame t shifted back by ``pan`` px."""
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24").astype(np.float32) for f in container.decode(video=0)]
    raw, compensated = [], []
    for t in range(1, len(frames)):
        mask = face_mask(faces, np.array(STABLE_ORIGIN) + [t * pan, 0], frames[t].shape[:2])
        raw.append(np.abs(frames[t] - frames[t - 1])[mask].mean())
        # content moves left by ``pan``: pixel x of frame t is pixel x + pan of frame t − 1
        diff = np.abs(frames[t][:, :-pan] - frames[t - 1][:, pan:])
        compensated.append(diff[mask[:, :-pan]].mean())
    return {"raw": round(float(np.mean(raw)), 3), "compensated": round(float(np.mean(compensated)), 3)}


def stability(work: Path, frames: int) -> dict:
    image = photo()
    faces = get_detector("dlib").detect(image)
    clip = make_pan_clip(image, work / "stability.mp4", SIZE, frames, pan=(1.0, 0.0), origin=STABLE_ORIGIN, crf=12)
    result = {"input": flicker(clip, faces, 1)}
    for every in (1, DETECT_EVERY):
        for smooth in (False, True):
            restorer = Restorer("none", device="cpu", detector="dlib", upscale=1)
            first = restorer.prepare(image)
            restorer.face_restorer.base = TemplateBase(max(first.faces, key=lambda f: f.box[2] - f.box[0]).crop)
            name = f"{'smoothed' if smooth else 'per_frame'}_detect_every_{every}"
            placed = record_landmarks(restorer)
            out = restore(clip, work / name, restorer, smooth=smooth, detect_every=every)
            result[name] = {**flicker(Path(out["output"]), faces, 1), "jitter_px": jitter(placed, faces, 1)}
    return result


def record_landmarks(restorer: Restorer) -> list[list[np.ndarray]]:
    """The landmarks each frame's faces were aligned with, appended as the clip is restored."""
    placed: list[list[np.ndarray]] = []
    prepare = restorer.prepare

    def recording(*args: Any, **kwargs: Any) -> Any:
        prepared = prepare(*args, **kwargs)
        placed.append([face.landmarks.copy() for face in prepared.faces])
        return prepared

    restorer.prepare = recording  # type: ignore[method-assign]
    return placed


def jitter(placed: list[list[np.ndarray]], faces: list[Face], pan: int) -> float:
    """Mean frame-to-frame change (px per point) of each face's landmark error against the true
    motion (the photo's landmarks moved by the pan): what shakes the crop, the pan itself excluded."""
    changes = []
    for t in range(1, len(placed)):
        for now in placed[t]:
            true_now = [f.landmarks - (np.array(STABLE_ORIGIN) + [t * pan, 0]) for f in faces]
            i = int(np.argmin([np.abs(now - tr).mean() for tr in true_now]))
            before = min(placed[t - 1], key=lambda lm: np.abs(lm - now).mean(), default=None)
            if before is None:
                continue
            true_before = faces[i].landmarks - (np.array(STABLE_ORIGIN) + [(t - 1) * pan, 0])
            changes.append(np.linalg.norm((now - true_now[i]) - (before - true_before), axis=1).mean())
    return round(float(np.mean(changes)), 3)


def speed(clip: Path, work: Path, repeats: int) -> dict:
    """Per-frame detection vs key frames, alternately ``repeats`` times; the median run of each."""
    runs: dict[str, list[dict]] = {"detect_every_1": [], f"detect_every_{DETECT_EVERY}": []}
    load = [os.getloadavg()[0]]
    for _ in range(repeats):
        for name in runs:
            restorer = Restorer("none", device="cpu", detector="dlib", upscale=1)
            runs[name].append(restore(clip, work / name, restorer, detect_every=int(name.rsplit("_", 1)[1])))
            load.append(os.getloadavg()[0])
    result = {name: sorted(found, key=lambda r: r["fps"])[len(found) // 2] for name, found in runs.items()}
    before, after = result["detect_every_1"]["fps"], result[f"detect_every_{DETECT_EVERY}"]["fps"]
    result["speedup"] = round(after / before, 2)
    cpu_before, cpu_after = (statistics.median(r["frames_per_cpu_second"] for r in found) for found in runs.values())
    result["speedup_cpu"] = round(cpu_after / cpu_before, 2)  # medians of frames per CPU-second
    result["fps_all_runs"] = {name: [r["fps"] for r in found] for name, found in runs.items()}
    result["frames_per_cpu_second_all_runs"] = {name: [r["frames_per_cpu_second"] for r in found] for name, found in runs.items()}
    result["load_average_1min"] = [round(x, 2) for x in load]
    return result


def chart(results: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no chart")
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    cpu = results["speed"]["cpu"]
    for shift, (name, colour) in enumerate(((f"detect_every_{DETECT_EVERY}", "#4477aa"), ("detect_every_1", "#cc6677"))):
        stages = cpu[name]["ms_per_frame"]
        label = f"{name}: {cpu[name]['fps']} frames/s"
        left.bar(np.arange(len(stages)) + 0.4 * shift, list(stages.values()), 0.4, color=colour, label=label)
        left.set_xticks(np.arange(len(stages)) + 0.2, list(stages))
    left.legend()
    left.set_ylabel("ms per frame")
    left.set_title(f"640×360, base none, CPU: {cpu['speedup']}× faster with key frames")
    lengths = [r["seconds"] for r in results["memory"]]
    right.plot(lengths, [r["peak_rss_mib"] for r in results["memory"]], "o-")
    right.set_xlabel("clip length (s)")
    right.set_ylabel("peak RSS (MiB)")
    right.set_ylim(0, max(r["peak_rss_mib"] for r in results["memory"]) * 1.2)
    right.set_title("peak memory vs clip length")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    write_bytes(path, buffer.getvalue(), overwrite=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/video"))
    parser.add_argument("--frames", type=int, default=60, help="frames of the speed and stability clips")
    parser.add_argument("--lengths", type=float, nargs="*", default=[10.0, 60.0], help="clip lengths (s) for peak RSS")
    parser.add_argument("--repeats", type=int, default=3, help="alternate runs of each speed setting (median reported)")
    parser.add_argument("--rss-child", nargs=2, metavar=("CLIP", "OUTDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(*args.rss_child)
        return
    results: dict = {"speed": {}, "memory": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        image = photo()
        clip = make_pan_clip(image, work / "speed.mp4", SIZE, args.frames, pan=PAN, origin=ORIGIN, period=PERIOD)
        results["speed"]["cpu"] = speed(clip, work, args.repeats)
        if torch.cuda.is_available():
            restorer = Restorer("none", device="cuda", detector="auto", upscale=1)
            results["speed"]["cuda"] = restore(clip, work / "cuda", restorer, hardware=True)
        else:
            print("no CUDA here: GPU decode/encode path not measured")
        print("speed:", json.dumps(results["speed"]))
        for seconds in args.lengths:
            long_clip = make_pan_clip(
                image, work / f"len{seconds:g}.mp4", SIZE, int(seconds * 25), pan=PAN, origin=ORIGIN, period=PERIOD
            )
            child = subprocess.run(
                [sys.executable, __file__, "--rss-child", str(long_clip), str(work / "rss")], capture_output=True, text=True
            )
            if child.returncode:
                raise SystemExit(f"the {seconds:g} s child failed:\n{child.stderr[-3000:]}")
            peak = json.loads(child.stdout.strip().splitlines()[-1])["peak_rss_mib"]
            results["memory"].append({"seconds": seconds, "frames": int(seconds * 25), "peak_rss_mib": peak})
            print(f"peak RSS, {seconds:g} s clip: {peak} MiB")
        results["stability"] = stability(work, args.frames)
        print("stability:", json.dumps(results["stability"]))
    write_bytes(args.out / "video.json", (json.dumps(results, indent=1) + "\n").encode(), overwrite=True)
    chart(results, args.out / "video.png")
    print(f"wrote {args.out / 'video.json'} and {args.out / 'video.png'}")


if __name__ == "__main__":
    main()
