"""Folder-level evaluation: what ``bfrboost eval`` and ``bfrboost eval stats`` call.

Restored faces are paired with references by file stem (``0001.png`` ↔ ``0001.jpg``). A file that
cannot be read is reported in one line and skipped; the rest of the folder is still evaluated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bfrboost.errors import InputError, UsageError
from bfrboost.evaluation.evaluator import Evaluator, MetricModels
from bfrboost.io.inputs import collect_inputs
from bfrboost.io.read import read_image
from bfrboost.metrics import METRICS, MetricValue, parse_metrics
from bfrboost.metrics.inception import DEFAULT_SIZE, ReferenceStats, compute_reference_stats
from bfrboost.safety import one_line

Progress = Callable[[int], None]  # called with the number of images just processed


def list_images(folder: Path | str, what: str) -> list[Path]:
    """Images of a folder (sorted); a missing or empty folder is a one-line usage error."""
    paths, problems = collect_inputs([str(folder)])
    if problems or not paths:
        raise UsageError(f"{problems[0] if problems else f'{one_line(folder)}: no images'}; give the folder of {what}")
    return paths


def read_rgb(paths: Sequence[Path], problems: list[str]) -> Iterator[tuple[Path, np.ndarray]]:
    """Decoded RGB images; unreadable files go to ``problems`` (one line each) and are skipped."""
    for path in paths:
        try:
            yield path, read_image(path).rgb
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
        return read_image(index[stem]).rgb
    except InputError as exc:
        problems.append(str(exc))
        return None


def stats_for(
    reference_stats: Path | str | None, reference_dir: Path | str | None, metrics: Sequence[str], models: MetricModels,
    size: int = DEFAULT_SIZE, problems: list[str] | None = None, on_progress: Progress | None = None,
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
    batch_size: int = 8,
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
            problems.append(f"{len(unmatched)} restored face(s) have no same-named reference in {one_line(reference_dir)}, e.g. {one_line(unmatched[0].name)}; paired metrics leave them out")
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
        reference = read_reference(index, path.stem, problems) if needs_pairs else None
        if reference is not None and reference.shape != rgb.shape:
            problems.append(f"{one_line(path)}: {rgb.shape[1]}×{rgb.shape[0]} but its reference {one_line(index[path.stem])} is {reference.shape[1]}×{reference.shape[0]}; left out of paired metrics")
            reference = None
        batch.append(rgb)
        refs.append(reference)
        images += 1
        pairs += reference is not None
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return FolderReport(evaluator.results(), images, pairs, problems)


def compute_stats_folder(
    folder: Path | str, out: Path | str, device: str = "cpu", *, size: int = DEFAULT_SIZE,
    max_kid_features: int | None = 10000, overwrite: bool = False, models: MetricModels | None = None,
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
