"""What the web app does with one upload, without any web framework: settings → cached
:class:`~bfrboost.pipeline.Restorer` → the same runner the CLI uses → result, faces and report.

Going through :class:`~bfrboost.runners.files.FileRunner` for images and
:class:`~bfrboost.runners.video.VideoRunner` for clips (not re-implementations) is what makes the
page's result byte-identical to ``bfrboost restore`` with the same options: same decoder, same gray
handling, same boxes, same encoder, same landmark smoothing. Models load once per settings combination
and stay in a small LRU cache, because a load (base weights, detector, parser, Real-ESRGAN, refiner)
costs far more than one photo.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bfrboost.errors import BfrboostError, InputError, UsageError
from bfrboost.options import DetectOptions, OutputOptions, PasteOptions, RestoreOptions, UiOptions, VideoOptions, default_of
from bfrboost.safety import one_line, write_bytes
from bfrboost.ui.jobs import Checked, Job, JobQueue
from bfrboost.ui.words import web_words

DEFAULT_MAX_UPLOAD_MB = default_of(UiOptions, "max_upload_mb")
DEFAULT_MAX_VIDEO_MB = default_of(UiOptions, "max_video_mb")
DEFAULT_MAX_PIXELS = default_of(UiOptions, "max_pixels")
DEFAULT_CACHE_SIZE = default_of(UiOptions, "cache_size")
"""A web upload is a stranger's file: refuse big ones before decoding (the CLI's own guard is 200 MP).
Results are capped at the same size: a larger rescaling factor is lowered, as CodeFormer's demo does."""

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class Settings:
    """The page's controls. The models depend on base, fidelity, refiner, background enhance, face
    upsample and rescaling; the others are set on the loaded restorer for each run: ``draw_boxes``
    (images), ``smooth`` (``--smooth/--no-smooth``, clips), and face selection: ``face_index``
    (0 = leftmost), ``largest``, ``person`` (reference photo paths, one person each), ``blend``."""

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
    face_index: int | None = default_of(DetectOptions, "face_index")
    largest: bool = default_of(DetectOptions, "largest")
    person: tuple[str, ...] = default_of(DetectOptions, "person")
    blend: float = default_of(PasteOptions, "blend")

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

    def __init__(self, size: int = DEFAULT_CACHE_SIZE, device: str = "auto") -> None:
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
    warnings: list[str] = field(default_factory=list)  # shown first and in the warning colour
    restored: bool = True  # False when the base fell back to none: faces found, not restored

    def summary(self) -> str:
        what = f"{len(self.faces)} face(s) {'restored' if self.restored else 'found, none restored'}"
        return _summary(what, self.report["seconds"], self.notes, self.warnings)


@dataclass
class ClipOutcome:
    """One uploaded clip restored: the written video and its report (the CLI's ``--json`` line)."""

    video_path: Path
    report_path: Path
    report: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    restored: bool = True

    def summary(self) -> str:
        faces = f"{self.report['face_count']} face(s) {'restored' if self.restored else 'found, none restored'}"
        return _summary(f"{self.report['frames']} frames, {faces}", self.report["seconds"], self.notes, self.warnings)


