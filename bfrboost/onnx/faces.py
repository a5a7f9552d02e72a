"""The face detector (facexlib RetinaFace) and the face parser (facexlib ParseNet) on ONNX Runtime.

With ``--runtime onnx`` the whole photo runs there, not only the base model: each network is
exported on first use into the same verified cache as the bases (``retinaface_resnet50-<sha16>-opset18-g3.onnx``,
``parsenet-<sha16>-opset18-g3.onnx``, each with its record, hashed before every use), and only the
network moves: :class:`OnnxFaceNetworks` gives the detector and the parser a session as their
``forward``. Pre- and post-processing (resizing, prior boxes, decoding, NMS; argmax and mask
blurring) stay the detector's and the parser's own code, so both parts keep their protocol and
their results: the detector's graph takes any image size, the parser's any batch.

dlib (no network) keeps running as it is.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch
from torch import nn

from bfrboost.onnx import runtime
from bfrboost.onnx.export import (
    DEFAULT_OPSET,
    META_PREFIX,
    default_check_face,
    file_sha256,
    plain_session,
    trace,
    write_metadata,
)
from bfrboost.safety import atomic_path

if TYPE_CHECKING:
    from bfrboost.faces.detect import Detector
    from bfrboost.faces.parse import FaceParser

#: facexlib's BGR means, subtracted before RetinaFace's network.
_RETINAFACE_MEAN = (104.0, 117.0, 123.0)


class SessionForward:
    """A network's forward on an ONNX Runtime session: a tensor in, the graph's outputs as tensors out.

    Given to a detector's or a parser's ``with_forward``: their pre- and post-processing stay the same."""

    def __init__(self, session: Any, input_name: str, output_names: Sequence[str]) -> None:
        self.session = session
        self.input_name = input_name
        self.output_names = list(output_names)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.session.run(self.output_names, {self.input_name: x.detach().float().cpu().numpy()})
        return tuple(torch.from_numpy(o).to(x.device) for o in outputs)


class _MaskHead(nn.Module):
    """ParseNet without its unused image head: the parsing logits only."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[0]


def _export_checked(name: str, net: nn.Module, trace_input: torch.Tensor, checks: Sequence[torch.Tensor], path: Path,
                    output_names: list[str], dynamic_axes: dict[str, dict[int, str]], weights_sha: str) -> dict[str, Any]:
    """Export ``net`` to ``path``; record its largest |ONNX Runtime − PyTorch| over ``checks`` (other shapes than traced)."""
    start = time.perf_counter()
    with atomic_path(path, overwrite=True) as temp:
        trace(net, (trace_input,), temp, DEFAULT_OPSET, ["input"], output_names, dynamic_axes)
        session = plain_session(temp)
        worst = 0.0
        with torch.inference_mode():
            for x in checks:
                ours = session.run(output_names, {"input": x.numpy()})
                ref = net(x)
                ref = ref if isinstance(ref, tuple) else (ref,)
                worst = max(worst, *(float(np.abs(o - r.numpy()).max()) for o, r in zip(ours, ref, strict=True)))
        meta = {"network": name, "weights_sha256": weights_sha, "opset": str(DEFAULT_OPSET),
                "parity_max_abs_diff": f"{worst:.3e}", "torch": torch.__version__}
        write_metadata(temp, {META_PREFIX + k: v for k, v in meta.items()})
        digest = file_sha256(temp)
    return {"sha256": digest, "parity_max_abs_diff": worst, "seconds": round(time.perf_counter() - start, 1)}


def _cpu_copy(net: nn.Module) -> nn.Module:
    """The float32 CPU network to export and check against (the running one may be on a GPU)."""
    return copy.deepcopy(net).float().cpu().eval()


def _photo_input(height: int, width: int) -> torch.Tensor:
    """A real photo (scikit-image's astronaut) as RetinaFace's input: BGR, means subtracted, (1, 3, H, W)."""
    from skimage import data

    bgr = cv2.resize(data.astronaut()[..., ::-1], (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
    return torch.from_numpy(bgr - np.float32(_RETINAFACE_MEAN)).permute(2, 0, 1)[None].contiguous()


def retinaface_graph(network: str, net: nn.Module, weights: Path) -> Path:
    """RetinaFace ``network`` as a verified cached graph, any image size (exported on first use)."""
    sha = runtime.weights_sha256(weights)

    def export(path: Path) -> dict[str, Any]:
        anchors = {1: "anchors"}
        axes = {"input": {2: "height", 3: "width"}, "loc": anchors, "conf": anchors, "landmarks": anchors}
        checks = [_photo_input(640, 640), _photo_input(480, 720)]
        return _export_checked(f"retinaface_{network}", _cpu_copy(net), _photo_input(320, 416), checks, path,
                               ["loc", "conf", "landmarks"], axes, sha)

    return runtime.cached_export(f"retinaface_{network}", sha, DEFAULT_OPSET, export)


def parsenet_graph(net: nn.Module, weights: Path, resolution: int = 512) -> Path:
    """ParseNet's parsing logits as a verified cached graph, any batch (exported on first use)."""
    sha = runtime.weights_sha256(weights)

    def export(path: Path) -> dict[str, Any]:
        face = cv2.resize(default_check_face(), (resolution, resolution), interpolation=cv2.INTER_LINEAR)
        x = torch.from_numpy(face).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        return _export_checked("parsenet", _MaskHead(_cpu_copy(net)).eval(), x, [torch.cat([x, x.flip(-1)])], path, ["logits"],
                               {"input": {0: "batch"}, "logits": {0: "batch"}}, sha)

    return runtime.cached_export(f"parsenet-{resolution}", sha, DEFAULT_OPSET, export)


def onnx_detector(detector: Detector, providers: Sequence[str] | None = None, threads: int | None = None,
                  device: str | torch.device = "cpu") -> Detector:
    """``detector`` with its network on ONNX Runtime (a RetinaFace); a detector without one (dlib) as it is."""
    from bfrboost.faces.detect import RetinaFaceDetector, retinaface_path

    if not isinstance(detector, RetinaFaceDetector):
        return detector
    network = detector.name.removeprefix("retinaface_")
    path = retinaface_graph(network, detector.net, retinaface_path(network))
    session = runtime.session(path, runtime.choose_providers(providers, device), threads)
    return detector.with_forward(SessionForward(session, "input", ["loc", "conf", "landmarks"]))


def onnx_parser(parser: FaceParser, providers: Sequence[str] | None = None, threads: int | None = None,
                device: str | torch.device = "cpu") -> FaceParser:
    """``parser`` with ParseNet on ONNX Runtime."""
    from bfrboost.faces.parse import parsenet_path

    path = parsenet_graph(parser.net, parsenet_path(), parser.resolution)
    session = runtime.session(path, runtime.choose_providers(providers, device), threads)
    return parser.with_forward(SessionForward(session, "input", ["logits"]))


class OnnxFaceNetworks:
    """``--runtime onnx`` for a photo's other networks (:class:`~bfrboost.faces.types.FaceNetworks`): the
    detector and the parser on ONNX Runtime with the base model's providers and threads."""

    def __init__(self, providers: Sequence[str] | None = None, threads: int | None = None,
                 device: str | torch.device = "cpu") -> None:
        self.providers, self.threads, self.device = providers, threads, device

    def detector(self, detector: Detector) -> Detector:
        return onnx_detector(detector, self.providers, self.threads, self.device)

    def parser(self, parser: FaceParser) -> FaceParser:
        return onnx_parser(parser, self.providers, self.threads, self.device)
