"""Clips made from a still photo: a window panning slowly across it, with a sine-tone audio track.

Tests, benchmarks and the temporal-stability measurement need videos of real faces whose motion is
known exactly; a pan over a real photo gives both (frame ``i`` shows the photo shifted by ``i · pan``
pixels). Timestamps may be irregular (variable frame rate) and a display rotation may be set.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from bfrboost.options import VIDEO_FORMATS
from bfrboost.safety import atomic_path


def pan_frame(photo: np.ndarray, size: tuple[int, int], offset: tuple[float, float]) -> np.ndarray:
    """The ``size`` (w, h) window of ``photo`` whose top-left corner is at ``offset`` (sub-pixel, bicubic)."""
    matrix = np.array([[1.0, 0.0, -offset[0]], [0.0, 1.0, -offset[1]]])
    return cv2.warpAffine(photo, matrix, size, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


def pan_offset(index: int, pan: tuple[float, float], origin: tuple[float, float] = (0.0, 0.0), period: int | None = None) -> np.ndarray:
    """Top-left corner of frame ``index``'s window: ``origin + index · pan``, or with ``period`` a
    back-and-forth pan (``period / 2`` frames out, as many back) that stays inside the photo."""
    steps = index if period is None else period / 2 - abs(index % period - period / 2)
    return np.array(origin, dtype=np.float64) + steps * np.array(pan, dtype=np.float64)


def make_pan_clip(
    photo: np.ndarray,
    path: Path | str,
    size: tuple[int, int],
    frames: int,
    fps: int = 25,
    pan: tuple[float, float] = (1.0, 0.0),
    origin: tuple[float, float] = (0.0, 0.0),
    period: int | None = None,
    audio: bool = True,
    timestamps_ms: Sequence[int] | None = None,
    rotation: int = 0,
    crf: int = 18,
    overwrite: bool = True,
) -> Path:
    """Write an H.264 clip (``size`` = (w, h), even) of ``frames`` frames panning ``pan`` px per frame.

    ``period``: pan back and forth (see :func:`pan_offset`) so long clips stay inside the photo.
    ``timestamps_ms``: each frame's time in ms (variable frame rate; the time base is then 1/1000).
    ``audio``: a 440 Hz mono AAC track as long as the clip. ``rotation``: display rotation in degrees
    counter-clockwise (stored as metadata, pixels untouched).
    """
    import av

    path = Path(path)
    tb = Fraction(1, 1000) if timestamps_ms is not None else Fraction(1, fps)
    pts = list(timestamps_ms) if timestamps_ms is not None else list(range(frames))
    with atomic_path(path, overwrite=overwrite) as temp:
        with av.open(str(temp), "w", format=VIDEO_FORMATS[path.suffix.lower().lstrip(".")]) as out:
            video = out.add_stream("libx264", rate=fps)
            video.width, video.height, video.pix_fmt = size[0], size[1], "yuv420p"
            video.time_base = video.codec_context.time_base = tb
            video.options = {"crf": str(crf), "preset": "veryfast"}
            if rotation:
                video.set_display_rotation(rotation)
            sound = out.add_stream("aac", rate=48000, layout="mono") if audio else None
            for index in range(frames):
                offset = pan_offset(index, pan, origin, period)
                frame = av.VideoFrame.from_ndarray(pan_frame(photo, size, tuple(offset)), format="rgb24")
                frame.pts, frame.time_base = pts[index], tb
                for packet in video.encode(frame):
                    out.mux(packet)
            for packet in video.encode():
                out.mux(packet)
            if sound is not None:
                seconds = float((pts[-1] + 1) * tb) if frames else 0.0
                samples = int(seconds * 48000)
                tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / 48000)).astype(np.float32)[None]
                for start in range(0, samples, 1024):
                    chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, start : start + 1024]), format="fltp", layout="mono")
                    chunk.sample_rate, chunk.pts, chunk.time_base = 48000, start, Fraction(1, 48000)
                    for packet in sound.encode(chunk):
                        out.mux(packet)
                for packet in sound.encode():
                    out.mux(packet)
    return path