class Engine:
    """Restores uploads into a private work folder; keeps the last ``keep`` results for download."""

    def __init__(
        self,
        device: str = "auto",
        cache_size: int = DEFAULT_CACHE_SIZE,
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
        self.max_output_pixels = max_pixels
        self.keep = keep
        self.jobs = JobQueue()
        self._runs: list[Path] = []
        self._lock = threading.Lock()
        self._embedder: Any = None

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
                "upload a shorter clip"
            )
        if not is_video(name) and size > self.max_upload_bytes:
            raise InputError(
                f"{name}: {size / 1024 / 1024:.1f} MB is over this app's upload limit of {self.max_upload_mb:g} MB; "
                "use a smaller image"
            )

    def submit(self, name: str, session: str = "") -> Job:
        """Queue a job for the upload called ``name`` (its kind shows to the jobs behind it)."""
        from bfrboost.io.video import is_video

        return self.jobs.submit("clip" if is_video(name) else "photo", session)

    def restore(
        self,
        upload: Path | str,
        settings: Settings,
        name: str | None = None,
        progress: Progress | None = None,
        job: Job | None = None,
    ) -> Outcome | ClipOutcome:
        """Restore one uploaded file as ``bfrboost restore FILE`` would: a clip (by its extension, as
        the CLI decides) through the video runner, anything else as an image. Raises
        :class:`BfrboostError` with one line naming the file (``name``: what the user called it), in
        web words, and :class:`~bfrboost.ui.jobs.Cancelled` when ``job`` is cancelled. ``job``: from
        :meth:`submit`, its turn already come (:meth:`JobQueue.wait`); without one, this call waits its turn."""
        from bfrboost.io.video import is_video

        upload = Path(upload)
        name = one_line(name or upload.name)
        own = job is None
        if job is None:
            job = self.submit(name)
            for _ in self.jobs.wait(job):
                pass
        report = progress or (lambda fraction, text: None)

        def tracked(fraction: float, text: str) -> None:
            job.progress = text
            report(fraction, text)

        try:
            tracked(0.0, "checking the upload")
            self.check_upload(upload, name)
            if is_video(name):
                return self._restore_clip(upload, settings, name, tracked, job)
            return self._restore_image(upload, settings, name, tracked, job)
        except BfrboostError as exc:
            raise type(exc)(web_words(str(exc))) from None
        finally:
            if own:
                self.jobs.done(job)

    def _loaded(self, settings: Settings, progress: Progress) -> Any:
        """The cached restorer for ``settings``, with this run's strength, face selection and blend."""
        from bfrboost.faces.select import FaceSelector, PersonMatcher, Selection, load_embedder
        from bfrboost.io.read import read_image

        strength = _strength(settings.refiner_strength)
        selection = Selection(face_index=settings.face_index, largest=settings.largest)
        references = [(Path(p).name, read_image(p, name=Path(p).name, max_pixels=self.max_pixels).rgb) for p in settings.person]
        restorer = self.cache.get(settings, progress)
        restorer.refiner_strength = strength
        restorer.paster.blend = _blend(settings.blend)
        person = None
        if references:
            self._embedder = self._embedder or load_embedder("dlib")
            person = PersonMatcher.from_photos(references, self._embedder, restorer.finder.detector)
        restorer.finder.selector = FaceSelector(selection, person)
        return restorer

    def _fit(self, upload: Path, settings: Settings) -> tuple[Settings, list[str]]:
        """Settings whose result stays under :attr:`max_output_pixels` (CodeFormer's demo lowers its
        rescaling factor for big photos the same way), and the note that says so."""
        import dataclasses

        from PIL import Image

        try:
            with Image.open(upload) as image:
                width, height = image.size
        except Exception:  # noqa: BLE001 - not an image: the decoder says so, with its own message
            return settings, []
        scale = settings.upscale
        while scale > 1 and width * height * scale * scale > self.max_output_pixels:
            scale = max(1.0, scale - 0.5)
        if scale == settings.upscale:
            return settings, []
        result = width * height * settings.upscale**2 / 1e6
        note = (
            f"rescaling factor lowered from {settings.upscale:g} to {scale:g}: a {settings.upscale:g}× result of this "
            f"{width}×{height} photo would be {result:.3g} MP, over this app's {self.max_output_pixels / 1e6:g} MP limit"
        )
        return dataclasses.replace(settings, upscale=scale), [note]

    def _restore_image(self, upload: Path, settings: Settings, name: str, progress: Progress, job: Job) -> Outcome:
        from bfrboost.io.read import read_image
        from bfrboost.runners.files import FileRunner

        settings, notes = self._fit(upload, settings)
        run = self._new_run()
        options = OutputOptions(outdir=run, draw_boxes=settings.draw_boxes, max_pixels=self.max_pixels)
        restorer = self._loaded(settings, progress)
        progress(0.3, "restoring faces")
        (report,) = FileRunner(Checked(restorer, job), options).run([upload])
        notes, warnings = _notes(restorer, settings, notes)
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
        return Outcome(before, after, image_path, report_path, payload, faces, notes, warnings, restored=not warnings)

    def _restore_clip(self, upload: Path, settings: Settings, name: str, progress: Progress, job: Job) -> ClipOutcome:
        """``bfrboost restore CLIP`` with the CLI's video defaults (mp4, crf 18, preset medium)."""
        from bfrboost.runners.video import VideoRunner

        run = self._new_run()
        options = VideoOptions(outdir=run, smooth=settings.smooth)

        def frames_done(_: str, frames: int, expected: int | None) -> None:
            if expected:
                progress(0.3 + 0.65 * min(frames / expected, 1.0), f"restoring frames: {frames} of {expected}")
            else:
                progress(0.3, f"restoring frames: {frames}")

        restorer = self._loaded(settings, progress)
        progress(0.3, "restoring frames")
        (report,) = VideoRunner(Checked(restorer, job), options, progress=frames_done).run([upload])
        notes, warnings = _notes(restorer, settings, [])
        if report.error is not None:
            raise InputError(_named(report.error, upload, name))
        if settings.draw_boxes:
            notes.append("draw boxes applies to photos only")
        video_path = Path(report.output)
        payload, report_path = _write_report(report, name, video_path)
        progress(1.0, "done")
        return ClipOutcome(video_path, report_path, payload, notes, warnings, restored=not warnings)

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


def _summary(what: str, seconds: dict[str, float], notes: list[str], warnings: Sequence[str] = ()) -> str:
    """The page's status line: warnings first, what was restored, total and per-stage seconds, then the notes."""
    stages = ", ".join(f"{k} {v:.2f}" for k, v in seconds.items())
    total = f"{what}, {sum(seconds.values()):.2f} s ({stages})"
    return " · ".join([*(f"⚠ {w}" for w in warnings), total, *(f"note: {n}" for n in notes)])


def _notes(restorer: Any, settings: Settings, notes: list[str]) -> tuple[list[str], list[str]]:
    """The run's notes in web words, and the warning when ``auto`` found no base weights (the
    restorer's note about it names the missing file; the page says what it means instead)."""
    from bfrboost.pipeline import AUTO_BASE

    warnings = []
    if settings.base == "auto" and restorer.base.name == "none":
        warnings.append(
            f"no base model is installed on this server (the {AUTO_BASE} weights are missing): faces were only "
            "aligned and pasted back, not restored; choose a base model whose weights are installed"
        )
    kept = [web_words(n) for n in restorer.notes if not (warnings and "restoring with base 'none'" in n)]
    return notes + kept, warnings


def _blend(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"blend must be between 0 (original face) and 1 (restored face), got {value:g}")
    return float(value)


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
        return web_words(one_line(exc))
    return one_line(f"unexpected error ({type(exc).__name__}: {exc}); the server log has the details")


__all__ = ["ClipOutcome", "Engine", "Outcome", "RestorerCache", "Settings", "describe", "has_fidelity"]
