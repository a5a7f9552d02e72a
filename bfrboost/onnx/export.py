"""Export a base model to ONNX, with its provenance in the file and a parity check against PyTorch.

How each base becomes one graph (any batch, 512 × 512):

- The graph is traced through the adapter's own ``spec.forward``, so the normalisation (mean 0.5 /
  std 0.5 in, ``(y + 1) / 2`` clipped out) is inside it, exactly as the PyTorch path runs it.
- Fidelity knobs are graph inputs (float32 scalars): CodeFormer's ``fidelity`` (upstream ``w``) and
  VQFR's ``fidelity_ratio``. Both networks skip their fusion branch in Python when the knob is 0;
  the graph is traced at a non-zero value, so it always runs the branch and multiplies it by the
  knob: at 0 that adds exactly 0, the same picture, at the cost of the branch.
- GFPGAN's StyleGAN noise is the fixed noise stored in the checkpoint (``randomize_noise=False``,
  the project's default); the upstream per-call random noise cannot be exported reproducibly.
- The batch axis of ``image`` and ``restored`` is dynamic (one file for batch 1 and batch N); the image
  size is fixed, which the size-dependent rewrites need (:func:`bfrboost.onnx.rewrite.exportable`). The
  StyleGAN2 modulated convolutions (GFPGAN, GPEN), which fold the batch into a grouped convolution's
  group count, are exported with a constant kernel that takes any batch. The fidelity knobs stay
  scalars: one value for the whole batch, as in PyTorch.
- VQFR's modulated deformable convolution (torchvision's op has no ONNX form) is exported as the
  same sampling written with ``GridSample`` and a 1 × 1 convolution.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bfrboost.backbones.registry import BaseSpec, get_spec, load_base
from bfrboost.errors import UsageError, WeightsError
from bfrboost.onnx.rewrite import exportable
from bfrboost.options import ExportOptions, default_of
from bfrboost.safety import atomic_path, one_line

#: GridSample (VQFR) needs opset 16; 18 is well supported by every current runtime.
DEFAULT_OPSET = default_of(ExportOptions, "opset")
MIN_OPSET = 16
INPUT = "image"
OUTPUT = "restored"
#: Name of the graphs' dynamic batch axis (axis 0 of the input and the output).
BATCH = "batch"
#: Knobs that become scalar graph inputs, per base.
GRAPH_KNOBS: Mapping[str, tuple[str, ...]] = {"codeformer": ("fidelity",), "vqfr": ("fidelity_ratio",)}
#: Bases with no ONNX form, and why.
NOT_EXPORTABLE: Mapping[str, str] = {
    "none": "base 'none' has no network; there is nothing to export",
    "difface": (
        "DifFace is a 10–400 step diffusion sampler (SwinIR estimate, then seeded DDIM steps of a 500 M-parameter "
        "U-Net): only the per-step networks could be graphs, the sampler loop and its noise would stay in Python, "
        "so an ONNX file alone could not restore a face; run it with --runtime torch (on a GPU)"
    ),
}
META_PREFIX = "bfrboost."
#: Trace value of a fidelity knob: non-zero, so the fusion branch is in the graph.
_TRACE_KNOB = 0.5
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_onnx` wrote and how close the graph is to PyTorch on the check face."""

    path: Path
    base: str
    opset: int
    precision: str  # "fp32" or "fp16"
    weights_sha256: str
    sha256: str  # of the written .onnx file
    max_abs_diff: float  # graph vs PyTorch on the check face, output in [0, 1]
    psnr_db: float | None  # fp16 graph vs PyTorch fp32 (None for fp32)
    seconds: float

    def summary(self) -> str:
        quality = f", PSNR {self.psnr_db:.1f} dB vs fp32" if self.psnr_db is not None else ""
        return (f"{self.path}: {self.base} ({self.precision}, opset {self.opset}); parity vs PyTorch on a real face: "
                f"max |diff| {self.max_abs_diff:.2e}{quality}; {self.seconds:.0f} s")


