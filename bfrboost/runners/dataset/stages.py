"""Datasets of image files, local or on any pyarrow filesystem (s3://, gs://, hdfs://), in three stages
that a distributed engine runs (:mod:`bfrboost.runners.dataset.cluster` runs them on Ray Data):

1. :func:`prepare_row` (CPU): read + decode + detect + align one image;
2. :class:`FaceBatcher` (GPU, or CPU): base model + refiner over the faces of a batch of images;
3. :func:`finish_row` (CPU): paste back + encode + write, returning the image's manifest row.

Rows are plain dicts; the decoded image and its faces travel between stages pickled in ``payload``
(our own stages only). Every stage turns a failure into the row's ``error``: one bad image never
stops the job. Outputs keep their path relative to the source root (``a/b.jpg`` → ``DST/a/b.jpg``).
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import posixpath
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from bfrboost.errors import BfrboostError, InputError, OutputError, UsageError
from bfrboost.faces.types import Face
from bfrboost.io.inputs import IMAGE_EXTENSIONS, scan_folder
from bfrboost.io.read import read_image
from bfrboost.io.write import encode_image, image_writer, output_ext
from bfrboost.options import DetectOptions, OutputOptions, PasteOptions, RestoreOptions
from bfrboost.reports import FileReport
from bfrboost.runners.files import gray
from bfrboost.runners.outputs import Claims, OutputPlan
from bfrboost.safety import InputGuard, OutputSet, atomic_path, describe_missing, one_line, special_file

MANIFEST = "manifest.parquet"
_INPUT_ACTION = "choose a DST outside the inputs' folders"  # what to do when an output would be an input
#: Manifest columns: the fields of :class:`bfrboost.reports.FileReport` (faces and seconds as JSON) + ``rel``.
MANIFEST_COLUMNS = ("rel", "input", "output", "width", "height", "faces", "seconds", "error", "skipped")


def is_uri(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def _local(location: str) -> str:
    return location[len("file://") :] if location.startswith("file://") else location


@functools.lru_cache(maxsize=16)
def filesystem(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path inside it) for a URI such as ``s3://bucket/photos``."""
    from pyarrow import fs

    try:
        return fs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as exc:
        raise InputError(f"{one_line(uri)}: cannot open this location ({one_line(exc)}); check the URI and credentials") from None


@dataclass(frozen=True)
class Item:
    """One image of the dataset: where it is read from, its path relative to the source root, and
    why it cannot be restored when that is known from listing alone (a missing path in a list file)."""

    source: str
    rel: str
    problem: str | None = None


def list_items(src: str) -> list[Item]:
    """Images under a local folder or a URI (recursive, sorted), or listed one per line in a text file.

    A list file's relative lines are relative to its folder and keep that relative path unless it
    leaves that folder (``../x.jpg``); those, absolute paths and URIs keep their file name only, so an
    output always lands inside DST. A listed path that is missing, a folder or no regular file is an
    item with its ``problem``.
    """
    if is_uri(src):
        from pyarrow import fs as pafs

        filesys, root = filesystem(src)
        infos = filesys.get_file_info(pafs.FileSelector(root, recursive=True))
        rels = sorted(
            PurePosixPath(info.path).relative_to(root).as_posix()
            for info in infos
            if info.type == pafs.FileType.File and PurePosixPath(info.path).suffix.lower() in IMAGE_EXTENSIONS
        )
        return [Item(source=f"{src.rstrip('/')}/{rel}", rel=rel) for rel in rels]
    path = Path(_local(src))
    if path.is_dir():
        rels = sorted(p.relative_to(path).as_posix() for p in scan_folder(path))
        return [Item(source=str(path / rel), rel=rel) for rel in rels]
    if path.is_file():
        return _list_file(path)
    raise InputError(
        f"{one_line(src)}: no such folder or list file; give a folder, a text file of paths, or a URI such as s3://bucket/photos"
    )


