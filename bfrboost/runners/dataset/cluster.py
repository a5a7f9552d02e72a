"""Restore a whole dataset on Ray Data: CPU tasks decode/detect/align and paste/encode, GPU actors
(or, without GPUs, CPU actors holding a fraction of a core) run the base model and refiner.

``ray`` is the optional extra ``bfrboost[cluster]``. Without ``ray_address`` a local Ray starts with
this machine's CPUs and GPUs; ``"auto"`` joins the cluster this machine belongs to, ``"ray://HOST:10001"``
a remote one. An already initialised Ray (``ray.init(...)`` by the caller) is used as it is.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bfrboost.errors import UsageError
from bfrboost.options import (
    DetectOptions,
    OutputOptions,
    PasteOptions,
    RestoreOptions,
    RunnerOptions,
    default_of,
    restorer_options,
)
from bfrboost.reports import FileReport
from bfrboost.runners.dataset import stages as ds

#: A CPU-only actor holds this many CPUs: an actor pool that takes every CPU leaves none for the
#: read/prepare/finish tasks and the pipeline hangs.
CPU_ACTOR_CPUS = 0.5
TASK_CPUS = 0.75
MANIFEST_EVERY_S = 60.0


@contextmanager
def keeping_signal_handlers() -> Iterator[None]:
    """``ray.init`` replaces the driver's SIGTERM handler; keep the caller's (the CLI's clean exit)."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in saved.items():
                if handler is not None:
                    signal.signal(sig, handler)


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("restore-dataset needs Ray Data: pip install 'bfrboost[cluster]' (or 'ray[data]')") from None
    return ray


def restore_dataset(
    src: str,
    dst: str,
    ray_address: str | None = None,
    *,
    output: OutputOptions | None = None,
    detect_options: DetectOptions | None = None,
    restore_options: RestoreOptions | None = None,
    paste_options: PasteOptions | None = None,
    images_per_batch: int = default_of(RunnerOptions, "images_per_batch"),
    gpus: int | None = None,
    rebuild_manifest: bool = False,
    **settings: Any,
) -> list[FileReport]:
    """Restore every image of ``src`` into ``dst`` (same relative paths) and write ``dst/manifest.parquet``.

    ``src``: a folder, a text file of paths/URIs, or a pyarrow URI (``s3://bucket/photos``). Outputs
    that already exist are skipped unless ``overwrite`` (a killed job resumes where it stopped).
    ``output`` (``ext``, ``quality``, ``overwrite``, ``max_pixels``; ``outdir`` is ``dst``) and the
    restorer's option objects; ``settings``: any of their fields by name (``base="none"``, ``upscale=1``, ``quality=90`` …).
    ``gpus``: device actors (default: every GPU of the cluster; none → one CPU actor).
    Planning is :func:`bfrboost.runners.dataset.plan_dataset` (input guard, name collisions, DST outside
    SRC); the manifest is rewritten every ``MANIFEST_EVERY_S`` and when the job stops, so a killed job
    resumes with its rows; ``rebuild_manifest`` ignores a damaged one.
    Returns one report per input, in ``src`` order; failures are reports (and manifest rows).
    """
    output_settings = {k: settings.pop(k) for k in list(settings) if k in OutputOptions.__dataclass_fields__}
    output = dataclasses.replace(output or OutputOptions(), **output_settings)
    parts = restorer_options(settings.pop("base", None), detect_options, restore_options, paste_options, **settings)
    overwrite, ext = output.overwrite, output.ext
    ray = _ray()
    plan = ds.plan_dataset(src, dst, ext, overwrite, rebuild_manifest)
    rows = plan.rows
    if plan.todo:
        if not ray.is_initialized():
            with keeping_signal_handlers():
                ray.init(address=ray_address, include_dashboard=False) if ray_address else ray.init(include_dashboard=False)
        written = time.monotonic()
        try:
            for row in _run(ray, plan.todo, parts, output, images_per_batch, gpus):
                rows[row["index"]] = row
                if time.monotonic() - written >= MANIFEST_EVERY_S:  # a killed job keeps the rows of what it finished
                    ds.write_manifest(dst, [r for r in rows if r is not None])
                    written = time.monotonic()
        except BaseException:
            ds.write_manifest(dst, [r for r in rows if r is not None])
            raise
    ds.write_manifest(dst, rows)
    reports = [ds.report_from_row(row) for row in rows]
    for index in plan.earlier:
        reports[index].skipped = f"{reports[index].output}: done by an earlier run; pass --overwrite to redo it"
    return reports


def _run(
    ray: Any,
    todo: list[dict[str, Any]],
    parts: tuple[DetectOptions, RestoreOptions, PasteOptions],
    output: OutputOptions,
    images_per_batch: int,
    gpus: int | None,
) -> list[dict[str, Any]]:
    detect, restore, paste = parts
    available = int(ray.cluster_resources().get("GPU", 0))
    gpus = available if gpus is None else gpus
    if gpus > 0:
        actor = {"num_gpus": 1, "compute": ray.data.ActorPoolStrategy(size=gpus)}
        device = "cuda" if restore.device == "auto" else restore.device
    else:
        actor = {"num_cpus": CPU_ACTOR_CPUS, "compute": ray.data.ActorPoolStrategy(size=1)}
        device = "cpu"
    stages = {"detect": detect, "paste": paste, "restore": restore}  # CPU stages: its runtime for the detector and parser
    device_stage = {**stages, "restore": dataclasses.replace(restore, device=device)}
    data = ray.data.from_items(todo, override_num_blocks=max(1, len(todo)))
    data = data.map(ds.prepare_row, fn_kwargs={**stages, "max_pixels": output.max_pixels}, num_cpus=TASK_CPUS)
    data = data.map_batches(ds.FaceBatcher, fn_constructor_kwargs=device_stage, batch_size=images_per_batch, **actor)
    data = data.map(ds.finish_row, fn_kwargs={**stages, "output": output}, num_cpus=TASK_CPUS)
    return list(data.iter_rows())