def file_sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def check_exportable(name: str) -> BaseSpec:
    """The spec of base ``name``, or a :class:`UsageError` saying why it has no ONNX form."""
    spec = get_spec(name)
    if name in NOT_EXPORTABLE:
        raise UsageError(NOT_EXPORTABLE[name])
    return spec


class GraphModule(nn.Module):
    """``spec.forward(net, image, **knobs)`` with the base's fidelity knobs as tensor inputs."""

    def __init__(self, spec: BaseSpec, net: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.net = net
        self.knob_names = GRAPH_KNOBS.get(spec.name, ())
        fixed = {k: spec.knob(k).default for k in spec.knobs if k not in self.knob_names}
        self.fixed = fixed

    def forward(self, image: torch.Tensor, *knobs: torch.Tensor) -> torch.Tensor:
        return self.spec.forward(self.net, image, **self.fixed, **dict(zip(self.knob_names, knobs, strict=True)))


def export_onnx(
    name: str,
    out: Path | str,
    *,
    weights: Path | str | None = None,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    check_face: np.ndarray | None = None,
    net: nn.Module | None = None,
    overwrite: bool = False,
) -> ExportReport:
    """Write base ``name`` as an ONNX graph to ``out`` and check it against PyTorch.

    ``weights``: a checkpoint instead of the verified cached one. ``net``: an already built network
    of this base (tests, benchmarks: random weights), recorded as ``weights_sha256 = "random"``.
    ``check_face``: an aligned RGB uint8 face for the parity check (default: a real photo's face).
    The file is written atomically and only if it opens in ONNX Runtime.
    """
    if opset < MIN_OPSET:
        raise UsageError(f"--opset {opset} is too old: the graphs need at least opset {MIN_OPSET}")
    spec = check_exportable(name)
    start = time.perf_counter()
    weights_sha = "random"
    if net is None:
        loaded = load_base(name, device="cpu", weights=weights)
        net, weights_sha = loaded.net, file_sha256(loaded.weights)
    net = net.eval().requires_grad_(False).float()
    graph = GraphModule(spec, net)
    image = face_tensor(check_face, spec.input_size)
    out = Path(out)
    with atomic_path(out, overwrite=overwrite) as temp:
        _trace(graph, image, temp, opset)
        meta = _metadata(spec, weights_sha, opset, "fp16" if fp16 else "fp32")
        psnr = None
        if fp16:
            _to_fp16(temp)
            psnr = _psnr_vs_torch(graph, temp, image)
        diff = parity(graph, temp, image)
        meta[META_PREFIX + "parity_max_abs_diff"] = f"{diff:.3e}"
        write_metadata(temp, meta)
        digest = file_sha256(temp)
    precision = "fp16" if fp16 else "fp32"
    return ExportReport(out, name, opset, precision, weights_sha, digest, diff, psnr, time.perf_counter() - start)


def face_tensor(face: np.ndarray | None, size: int = 512) -> torch.Tensor:
    """(1, 3, size, size) float in [0, 1] from an RGB uint8 face (default: the parity check's real face)."""
    import cv2

    if face is None:
        face = default_check_face()
    if face.shape[:2] != (size, size):
        face = cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(np.ascontiguousarray(face[..., :3])).permute(2, 0, 1)[None].float() / 255


def default_check_face() -> np.ndarray:
    """A real face with no download: the astronaut portrait that ships with scikit-image (public domain),
    cropped around the face about as the FFHQ alignment frames it."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[20:220, 130:330])


def knob_feeds(spec: BaseSpec, knobs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The graph inputs for the knob values ``knobs`` (defaults for those not given)."""
    return {k: np.array(float(knobs.get(k, spec.knob(k).default)), dtype=np.float32) for k in GRAPH_KNOBS.get(spec.name, ())}


def _knob_settings(spec: BaseSpec) -> list[dict[str, float]]:
    names = GRAPH_KNOBS.get(spec.name, ())
    if not names:
        return [{}]
    values = sorted({float(spec.knob(k).default) for k in names} | {0.0, 1.0})
    return [dict.fromkeys(names, v) for v in values]


def parity(graph: GraphModule, path: Path, image: torch.Tensor) -> float:
    """Largest |graph − PyTorch| on ``image``, at each fidelity knob's default and its two ends."""
    session = plain_session(path)
    worst = 0.0
    for knobs in _knob_settings(graph.spec):
        ours = _run(session, graph.spec, image, knobs)
        with torch.inference_mode():
            ref = graph.spec.forward(graph.net, image, **graph.fixed, **knobs).numpy()
        worst = max(worst, float(np.abs(ours - ref).max()))
    return worst


def _psnr_vs_torch(graph: GraphModule, path: Path, image: torch.Tensor) -> float:
    session = plain_session(path)
    knobs = {k: float(graph.spec.knob(k).default) for k in graph.knob_names}
    ours = _run(session, graph.spec, image, knobs)
    with torch.inference_mode():
        ref = graph.spec.forward(graph.net, image, **graph.fixed, **knobs).numpy()
    mse = float(np.mean((ours.astype(np.float64) - ref) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


def _run(session: Any, spec: BaseSpec, image: torch.Tensor, knobs: Mapping[str, float]) -> np.ndarray:
    feeds = {INPUT: image.numpy(), **knob_feeds(spec, knobs)}
    return session.run([OUTPUT], feeds)[0].astype(np.float32)


def plain_session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: fp16 graphs log a warning per node it cannot fold
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _trace(graph: GraphModule, image: torch.Tensor, path: Path, opset: int) -> None:
    knobs = tuple(torch.tensor(_TRACE_KNOB) for _ in graph.knob_names)
    # the tracer warns about Python-side branches on the knob; the module docstring says why they are right
    trace(graph, (image, *knobs), path, opset, [INPUT, *graph.knob_names], [OUTPUT], {INPUT: {0: BATCH}, OUTPUT: {0: BATCH}})


def trace(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, opset: int, input_names: list[str],
          output_names: list[str], dynamic_axes: Mapping[str, Mapping[int, str]] | None = None) -> None:
    """``torch.onnx.export`` of ``module`` (its exportable equivalents swapped in, see :mod:`bfrboost.onnx.rewrite`;
    Winograd convolutions only where the image size is static)."""
    static_size = not any(axis >= 2 for axes in (dynamic_axes or {}).values() for axis in axes)
    with warnings.catch_warnings(), torch.no_grad(), exportable(module, static_size):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, str(path), dynamo=False, opset_version=opset, do_constant_folding=True,
            input_names=input_names, output_names=output_names, dynamic_axes=dict(dynamic_axes or {}),
        )


def _metadata(spec: BaseSpec, weights_sha: str, opset: int, precision: str) -> dict[str, str]:
    knobs = {k: {"default": spec.knob(k).default, "low": spec.knob(k).low, "high": spec.knob(k).high}
             for k in GRAPH_KNOBS.get(spec.name, ())}
    shape = f"({BATCH}, 3, {spec.input_size}, {spec.input_size})"
    values = {
        "base": spec.name, "display_name": spec.display_name, "card": spec.card, "weights_file": spec.weight_file,
        "weights_sha256": weights_sha, "input": f"{INPUT}: float32 RGB {shape} in [0, 1]",
        "output": f"{OUTPUT}: float32 RGB {shape} in [0, 1]", "knob_inputs": json.dumps(knobs),
        "opset": str(opset), "precision": precision, "torch": torch.__version__,
    }
    return {META_PREFIX + k: v for k, v in values.items()}


def write_metadata(path: Path, meta: Mapping[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name = "bfrboost"
    onnx.save(model, str(path))


def _to_fp16(path: Path) -> None:
    """Weights and activations in float16, inputs and outputs still float32 (same feeds as fp32)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    try:
        model = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
    except Exception as exc:  # the converter raises bare exceptions on graphs it cannot handle
        raise WeightsError(f"{one_line(path)}: float16 conversion failed ({one_line(exc)}); export fp32 instead") from None
    onnx.save(model, str(path))
