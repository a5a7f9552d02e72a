"""Video clips end to end: clips are made in the test from a real photo (a slow pan, an AAC track),
restored with ``--base none`` and the dlib detector, and decoded again with PyAV to compare."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bfrboost.cli import app
from bfrboost.errors import OutputError
from bfrboost.io import video as io_video
from bfrboost.io.inputs import collect_inputs
from bfrboost.io.read import read_image
from bfrboost.options import VideoOptions
from bfrboost.pipeline import Restorer
from bfrboost.runners.video import VideoRunner
from tests.support.clips import make_pan_clip

runner = CliRunner()
SIZE = (320, 180)


def run(*args: str):
    return runner.invoke(app, ["restore", *map(str, args)], catch_exceptions=False)


def decode(path: Path) -> tuple[list[np.ndarray], list[float], object]:
    """Frames (RGB), their times in seconds, and the stream's average frame rate."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        return [f.to_ndarray(format="rgb24") for f in frames], [float(f.pts * f.time_base) for f in frames], stream.average_rate


def audio_packets(path: Path) -> list[tuple[float, bytes]]:
    with av.open(str(path)) as container:
        return [(float(p.pts * p.time_base), bytes(p)) for p in container.demux(audio=0) if p.dts is not None]


@pytest.fixture(scope="module")
def photo(testdata: Path) -> np.ndarray:
    return read_image(testdata / "whole" / "03.jpg").rgb  # one face, 400×225


@pytest.fixture(scope="module")
def clip(photo: np.ndarray, tmp_path_factory) -> Path:
    """10 frames at 25 fps panning 1 px right and 0.5 px down per frame, with AAC audio."""
    return make_pan_clip(photo, tmp_path_factory.mktemp("clips") / "pan.mp4", SIZE, 10, pan=(1.0, 0.5), origin=(30, 20))


def restorer(upscale: float = 1.0) -> Restorer:
    return Restorer("none", device="cpu", detector="dlib", upscale=upscale)