def _list_file(path: Path) -> list[Item]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(
            f"{one_line(path)}: not a readable text file of paths ({one_line(exc)}); give a folder, "
            "a text file with one path or URI per line, or a URI"
        ) from None
    items = []
    for number, line in enumerate(lines, 1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if is_uri(entry):
            items.append(Item(source=entry, rel=entry.rsplit("/", 1)[-1]))
            continue
        local = _local(entry)
        source = Path(local) if os.path.isabs(local) else path.parent / local
        rel = posixpath.normpath(PurePosixPath(local).as_posix())
        if os.path.isabs(local) or rel == ".." or rel.startswith("../"):
            rel = source.name  # outputs stay inside DST
        items.append(Item(source=str(source), rel=rel, problem=_listed_problem(source, f"line {number} of {one_line(path)}")))
    return items


def _listed_problem(source: Path, where: str) -> str | None:
    """Why a path from a list file cannot be an input, with what to do; ``None`` if it is a regular file."""
    if source.is_dir():
        return f"{one_line(source)}: is a folder, not an image file; list its images one per line, or give the folder as SRC"
    if not source.exists():
        return f"{one_line(source)}: {describe_missing(source).split(';')[0]}; fix or remove {where}"
    special = special_file(source)
    return f"{one_line(source)}: {special}" if special else None


def check_locations(src: str, dst: str) -> None:
    """Refuse a local DST that is SRC or inside it: the next run would read its outputs as inputs
    (and ``--overwrite`` would replace the inputs)."""
    if is_uri(src) or is_uri(dst) or not Path(_local(src)).is_dir():
        return
    source, target = Path(_local(src)).resolve(), Path(_local(dst)).resolve()
    if target == source or source in target.parents:
        where = "is SRC itself" if target == source else f"is inside SRC ({one_line(src)})"
        raise UsageError(
            f"{one_line(dst)}: the output folder {where}: outputs would replace inputs or be read as inputs "
            "by the next run; choose a DST outside SRC"
        )


@dataclass
class DatasetPlan:
    """What a run does with each item, decided before any image is read: a manifest row for those
    already settled (failed while planning, skipped, done by an earlier run), the rest ``todo``."""

    items: list[Item]
    rows: list[dict[str, Any] | None]
    todo: list[dict[str, Any]]
    earlier: set[int]


def plan_dataset(src: str, dst: str, ext: str = "auto", overwrite: bool = False, rebuild_manifest: bool = False) -> DatasetPlan:
    """List SRC and plan every output like ``restore`` does: no output may be an input (:class:`InputGuard`),
    two items never share an output (the second fails), existing outputs are skipped unless ``overwrite``.

    The rows an earlier run wrote to ``DST/manifest.parquet`` are kept for outputs it made (a damaged
    manifest is an :class:`InputError` unless ``rebuild_manifest``, which rebuilds it from the outputs)."""
    check_locations(src, dst)
    items = list_items(src)
    if not items:
        raise InputError(
            f"{one_line(src)}: no images found; give a folder of images (searched recursively), a text file "
            "with one path or URI per line, or a URI such as s3://bucket/photos"
        )
    previous = {} if overwrite or rebuild_manifest else {(row["rel"], row["input"]): row for row in read_manifest(dst)}
    claims = Claims(
        InputGuard(item.source for item in items if not is_uri(item.source)),
        _INPUT_ACTION,
        "restore it separately or give it another name",
    )
    claimed: dict[str, str] = {}  # URI outputs (no local paths to guard)
    plan = DatasetPlan(items, [None] * len(items), [], set())
    for index, item in enumerate(items):
        out = output_location(dst, item.rel, ext)
        problem = item.problem or _claim(item, out, claims, claimed)
        if problem is not None:
            plan.rows[index] = manifest_row(FileReport(input=item.source, error=problem), item.rel)
        elif not overwrite and exists(out):
            kept = previous.get((item.rel, item.source))
            if kept is not None and kept["error"] is None and kept["output"] == out:
                plan.rows[index] = kept
                plan.earlier.add(index)
            else:
                skipped = f"{one_line(out)}: already exists; pass --overwrite to replace it"
                plan.rows[index] = manifest_row(FileReport(input=item.source, output=out, skipped=skipped), item.rel)
        else:
            plan.todo.append({"index": index, "source": item.source, "rel": item.rel, "output": out})
    return plan


def _claim(item: Item, out: str, claims: Claims, claimed: dict[str, str]) -> str | None:
    """Why ``item`` may not write ``out`` (an input, or another item's output), or ``None`` after claiming it:
    local outputs through :class:`Claims` like ``restore``, URIs by name."""
    if not is_uri(out):
        try:
            claims.claim(Path(item.source), OutputPlan(Path(out), Path(out).parent, Path(out).stem))
        except OutputError as exc:
            return str(exc)
        return None
    if out == item.source:
        return f"{one_line(out)}: would overwrite the input {one_line(item.source)}; {_INPUT_ACTION}"
    if out in claimed:
        return (
            f"{one_line(item.source)}: its output {one_line(out)} is already taken by {one_line(claimed[out])}; "
            "restore it separately or give it another name"
        )
    claimed[out] = item.source
    return None


def output_location(dst: str, rel: str, ext: str = "auto") -> str:
    """``DST/rel`` with the output extension the ``restore`` command would choose."""
    pure = PurePosixPath(rel)
    name = f"{pure.stem}.{output_ext(pure, ext, has_alpha=False)}"
    parent = pure.parent.as_posix()
    rel_out = name if parent == "." else f"{parent}/{name}"
    return f"{dst.rstrip('/')}/{rel_out}" if is_uri(dst) else str(Path(_local(dst)) / rel_out)


def exists(location: str) -> bool:
    if is_uri(location):
        from pyarrow import fs as pafs

        filesys, path = filesystem(location)
        return filesys.get_file_info(path).type != pafs.FileType.NotFound
    return Path(location).exists()


def read_bytes(location: str) -> bytes:
    if not is_uri(location):
        return Path(_local(location)).read_bytes()
    filesys, path = filesystem(location)
    with filesys.open_input_stream(path) as stream:
        return stream.read()


def write_remote(location: str, data: bytes) -> None:
    """Write to a temp key beside ``location``, then move it into place (a rename where the store has one)."""
    filesys, path = filesystem(location)
    parent = path.rsplit("/", 1)[0]
    temp = f"{parent}/.{path.rsplit('/', 1)[-1]}.bfrboost-{os.getpid()}-{os.urandom(4).hex()}.partial"
    filesys.create_dir(parent, recursive=True)
    with filesys.open_output_stream(temp) as stream:
        stream.write(data)
    filesys.move(temp, path)


# ---- restorers, one per worker process --------------------------------------------------------


def cpu_restorer(detect: DetectOptions, paste: PasteOptions, restore: RestoreOptions | None = None) -> Any:
    """The Restorer the CPU stages use: detection and paste settings only (no base model, no refiner),
    built once per process and settings. The detector's and the parser's networks run where
    ``restore.runtime`` says (``onnx``: ONNX Runtime's CPU provider with ``restore.threads``), as
    :meth:`bfrboost.pipeline.Restorer` runs them for ``restore``."""
    restore = restore or RestoreOptions()
    return _cpu_restorer(detect, paste, restore.runtime, restore.threads)


@functools.lru_cache(maxsize=4)
def _cpu_restorer(detect: DetectOptions, paste: PasteOptions, runtime: str, threads: int | None) -> Any:
    from bfrboost.pipeline import Restorer

    options = RestoreOptions(base="none", refine=False, device="cpu", runtime=runtime, threads=threads)
    return Restorer.from_options(options, detect, paste)


# ---- stages -----------------------------------------------------------------------------------


@dataclass
class Job:
    """What the stages pass along for one image."""

    report: FileReport
    rel: str
    index: int = -1  # position in the plan (rows come back from the engine in any order)
    loaded: Any = None  # bfrboost.io.read.LoadedImage
    prepared: Any = None  # bfrboost.pipeline.Prepared


def _failure(exc: BaseException, name: str) -> str:
    if isinstance(exc, BfrboostError):
        return one_line(exc)
    return one_line(f"{name}: {type(exc).__name__}: {exc}; this looks like a bug, please report it")


def _pack(job: Job) -> dict[str, Any]:
    return {"rel": job.rel, "payload": pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)}


