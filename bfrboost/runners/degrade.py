"""Degrade image files into a folder (``bfrboost degrade``) with the promises of ``restore``: no output
replaces an input or another input's output, each output is written whole or not at all, existing
outputs are skipped (a re-run resumes) and ``degrade.jsonl`` keeps the records of earlier runs.

Python API::

    from bfrboost.runners.degrade import degrade_files, merge_log
    reports = list(degrade_files(paths, Path("lq"), seed=0))
    merge_log(Path("lq"), [r.extra["record"] for r in reports if r.done])
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bfrboost.errors import BfrboostError
from bfrboost.io.read import DEFAULT_MAX_PIXELS, read_image
from bfrboost.io.write import image_writer
from bfrboost.reports import FileReport
from bfrboost.runners.outputs import Claims, OutputPlan
from bfrboost.safety import InputGuard, OutputSet, clean_stale_temps, one_line, write_bytes
from bfrboost.train.degrade import DegradeConfig, apply_degradation, file_seed, sample_params

LOG_NAME = "degrade.jsonl"


def degrade_files(
    paths: Sequence[Path],
    out: Path,
    seed: int = 0,
    config: DegradeConfig | None = None,
    overwrite: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Iterator[FileReport]:
    """One report per input, in order: ``OUT/STEM.png`` written (its parameters in ``extra["record"]``),
    skipped (it exists and not ``overwrite``) or failed (``error``: one line with what to do)."""
    config = config or DegradeConfig()
    out = Path(out)
    clean_stale_temps(out)
    guard = InputGuard(paths)
    claims = Claims(guard, "choose another -o", "degrade it separately into another -o, or rename it")
    for path in paths:
        report = FileReport(input=str(path))
        target = out / f"{Path(path).stem}.png"
        try:
            claims.claim(Path(path), OutputPlan(target, out, Path(path).stem))
            if os.path.lexists(target) and not overwrite:
                report.output, report.skipped = str(target), f"{one_line(target)}: already exists; pass --overwrite to replace it"
            else:
                report.extra["record"] = _degrade_one(Path(path), target, seed, config, overwrite, max_pixels, guard, report)
        except BfrboostError as exc:
            report.error = str(exc)
        yield report


def _degrade_one(
    path: Path,
    target: Path,
    seed: int,
    config: DegradeConfig,
    overwrite: bool,
    max_pixels: int | None,
    guard: InputGuard,
    report: FileReport,
) -> dict[str, Any]:
    image = read_image(path, max_pixels=max_pixels)
    report.width, report.height = image.width, image.height
    face_seed = file_seed(seed, path.name)
    params = sample_params(face_seed, config)
    degraded = apply_degradation(image.rgb, params, config.kernel_size)
    report.files = [str(p) for p in OutputSet(overwrite).add(target, image_writer(target, degraded)).commit(guard)]
    report.output = str(target)
    return {"file": path.name, "output": target.name, "seed": face_seed, **params.to_dict()}


def merge_log(out: Path, records: Sequence[dict[str, Any]]) -> Path:
    """Write ``OUT/degrade.jsonl`` atomically: the earlier records of outputs this run did not redo, then
    this run's (a line an older writer cut short is dropped)."""
    path = Path(out) / LOG_NAME
    redone = {record["output"] for record in records}
    kept = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("output") not in redone:
                kept.append(record)
    return write_bytes(path, "".join(json.dumps(r) + "\n" for r in [*kept, *records]).encode(), overwrite=True)
