"""Base models on ONNX Runtime: ``--runtime onnx``.

- **Where graphs come from**: the verified weights cache only, or a path the user names. On first
  use a base is exported into ``<weights cache>/onnx/`` (named by the base, the first 16 hex digits
  of its checkpoint's SHA-256 and the opset) with a record beside it (``FILE.onnx.json``: the graph's
  SHA-256, its base, its checkpoint's SHA-256, the export's parity). Before a session opens, the file
  is hashed and compared with its record; a file that does not match is refused in one line.
- **Explicit files** (``--weights model.onnx``) are checked for what they are: readable, exported by
  bfrboost for this base, with the inputs this base needs.
- **Sessions** are cached per (file, providers, threads), like the PyTorch models are loaded once
  per :class:`~bfrboost.pipeline.Restorer`. A batch of ``batch_size`` faces is one session run (the
  graphs' batch axis is dynamic); a batch-1 file exported by bfrboost before that runs face by face.
- **Execution providers**: from what the installed onnxruntime offers. By default the CPU; on
  ``--device cuda`` CUDA first, on ``--device mps`` CoreML first, on a CPU OpenVINO first where it is
  installed; ``--providers`` picks any of cpu, cuda, tensorrt, coreml, directml, openvino (the CPU is
  always the last fallback).
- **OpenVINO**: onnxruntime-openvino's provider where that build is installed; otherwise, with the
  ``openvino`` package (``pip install 'bfrboost[openvino]'``, beside the usual onnxruntime), the same
  verified graph runs on OpenVINO's own CPU runtime (:class:`OpenVinoSession`), in float32 either way.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from bfrboost import weights as weights_manager
from bfrboost.backbones.registry import BaseSpec, default_batch_size, validate_knobs
from bfrboost.errors import UsageError, WeightsError
from bfrboost.onnx.export import (
    BATCH,
    DEFAULT_OPSET,
    GRAPH_KNOBS,
    INPUT,
    META_PREFIX,
    OUTPUT,
    check_exportable,
    export_onnx,
    file_sha256,
    knob_feeds,
)
from bfrboost.safety import atomic_open, one_line

#: Short names (``--providers``) → ONNX Runtime's execution provider names.
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "directml": "DmlExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}
#: The provider tried first on each device when ``--providers`` is not given (if installed); on a CPU, OpenVINO
#: ran GFPGAN, GPEN, CodeFormer, VQFR and whole photos in 0.74–0.90 of ONNX Runtime's CPU provider's time here
#: (RestoreFormer 1.06; docs/throughput.md).
_DEVICE_PROVIDER = {"cuda": "cuda", "mps": "coreml", "cpu": "openvino"}
RUNTIMES = ("torch", "onnx")
_SESSIONS: dict[tuple, Any] = {}
_LOCK = threading.Lock()


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise UsageError("--runtime onnx needs ONNX Runtime: pip install 'bfrboost[onnx]'") from None
    return onnxruntime


def _openvino_runtime() -> bool:
    """Whether OpenVINO runs graphs here without onnxruntime's provider: the ``openvino`` package is installed."""
    return importlib.util.find_spec("openvino") is not None


def available_providers() -> list[str]:
    """Short names of the execution providers the installed onnxruntime offers (openvino: also through the
    ``openvino`` package)."""
    installed = set(_ort().get_available_providers())
    return [short for short, full in PROVIDERS.items() if full in installed or (short == "openvino" and _openvino_runtime())]


def choose_providers(requested: Sequence[str] | None = None, device: str | torch.device = "cpu") -> list[str]:
    """ONNX Runtime provider names, best first, the CPU always last.

    ``requested``: short names in order of preference; each must be installed. ``None``: by device.
    """
    have = available_providers()
    if requested:
        unknown = [name for name in requested if name not in PROVIDERS]
        if unknown:
            raise UsageError(f"unknown execution provider {unknown[0]!r}; known: {', '.join(PROVIDERS)}")
        missing = [name for name in dict.fromkeys(requested) if name not in have]
        if missing:
            raise UsageError(_missing_message(missing, have))
        chosen = list(dict.fromkeys(requested))
    else:
        preferred = _DEVICE_PROVIDER.get(torch.device(device).type)
        chosen = [preferred] if preferred in have else []
    return [PROVIDERS[name] for name in dict.fromkeys([*chosen, "cpu"])]