def test_round_trip_keeps_frames_timestamps_fps_audio(clip: Path, tmp_path: Path) -> None:
    result = run(clip, "-o", tmp_path, "--base", "none", "--detector", "dlib", "-s", "2", "--json", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    line = json.loads(result.stdout)
    out = tmp_path / "restored_videos" / "pan.mp4"
    assert line["output"] == str(out) and out.is_file()
    assert (line["kind"], line["frames"], line["face_count"], line["tracks"], line["audio_streams"]) == ("video", 10, 10, 1, 1)
    assert (line["width"], line["height"], line["fps"]) == (320, 180, 25.0)
    assert line["key_frames"] == 1  # detector on frame 0 (--detect-every 12), the face followed on the 9 others
    assert {"decode", "detect", "smooth", "align", "paste", "encode"} <= set(line["seconds"])
    assert "1 file(s) restored, 10 face(s), 0 failed" in result.stderr

    frames_in, times_in, rate_in = decode(clip)
    frames_out, times_out, rate_out = decode(out)
    assert len(frames_out) == len(frames_in) == 10
    assert rate_out == rate_in == 25
    assert times_out == pytest.approx(times_in, abs=1e-4)
    assert frames_out[0].shape == (360, 640, 3)  # -s 2
    # base none pastes the crop back unchanged: the output is the 2× resize of the input (up to H.264 loss)
    import cv2

    resized = cv2.resize(frames_in[4], (640, 360), interpolation=cv2.INTER_LANCZOS4)
    assert np.abs(resized.astype(int) - frames_out[4]).mean() < 3
    packets_in, packets_out = audio_packets(clip), audio_packets(out)
    assert len(packets_in) > 10 and packets_out == packets_in  # same bytes, same timestamps


def test_variable_frame_rate_and_rotation(photo: np.ndarray, tmp_path: Path) -> None:
    """A phone-style clip: pixels stored sideways with a 90° display rotation, irregular timestamps.
    The face is found on every frame only if the rotation is applied before detection."""
    times_ms = [0, 40, 90, 120, 200, 240, 280, 330]
    sideways = np.ascontiguousarray(np.rot90(photo, -1))  # displayed upright after a 90° CCW turn
    clip = make_pan_clip(
        sideways, tmp_path / "phone.mkv", (180, 320), 8, pan=(0.0, 1.0), origin=(20, 30), timestamps_ms=times_ms, rotation=90
    )
    report = next(VideoRunner(restorer(), VideoOptions(tmp_path / "out")).run([clip]))
    assert report.error is None, report.error
    assert (report.extra["frames"], report.extra["face_count"]) == (8, 8)
    frames_in, _, _ = decode(clip)
    frames_out, times_out, _ = decode(Path(report.output))
    assert times_out == pytest.approx([t / 1000 for t in times_ms], abs=1e-4)
    assert frames_out[0].shape == (180, 320, 3)  # upright
    assert np.abs(np.rot90(frames_in[3], 1).astype(int) - frames_out[3]).mean() < 3
    with av.open(report.output) as container:
        assert next(container.decode(video=0)).rotation == 0  # no rotation left for players to apply twice
    assert audio_packets(Path(report.output)) == audio_packets(clip)


def test_start_and_duration_restore_a_part(clip: Path, tmp_path: Path) -> None:
    options = VideoOptions(tmp_path, start=0.1, duration=0.2)
    report = next(VideoRunner(restorer(), options).run([clip]))
    assert report.error is None, report.error
    _, times_in, _ = decode(clip)
    _, times_out, _ = decode(Path(report.output))
    kept = [t for t in times_in if 0.1 - 1e-6 <= t < 0.3 - 1e-6]
    assert len(times_out) == report.extra["frames"] == len(kept) == 5
    assert times_out == pytest.approx([t - 0.1 for t in kept], abs=1e-4)
    packets_in = [(t - 0.1, data) for t, data in audio_packets(clip) if 0.1 - 1e-6 <= t < 0.3 - 1e-6]
    packets_out = audio_packets(Path(report.output))
    assert [data for _, data in packets_out] == [data for _, data in packets_in]
    # the MP4 muxer's edit list places a cut's audio start to within 1 ms (32 samples measured)
    assert [t for t, _ in packets_out] == pytest.approx([t for t, _ in packets_in], abs=1e-3)


def test_failure_leaves_no_partial_file_and_the_batch_goes_on(
    clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    second = tmp_path / "second.mp4"
    shutil.copy(clip, second)
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video")
    real_finish = Restorer.finish
    calls = {"n": 0}

    def failing_finish(self, prepared):
        calls["n"] += 1
        if calls["n"] == 12:  # mid-way through the second clip, after frames were encoded
            raise OutputError("disk full (injected)")
        return real_finish(self, prepared)

    monkeypatch.setattr(Restorer, "finish", failing_finish)
    outdir = tmp_path / "out"
    reports = list(VideoRunner(restorer(), VideoOptions(outdir, frames_per_batch=4)).run([bad, clip, second]))
    assert (
        reports[0].error
        == f"{bad}: cannot decode video (Invalid data found when processing input); check that it is a complete video file"
    )
    assert reports[1].error is None and Path(reports[1].output).is_file()
    assert reports[2].error == "disk full (injected)" and reports[2].output is None
    assert sorted(p.name for p in (outdir / "restored_videos").iterdir()) == ["pan.mp4"]  # no temp, no partial second.mp4

    def interrupted(self, prepared):
        raise KeyboardInterrupt

    monkeypatch.setattr(Restorer, "finish", interrupted)
    with pytest.raises(KeyboardInterrupt):
        list(VideoRunner(restorer(), VideoOptions(outdir, overwrite=True)).run([clip]))
    assert sorted(p.name for p in (outdir / "restored_videos").iterdir()) == ["pan.mp4"]
    frames, _, _ = decode(outdir / "restored_videos" / "pan.mp4")  # the earlier output is intact
    assert len(frames) == 10


def test_clips_share_the_image_runners_collision_planning(clip: Path, tmp_path: Path) -> None:
    """a/x.mp4 and b/x.mp4 into one folder: the second fails in one line, the first is restored; a clip whose
    output would be an input (the first output, restored again into its own folder) fails before anything is written."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(clip, tmp_path / folder / "x.mp4")
    first, second, out = tmp_path / "a" / "x.mp4", tmp_path / "b" / "x.mp4", tmp_path / "out"
    result = run(first, second, "-o", out, "--base", "none", "--detector", "dlib", "-s", "1")
    assert result.exit_code == 1
    taken = f"{second}: its output {out / 'restored_videos' / 'x.mp4'} is already taken by {first}"
    assert result.stderr.splitlines()[0] == f"bfrboost: {taken}; restore it separately or with --suffix"
    assert len(decode(out / "restored_videos" / "x.mp4")[0]) == 10
    source = out / "restored_videos" / "x.mp4"  # restoring the output again, into the same folder: onto itself
    before = source.read_bytes()
    [report] = VideoRunner(restorer(), VideoOptions(out, overwrite=True)).run([source])
    assert report.error == f"{source}: would overwrite the input {source}; choose another -o or --suffix"
    assert source.read_bytes() == before and report.output is None


def test_cli_mixes_images_and_videos_from_a_folder(clip: Path, tmp_path: Path, testdata: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(clip, folder / "pan.mp4")
    shutil.copy(testdata / "whole" / "04.jpg", folder / "04.jpg")
    (folder / "broken.mov").write_bytes(b"\x00" * 100)
    assert [p.name for p in collect_inputs([str(folder)])[0]] == ["04.jpg"]  # other commands: images only
    paths, problems = collect_inputs([str(folder)], videos=True)
    assert [p.name for p in paths] == ["04.jpg", "broken.mov", "pan.mp4"] and problems == []
    result = run(
        folder,
        "-o",
        tmp_path / "out",
        "--base",
        "none",
        "--detector",
        "dlib",
        "-s",
        "1",
        "--ext",
        "mkv",
        "--json",
        "--device",
        "cpu",
        "--no-smooth",
    )
    assert result.exit_code == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(Path(r["input"]).name, r["error"] is None) for r in lines] == [
        ("04.jpg", True),
        ("broken.mov", False),
        ("pan.mp4", True),
    ]
    assert lines[2]["tracks"] is None and lines[2]["seconds"].get("smooth") is None  # --no-smooth
    assert (tmp_path / "out" / "restored_imgs" / "04.jpg").is_file()  # images keep their format
    assert (tmp_path / "out" / "restored_videos" / "pan.mkv").is_file()
    assert result.stderr.count(f"{folder / 'broken.mov'}: cannot decode video") == 2  # its line, then the summary's
    assert "2 file(s) restored, 11 face(s), 1 failed" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback on a machine without a GPU")
def test_gpu_decode_and_encode_fall_back_to_the_cpu(clip: Path, tmp_path: Path) -> None:
    container, decoder = io_video.open_input(clip, hardware=True)  # CUDA hwaccel raises PermissionError here
    container.close()
    assert decoder == "cpu"
    report = next(VideoRunner(restorer(), VideoOptions(tmp_path, hardware=True, crf=30, preset="veryfast")).run([clip]))
    assert report.error is None and (report.extra["decoder"], report.extra["encoder"]) == ("cpu", "libx264")


def test_usage_errors(clip: Path, tmp_path: Path) -> None:
    result = run(clip, "-o", tmp_path, "--base", "none", "--aligned")
    assert result.exit_code == 2
    assert "--aligned is for 512×512 face crops; video frames need detection (drop --aligned)" in result.stderr
    with pytest.raises(Exception, match="unknown preset 'fastest'"):
        VideoOptions(tmp_path, preset="fastest")
    with pytest.raises(Exception, match=r"--crf must be in \[0, 51\]"):
        VideoOptions(tmp_path, crf=60)
    result = run(clip, "-o", tmp_path, "--base", "none", "--detect-every", "61")
    assert result.exit_code == 2 and "--detect-every" in result.stderr
    with pytest.raises(Exception, match=r"--detect-every must be in \[1, 60\] \(1 = detect on every frame\), got 0"):
        VideoOptions(tmp_path, detect_every=0)


class InvertingUpsampler:
    """A deterministic stand-in for Real-ESRGAN: bilinear resize of the inverted image."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[int, ...], float]] = []

    def upscale(self, rgb: np.ndarray, outscale: float) -> np.ndarray:
        import cv2

        self.calls.append((rgb.shape, outscale))
        h, w = rgb.shape[:2]
        return cv2.resize(255 - rgb, (round(w * outscale), round(h * outscale)), interpolation=cv2.INTER_LINEAR)


def test_face_upsample_on_the_cli(testdata: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--face-upsample runs the restored faces through the upsampler (Real-ESRGAN when the background
    uses a plain resize, as CodeFormer) and pastes them directly; the background is untouched."""
    from PIL import Image

    import bfrboost.faces.paster as pipeline

    fake = InvertingUpsampler()
    asked = []

    def load_upsampler(name, upscale, **kwargs):
        asked.append(name)
        return fake if name == "realesrgan" else None

    monkeypatch.setattr(pipeline, "load_upsampler", load_upsampler)
    photo = testdata / "whole" / "03.jpg"
    common = ["--base", "none", "--detector", "dlib", "-s", "2", "--ext", "png", "--json", "--device", "cpu"]
    plain = run(photo, "-o", tmp_path / "plain", *common)
    upsampled = run(photo, "-o", tmp_path / "up", "--face-upsample", *common)
    assert plain.exit_code == upsampled.exit_code == 0, upsampled.stderr
    assert asked == ["none", "none", "realesrgan"]
    assert fake.calls == [((512, 512, 3), 2.0)]  # one face, its 512 restored crop → 1024
    a = np.asarray(Image.open(tmp_path / "plain" / "restored_imgs" / "03.png")).astype(int)
    b = np.asarray(Image.open(tmp_path / "up" / "restored_imgs" / "03.png")).astype(int)
    x1, y1, x2, y2 = (np.array(json.loads(upsampled.stdout)["faces"][0]["box"]) * 2).round().astype(int)
    cx, cy, q = (x1 + x2) // 2, (y1 + y2) // 2, (x2 - x1) // 4
    centre = (slice(cy - q, cy + q), slice(cx - q, cx + q))
    assert np.abs(b[centre] - (255 - a[centre])).mean() < 6  # the face is the upsampler's output
    far = np.ones(a.shape[:2], bool)
    w = x2 - x1
    far[max(y1 - w, 0) : y2 + w, max(x1 - w, 0) : x2 + w] = False
    assert np.array_equal(a[far], b[far])  # the background is not touched


def test_face_upsample_at_scale_one_says_it_does_nothing() -> None:
    restorer = Restorer("none", device="cpu", detector="dlib", upscale=1, face_upsample=True)
    assert restorer.face_upsampler is None
    assert "face upsampling does nothing at upscale 1; pass -s 2 (up to 4) to use it" in restorer.notes


def test_sigterm_on_the_cli_removes_the_unfinished_video(clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal

    real_finish = Restorer.finish
    calls = {"n": 0}

    def terminate_midway(self, prepared):
        calls["n"] += 1
        if calls["n"] == 6:  # frames already encoded into the temp file
            os.kill(os.getpid(), signal.SIGTERM)
        return real_finish(self, prepared)

    monkeypatch.setattr(Restorer, "finish", terminate_midway)
    result = run(
        clip, "-o", tmp_path, "--base", "none", "--detector", "dlib", "-s", "1", "--frames-per-batch", "4", "--device", "cpu"
    )
    assert result.exit_code == 128 + signal.SIGTERM
    assert "bfrboost: interrupted by SIGTERM: 0 of 1 input(s) finished, 1 not started or unfinished; re-run" in result.stderr
    assert list((tmp_path / "restored_videos").iterdir()) == []


def test_audio_the_container_cannot_hold_is_refused(clip: Path, tmp_path: Path) -> None:
    report = next(VideoRunner(restorer(), VideoOptions(tmp_path, ext="webm")).run([clip]))
    assert report.error == f"{clip}: its aac audio cannot be copied into .webm; choose --ext mkv (takes any audio) or mp4"
    assert list((tmp_path / "restored_videos").iterdir()) == []


def test_faces_are_batched_across_frames_and_progress_is_reported(
    clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bfrboost import VideoRunner as exported

    batches = []
    real = Restorer.restore_faces

    def spy(self, prepared):
        batches.append(sum(len(item.faces) for item in prepared))
        return real(self, prepared)

    monkeypatch.setattr(Restorer, "restore_faces", spy)
    calls = []
    runner = exported(restorer(), VideoOptions(tmp_path, frames_per_batch=4), progress=lambda *a: calls.append(a))
    next(runner.run([clip]))
    assert batches == [4, 4, 2]  # one base-model call per 4 frames (one face each)
    assert calls == [(str(clip), 4, 10), (str(clip), 8, 10), (str(clip), 10, 10)]