def _unpack(row: dict[str, Any]) -> Job:
    return pickle.loads(row["payload"])


def prepare_row(row: dict[str, Any], detect: DetectOptions, paste: PasteOptions, max_pixels: int | None = None,
                restore: RestoreOptions | None = None) -> dict[str, Any]:
    """Stage 1 (CPU): ``{"source", "rel", "output"}`` → decoded, detected, aligned (``restore``: see :func:`cpu_restorer`)."""
    report = FileReport(input=row["source"], output=row["output"])
    job = Job(report=report, rel=row["rel"], index=row.get("index", -1))
    try:
        start = time.perf_counter()
        try:
            data = read_bytes(row["source"])
        except FileNotFoundError:
            raise InputError(f"{one_line(row['source'])}: no such file") from None
        except OSError as exc:
            raise InputError(f"{one_line(row['source'])}: cannot read ({one_line(exc)})") from None
        loaded = (
            read_image(data, name=row["source"], max_pixels=max_pixels) if max_pixels else read_image(data, name=row["source"])
        )
        report.seconds["decode"] = time.perf_counter() - start
        report.width, report.height = loaded.width, loaded.height
        job.loaded = loaded
        job.prepared = cpu_restorer(detect, paste, restore).prepare(loaded.rgb, loaded.alpha)
    except Exception as exc:  # noqa: BLE001 - a failure is a manifest row, never a crashed job
        report.error, report.output, job.loaded, job.prepared = _failure(exc, row["source"]), None, None, None
    return _pack(job)


