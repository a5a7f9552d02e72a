"""Folder-level evaluation: what ``bfrboost eval`` and ``bfrboost eval stats`` call.

Restored faces are paired with references by file stem (``0001.png`` ↔ ``0001.jpg``). A file that
cannot be read is reported in one line and skipped; the rest of the folder is still evaluated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bfrboost.errors import InputError, UsageError
from bfrboost.evaluation.evaluator import Evaluator, MetricModels
from bfrboost.io.inputs import collect_inputs
from bfrboost.io.read import DEFAULT_MAX_PIXELS, read_image
from bfrboost.metrics import METRICS, MetricValue, parse_metrics
from bfrboost.metrics.inception import DEFAULT_SIZE, ReferenceStats, compute_reference_stats
from bfrboost.options import EvalOptions, default_of
from bfrboost.safety import one_line

Progress = Callable[[int], None]  # called with the number of images just processed


def list_images(folder: Path | str, what: str) -> list[Path]:
    """Images of a folder (sorted); a missing or empty folder is a one-line :class:`InputError` (exit 1:
    no input image found, like ``restore``)."""
    paths, problems = collect_inputs([str(folder)])
    if problems or not paths:
        reason = problems[0] if problems else f"{one_line(folder)}: no images"
        raise InputError(f"{reason.split(';')[0]}; give the folder of {what}")
    return paths


#: What a too-large image's message tells the evaluation commands' user: they have no --max-pixels, and
#: score aligned face crops, which are far below the limit.
TOO_LARGE = "evaluation scores aligned face crops: crop the faces first (bfrboost restore --save-faces)"
MAX_PIXELS = DEFAULT_MAX_PIXELS


def read_rgb(paths: Sequence[Path], problems: list[str]) -> Iterator[tuple[Path, np.ndarray]]:
    """Decoded RGB images; unreadable files go to ``problems`` (one line each) and are skipped."""
    for path in paths:
        try:
            yield path, read_image(path, max_pixels=MAX_PIXELS, too_large=TOO_LARGE).rgb
        except InputError as exc:
            problems.append(str(exc))


def reference_index(folder: Path | str) -> dict[str, Path]:
    """Reference images by file stem; two files with the same stem are ambiguous."""
    index: dict[str, Path] = {}
    for path in list_images(folder, "reference (ground-truth) faces"):
        if path.stem in index:
            raise UsageError(f"{one_line(path)}: two reference files named {path.stem!r} in {one_line(folder)}; keep one")
        index[path.stem] = path
    return index


def read_reference(index: dict[str, Path], stem: str, problems: list[str]) -> np.ndarray | None:
    """The decoded same-named reference, or ``None`` (none in ``index``, or unreadable: one line to ``problems``)."""
    if stem not in index:
        return None
    try:
        return read_image(index[stem], max_pixels=MAX_PIXELS, too_large=TOO_LARGE).rgb
    except InputError as exc:
        problems.append(str(exc))
        return None


def stats_for(
    reference_stats: Path | str | None,
    reference_dir: Path | str | None,
    metrics: Sequence[str],
    models: MetricModels,
    size: int = DEFAULT_SIZE,
    problems: list[str] | None = None,
    on_progress: Progress | None = None,
) -> ReferenceStats | None:
    """The FID/KID reference: a statistics file, else the reference folder's images, else ``None``."""
    if not {"fid", "kid"} & set(metrics):
        return None
    if reference_stats is not None:
        return ReferenceStats.load(reference_stats)
    if reference_dir is None:
        return None
    paths = list_images(reference_dir, "reference faces")
    images = (rgb for _, rgb in _counting(read_rgb(paths, problems if problems is not None else []), on_progress))
    return compute_reference_stats(images, size=size, net=models.get("inception"))


def _counting(items: Iterator[Any], on_progress: Progress | None) -> Iterator[Any]:
    for item in items:
        yield item
        if on_progress is not None:
            on_progress(1)


@dataclass
class FolderReport:
    results: dict[str, MetricValue]
    images: int
    pairs: int
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "pairs": self.pairs,
            "metrics": {name: value.as_dict() for name, value in self.results.items()},
            "problems": self.problems,
        }


