"""`Restorer`: detect → align → base → refine → paste, batched over every face of many images.

The CLI is a loop around this class; everything it can do is reachable from Python.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from bfrboost.backbones.registry import LoadedBase, fidelity_knob, load_base
from bfrboost.background import load_upsampler
from bfrboost.errors import BfrboostError, OutputError, UsageError, WeightsError
from bfrboost.faces.align import FFHQ_TEMPLATE_512, warp_faces
from bfrboost.faces.detect import get_detector, select_faces
from bfrboost.faces.paste import paste_faces
from bfrboost.faces.types import Face

#: The base model ``base="auto"`` uses when its weights can be had; otherwise faces pass through.
AUTO_BASE = "gfpgan"
FACE_SIZE = 512


@dataclass
class Result:
    """One restored image: ``image`` is RGB uint8 at ``upscale``× the input size."""

    image: np.ndarray
    faces: list[Face]
    alpha: np.ndarray | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device not in ("cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise UsageError(f"unknown device '{device}'; use auto, cpu, cuda, cuda:N or mps")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device '{device}' asked for, but CUDA is not available here; use --device cpu")
    return torch.device(device)


class _Timer:
    """Accumulates seconds per stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def _gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


def _to_tensor(crops: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    array = np.stack(crops).astype(np.float32) / 255.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).to(device)


def _to_uint8(batch: torch.Tensor) -> list[np.ndarray]:
    array = (batch.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return list(array)


# ---- files: what the CLI does, as a library ------------------------------------------------------


@dataclass
class OutputOptions:
    """Where and how results are written (GFPGAN's layout: ``OUTDIR/restored_imgs/`` …)."""

    outdir: Path
    suffix: str | None = None
    ext: str = "auto"
    quality: int = 95
    overwrite: bool = False
    save_faces: bool = False
    save_cmp: bool = False
    draw_boxes: bool = False
    max_pixels: int | None = None


@dataclass
class FileReport:
    """What happened to one input: the ``--json`` line and the summary are built from it."""

    input: str
    output: str | None = None
    width: int | None = None
    height: int | None = None
    faces: list[Face] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    skipped: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "output": self.output,
            "width": self.width,
            "height": self.height,
            "faces": [
                {
                    "box": [round(float(v), 2) for v in face.box],
                    "score": round(float(face.score), 4),
                    "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in face.landmarks],
                }
                for face in self.faces
            ],
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
            "error": self.error,
        }


def draw_boxes(image: np.ndarray, faces: Sequence[Face], scale: float) -> np.ndarray:
    """Boxes and the five landmarks, scaled to the output frame, for checking the detector."""
    out = image.copy()
    thickness = max(1, round(min(image.shape[:2]) / 300))
    for face in faces:
        x1, y1, x2, y2 = (np.asarray(face.box) * scale).round().astype(int)
        cv2.rectangle(out, (x1, y1), (x2, y2), (0, 255, 0), thickness)
        for x, y in np.asarray(face.landmarks) * scale:
            cv2.circle(out, (round(x), round(y)), thickness + 1, (255, 0, 0), -1)
    return out


