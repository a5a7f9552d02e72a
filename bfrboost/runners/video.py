"""Video clips through a :class:`~bfrboost.pipeline.Restorer`, streamed frame by frame with PyAV.

``OUTDIR/restored_videos/NAME.mp4``: decode → (rotate upright) → detect → smooth landmarks per
tracked face → align → base + refiner on the faces of ``frames_per_batch`` frames at once → paste →
encode. Only one batch of frames is ever held, so memory does not grow with the clip's length.

What is kept from the input: the frame count, every frame's timestamp (variable frame rate too),
the frame rate, and every audio stream, copied packet for packet without re-encoding. Display
rotation is applied to the pixels, so the output is upright without relying on metadata.

The output is written to a temp file beside it and renamed when complete
(:func:`bfrboost.safety.atomic_path`): a failed or interrupted run leaves no partial video. A clip
that cannot be decoded gets a report with ``error`` set and the batch goes on.

Opening clips and choosing the encoder (NVDEC/NVENC when usable) is :mod:`bfrboost.io.video`'s job.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from bfrboost.errors import BfrboostError, InputError, OutputError, UsageError
from bfrboost.faces.keyframes import KeyframeDetector
from bfrboost.faces.track import FaceTracker
from bfrboost.io.colour import Colour
from bfrboost.io.video import av_module, encoder, open_input, want_hardware
from bfrboost.options import VIDEO_FORMATS, VideoOptions
from bfrboost.pipeline import Prepared, Restorer
from bfrboost.reports import FileReport
from bfrboost.runners.outputs import Claims, OutputPlan, plan_output
from bfrboost.safety import InputGuard, atomic_path, one_line

__all__ = ["VideoOptions", "VideoRunner", "restore_videos"]

# x264 preset → NVENC's p1 (fastest) … p7 (best)
# x264 preset → libvpx-vp9 cpu-used (0 best … 8 fastest)
_AFTER_END_S = 1.0  # demuxing continues this long past --duration's end for audio interleaved late


#: ``progress(input, frames_done, frames_expected_or_None)`` after every encoded batch.
ProgressCallback = Callable[[str, int, "int | None"], None]


class VideoRunner:
    """Restore clips into ``options.outdir``, yielding one :class:`FileReport` per clip, in order.

    ``report.extra`` holds ``kind`` ("video"), ``frames``, ``fps``, ``face_count`` (faces over all
    frames), ``tracks``, ``audio_streams``, ``decoder`` and ``encoder``; ``report.seconds`` the time
    per stage (decode, detect, smooth, align, base, refine, paste, encode), summed over frames.
    """

    def __init__(self, restorer: Restorer, options: VideoOptions, progress: ProgressCallback | None = None) -> None:
        if restorer.aligned:
            raise UsageError("--aligned is for 512×512 face crops; video frames need detection (drop --aligned)")
        self.restorer = restorer
        self.options = options
        self.progress = progress

    def plan(self, path: Path) -> Path:
        """Where the restored clip of ``path`` goes."""
        return plan_output(path, self.options.outdir, "restored_videos", self.options.suffix, self.options.ext)

    def run(self, inputs: Sequence[Path]) -> Iterator[FileReport]:
        """Each clip into its planned output, with the image runner's claims: an output that is an input,
        or that an earlier input of the run already took, fails that input in one line."""
        claims = Claims(InputGuard(inputs))
        for path in inputs:
            report = FileReport(input=str(path), extra={"kind": "video"})
            try:
                out = self.plan(path)
                claims.claim(path, OutputPlan(out, self.options.outdir, path.stem))
                if out.exists() and not self.options.overwrite:
                    report.skipped = f"{out}: already exists; pass --overwrite to replace it"
                else:
                    self.restore_clip(path, out, report)
                    report.output = str(out)
            except BfrboostError as exc:
                report.error = str(exc)
            yield report

    # ---- one clip ----------------------------------------------------------------------------

    def restore_clip(self, path: Path, out: Path, report: FileReport | None = None) -> FileReport:
        """Restore ``path`` into ``out`` (atomically); raises :class:`InputError` / :class:`OutputError`."""
        report = report if report is not None else FileReport(input=str(path), extra={"kind": "video"})
        container, decoder = open_input(path, want_hardware(self.options.hardware))
        try:
            with atomic_path(out, overwrite=self.options.overwrite) as temp:
                _Clip(self, path, container, report, decoder).run(temp, out)
        finally:
            container.close()
        return report


class _Clip:
    """State of one clip being restored: input streams, lazily opened output, the frame batch."""

    def __init__(self, runner: VideoRunner, path: Path, container: Any, report: FileReport, decoder: str) -> None:
        self.runner, self.restorer, self.options = runner, runner.restorer, runner.options
        self.path, self.name, self.input, self.report = path, one_line(path), container, report
        if not container.streams.video:
            raise InputError(f"{self.name}: has no video stream; pass a video file (or an image)")
        self.video = container.streams.video[0]
        _check_pixels(self.name, self.video.width or 0, self.video.height or 0, self.options.max_pixels)
        self.video.thread_type = "AUTO"
        self.audio = list(container.streams.audio)
        self.others = [*container.streams.subtitles, *container.streams.data]  # copied when the container can hold them
        self.copies: list[Any] = []  # the streams copied packet for packet (audio, then the others kept)
        self.rate = self.video.average_rate or self.video.guessed_rate or Fraction(25)
        self.tracker = FaceTracker() if self.options.smooth else None
        every = self.options.detect_every
        self.keyframes = KeyframeDetector(self.restorer.finder.detector, interval=every) if every > 1 else None
        self.person_memo: dict[int, np.ndarray] = {}  # track id → identity similarities: one match per track
        self.output: Any = None
        self.out_video: Any = None
        self.out_copies: dict[int, Any] = {}
        self.queued: list[Any] = []  # packets to copy demuxed before the output could be opened
        self.damage = _Damage(float(self.rate))
        self.batch: list[tuple[int, Prepared]] = []
        self.frames = self.faces = 0
        self.last_pts: int | None = None
        self.colour: Colour | None = None  # the input's, from its first frame; the output gets the same
        self.seconds = report.seconds
        self.start = self.options.start or 0.0
        self.end = self.start + self.options.duration if self.options.duration is not None else math.inf
        report.extra.update(decoder=decoder, audio_streams=len(self.audio), fps=round(float(self.rate), 4))
        self.expected = self._expected_frames()

    def _add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def _expected_frames(self) -> int | None:
        total = self.video.frames or None
        length = float(self.input.duration) / 1e6 if self.input.duration else None
        if length is not None and (total is None or self.start or self.options.duration is not None):
            span = min(length, self.end) - self.start
            return max(round(span * float(self.rate)), 0)
        return total

    def run(self, temp: Path, out: Path) -> None:
        """Restore the whole clip into ``temp`` (renamed to ``out`` by the caller once complete)."""
        try:
            self.output = av_module().open(str(temp), "w", format=VIDEO_FORMATS[self.options.ext])
        except (OSError, av_module().FFmpegError) as exc:
            raise OutputError(
                f"{one_line(out)}: cannot open for writing ({exc}); check the output folder or choose another with -o"
            ) from None
        try:
            self._plan_copies()  # refuses what the container cannot hold before a frame is decoded
            self._stream()
            if self.frames == 0:
                where = f" after --start {self.start:g} s" if self.start else ""
                raise InputError(f"{self.name}: no video frames decoded{where}; check the file (and --start/--duration)")
            start = time.perf_counter()
            for packet in self.out_video.encode():  # drain the encoder
                self.output.mux(packet)
            self._add("encode", time.perf_counter() - start)
        finally:
            self.output.close()
        tracks = self.tracker.count if self.tracker is not None else None
        key_frames = self.keyframes.key_frames if self.keyframes is not None else self.frames
        self.report.extra.update(frames=self.frames, face_count=self.faces, tracks=tracks, key_frames=key_frames)
        damaged = self.damage.describe(self.name)
        if damaged is not None:
            damage = self.damage
            self.report.extra["damaged"] = {"errors": damage.errors, "missing_frames": damage.missing, "spans": damage.spans}
            self._warn(damaged)

    def _warn(self, line: str) -> None:
        """One line for the user about a clip that is restored all the same (printed by the CLI)."""
        self.report.extra.setdefault("warnings", []).append(line)

    def _plan_copies(self) -> None:
        """Which streams besides the video go into the output, checked against the container first:
        audio it cannot hold fails the clip; subtitle and data streams it cannot hold are dropped with
        one warning naming them. The container's metadata (title, comment …) is copied too."""
        supported = self.output.supported_codecs
        for source in self.audio:
            if source.codec_context.name not in supported:
                raise OutputError(
                    f"{self.name}: its {source.codec_context.name} audio cannot be copied into .{self.options.ext}; "
                    "choose --ext mkv (takes any audio) or mp4"
                )
        kept = [source for source in self.others if _codec_name(source) in supported]
        dropped = [f"{source.type} stream {source.index} ({_codec_name(source)})" for source in self.others if source not in kept]
        if dropped:
            ext = self.options.ext
            self._warn(f"{self.name}: .{ext} cannot hold its {', '.join(dropped)}: dropped; choose --ext mkv to keep")
        self.copies = [*self.audio, *kept]
        self.report.extra["copied_streams"] = len(kept)
        self.output.metadata.update({k: v for k, v in self.input.metadata.items() if k.lower() not in _OWN_METADATA})

    def _stream(self) -> None:
        av = av_module()
        video = self.video
        if self.start:
            try:
                self.input.seek(int(self.start / video.time_base), stream=video)  # nearest key frame before
            except av.FFmpegError as exc:
                raise InputError(f"{self.name}: cannot seek to --start {self.start:g} s ({exc})") from None
        done, self.clock = False, time.perf_counter()
        for packet in self._packets():
            ptime = float(packet.pts * packet.time_base) if packet.pts is not None else None
            if done and ptime is not None and ptime > self.end + _AFTER_END_S:
                break
            if packet.stream.index != video.index:
                # demux yields one empty flush packet per stream at the end; a copy has no use for
                # it (skip it only here: the video decoder needs its own to give its last frames)
                if packet.dts is not None:
                    self._copy(packet, ptime)
                continue
            if not done:
                done = any(self._decoded(frame) for frame in self._decode(packet))
        self._add("decode", time.perf_counter() - self.clock)
        self._flush()

    def _packets(self) -> Iterator[Any]:
        """The demuxed packets of the video and every copied stream; where the demuxer cannot read
        on (a damaged file), it goes on after the damage (up to 100 failures in a row)."""
        av = av_module()
        failures = 0
        while failures <= 100:
            try:
                for packet in self.input.demux(self.video, *self.copies):
                    failures = 0
                    yield packet
                return
            except av.FFmpegError:
                self.damage.errors += 1
                failures += 1

    def _decode(self, packet: Any) -> list[Any]:
        """The frames of ``packet``; none when it is damaged (the decoder goes on with the next one)."""
        try:
            return self.video.decode(packet)
        except av_module().FFmpegError:
            self.damage.errors += 1
            return []

    def _decoded(self, frame: Any) -> bool:
        """Restore one decoded frame (queued in the batch); True once past ``--duration``'s end."""
        t = frame.time if frame.time is not None else self.frames / float(self.rate)
        if self.options.start is not None and t < self.start - 1e-6:
            return False
        if t >= self.end - 1e-6:
            return True
        if not self.damage.frame(t):  # garbage the decoder gave back out of order after damage
            return False
        rgb, pts = self._picture(frame)
        self._add("decode", time.perf_counter() - self.clock)
        self._frame(rgb, pts, t)
        self.clock = time.perf_counter()
        return False

    def _picture(self, frame: Any) -> tuple[np.ndarray, int]:
        """The frame upright as RGB uint8, and its output timestamp (in the input's time base)."""
        if self.colour is None:
            self.colour = Colour.of_frame(frame)
        rgb = self.colour.to_rgb(frame)
        turns = round((frame.rotation or 0) / 90) % 4  # display rotation, counter-clockwise degrees
        if turns:
            rgb = np.ascontiguousarray(np.rot90(rgb, turns))
        if self.report.width is None:
            self.report.height, self.report.width = rgb.shape[:2]
        pts = frame.pts if frame.pts is not None else round(self.frames / float(self.rate) / self.video.time_base)
        pts -= round(self.start / self.video.time_base)
        if self.last_pts is not None and pts <= self.last_pts:  # broken input: keep the encoder's order
            pts = self.last_pts + 1
        self.last_pts = pts
        return rgb, pts

    def _frame(self, rgb: np.ndarray, pts: int, t: float) -> None:
        smooth = functools.partial(self.tracker.update, t=t) if self.tracker is not None else None
        self.batch.append(
            (pts, self.restorer.prepare(rgb, landmark_filter=smooth, detector=self.keyframes, person_memo=self.person_memo))
        )
        if len(self.batch) >= self.options.frames_per_batch:
            self._flush()

    def _flush(self) -> None:
        if not self.batch:
            return
        self.restorer.restore_faces([prepared for _, prepared in self.batch])
        for pts, prepared in self.batch:
            result = self.restorer.finish(prepared)
            for stage, secs in result.seconds.items():
                self._add(stage, secs)
            start = time.perf_counter()
            self._encode(result.image, pts)
            self._add("encode", time.perf_counter() - start)
            self.frames += 1
            self.faces += len(result.faces)
        self.batch = []
        if self.runner.progress is not None:
            self.runner.progress(str(self.path), self.frames, self.expected)

    # ---- output ------------------------------------------------------------------------------

    def _open_output(self, width: int, height: int) -> None:
        av = av_module()
        codec, options = encoder(self.options.ext, self.options.crf, self.options.preset, want_hardware(self.options.hardware))
        stream = self.output.add_stream(codec, rate=self.rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = self.video.time_base
        stream.codec_context.time_base = self.video.time_base
        stream.options = options
        if self.colour is not None:
            self.colour.tag(stream.codec_context)
        _copy_metadata(self.video, stream)
        self.out_video = stream
        self.report.extra["encoder"] = codec
        for source in self.copies:
            try:
                self.out_copies[source.index] = self.output.add_stream_from_template(source)
            except (ValueError, av.FFmpegError) as exc:
                if source in self.audio:
                    raise OutputError(f"{self.name}: cannot copy audio stream {source.index} ({exc}); try --ext mkv") from None
                self._warn(f"{self.name}: cannot copy its {source.type} stream {source.index} ({exc}): dropped")
                continue
            _copy_metadata(source, self.out_copies[source.index])
        try:
            for packet in self.queued:
                self._mux_copy(packet)
        except av.FFmpegError as exc:
            raise OutputError(f"{self.name}: cannot write .{self.options.ext} ({exc}); try --ext mkv") from None
        self.queued = []

    def _encode(self, rgb: np.ndarray, pts: int) -> None:
        av = av_module()
        h, w = rgb.shape[:2]
        if h % 2 or w % 2:  # 4:2:0 needs even sizes: drop the odd last row / column
            rgb = rgb[: h - h % 2, : w - w % 2]
        if self.out_video is None:
            self._open_output(rgb.shape[1], rgb.shape[0])
        assert self.colour is not None  # set from the first decoded frame, before any frame is encoded
        frame = self.colour.from_rgb(rgb)
        frame.pts, frame.time_base = pts, self.video.time_base
        try:
            for packet in self.out_video.encode(frame):
                self.output.mux(packet)
        except av.FFmpegError as exc:
            raise OutputError(f"{self.name}: encoding failed ({exc})") from None

    def _copy(self, packet: Any, ptime: float | None) -> None:
        # without --start, packets before 0 (AAC priming, edit lists) are kept like every other one
        if ptime is not None and ((self.options.start is not None and ptime < self.start - 1e-6) or ptime >= self.end - 1e-6):
            return
        if self.out_video is None:
            self.queued.append(packet)
        else:
            self._mux_copy(packet)

    def _mux_copy(self, packet: Any) -> None:
        shift = round(self.start / packet.time_base) if self.start else 0
        if shift:
            packet.pts = packet.pts - shift if packet.pts is not None else None
            packet.dts = packet.dts - shift if packet.dts is not None else None
        target = self.out_copies.get(packet.stream.index)
        if target is not None:  # None: a stream that could not be added after all (warned)
            packet.stream = target
            self.output.mux(packet)


@dataclass
class _Damage:
    """Decode errors of a damaged clip, and the spans of frames missing around them (from the gaps
    between the timestamps of the frames that did decode)."""

    rate: float
    errors: int = 0
    last: float | None = None
    spans: list[tuple[float, float, int]] = field(default_factory=list)  # (first, last missing time, count)

    def frame(self, t: float) -> bool:
        """Note a decoded frame at ``t``; False for one that goes back in time after damage (to drop)."""
        if self.last is not None:
            if t <= self.last and self.errors:
                return False
            missing = round((t - self.last) * self.rate) - 1
            if missing > 0 and (t - self.last) * self.rate > 1.5:
                self.spans.append((round(self.last + 1 / self.rate, 3), round(t - 1 / self.rate, 3), missing))
        self.last = t if self.last is None else max(self.last, t)
        return True

    @property
    def missing(self) -> int:
        return sum(count for _, _, count in self.spans)

    def describe(self, name: str) -> str | None:
        """One line for a clip that had decode errors, else None."""
        if not self.errors:
            return None
        where = ", ".join(f"{a:.2f}–{b:.2f} s" if b > a else f"{a:.2f} s" for a, b, _ in self.spans[:5])
        where += ", …" if len(self.spans) > 5 else ""
        lost = f"{self.missing} frame(s) missing ({where})" if self.spans else "no frame missing"
        restored = "the frames that decoded are restored at their times"
        return f"{name}: damaged: {self.errors} part(s) could not be decoded, {lost}; {restored}"


#: container metadata the muxer writes itself (or that describes the input's own file)
_OWN_METADATA = frozenset({"encoder", "major_brand", "minor_version", "compatible_brands", "duration"})


def _codec_name(stream: Any) -> str:
    context = getattr(stream, "codec_context", None)
    return context.name if context is not None else getattr(stream, "codec_tag", None) or "data"


def _copy_metadata(source: Any, target: Any) -> None:
    """A stream's language, title and handler name (not the input's own duration or encoder)."""
    target.metadata.update({k: v for k, v in source.metadata.items() if k.lower() not in _OWN_METADATA})


def _check_pixels(name: str, width: int, height: int, max_pixels: int | None) -> None:
    """Refuse frames above the pixel limit before any is decoded (the images' decompression-bomb guard)."""
    from bfrboost.io.read import DEFAULT_MAX_PIXELS

    limit = max_pixels or DEFAULT_MAX_PIXELS
    if width * height > limit:
        raise InputError(
            f"{name}: video frames are {width}x{height} ({width * height / 1e6:.1f} MP), above the "
            f"{limit / 1e6:g} MP safety limit; pass --max-pixels {width * height} to allow it"
        )


def restore_videos(
    restorer: Restorer, inputs: Sequence[Path], options: VideoOptions, progress: ProgressCallback | None = None
) -> Iterator[FileReport]:
    """Shorthand for ``VideoRunner(restorer, options, progress).run(inputs)``."""
    return VideoRunner(restorer, options, progress).run(inputs)
