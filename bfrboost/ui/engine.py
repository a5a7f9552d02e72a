"""What the web app does with one upload, without any web framework: settings → cached
:class:`~bfrboost.pipeline.Restorer` → the same runner the CLI uses → result, faces and report.

Going through :class:`~bfrboost.runners.files.FileRunner` for images and
:class:`~bfrboost.runners.video.VideoRunner` for clips (not re-implementations) is what makes the
page's result byte-identical to ``bfrboost restore`` with the same options: same decoder, same gray
handling, same boxes, same encoder, same landmark smoothing. Models load once per settings combination and stay in a small LRU cache, because
a load (base weights, detector, parser, Real-ESRGAN, refiner) costs far more than one photo.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bfrboost.errors import BfrboostError, InputError, UsageError
from bfrboost.options import OutputOptions, PasteOptions, RestoreOptions, VideoOptions, default_of
from bfrboost.safety import one_line, write_bytes

DEFAULT_MAX_UPLOAD_MB = 20
DEFAULT_MAX_VIDEO_MB = 200
DEFAULT_MAX_PIXELS = 40_000_000
"""A web upload is a stranger's file: refuse big ones before decoding (the CLI's own guard is 200 MP)."""

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class Settings:
    """The page's controls; everything but ``draw_boxes``, ``refiner_strength`` and ``smooth`` selects
    the models. ``draw_boxes`` is for images, ``smooth`` (``--smooth/--no-smooth``) for clips."""

    base: str = default_of(RestoreOptions, "base")
    fidelity: float = 0.5  # where the slider starts: CodeFormer's own w (the CLI leaves the base's default)
    refine: bool = False
    refiner: str = ""
    refiner_strength: float = default_of(RestoreOptions, "refiner_strength")
    bg_enhance: bool = False
    face_upsample: bool = default_of(PasteOptions, "face_upsample")
    upscale: float = default_of(PasteOptions, "upscale")
    draw_boxes: bool = default_of(OutputOptions, "draw_boxes")
    smooth: bool = default_of(VideoOptions, "smooth")

    def restorer_kwargs(self, device: str) -> dict[str, Any]:
        """Keyword arguments of :class:`Restorer`, as ``bfrboost restore`` would build them.

        The bounds are :mod:`bfrboost.options`' (the CLI's), checked here so a bad value fails before any model loads."""
        PasteOptions(upscale=float(self.upscale))
        if self.refine and not self.refiner.strip():
            raise UsageError("the refiner is on but no refiner folder is given: enter its path, or turn the refiner off")
        kwargs: dict[str, Any] = dict(base=self.base, upscale=float(self.upscale), device=device)
        if has_fidelity(self.base):
            kwargs["fidelity"] = float(self.fidelity)
        if self.refine:
            kwargs.update(refine=True, refiner=Path(self.refiner.strip()).expanduser())
        if self.bg_enhance:
            kwargs["bg_upsampler"] = "realesrgan"
        if self.face_upsample:
            kwargs["face_upsample"] = True
        return kwargs


def has_fidelity(base: str) -> bool:
    """Whether ``base`` has a fidelity knob (CodeFormer ``w``, VQFR ``fidelity_ratio``)."""
    from bfrboost.backbones.registry import fidelity_knob
    from bfrboost.pipeline import AUTO_BASE

    try:
        fidelity_knob(AUTO_BASE if base == "auto" else base)
    except UsageError:
        return False
    return True


class RestorerCache:
    """At most ``size`` loaded :class:`Restorer` objects, least recently used dropped first."""

    def __init__(self, size: int = 2, device: str = "auto") -> None:
        if size < 1:
            raise UsageError(f"the model cache must hold at least 1 restorer, got {size}")
        self.size = size
        self.device = device
        self.loads = 0  # how many times models were loaded: the tests check the cache with it
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, settings: Settings, progress: Progress | None = None) -> Any:
        from bfrboost.pipeline import Restorer

        kwargs = settings.restorer_kwargs(self.device)
        key = tuple(sorted((k, str(v)) for k, v in kwargs.items()))
        with self._lock:
            restorer = self._items.get(key)
            if restorer is not None:
                self._items.move_to_end(key)
                return restorer
            if progress is not None:
                progress(0.1, "loading models (first run with these settings)")
            while len(self._items) >= self.size:  # free the old models before loading new ones
                self._items.popitem(last=False)
            restorer = Restorer(**kwargs)
            self.loads += 1
            self._items[key] = restorer
            return restorer


@dataclass
class Outcome:
    """One upload restored: what the page shows and offers for download."""

    before: np.ndarray  # the input, resized to the output's size, for the comparison slider
    after: np.ndarray  # the result as written to ``image_path`` (decoded back from that file)
    image_path: Path
    report_path: Path
    report: dict[str, Any]
    faces: list[tuple[np.ndarray, str]] = field(default_factory=list)  # crop | restored, caption
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return _summary(f"{len(self.faces)} face(s) restored", self.report["seconds"], self.notes)


@dataclass
class ClipOutcome:
    """One uploaded clip restored: the written video and its report (the CLI's ``--json`` line)."""

    video_path: Path
    report_path: Path
    report: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return _summary(f"{self.report['frames']} frames, {self.report['face_count']} face(s) restored", self.report["seconds"], self.notes)


class Engine:
    """Restores uploads into a private work folder; keeps the last ``keep`` results for download."""

    def __init__(
        self,
        device: str = "auto",
        cache_size: int = 2,
        max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        workdir: Path | None = None,
        keep: int = 16,
        max_video_mb: float = DEFAULT_MAX_VIDEO_MB,
    ) -> None:
        self.cache = RestorerCache(cache_size, device)
        self.max_upload_bytes = int(max_upload_mb * 1024 * 1024)
        self.max_upload_mb = max_upload_mb
        self.max_video_bytes = int(max_video_mb * 1024 * 1024)
        self.max_video_mb = max_video_mb
        self.max_pixels = max_pixels
        self.root = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="bfrboost-ui-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self._runs: list[Path] = []
        self._lock = threading.Lock()
        self._busy = threading.Lock()

    @property
    def max_request_bytes(self) -> int:
        """What the web server lets through: the larger cap (the engine then applies each kind's own)."""
        return max(self.max_upload_bytes, self.max_video_bytes)

    def check_upload(self, path: Path, name: str) -> None:
        """One line when the upload is over its kind's size cap (the web server caps it too)."""
        from bfrboost.io.video import is_video

        size = path.stat().st_size
        if is_video(name) and size > self.max_video_bytes:
            raise InputError(
                f"{name}: {size / 1024 / 1024:.1f} MB is over this app's video upload limit of {self.max_video_mb:g} MB; "
                "upload a shorter clip, or restore it with `bfrboost restore` (--start/--duration restore a part)"
            )
        if not is_video(name) and size > self.max_upload_bytes:
            raise InputError(
                f"{name}: {size / 1024 / 1024:.1f} MB is over this app's upload limit of {self.max_upload_mb:g} MB; "
                "use a smaller image, or the `bfrboost restore` command"
            )

    def restore(
        self, upload: Path | str, settings: Settings, name: str | None = None, progress: Progress | None = None
    ) -> Outcome | ClipOutcome:
        """Restore one uploaded file as ``bfrboost restore FILE`` would: a clip (by its extension, as
        the CLI decides) through the video runner, anything else as an image. Raises
        :class:`BfrboostError` with one line naming the file (``name``: what the user called it)."""
        from bfrboost.io.video import is_video

        upload = Path(upload)
        name = one_line(name or upload.name)
        progress = progress or (lambda fraction, text: None)
        progress(0.0, "checking the upload")
        self.check_upload(upload, name)
        if is_video(name):
            return self._restore_clip(upload, settings, name, progress)
        return self._restore_image(upload, settings, name, progress)

    def _restore_image(self, upload: Path, settings: Settings, name: str, progress: Progress) -> Outcome:
        from bfrboost.io.read import read_image
        from bfrboost.runners.files import FileRunner

        strength = _strength(settings.refiner_strength)
        run = self._new_run()
        options = OutputOptions(outdir=run, draw_boxes=settings.draw_boxes, max_pixels=self.max_pixels)
        with self._busy:  # one restore at a time: the cached models (and their strength) are shared
            restorer = self.cache.get(settings, progress)
            restorer.refiner_strength = strength
            progress(0.3, "restoring faces")
            (report,) = FileRunner(restorer, options).run([upload])
            notes = list(restorer.notes)
        if report.error is not None:
            raise InputError(_named(report.error, upload, name))
        progress(0.9, "preparing the result")
        image_path = Path(report.output)
        payload, report_path = _write_report(report, name, image_path)
        after = read_image(image_path, max_pixels=None).rgb
        before = _resized(read_image(upload, name=name, max_pixels=self.max_pixels).rgb, after.shape)
        faces = [
            (np.concatenate([face.crop, face.restored], axis=1), f"face {i + 1} · score {face.score:.2f} · before | after")
            for i, face in enumerate(report.faces)
        ]
        progress(1.0, "done")
        return Outcome(before, after, image_path, report_path, payload, faces, notes)

    def _restore_clip(self, upload: Path, settings: Settings, name: str, progress: Progress) -> ClipOutcome:
        """``bfrboost restore CLIP`` with the CLI's video defaults (mp4, crf 18, preset medium)."""
        from bfrboost.runners.video import VideoRunner

        strength = _strength(settings.refiner_strength)
        run = self._new_run()
        options = VideoOptions(outdir=run, smooth=settings.smooth)

        def frames_done(_: str, frames: int, expected: int | None) -> None:
            if expected:
                progress(0.3 + 0.65 * min(frames / expected, 1.0), f"restoring frames: {frames} of {expected}")
            else:
                progress(0.3, f"restoring frames: {frames}")

        with self._busy:
            restorer = self.cache.get(settings, progress)
            restorer.refiner_strength = strength
            progress(0.3, "restoring frames")
            (report,) = VideoRunner(restorer, options, progress=frames_done).run([upload])
            notes = list(restorer.notes)
        if report.error is not None:
            raise InputError(_named(report.error, upload, name))
        if settings.draw_boxes:
            notes.append("draw boxes applies to images only (as with `bfrboost restore`)")
        video_path = Path(report.output)
        payload, report_path = _write_report(report, name, video_path)
        progress(1.0, "done")
        return ClipOutcome(video_path, report_path, payload, notes)

    def close(self) -> None:
        """Remove the work folder and drop the models."""
        shutil.rmtree(self.root, ignore_errors=True)
        self.cache = RestorerCache(self.cache.size, self.cache.device)

    def _new_run(self) -> Path:
        with self._lock:
            run = Path(tempfile.mkdtemp(prefix=f"{time.strftime('%H%M%S')}-", dir=self.root))
            self._runs.append(run)
            while len(self._runs) > self.keep:  # old downloads go; the browser already has their copies
                shutil.rmtree(self._runs.pop(0), ignore_errors=True)
            return run


def _write_report(report: Any, name: str, output: Path) -> tuple[dict[str, Any], Path]:
    """The CLI's ``--json`` fields beside the result, naming the upload and the download by name."""
    payload = report.to_json()
    payload["input"], payload["output"] = name, output.name
    path = output.with_name(f"{output.stem}_report.json")
    write_bytes(path, (json.dumps(payload, indent=2) + "\n").encode())
    return payload, path


def _summary(what: str, seconds: dict[str, float], notes: list[str]) -> str:
    """The page's status line: what was restored, total and per-stage seconds, then the notes."""
    stages = ", ".join(f"{k} {v:.2f}" for k, v in seconds.items())
    return " · ".join([f"{what}, {sum(seconds.values()):.2f} s ({stages})", *(f"note: {n}" for n in notes)])


def _strength(value: float) -> float:
    return RestoreOptions(refiner_strength=float(value)).refiner_strength


def _named(message: str, path: Path, name: str) -> str:
    """The runner names files by path; the page names the upload as the user called it."""
    message = message.replace(str(path), name)
    return message if message.startswith(name) else f"{name}: {message}"


def _resized(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    import cv2

    if image.shape[:2] == shape[:2]:
        return image
    return cv2.resize(image, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def describe(exc: BaseException) -> str:
    """The one line the page shows for any failure (no traceback ever reaches the page)."""
    if isinstance(exc, BfrboostError):
        return one_line(exc)
    return one_line(f"unexpected error ({type(exc).__name__}: {exc}); the server log has the details")


__all__ = ["ClipOutcome", "Engine", "Outcome", "RestorerCache", "Settings", "describe", "has_fidelity"]