class FaceBatcher:
    """Stage 2 (device): the model is loaded once per actor; each call restores a batch of images."""

    def __init__(self, detect: DetectOptions, restore: RestoreOptions, paste: PasteOptions) -> None:
        from bfrboost.pipeline import Restorer

        self.restorer = Restorer.from_options(restore, detect, paste)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        jobs = [pickle.loads(payload) for payload in batch["payload"]]
        ready = [job for job in jobs if job.prepared is not None]
        try:
            self.restorer.restore_faces([job.prepared for job in ready])
        except Exception:  # noqa: BLE001 - one image at a time, so only the culprit fails
            for job in ready:
                try:
                    self.restorer.restore_faces([job.prepared])
                except Exception as exc:  # noqa: BLE001
                    job.report.error, job.report.output, job.prepared = _failure(exc, job.report.input), None, None
        packed = [_pack(job) for job in jobs]
        return {"rel": [p["rel"] for p in packed], "payload": [p["payload"] for p in packed]}


def finish_row(row: dict[str, Any], detect: DetectOptions, paste: PasteOptions, output: OutputOptions,
               restore: RestoreOptions | None = None) -> dict[str, Any]:
    """Stage 3 (CPU): paste back, encode and write the output; returns the image's manifest row (``restore``:
    see :func:`cpu_restorer`)."""
    job = _unpack(row)
    report = job.report
    if job.prepared is not None:
        try:
            result = cpu_restorer(detect, paste, restore).finish(job.prepared)
            report.faces = result.faces
            report.seconds.update(result.seconds)
            start = time.perf_counter()
            image = gray(result.image) if job.loaded.gray else result.image
            if is_uri(report.output):
                ext = PurePosixPath(report.output).suffix.lstrip(".")
                encoded = encode_image(image, result.alpha, fmt=ext, quality=output.quality, icc=job.loaded.icc)
                write_remote(report.output, encoded)
            else:  # all or none, never over its input (planning checked every input; this is the last word)
                out = Path(report.output)
                writer = image_writer(out, image, result.alpha, quality=output.quality, icc=job.loaded.icc)
                OutputSet(output.overwrite).add(out, writer).commit(InputGuard([report.input]))
            report.seconds["encode"] = time.perf_counter() - start
        except Exception as exc:  # noqa: BLE001 - a failure is a manifest row, never a crashed job
            report.error, report.output = _failure(exc, report.input), None
    return {**manifest_row(report, job.rel), "index": job.index}