#: The onnxruntime build that brings each provider (pip package names).
_PROVIDER_BUILDS = {"cuda": "onnxruntime-gpu", "tensorrt": "onnxruntime-gpu with TensorRT", "coreml": "onnxruntime (macOS)",
                    "directml": "onnxruntime-directml", "openvino": "'bfrboost[openvino]'"}


def _missing_message(missing: Sequence[str], have: Sequence[str]) -> str:
    """One line: which requested providers this onnxruntime lacks, what it has, and what to install."""
    plural = "s" if len(missing) > 1 else ""
    builds = ", ".join(dict.fromkeys(_PROVIDER_BUILDS[name] for name in missing))
    verb = "are" if plural else "is"
    return (f"--providers: execution provider{plural} {', '.join(missing)} {verb} not in this onnxruntime "
            f"(installed: {', '.join(have)}); install {builds}, or leave out --providers")


def cache_dir() -> Path:
    return weights_manager.home() / "onnx"


def record_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def cached_graph(name: str, weights: Path | str | None = None, opset: int = DEFAULT_OPSET) -> Path:
    """The verified exported graph of base ``name`` (its cached checkpoint, or ``weights``), made on first use."""
    spec = check_exportable(name)
    source = Path(weights) if weights is not None else weights_manager.ensure(spec.weight_file)

    def export(path: Path) -> dict[str, Any]:
        report = export_onnx(name, path, weights=source, opset=opset, overwrite=True)
        return {"sha256": report.sha256, "parity_max_abs_diff": report.max_abs_diff}

    return cached_export(name, weights_sha256(source), opset, export)


#: Part of every cached graph's name: raised when the export writes different graphs (2: Winograd convolutions,
#: average-pool halving; 3: a dynamic batch axis), so graphs cached by an older export are exported again
#: instead of used as they are.
GRAPH_VERSION = 3


def cached_export(name: str, weights_sha: str, opset: int, export: Callable[[Path], dict[str, Any]]) -> Path:
    """``<cache>/onnx/NAME-<sha16>-opsetN-gV.onnx`` (V = :data:`GRAPH_VERSION`), written by ``export(path)`` on
    first use (which returns the record's ``sha256`` of the file and its ``parity_max_abs_diff``), then verified
    against its record."""
    path = cache_dir() / f"{name}-{weights_sha[:16]}-opset{opset}-g{GRAPH_VERSION}.onnx"
    if not path.exists():
        record = {"base": name, "weights_sha256": weights_sha, "opset": opset, **export(path)}
        with atomic_open(record_path(path), overwrite=True) as f:
            f.write(json.dumps(record, indent=1).encode())
    verify_cached(path, name, weights_sha)
    return path


def verify_cached(path: Path, name: str, weights_sha: str) -> None:
    """Refuse a cached graph whose bytes or provenance differ from its record."""
    fix = f"delete it (it is exported again on next use) or run `bfrboost export onnx --base {name}`"
    try:
        record = json.loads(record_path(path).read_text())
    except (OSError, ValueError):
        raise WeightsError(f"{one_line(path)}: its record {record_path(path).name} is missing or unreadable; {fix}") from None
    if record.get("base") != name or record.get("weights_sha256") != weights_sha:
        raise WeightsError(f"{one_line(path)}: recorded for base {record.get('base')!r} with other weights; {fix}")
    if file_sha256(path) != record.get("sha256"):
        raise WeightsError(f"{one_line(path)}: SHA-256 does not match its record (damaged or changed); {fix}")


