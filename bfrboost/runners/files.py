"""Image files and encoded bytes (stdin) through a :class:`~bfrboost.pipeline.Restorer`.

GFPGAN's output layout: ``OUTDIR/restored_imgs/NAME.EXT`` (+ ``cropped_faces/``, ``restored_faces/``,
``cmp/``). Every write goes through :mod:`bfrboost.safety` (atomic, input guard).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from bfrboost.errors import BfrboostError, OutputError
from bfrboost.faces.types import Face
from bfrboost.io.images import LoadedImage, encode_image, output_ext, plan_output, read_image, write_image
from bfrboost.pipeline import Restorer, Result
from bfrboost.reports import FileReport
from bfrboost.safety import InputGuard


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


def gray(image: np.ndarray) -> np.ndarray:
    """RGB → gray → RGB: a gray photo stays gray (bases may tint it; colourising is a separate job)."""
    return cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


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


def restore_bytes(
    restorer: Restorer, data: bytes, fmt: str = "png", quality: int = 95, name: str = "<stdin>", max_pixels: int | None = None
) -> tuple[bytes, FileReport]:
    """Restore one encoded image (e.g. read from stdin) and return it encoded (for stdout)."""
    report = FileReport(input=name)
    start = time.perf_counter()
    loaded = read_image(data, name=name, max_pixels=max_pixels) if max_pixels else read_image(data, name=name)
    report.width, report.height = loaded.rgb.shape[1], loaded.rgb.shape[0]
    decode = time.perf_counter() - start
    result = restorer.restore(loaded.rgb, loaded.alpha)
    start = time.perf_counter()
    image = gray(result.image) if loaded.gray else result.image
    encoded = encode_image(image, result.alpha, fmt=fmt, quality=quality, icc=loaded.icc)
    report.faces = result.faces
    report.seconds = {"decode": decode, **result.seconds, "encode": time.perf_counter() - start}
    return encoded, report


class FileRunner:
    """Restore image files into ``options.outdir``, yielding one report per input, in input order.

    A bad file gets a report with ``error`` set and the batch goes on; an existing output is kept
    (``skipped``) unless ``options.overwrite``; every file is written atomically. Faces of up to
    ``images_per_batch`` images go through the base model together.
    """

    def __init__(self, restorer: Restorer, options: OutputOptions, images_per_batch: int = 4) -> None:
        self.restorer = restorer
        self.options = options
        self.images_per_batch = images_per_batch

    def run(self, inputs: Sequence[Path]) -> Iterator[FileReport]:
        pending: list[tuple[FileReport, LoadedImage]] = []
        planned: dict[Path, Path] = {}
        guard = InputGuard(inputs)
        for path in inputs:
            report = self._planned(path, guard, planned)
            loaded = self._decode(report, path) if report.done else None
            if loaded is None:
                yield from self._flush(pending)
                pending = []
                yield report
                continue
            pending.append((report, loaded))
            if len(pending) >= self.images_per_batch:
                yield from self._flush(pending)
                pending = []
        yield from self._flush(pending)

    # Planning, decoding and delivering one image are separate steps so that other runners
    # (bfrboost.runners.overlap) run them in worker threads or processes with the same results.

    def _planned(self, path: Path, guard: InputGuard, planned: dict[Path, Path]) -> FileReport:
        """A report for ``path`` with ``output`` planned, or ``error`` / ``skipped`` set."""
        report = FileReport(input=str(path))
        try:
            out = self.plan(path)
            guard.check(out)
            if out in planned:
                raise OutputError(f"{path}: its output {out} is already taken by {planned[out]}; restore it separately or with --suffix")
            planned[out] = path
        except BfrboostError as exc:
            report.error = str(exc)
            return report
        report.output = str(out)
        if out.exists() and not self.options.overwrite:
            report.skipped = f"{out}: already exists; pass --overwrite to replace it"
        return report

    def plan(self, path: Path) -> Path:
        """Where the restored image of ``path`` goes."""
        ext = output_ext(path, self.options.ext, has_alpha=False)
        return plan_output(path, self.options.outdir, "restored_imgs", self.options.suffix, ext)

    def _decode(self, report: FileReport, path: Path) -> LoadedImage | None:
        start = time.perf_counter()
        max_pixels = self.options.max_pixels
        try:
            loaded = read_image(path, max_pixels=max_pixels) if max_pixels else read_image(path)
        except BfrboostError as exc:
            report.error = str(exc)
            return None
        report.seconds["decode"] = time.perf_counter() - start
        report.width, report.height = loaded.rgb.shape[1], loaded.rgb.shape[0]
        return loaded

    def _flush(self, pending: list[tuple[FileReport, LoadedImage]]) -> Iterator[FileReport]:
        if not pending:
            return
        results = self.restorer.restore_batch([loaded.rgb for _, loaded in pending], [loaded.alpha for _, loaded in pending])
        for (report, loaded), result in zip(pending, results):
            yield self._deliver(report, loaded, result)

    def _deliver(self, report: FileReport, loaded: LoadedImage, result: Result) -> FileReport:
        """Write ``result`` (gray kept gray) and complete ``report``; a failed write becomes ``error``."""
        report.faces = result.faces
        report.seconds.update(result.seconds)
        start = time.perf_counter()
        if loaded.gray:
            result.image = gray(result.image)
        try:
            self._write(Path(report.input), Path(report.output), result, icc=loaded.icc)
        except BfrboostError as exc:
            report.error = str(exc)
            report.output = None
        report.seconds["encode"] = time.perf_counter() - start
        return report

    def _write(self, source: Path, out: Path, result: Result, icc: bytes | None = None) -> None:
        options = self.options
        image = result.image
        if options.draw_boxes and not self.restorer.aligned:
            image = draw_boxes(image, result.faces, self.restorer.upscale)
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


def restore_files(restorer: Restorer, inputs: Sequence[Path], options: OutputOptions, images_per_batch: int = 4) -> Iterator[FileReport]:
    """Shorthand for ``FileRunner(restorer, options, images_per_batch).run(inputs)``."""
    return FileRunner(restorer, options, images_per_batch).run(inputs)
