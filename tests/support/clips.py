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

from bfrboost.io.colour import Colour
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
    colour: Colour | None = None,
    tagged: bool = True,
    subtitles: Sequence[tuple[int, int, str]] = (),
    metadata: dict[str, str] | None = None,
    audio_language: str | None = None,
    overwrite: bool = True,
) -> Path:
    """Write an H.264 clip (``size`` = (w, h), even) of ``frames`` frames panning ``pan`` px per frame.

    ``period``: pan back and forth (see :func:`pan_offset`) so long clips stay inside the photo.
    ``timestamps_ms``: each frame's time in ms (variable frame rate; the time base is then 1/1000).
    ``audio``: a 440 Hz mono AAC track as long as the clip. ``rotation``: display rotation in degrees
    counter-clockwise (stored as metadata, pixels untouched). ``colour``: convert RGB→YUV with its
    matrix and range, tagged unless ``tagged`` is false (an untagged clip players must guess); without
    it FFmpeg's default (BT.601, limited range), untagged. ``subtitles``: (start ms, end ms, text) cues
    as an SRT subtitle stream (containers that hold SRT: mkv). ``metadata``: container tags (title,
    comment …); ``audio_language``: the audio stream's language (ISO 639-2, e.g. ``deu``).
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
            if colour is not None and tagged:
                colour.tag(video.codec_context)
            sound = out.add_stream("aac", rate=48000, layout="mono") if audio else None
            if sound is not None and audio_language:
                sound.metadata["language"] = audio_language
            out.metadata.update(metadata or {})
            srt = _subtitle_source(subtitles, temp) if subtitles else None
            cues = out.add_stream_from_template(srt.streams.subtitles[0]) if srt is not None else None
            for index in range(frames):
                offset = pan_offset(index, pan, origin, period)
                picture = pan_frame(photo, size, tuple(offset))
                frame = colour.from_rgb(picture) if colour is not None else av.VideoFrame.from_ndarray(picture, format="rgb24")
                frame.pts, frame.time_base = pts[index], tb
                for packet in video.encode(frame):
                    out.mux(packet)
            for packet in video.encode():
                out.mux(packet)
            if sound is not None:
                _write_tone(out, sound, float((pts[-1] + 1) * tb) if frames else 0.0)
            if srt is not None:
                _copy_cues(out, srt, cues)
    return path


def _write_tone(out, sound, seconds: float) -> None:
    """A 440 Hz tone of ``seconds`` into the AAC stream ``sound``."""
    import av

    samples = int(seconds * 48000)
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / 48000)).astype(np.float32)[None]
    for start in range(0, samples, 1024):
        chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, start : start + 1024]), format="fltp", layout="mono")
        chunk.sample_rate, chunk.pts, chunk.time_base = 48000, start, Fraction(1, 48000)
        for packet in sound.encode(chunk):
            out.mux(packet)
    for packet in sound.encode():
        out.mux(packet)


def _copy_cues(out, srt, stream) -> None:
    with srt:
        for packet in srt.demux(srt.streams.subtitles[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)


def _subtitle_source(cues: Sequence[tuple[int, int, str]], beside: Path):
    """An opened SRT file of ``cues`` (PyAV cannot encode subtitles: their packets are copied from it)."""
    import av

    def stamp(ms: int) -> str:
        return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"

    text = "".join(f"{i}\n{stamp(a)} --> {stamp(b)}\n{line}\n\n" for i, (a, b, line) in enumerate(cues, 1))
    source = beside.with_name(beside.name + ".srt")
    source.write_text(text, encoding="utf-8")
    container = av.open(str(source))
    source.unlink()  # the open file stays readable
    return container