@functools.lru_cache(maxsize=16)
def _weights_sha256_at(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(Path(path))


def weights_sha256(path: Path) -> str:
    """SHA-256 of a checkpoint, hashed once per (path, size, mtime)."""
    try:
        st = path.stat()
    except OSError:
        raise WeightsError(f"{one_line(path)}: no such checkpoint") from None
    return _weights_sha256_at(str(path.resolve()), st.st_size, st.st_mtime_ns)


def session(path: Path, providers: Sequence[str], threads: int | None = None) -> Any:
    """A cached ONNX Runtime session for ``path``; one line naming the file if it is not a readable graph."""
    key = (str(Path(path).resolve()), tuple(providers), threads)
    with _LOCK:
        if key not in _SESSIONS:
            _SESSIONS[key] = open_session(Path(path), providers, threads)
        return _SESSIONS[key]


def open_session(path: Path, providers: Sequence[str], threads: int | None = None) -> Any:
    """A new session (not cached): every graph optimisation, ``threads`` intra-op threads spinning between
    ops (the cores are ours while a face runs), one inter-op thread, ops in sequence. OpenVINO first: its
    provider in float32 with ``threads``, or :class:`OpenVinoSession` where onnxruntime lacks that provider."""
    ort = _ort()
    openvino = PROVIDERS["openvino"]
    if providers and providers[0] == openvino and openvino not in ort.get_available_providers():
        return OpenVinoSession(path, threads)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    if threads:
        options.intra_op_num_threads = threads
    ov_options = {"device_type": "CPU", "precision": "FP32", **({"num_of_threads": str(threads)} if threads else {})}
    chosen = [(name, ov_options) if name == openvino else name for name in providers]
    try:
        return ort.InferenceSession(str(path), options, providers=chosen)
    except Exception as exc:  # onnxruntime raises its own untyped errors for damaged files
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: Exception) -> WeightsError:
    reason = one_line(str(exc).split("\n")[0])[:160]
    return WeightsError(f"{one_line(path)}: not a readable ONNX model ({reason}); export it again with `bfrboost export onnx`")


@dataclass(frozen=True)
class _Arg:
    """A graph input or output as ONNX Runtime describes it: a name and a shape (dynamic axes by name)."""

    name: str
    shape: list[int | str]