def manifest_row(report: FileReport, rel: str) -> dict[str, Any]:
    line = report.to_json()
    return {
        "rel": rel,
        "input": line["input"],
        "output": line["output"],
        "width": line["width"],
        "height": line["height"],
        "faces": json.dumps(line["faces"]),
        "seconds": json.dumps(line["seconds"]),
        "error": line["error"],
        "skipped": line["skipped"],
    }


def report_from_row(row: dict[str, Any]) -> FileReport:
    """A manifest row back as a :class:`FileReport` (faces with their box, score and landmarks; ``rel`` in ``extra``)."""
    faces = [
        Face(box=np.array(face["box"], float), score=float(face["score"]), landmarks=np.array(face["landmarks"], float))
        for face in json.loads(row["faces"] or "[]")
    ]
    return FileReport(
        input=row["input"],
        output=row["output"],
        width=row["width"],
        height=row["height"],
        faces=faces,
        seconds=json.loads(row["seconds"] or "{}"),
        error=row["error"],
        skipped=row["skipped"],
        extra={"rel": row["rel"]},
    )


# ---- manifest ---------------------------------------------------------------------------------


def read_manifest(dst: str) -> list[dict[str, Any]]:
    """The rows of ``DST/manifest.parquet``, or none when there is no manifest yet."""
    import pyarrow.parquet as pq

    location = f"{dst.rstrip('/')}/{MANIFEST}" if is_uri(dst) else str(Path(_local(dst)) / MANIFEST)
    if not exists(location):
        return []
    try:
        if is_uri(location):
            filesys, path = filesystem(location)
            rows = pq.read_table(path, filesystem=filesys).to_pylist()
        else:
            rows = pq.read_table(location).to_pylist()
        if rows and not set(MANIFEST_COLUMNS) <= rows[0].keys():
            raise ValueError(f"columns {', '.join(sorted(rows[0]))} instead of {', '.join(MANIFEST_COLUMNS)}")
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ... for a damaged file
        reason = one_line(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise InputError(
            f"{one_line(location)}: damaged manifest ({reason}); pass --rebuild-manifest to rebuild it from the outputs in DST"
        ) from None
    return rows


def write_manifest(dst: str, rows: Iterable[dict[str, Any]]) -> str:
    """Write ``DST/manifest.parquet`` atomically (locally through :mod:`bfrboost.safety`)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("rel", pa.string()),
            ("input", pa.string()),
            ("output", pa.string()),
            ("width", pa.int64()),
            ("height", pa.int64()),
            ("faces", pa.string()),
            ("seconds", pa.string()),
            ("error", pa.string()),
            ("skipped", pa.string()),
        ]
    )
    table = pa.Table.from_pylist([{k: row.get(k) for k in MANIFEST_COLUMNS} for row in rows], schema=schema)
    if is_uri(dst):
        location = f"{dst.rstrip('/')}/{MANIFEST}"
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        write_remote(location, buffer.getvalue())
        return location
    location = Path(_local(dst)) / MANIFEST
    try:
        with atomic_path(location, overwrite=True) as temp:
            pq.write_table(table, temp)
    except OSError as exc:
        raise OutputError(f"{location}: cannot write the manifest ({one_line(exc)})") from None
    return str(location)