def evaluate_folder(
    restored_dir: Path | str,
    reference_dir: Path | str | None = None,
    reference_stats: Path | str | None = None,
    metrics: str | Sequence[str] = "all",
    device: str = "cpu",
    *,
    size: int = DEFAULT_SIZE,
    batch_size: int = default_of(EvalOptions, "batch_size"),
    models: MetricModels | None = None,
    on_progress: Progress | None = None,
) -> FolderReport:
    """Score every image of ``restored_dir`` (aligned faces) with ``metrics``.

    Paired metrics (PSNR, SSIM, LPIPS, IDS) compare each face with the same-named file of
    ``reference_dir``; FID/KID compare the whole folder with ``reference_stats`` (a file from
    :func:`compute_stats_folder`) or, without one, with the images of ``reference_dir``.
    """
    names = parse_metrics(metrics)
    models = models or MetricModels(device)
    evaluator = Evaluator(names, models=models, size=size)
    evaluator.check_weights()
    restored = list_images(restored_dir, "restored faces")
    index = reference_index(reference_dir) if reference_dir is not None else {}
    problems: list[str] = []
    evaluator.reference_stats = stats_for(reference_stats, reference_dir, names, models, size, problems)
    needs_pairs = any(METRICS[n].kind == "pair" for n in names)
    if reference_dir is not None and needs_pairs:
        unmatched = [p for p in restored if p.stem not in index]
        if unmatched:
            problems.append(
                f"{len(unmatched)} restored face(s) have no same-named reference in {one_line(reference_dir)}, "
                f"e.g. {one_line(unmatched[0].name)}; paired metrics leave them out"
            )
    images = pairs = 0
    batch: list[np.ndarray] = []
    refs: list[np.ndarray | None] = []

    def flush() -> None:
        evaluator.update(batch, refs)
        if on_progress is not None:
            on_progress(len(batch))
        batch.clear()
        refs.clear()

    for path, rgb in read_rgb(restored, problems):
        reference = _same_size_reference(index, path, rgb, problems) if needs_pairs else None
        batch.append(rgb)
        refs.append(reference)
        images += 1
        pairs += reference is not None
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    results = evaluator.results()
    if reference_dir is not None and pairs == 0:
        _explain_missing_pairs(results, reference_dir)
    return FolderReport(results, images, pairs, problems)


def _same_size_reference(index: dict[str, Path], path: Path, rgb: np.ndarray, problems: list[str]) -> np.ndarray | None:
    """The same-named reference of ``path``, or None (with a line in ``problems``) when it is missing or of another size."""
    reference = read_reference(index, path.stem, problems)
    if reference is None or reference.shape == rgb.shape:
        return reference
    problems.append(
        f"{one_line(path)}: {rgb.shape[1]}×{rgb.shape[0]} but its reference {one_line(index[path.stem])} is "
        f"{reference.shape[1]}×{reference.shape[0]}; left out of paired metrics (resize the references, or "
        "restore at the references' size)"
    )
    return None


def _explain_missing_pairs(results: dict[str, MetricValue], reference_dir: Path | str) -> None:
    """A reference folder was given but paired nothing: say why it did not help, not to pass one."""
    for name, value in results.items():
        if value.value is None and METRICS[name].kind == "pair":
            results[name] = dataclasses.replace(
                value,
                skipped=(
                    f"{name}: skipped, no restored face has a same-named reference of its size in {one_line(reference_dir)} "
                    "(see the lines above); fix the names or sizes"
                ),
            )


def compute_stats_folder(
    folder: Path | str,
    out: Path | str,
    device: str = "cpu",
    *,
    size: int = DEFAULT_SIZE,
    max_kid_features: int | None = default_of(EvalOptions, "max_kid_features"),
    overwrite: bool = False,
    models: MetricModels | None = None,
    on_progress: Progress | None = None,
) -> tuple[ReferenceStats, list[str]]:
    """Inception statistics of a reference folder (FFHQ) saved to ``out`` (``.npz``), so the
    reference set is read once for every later FID/KID."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise UsageError(f"{one_line(out)}: already exists; pass --overwrite to replace it")
    paths = list_images(folder, "reference faces (e.g. FFHQ)")
    models = models or MetricModels(device)
    problems: list[str] = []
    images = (rgb for _, rgb in _counting(read_rgb(paths, problems), on_progress))
    stats = compute_reference_stats(images, size=size, max_kid_features=max_kid_features, net=models.get("inception"))
    stats.save(out, overwrite=overwrite)
    return stats, problems