class Restorer:
    """Restore every face of an image with a base model, optionally boosted by the InfoBFR refiner.

    ``base``: a registry name (``gfpgan``, ``codeformer``, …), ``none`` (faces only aligned and pasted
    back) or ``auto`` (GFPGAN when its weights are available, else ``none`` with a note in
    ``self.notes``). ``refine``: ``None`` refines exactly when a ``refiner`` folder is given.
    ``fidelity`` sets the base's fidelity knob whatever its name (CodeFormer ``fidelity``, VQFR
    ``fidelity_ratio``); other knobs go in ``knobs``. ``bg_upsampler="realesrgan"`` upscales the
    whole photo with Real-ESRGAN (tiles of ``bg_tile`` px) instead of a Lanczos resize.
    """

    #: A gray input is written gray (bases may tint it); colourising subclasses turn this off.
    keeps_gray: bool = True

    def __init__(
        self,
        base: str = "auto",
        *,
        refine: bool | None = None,
        refiner: str | Path | None = None,
        refiner_strength: float = 1.0,
        sd_model: str | Path | None = None,
        compile: bool = False,
        device: str = "auto",
        detector: str = "auto",
        upscale: float = 2.0,
        aligned: bool = False,
        only_center_face: bool = False,
        min_face: int = 0,
        weights: str | Path | None = None,
        batch_size: int | None = None,
        knobs: Mapping[str, Any] | None = None,
        fidelity: float | None = None,
        parse: bool = True,
        paste: str = "residual",
        color_match: bool = False,
        bg_upsampler: str = "none",
        bg_tile: int = 400,
    ) -> None:
        if paste not in ("residual", "direct"):
            raise UsageError(f"unknown paste mode '{paste}'; use residual or direct")
        if upscale <= 0 or upscale > 8:
            raise UsageError(f"upscale must be in (0, 8], got {upscale}")
        if not 0.0 <= refiner_strength <= 1.0:
            raise UsageError(f"refiner strength must be in [0, 1], got {refiner_strength}")
        if refine and refiner is None:
            raise UsageError(
                "--refine needs a refiner folder: pass --refiner DIR "
                "(make a tiny test one with `bfrboost refiner init --tiny DIR`)"
            )
        self.device = resolve_device(device)
        self.upscale = float(upscale)
        self.aligned = aligned
        self.only_center_face = only_center_face
        self.min_face = int(min_face)
        self.refiner_strength = float(refiner_strength)
        self.notes: list[str] = []
        knobs = dict(knobs or {})
        if fidelity is not None:
            knobs[fidelity_knob(AUTO_BASE if base == "auto" else base)] = fidelity
        self.base: LoadedBase = self._load_base(base, weights, batch_size, knobs)
        self.refiner = None
        if refine is not False and refiner is not None:
            from bfrboost.refiner import load_refiner

            self.refiner = load_refiner(Path(refiner), device=self.device, sd_model=sd_model, compile=compile)
            self.refine_batch = batch_size or (8 if self.device.type == "cuda" else 1)
            if self.device.type == "cpu":
                self.notes.append("the refiner runs on the CPU: about 40 s per face with SD 2.1 on 2 cores; a GPU is far faster")
        self.detector = None if aligned else get_detector(detector, device=str(self.device))
        self.background = None if aligned else load_upsampler(bg_upsampler, self.upscale, device=self.device, tile=bg_tile)
        self.paste_mode = paste
        self.color_match = color_match
        self.parser = None
        if parse and not aligned:
            from bfrboost.faces.parse import load_parser

            self.parser = load_parser(device=self.device)

    def _load_base(self, base: str, weights: Any, batch_size: int | None, knobs: dict) -> LoadedBase:
        kwargs = dict(device=self.device, weights=weights, batch_size=batch_size, **knobs)
        if base != "auto":
            return load_base(base, **kwargs)
        try:
            return load_base(AUTO_BASE, **kwargs)
        except WeightsError as exc:
            self.notes.append(f"{exc} — restoring with base 'none' (faces aligned and pasted back only)")
            return load_base("none", device=self.device)

    # ---- stages -----------------------------------------------------------------------------

    def _find_faces(self, image: np.ndarray) -> list[Face]:
        if self.aligned:
            crop = image
            if crop.shape[:2] != (FACE_SIZE, FACE_SIZE):
                crop = cv2.resize(crop, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_CUBIC)
            h, w = image.shape[:2]
            affine = np.array([[FACE_SIZE / w, 0, 0], [0, FACE_SIZE / h, 0]], dtype=np.float64)
            landmarks = FFHQ_TEMPLATE_512 * np.array([w / FACE_SIZE, h / FACE_SIZE])
            return [Face(box=np.array([0, 0, w, h], float), score=1.0, landmarks=landmarks, affine=affine, crop=crop)]
        faces = self.detector.detect(image)
        return select_faces(faces, image.shape, only_center=self.only_center_face, min_face=self.min_face)

    def _restore_faces(self, faces: list[Face], timer: _Timer) -> list[np.ndarray]:
        """Restored crops of aligned ``faces`` (hook: guided restoration also reads ``face.extras``)."""
        return self._restore_crops([face.crop for face in faces], timer)

    def _restore_crops(self, crops: list[np.ndarray], timer: _Timer) -> list[np.ndarray]:
        if not crops:
            return []
        with timer("base"):
            batch = _to_tensor(crops, self.device)
            restored = self.base.restore(batch)
        if self.refiner is not None:
            with timer("refine"):
                refined = torch.cat([self.refiner.refine(chunk) for chunk in restored.split(self.refine_batch)])
                if self.refiner_strength < 1.0:
                    refined = torch.lerp(restored, refined.to(restored.dtype), self.refiner_strength)
                restored = refined
        return _to_uint8(restored)

    def _upscaled(self, image: np.ndarray) -> np.ndarray:
        if self.background is not None:  # Real-ESRGAN, also at 1× (it then cleans the background)
            return self.background.upscale(image, self.upscale)
        if self.upscale == 1:
            return image.copy()
        h, w = image.shape[:2]
        size = (round(w * self.upscale), round(h * self.upscale))
        return cv2.resize(image, size, interpolation=cv2.INTER_LANCZOS4)

    def _paste(self, image: np.ndarray, faces: list[Face], alpha: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        if self.aligned:
            return faces[0].restored, None
        frame = self._upscaled(image)
        if faces:
            masks = self.parser.masks([face.restored for face in faces]) if self.parser is not None else None
            frame = paste_faces(
                frame, faces, self.upscale, masks=masks, residual=self.paste_mode == "residual", color_match=self.color_match
            )
        if alpha is not None:
            alpha = cv2.resize(alpha, frame.shape[1::-1], interpolation=cv2.INTER_LINEAR) if self.upscale != 1 else alpha
        return frame, alpha

    # ---- public API --------------------------------------------------------------------------

    def restore(self, image: np.ndarray, alpha: np.ndarray | None = None) -> Result:
        """Restore one RGB uint8 image (H×W×3); ``alpha`` (H×W) is resized and returned alongside."""
        return self.restore_batch([image], [alpha])[0]

    def restore_batch(
        self, images: Sequence[np.ndarray], alphas: Sequence[np.ndarray | None] | None = None,
        targets: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[Result]:
        """Restore many images; all their faces go through the base model and refiner together.

        ``targets``: per-image extras (e.g. a guidance mask in photo coordinates) copied into the
        ``extras`` of each of that image's faces, for subclasses that restore faces with them.
        """
        alphas = list(alphas) if alphas is not None else [None] * len(images)
        targets = list(targets) if targets is not None else [None] * len(images)
        timers = [_Timer() for _ in images]
        per_image: list[list[Face]] = []
        for image, timer in zip(images, timers):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise UsageError(f"images must be RGB uint8 H×W×3 arrays, got {image.dtype} {image.shape}")
            if self.aligned:
                with timer("align"):
                    faces = self._find_faces(image)
            else:
                with timer("detect"):
                    faces = self._find_faces(image)
                with timer("align"):
                    warp_faces(image, faces, size=FACE_SIZE)
            per_image.append(faces)
        for faces, extras in zip(per_image, targets):
            for face in faces:
                face.extras.update(extras or {})
        crops = [face.crop for faces in per_image for face in faces]
        shared = _Timer()
        restored = iter(self._restore_faces([face for faces in per_image for face in faces], shared))
        for faces in per_image:
            for face in faces:
                face.restored = next(restored)
        results = []
        for image, alpha, faces, timer in zip(images, alphas, per_image, timers):
            # batched stages are charged to each image in proportion to its share of the faces
            for stage, secs in shared.seconds.items():
                timer.seconds[stage] = secs * len(faces) / max(len(crops), 1)
            with timer("paste"):
                out, out_alpha = self._paste(image, faces, alpha)
            results.append(Result(image=out, faces=faces, alpha=out_alpha, seconds=timer.seconds))
        return results


    # ---- files -------------------------------------------------------------------------------

    def restore_files(
        self, inputs: Sequence[Path], options: OutputOptions, images_per_batch: int = 4
    ) -> Iterator[FileReport]:
        """Restore image files into ``options.outdir``, yielding one report per input, in order.

        A bad file gets a report with ``error`` set and the batch goes on; an existing output is kept
        (``skipped``) unless ``options.overwrite``; every file is written atomically.
        """
        from bfrboost.io.images import check_not_input

        pending: list[tuple[FileReport, Any]] = []
        planned: dict[Path, Path] = {}
        by_name: dict[str, list[Path]] = {}  # the input guard compares same-named files only: O(n), not O(n²)
        for path in inputs:
            by_name.setdefault(path.name, []).append(path)
        for path in inputs:
            report = FileReport(input=str(path))
            try:
                out = self._plan(path, options)
                check_not_input(out, by_name.get(out.name, []))
                if out in planned:
                    raise OutputError(f"{path}: its output {out} is already taken by {planned[out]}; restore it separately or with --suffix")
                planned[out] = path
            except BfrboostError as exc:
                report.error = str(exc)
                yield from self._flush(pending, options)
                pending = []
                yield report
                continue
            report.output = str(out)
            if out.exists() and not options.overwrite:
                report.skipped = f"{out}: already exists; pass --overwrite to replace it"
                yield from self._flush(pending, options)
                pending = []
                yield report
                continue
            loaded = self._decode(report, path, options)
            if loaded is None:
                yield from self._flush(pending, options)
                pending = []
                yield report
                continue
            pending.append((report, loaded))
            if len(pending) >= images_per_batch:
                yield from self._flush(pending, options)
                pending = []
        yield from self._flush(pending, options)

    def restore_bytes(self, data: bytes, fmt: str = "png", quality: int = 95, name: str = "<stdin>") -> tuple[bytes, FileReport]:
        """Restore one encoded image (e.g. read from stdin) and return it encoded (for stdout)."""
        from bfrboost.io.images import encode_image, read_image

        report = FileReport(input=name)
        start = time.perf_counter()
        loaded = read_image(data, name=name)
        report.width, report.height = loaded.rgb.shape[1], loaded.rgb.shape[0]
        decode = time.perf_counter() - start
        result = self.restore(loaded.rgb, loaded.alpha)
        start = time.perf_counter()
        image = _gray(result.image) if loaded.gray and self.keeps_gray else result.image
        encoded = encode_image(image, result.alpha, fmt=fmt, quality=quality, icc=loaded.icc)
        report.faces = result.faces
        report.seconds = {"decode": decode, **result.seconds, "encode": time.perf_counter() - start}
        return encoded, report

    def _plan(self, path: Path, options: OutputOptions) -> Path:
        from bfrboost.io.images import output_ext, plan_output

        ext = output_ext(path, options.ext, has_alpha=False)
        return plan_output(path, options.outdir, "restored_imgs", options.suffix, ext)

    def _decode(self, report: FileReport, path: Path, options: OutputOptions) -> Any:
        from bfrboost.io.images import read_image

        start = time.perf_counter()
        try:
            loaded = read_image(path, max_pixels=options.max_pixels) if options.max_pixels else read_image(path)
        except BfrboostError as exc:
            report.error = str(exc)
            return None
        report.seconds["decode"] = time.perf_counter() - start
        report.width, report.height = loaded.rgb.shape[1], loaded.rgb.shape[0]
        return loaded

    def _flush(self, pending: list[tuple[FileReport, Any]], options: OutputOptions) -> Iterator[FileReport]:
        if not pending:
            return
        results = self.restore_batch([loaded.rgb for _, loaded in pending], [loaded.alpha for _, loaded in pending])
        for (report, loaded), result in zip(pending, results):
            report.faces = result.faces
            report.seconds.update(result.seconds)
            start = time.perf_counter()
            if loaded.gray and self.keeps_gray:  # a gray photo stays gray: bases may tint it (colourising is a separate job)
                result.image = _gray(result.image)
            try:
                self._write(Path(report.input), Path(report.output), result, options, icc=loaded.icc)
            except BfrboostError as exc:
                report.error = str(exc)
                report.output = None
            report.seconds["encode"] = time.perf_counter() - start
            yield report

    def _write(self, source: Path, out: Path, result: Result, options: OutputOptions, icc: bytes | None = None) -> None:
        from bfrboost.io.images import write_image

        image = result.image
        if options.draw_boxes and not self.aligned:
            image = draw_boxes(image, result.faces, self.upscale)
        write_image(out, image, result.alpha, quality=options.quality, overwrite=options.overwrite, icc=icc)
        if not (options.save_faces or options.save_cmp):
            return
        stem = source.stem
        for index, face in enumerate(result.faces):
            name = f"{stem}_{index:02d}"
            if options.save_faces:
                write_image(options.outdir / "cropped_faces" / f"{name}.png", face.crop, overwrite=options.overwrite)
                write_image(options.outdir / "restored_faces" / f"{name}{'_' + options.suffix if options.suffix else ''}.png", face.restored, overwrite=options.overwrite)
            if options.save_cmp:
                write_image(options.outdir / "cmp" / f"{name}.png", np.concatenate([face.crop, face.restored], axis=1), overwrite=options.overwrite)
