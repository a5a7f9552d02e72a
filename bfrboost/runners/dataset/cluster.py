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
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bfrboost.errors import UsageError
from bfrboost.options import DetectOptions, OutputOptions, PasteOptions, RestoreOptions, restorer_options
from bfrboost.reports import FileReport
from bfrboost.runners.dataset import stages as ds

#: A CPU-only actor holds this many CPUs: an actor pool that takes every CPU leaves none for the
#: read/prepare/finish tasks and the pipeline hangs.
CPU_ACTOR_CPUS = 0.5
TASK_CPUS = 0.75


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
    images_per_batch: int = 4,
    gpus: int | None = None,
    **settings: Any,
) -> list[FileReport]:
    """Restore every image of ``src`` into ``dst`` (same relative paths) and write ``dst/manifest.parquet``.

    ``src``: a folder, a text file of paths/URIs, or a pyarrow URI (``s3://bucket/photos``). Outputs
    that already exist are skipped unless ``overwrite`` (a killed job resumes where it stopped).
    ``output`` (``ext``, ``quality``, ``overwrite``, ``max_pixels``; ``outdir`` is ``dst``) and the
    restorer's option objects; ``settings``: any of their fields by name (``base="none"``, ``upscale=1``, ``quality=90`` …).
    ``gpus``: device actors (default: every GPU of the cluster; none → one CPU actor).
    Returns one report per input, in ``src`` order; failures are reports (and manifest rows).
    """
    output_settings = {k: settings.pop(k) for k in list(settings) if k in OutputOptions.__dataclass_fields__}
    output = dataclasses.replace(output or OutputOptions(), **output_settings)
    parts = restorer_options(settings.pop("base", None), detect_options, restore_options, paste_options, **settings)
    overwrite, ext = output.overwrite, output.ext
    ray = _ray()
    items = ds.list_items(src)
    previous = {row["rel"]: row for row in ds.read_manifest(dst)} if not overwrite else {}
    rows: dict[str, dict[str, Any]] = {}
    earlier: set[str] = set()  # done by an earlier run: its manifest row is kept
    todo = []
    for item in items:
        out = ds.output_location(dst, item.rel, ext)
        if not overwrite and ds.exists(out):
            kept = previous.get(item.rel)
            if kept is not None and kept["error"] is None and kept["output"] == out:
                rows[item.rel] = kept
                earlier.add(item.rel)
            else:
                rows[item.rel] = ds.manifest_row(FileReport(input=item.source, output=out, skipped=f"{out}: already exists; pass --overwrite to replace it"), item.rel)
            continue
        todo.append({"source": item.source, "rel": item.rel, "output": out})

    if todo:
        if not ray.is_initialized():
            with keeping_signal_handlers():
                ray.init(address=ray_address, include_dashboard=False) if ray_address else ray.init(include_dashboard=False)
        for row in _run(ray, todo, parts, output, images_per_batch, gpus):
            rows[row["rel"]] = row
    ordered = [rows[item.rel] for item in items]
    ds.write_manifest(dst, ordered)
    reports = [ds.report_from_row(row) for row in ordered]
    for item, report in zip(items, reports):
        if item.rel in earlier:
            report.skipped = f"{report.output}: done by an earlier run; pass --overwrite to redo it"
    return reports


def _run(ray: Any, todo: list[dict[str, Any]], parts: tuple[DetectOptions, RestoreOptions, PasteOptions], output: OutputOptions,
         images_per_batch: int, gpus: int | None) -> list[dict[str, Any]]:
    detect, restore, paste = parts
    available = int(ray.cluster_resources().get("GPU", 0))
    gpus = available if gpus is None else gpus
    if gpus > 0:
        actor = {"num_gpus": 1, "compute": ray.data.ActorPoolStrategy(size=gpus)}
        device = "cuda" if restore.device == "auto" else restore.device
    else:
        actor = {"num_cpus": CPU_ACTOR_CPUS, "compute": ray.data.ActorPoolStrategy(size=1)}
        device = "cpu"
    stages = {"detect": detect, "paste": paste}
    device_stage = {**stages, "restore": dataclasses.replace(restore, device=device)}
    data = ray.data.from_items(todo, override_num_blocks=max(1, len(todo)))
    data = data.map(ds.prepare_row, fn_kwargs={**stages, "max_pixels": output.max_pixels}, num_cpus=TASK_CPUS)
    data = data.map_batches(ds.FaceBatcher, fn_constructor_kwargs=device_stage, batch_size=images_per_batch, **actor)
    data = data.map(ds.finish_row, fn_kwargs={**stages, "output": output}, num_cpus=TASK_CPUS)
    return list(data.iter_rows())