class OpenVinoSession:
    """An exported graph on OpenVINO's CPU runtime (the ``openvino`` package), in float32.

    It answers the part of ``onnxruntime.InferenceSession`` that bfrboost calls (``run``, ``get_inputs``,
    ``get_outputs``, ``get_modelmeta``, ``get_providers``), so bases, the detector and the parser take it
    unchanged. Runs are safe from several threads (one infer request per thread, as the overlapped
    runner's paste threads run the parser).
    """

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import openvino

        core = openvino.Core()
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                  **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
        try:
            model = core.read_model(str(path))
            self._compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:  # OpenVINO raises its own untyped errors for damaged files
            raise _unreadable(path, exc) from None
        info = model.get_rt_info()  # the ONNX file's metadata_props, as OpenVINO's ONNX reader keeps them
        self._metadata = {key: value.astype(str) for key, value in (info["framework"] if "framework" in info else {}).items()}
        self._inputs = [_Arg(_graph_name(p), _shape(p.get_partial_shape())) for p in model.inputs]
        self._outputs = [_Arg(_graph_name(p), _shape(p.get_partial_shape())) for p in model.outputs]
        self._local = threading.local()

    def run(self, output_names: Sequence[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        results = request.infer({name: np.asarray(value) for name, value in feeds.items()})
        by_name = {name: value for port, value in results.items() for name in port.get_names()}
        return [by_name[name].copy() for name in (output_names or [o.name for o in self._outputs])]

    def get_inputs(self) -> list[_Arg]:
        return list(self._inputs)

    def get_outputs(self) -> list[_Arg]:
        return list(self._outputs)

    def get_modelmeta(self) -> Any:
        return SimpleNamespace(custom_metadata_map=dict(self._metadata))

    def get_providers(self) -> list[str]:
        return ["OpenVINO (CPU)"]


def _graph_name(port: Any) -> str:
    """The graph's own name of an input or output: OpenVINO also lists the inner tensor names it aliases
    (``/net/…/output_0``), which the exported graphs' plain names (``image``, ``logits``) never contain."""
    return min(port.get_names(), key=lambda name: ("/" in name, len(name)))


def _shape(shape: Any) -> list[int | str]:
    """OpenVINO's partial shape in ONNX Runtime's terms: a dynamic axis 0 is bfrboost's batch axis; other
    dynamic axes (RetinaFace's image size) are ``"?"``."""
    return [(BATCH if axis == 0 else "?") if d.is_dynamic else d.get_length() for axis, d in enumerate(shape)]


def check_graph(sess: Any, path: Path, spec: BaseSpec) -> dict[str, str]:
    """The graph's bfrboost metadata, after checking it was exported for ``spec`` with the inputs it needs
    (batch axis dynamic, or 1 in files exported before graphs took any batch)."""
    stored = sess.get_modelmeta().custom_metadata_map
    meta = {k.removeprefix(META_PREFIX): v for k, v in stored.items() if k.startswith(META_PREFIX)}
    fix = f"export one with `bfrboost export onnx --base {spec.name}`"
    if not meta:
        raise WeightsError(f"{one_line(path)}: not exported by bfrboost (no bfrboost metadata); {fix}")
    if meta.get("base") != spec.name:
        raise WeightsError(f"{one_line(path)}: exported for base {meta.get('base')!r}, not {spec.name!r}; {fix}")
    inputs = {i.name: i.shape for i in sess.get_inputs()}
    wanted = {INPUT: [BATCH, 3, spec.input_size, spec.input_size], **{k: [] for k in GRAPH_KNOBS.get(spec.name, ())}}
    if inputs not in (wanted, {**wanted, INPUT: [1, *wanted[INPUT][1:]]}) or [o.name for o in sess.get_outputs()] != [OUTPUT]:
        raise WeightsError(f"{one_line(path)}: inputs {inputs} are not the {spec.display_name} graph's {wanted}; {fix}")
    return meta


@dataclass
class OnnxBase:
    """A base model on ONNX Runtime, used where a :class:`~bfrboost.backbones.spec.LoadedBase` is."""

    spec: BaseSpec
    session: Any
    knobs: dict[str, Any]
    path: Path
    batch_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    weights: Path | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    any_batch: bool = True  # False: a batch-1 graph, run face by face

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def restore(self, crops: torch.Tensor) -> torch.Tensor:
        """Crops (B, 3, S, S) in [0, 1] → restored crops, float32 on the crops' device (one run per
        ``batch_size`` faces)."""
        size = self.spec.input_size
        if crops.ndim != 4 or tuple(crops.shape[1:]) != (3, size, size):
            raise ValueError(f"base {self.name!r} expects crops of shape (B, 3, {size}, {size}), got {tuple(crops.shape)}")
        feeds = knob_feeds(self.spec, self.knobs)
        chunks = crops.float().cpu().split(self.batch_size if self.any_batch else 1)
        out = [self.session.run([OUTPUT], {INPUT: chunk.contiguous().numpy(), **feeds})[0] for chunk in chunks]
        if not out:
            return crops.new_empty(crops.shape, dtype=torch.float32)
        return torch.from_numpy(np.concatenate(out)).to(crops.device)


def load_onnx_base(
    name: str,
    weights: Path | str | None = None,
    *,
    device: str | torch.device = "cpu",
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    batch_size: int | None = None,
    **knobs: Any,
) -> OnnxBase:
    """Base ``name`` on ONNX Runtime: ``weights`` may be a ``.onnx`` file (checked) or a checkpoint to export.

    Knobs are validated first; knobs that are not graph inputs must stay at their defaults (the
    graph fixed them when it was exported).
    """
    from bfrboost.backbones.registry import get_spec

    spec = get_spec(name)
    values = validate_knobs(name, knobs)
    check_exportable(name)
    baked = [k for k, v in values.items() if k not in GRAPH_KNOBS.get(name, ()) and v != spec.knob(k).default]
    if baked:
        raise UsageError(f"base {name!r} option {baked[0]} is fixed in the ONNX graph at {spec.knob(baked[0]).default}; "
                         "use --runtime torch to change it")
    chosen = choose_providers(providers, device)  # before a first-use export, which takes minutes
    explicit = weights is not None and Path(weights).suffix.lower() == ".onnx"
    path = Path(weights) if explicit else cached_graph(name, weights)
    if explicit and not path.is_file():
        raise WeightsError(f"{one_line(path)}: no such ONNX file; export one with `bfrboost export onnx --base {name} -o {path}`")
    sess = session(path, chosen, threads)
    meta = check_graph(sess, path, spec)
    any_batch = next(i.shape for i in sess.get_inputs() if i.name == INPUT)[0] == BATCH
    return OnnxBase(spec, sess, values, path, batch_size=batch_size or default_batch_size(torch.device(device)),
                    device=torch.device("cpu"), weights=None if explicit else (Path(weights) if weights else None),
                    metadata=meta, any_batch=any_batch)
