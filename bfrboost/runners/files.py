"""Image files and encoded bytes (stdin) through a :class:`~bfrboost.pipeline.Restorer`.

GFPGAN's output layout: ``OUTDIR/restored_imgs/NAME.EXT`` (+ ``cropped_faces/``, ``restored_faces/``,
``cmp/``). Every write goes through :mod:`bfrboost.safety`: all outputs of an input are planned and
checked (input guard, collisions) before any is written, then written all or none.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bfrboost.errors import BfrboostError
from bfrboost.faces.types import Face
from bfrboost.io.read import LoadedImage, read_image
from bfrboost.io.write import encode_image, image_writer, output_ext
from bfrboost.options import OutputOptions, RunnerOptions, default_of
from bfrboost.pipeline import Restorer, Result
from bfrboost.reports import FileReport
from bfrboost.runners.outputs import OUTPUT_SUBDIRS, Claims, OutputPlan, plan_output
from bfrboost.safety import InputGuard, OutputSet, clean_stale_temps, one_line

IMAGES_PER_BATCH = default_of(RunnerOptions, "images_per_batch")

#: ``targets(path, rgb)``: per-input extras for :meth:`Restorer.restore_batch` (e.g. a guidance mask
#: found by the file's name); files stay here, the restorer sees arrays.
Targets = Callable[[Path, np.ndarray], "dict[str, Any] | None"]


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
    image = gray(result.image) if loaded.gray and restorer.keeps_gray else result.image
    encoded = encode_image(image, result.alpha, fmt=fmt, quality=quality, icc=loaded.icc)
    report.faces = result.faces
    report.seconds = {"decode": decode, **result.seconds, "encode": time.perf_counter() - start}
    return encoded, report


class FileRunner:
    """Restore image files into ``options.outdir``, yielding one report per input, in input order.

    Every output of an input is planned (:meth:`plan`) and checked against the run's inputs
    (:class:`~bfrboost.safety.InputGuard`) and the other inputs' outputs before it is decoded, and
    its face files once the faces are known; then all of them are written together or none
    (:class:`~bfrboost.safety.OutputSet`). A bad file gets a report with ``error`` set and the batch
    goes on; an existing output is kept (``skipped``) unless ``options.overwrite``. Faces of up to
    ``images_per_batch`` images go through the base model together.
    """

    def __init__(
        self, restorer: Restorer, options: OutputOptions, images_per_batch: int = IMAGES_PER_BATCH, targets: Targets | None = None
    ) -> None:
        self.restorer = restorer
        self.options = options
        self.images_per_batch = images_per_batch
        self.targets = targets

    def run(self, inputs: Sequence[Path]) -> Iterator[FileReport]:
        pending: list[tuple[FileReport, LoadedImage, OutputPlan, dict | None]] = []
        claims = self.start(inputs)
        for path in inputs:
            report, plan = self.planned(path, claims)
            decoded = self.decoded(report, path) if plan is not None else None
            if decoded is None:
                yield from self._flush(pending, claims)
                pending = []
                yield report
                continue
            loaded, targets = decoded
            pending.append((report, loaded, plan, targets))
            if len(pending) >= self.images_per_batch:
                yield from self._flush(pending, claims)
                pending = []
        yield from self._flush(pending, claims)

    # Planning, decoding and delivering one image are separate public stages so that other runners
    # (bfrboost.runners.overlap) run them in worker threads or processes with the same results.

    def start(self, inputs: Sequence[Path]) -> Claims:
        """Clean stale temp files of an earlier run and guard the run's inputs; the claims of this run."""
        for subdir in OUTPUT_SUBDIRS:  # also when every input is skipped and nothing gets written
            clean_stale_temps(Path(self.options.outdir) / subdir)
        return Claims(InputGuard(inputs))

    def planned(self, path: Path, claims: Claims) -> tuple[FileReport, OutputPlan | None]:
        """A report for ``path`` and its plan, or no plan when it failed (``error``) or is ``skipped``."""
        report = FileReport(input=str(path))
        try:
            plan = self.plan(path)
            claims.claim(path, plan)
        except BfrboostError as exc:
            report.error = str(exc)
            return report, None
        if os.path.lexists(plan.image) and not self.options.overwrite:
            report.output = str(plan.image)
            report.skipped = f"{one_line(plan.image)}: already exists; pass --overwrite to replace it"
            return report, None
        return report, plan

    def decoded(self, report: FileReport, path: Path) -> tuple[LoadedImage, dict | None] | None:
        """The decoded image and its per-input ``targets`` (e.g. a guidance mask found by the file's name),
        with a bad file as the report's ``error``."""
        try:
            loaded = self._decode(report, path)
            return loaded, self.targets(path, loaded.rgb) if self.targets is not None else None
        except BfrboostError as exc:
            report.error = str(exc)
            return None

    def plan(self, path: Path) -> OutputPlan:
        """Every output of ``path`` (the face files' count comes with the faces)."""
        options = self.options
        ext = output_ext(path, options.ext, has_alpha=False)
        image = plan_output(path, options.outdir, "restored_imgs", options.suffix, ext)
        return OutputPlan(image, Path(options.outdir), Path(path).stem, options.suffix, options.save_faces, options.save_cmp)

    def _decode(self, report: FileReport, path: Path) -> LoadedImage:
        start = time.perf_counter()
        max_pixels = self.options.max_pixels
        loaded = read_image(path, max_pixels=max_pixels) if max_pixels else read_image(path)
        report.seconds["decode"] = time.perf_counter() - start
        report.width, report.height = loaded.rgb.shape[1], loaded.rgb.shape[0]
        return loaded

    def _flush(
        self, pending: list[tuple[FileReport, LoadedImage, OutputPlan, dict | None]], claims: Claims
    ) -> Iterator[FileReport]:
        if not pending:
            return
        results = self.restorer.restore_batch(
            [loaded.rgb for _, loaded, _, _ in pending],
            [loaded.alpha for _, loaded, _, _ in pending],
            [targets for *_, targets in pending],
        )
        for (report, loaded, plan, _), result in zip(pending, results):
            yield self.deliver(report, loaded, plan, result, claims)

    def deliver(self, report: FileReport, loaded: LoadedImage, plan: OutputPlan, result: Result, claims: Claims) -> FileReport:
        """Write every output of ``result`` (gray kept gray) and complete ``report``; a failed write is its ``error``."""
        report.faces = result.faces
        report.seconds.update(result.seconds)
        start = time.perf_counter()
        if loaded.gray and self.restorer.keeps_gray:
            result.image = gray(result.image)
        try:
            outputs = self.outputs(plan, result, icc=loaded.icc)
            report.files = [str(p) for p in outputs.commit(claims.guard)]
            report.output = str(plan.image)
        except BfrboostError as exc:
            report.error = str(exc)
        report.seconds["encode"] = time.perf_counter() - start
        return report

    def outputs(self, plan: OutputPlan, result: Result, icc: bytes | None = None) -> OutputSet:
        """The :class:`OutputSet` of one restored image: the image and its face files, nothing written yet."""
        options = self.options
        image = result.image
        if options.draw_boxes and not self.restorer.aligned:
            image = draw_boxes(image, result.faces, self.restorer.upscale)
        outputs = OutputSet(options.overwrite).add(
            plan.image, image_writer(plan.image, image, result.alpha, quality=options.quality, icc=icc)
        )
        for index, face in enumerate(result.faces):
            files = plan.face_files(index)
            if "cropped" in files:
                outputs.add(files["cropped"], image_writer(files["cropped"], face.crop))
                outputs.add(files["restored"], image_writer(files["restored"], face.restored))
            if "cmp" in files:
                outputs.add(files["cmp"], image_writer(files["cmp"], np.concatenate([face.crop, face.restored], axis=1)))
        return outputs


def restore_files(
    restorer: Restorer, inputs: Sequence[Path], options: OutputOptions, images_per_batch: int = 4
) -> Iterator[FileReport]:
    """Shorthand for ``FileRunner(restorer, options, images_per_batch).run(inputs)``."""
    return FileRunner(restorer, options, images_per_batch).run(inputs)
