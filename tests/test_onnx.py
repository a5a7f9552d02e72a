"""ONNX export and the ONNX Runtime path (`bfrboost export onnx`, `restore --runtime onnx`).

Parity is checked against PyTorch on a real aligned face: narrow variants of every exportable base
(the same classes and code paths; the released sizes take 10–50 s per face here), plus one export
of a released-size network (GPEN-BFR-512's configuration, random weights).
"""

from __future__ import annotations

import functools
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from spandrel.architectures.GFPGAN import GFPGAN
from spandrel.architectures.RestoreFormer import RestoreFormer
from spandrel_extra_arches.architectures.CodeFormer import CodeFormer
from torchvision.ops import deform_conv2d
from typer.testing import CliRunner

from bfrboost.backbones import codeformer, gpen, vqfr
from bfrboost.backbones.registry import build_strict, get_spec
from bfrboost.backbones.vqfr import deform_conv3x3_by_sampling
from bfrboost.cli import app
from bfrboost.errors import UsageError, WeightsError
from bfrboost.faces import get_detector, parse
from bfrboost.faces.parse import load_parser
from bfrboost.onnx import faces as faces_on_onnx
from bfrboost.onnx import runtime
from bfrboost.onnx.export import export_onnx, face_tensor, trace
from bfrboost.onnx.rewrite import (
    ConstantKernelModConv,
    GFPGANModConv,
    GPENModConv,
    StableGroupNorm,
    exportable,
    winograd_pays,
)
from bfrboost.pipeline import Restorer
from tests.backbones.conftest import swap_spec
from tests.backbones.test_gfpgan import TINY as GFPGAN_TINY
from tests.backbones.test_gpen import NARROW as GPEN_NARROW
from tests.backbones.test_restoreformer import TINY as RESTOREFORMER_TINY
from tests.backbones.test_vqfr import TINY as VQFR_TINY
from tests.faces.conftest import load_rgb, trust_cache  # noqa: F401  (fixture: random checkpoints under official names)
from tests.faces.test_detect import _facexlib_retinaface
from tests.faces.test_parse import _random_parsenet

onnx = pytest.importorskip("onnx")  # the [onnx] extra (make test installs it)
pytest.importorskip("onnxruntime")

CODEFORMER_NARROW = {**codeformer.CONFIG, "dim_embd": 32, "n_head": 2, "n_layers": 1}
#: Narrow variants, and the crop size they take: (build, input_size).
NARROW = {
    "gfpgan": (lambda sd: build_strict(lambda: GFPGAN(**GFPGAN_TINY), sd), 64),
    "gfpgan-1.3": (lambda sd: build_strict(lambda: GFPGAN(**GFPGAN_TINY), sd), 64),
    "restoreformer": (lambda sd: build_strict(lambda: RestoreFormer(**RESTOREFORMER_TINY), sd), 64),
    # CodeFormer's VQGAN is fixed at 512 px and 64 channels; its transformer is what shrinks
    "codeformer": (lambda sd: build_strict(lambda: CodeFormer(**CODEFORMER_NARROW), sd), 512),
    "gpen": (lambda sd: gpen.build(sd, config=GPEN_NARROW), 512),
    "vqfr": (lambda sd: vqfr.build(sd, config=VQFR_TINY), 64),
}


def aligned_face(testdata: Path, name: str = "0143") -> np.ndarray:
    return np.asarray(Image.open(testdata / "aligned" / f"{name}.png").convert("RGB"))


def three_faces(testdata: Path, size: int) -> torch.Tensor:
    """(3, 3, size, size): three different real faces, so a graph that mixed up the batch would show."""
    return torch.cat([face_tensor(aligned_face(testdata, name), size) for name in ("0143", "0368", "0500")])


def narrow(monkeypatch: pytest.MonkeyPatch, name: str, seed: int = 0) -> torch.nn.Module:
    build, size = NARROW[name]
    swap_spec(monkeypatch, name, build=build, input_size=size)
    torch.manual_seed(seed)
    net = build(None)
    with torch.no_grad():  # noise strengths and fusion weights start at 0: make them count
        for param in net.parameters():
            if param.shape == (1,):
                param.fill_(0.5)
    return net.eval()


#: Bases whose graph is also checked at batch 3: CodeFormer's 512 px VQGAN at batch 3 would add 40 s on one core.
BATCH_CHECKED = set(NARROW) - {"codeformer"}
#: Largest |ONNX Runtime − PyTorch| accepted on [0, 1] outputs, every base (the issue's bar for fp32).
TOLERANCE = 1e-4


@pytest.mark.parametrize("name", sorted(NARROW))
def test_every_base_exports_with_parity_and_provenance(name: str, tmp_path: Path, testdata: Path, monkeypatch) -> None:
    """Parity at batch 1 (the export's check) and at batch 3 (the runtime, one session run) from one file."""
    net = narrow(monkeypatch, name)
    report = export_onnx(name, tmp_path / "m.onnx", net=net, check_face=aligned_face(testdata))
    assert report.max_abs_diff <= TOLERANCE, report.summary()
    spec, graph = get_spec(name), onnx.load(str(tmp_path / "m.onnx"))
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    if name in BATCH_CHECKED:
        faces = three_faces(testdata, spec.input_size)
        with torch.inference_mode():
            expected = spec.forward(net, faces, **{k: spec.knob(k).default for k in spec.knobs})
        on_onnx = runtime.load_onnx_base(name, tmp_path / "m.onnx", batch_size=3).restore(faces)
        assert (on_onnx - expected).abs().max() <= TOLERANCE
    meta = {p.key: p.value for p in graph.metadata_props}
    size = spec.input_size
    assert meta["bfrboost.base"] == name and meta["bfrboost.weights_sha256"] == "random"
    assert meta["bfrboost.input"] == f"image: float32 RGB (batch, 3, {size}, {size}) in [0, 1]"
    assert float(meta["bfrboost.parity_max_abs_diff"]) == pytest.approx(report.max_abs_diff, rel=1e-3)
    if name in ("codeformer", "vqfr"):  # the fidelity knob is an input; the report covered 0, default and 1
        assert json.loads(meta["bfrboost.knob_inputs"]).keys() == set(runtime.GRAPH_KNOBS[name])


def test_fidelity_input_changes_the_output_like_pytorch(tmp_path: Path, testdata: Path, monkeypatch) -> None:
    net = narrow(monkeypatch, "vqfr")
    export_onnx("vqfr", tmp_path / "v.onnx", net=net, check_face=aligned_face(testdata))
    base = runtime.load_onnx_base("vqfr", tmp_path / "v.onnx", fidelity_ratio=0.0)
    face = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    outputs = []
    for ratio in (0.0, 0.7):
        base.knobs["fidelity_ratio"] = ratio
        with torch.inference_mode():
            ref = vqfr.forward(net, face, fidelity_ratio=ratio)
        ours = base.restore(face)
        assert (ours - ref).abs().max() <= 1e-4
        outputs.append(ours)
    assert (outputs[0] - outputs[1]).abs().max() > 1e-3


class CountingSession:
    """An ONNX Runtime session that records the batch size of every run."""

    def __init__(self, session) -> None:
        self.session, self.batches = session, []

    def run(self, outputs, feeds):
        self.batches.append(len(feeds["image"]))
        return self.session.run(outputs, feeds)


def test_a_batch_of_faces_is_one_session_run_with_the_face_by_face_result(tmp_path: Path, testdata: Path,
                                                                           monkeypatch) -> None:
    export_onnx("gfpgan", tmp_path / "g.onnx", net=narrow(monkeypatch, "gfpgan"), check_face=aligned_face(testdata))
    faces, outputs = three_faces(testdata, 64), {}
    for batch_size in (3, None):  # None: the default, face by face on a CPU (batching measured no faster there)
        base = runtime.load_onnx_base("gfpgan", tmp_path / "g.onnx", batch_size=batch_size)
        base.session = CountingSession(base.session)
        outputs[batch_size] = base.restore(faces)
        assert base.session.batches == ([3] if batch_size == 3 else [1, 1, 1])
    assert outputs[3].shape == faces.shape and (outputs[3] - outputs[None]).abs().max() <= 1e-5
    graph = onnx.load(str(tmp_path / "g.onnx"))  # a batch-1 file, as exported before graphs took any batch
    for value in (graph.graph.input[0], graph.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(graph, str(tmp_path / "g1.onnx"))
    base = runtime.load_onnx_base("gfpgan", tmp_path / "g1.onnx", batch_size=3)
    base.session = CountingSession(base.session)
    assert (base.restore(faces) - outputs[None]).abs().max() <= 1e-5 and base.session.batches == [1, 1, 1]


def test_released_size_gpen_exports_with_parity(tmp_path: Path, testdata: Path) -> None:
    torch.manual_seed(0)
    net = get_spec("gpen").build(None)
    report = export_onnx("gpen", tmp_path / "gpen.onnx", net=net, check_face=aligned_face(testdata))
    assert report.max_abs_diff <= TOLERANCE, report.summary()


def test_group_norm_exports_as_accurately_as_pytorch_computes_it(tmp_path: Path) -> None:
    """A 512 px, 64-channel GroupNorm (CodeFormer's VQGAN): ONNX Runtime's InstanceNormalization is 6e-5 off here."""
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(32, 64, eps=1e-6).eval()
    net = torch.nn.Sequential(norm)
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
        x = torch.randn(1, 64, 512, 512) + 3
        expected = norm(x)
        with exportable(net):
            assert isinstance(net[0], StableGroupNorm)
            torch.onnx.export(net, (x,), str(tmp_path / "gn.onnx"), dynamo=False, opset_version=18, input_names=["x"])
    assert net[0] is norm  # swapped back
    got = runtime.session(tmp_path / "gn.onnx", ["CPUExecutionProvider"], 1).run(None, {"x": x.numpy()})[0]
    assert np.abs(got - expected.numpy()).max() <= 1e-5


@pytest.mark.parametrize("make", [
    lambda: GFPGANModConv(8, 6, 3, 16, sample_mode="upsample"), lambda: GFPGANModConv(8, 3, 1, 16, demodulate=False),
    lambda: GPENModConv(8, 6, 3, 16, upsample=True), lambda: GPENModConv(8, 6, 3, 16),
])
def test_modulated_conv_with_a_constant_kernel_is_the_same_map(make) -> None:
    torch.manual_seed(0)
    conv = make().eval()
    x, style = torch.randn(2, 8, 9, 9), torch.randn(2, 16)
    with torch.no_grad():
        expected, got = conv(x, style), ConstantKernelModConv(conv)(x, style)
    assert got.shape == expected.shape and (got - expected).abs().max() <= 1e-5 * expected.abs().max()


@pytest.mark.parametrize("padding", [0, 1])
def test_winograd_convolution_in_onnx_runtime_is_the_direct_one(tmp_path: Path, padding: int) -> None:
    """Wide 3 × 3 convolutions on small maps are exported as Winograd F(2 × 2, 3 × 3): the same outputs as
    PyTorch's direct convolution (to its own rounding), the bias and the padding included, any batch."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(128, 160, 3, padding=padding).eval()
    net, x = torch.nn.Sequential(conv), torch.randn(2, 128, 18, 20)
    assert winograd_pays(128, 160, 18 - 2 + 2 * padding, 20 - 2 + 2 * padding)
    with torch.no_grad():
        expected = torch.nn.functional.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=padding)
    path = tmp_path / "w.onnx"
    trace(net, (x[:1],), path, 18, ["x"], ["y"], {"x": {0: "n"}, "y": {0: "n"}})
    assert {n.op_type for n in onnx.load(str(path)).graph.node} >= {"DepthToSpace", "Conv"}  # the Winograd form
    got = runtime.open_session(path, ["CPUExecutionProvider"], 1).run(None, {"x": x.numpy()})[0]
    assert np.abs(got - expected.numpy()).max() <= 1e-5 * float(expected.abs().max())
    # a graph with a free image size keeps the direct convolution
    trace(net, (x[:1],), path, 18, ["x"], ["y"], {"x": {2: "h", 3: "w"}})
    assert "DepthToSpace" not in {n.op_type for n in onnx.load(str(path)).graph.node}


def test_bilinear_halving_is_exported_as_the_same_average_pool(tmp_path: Path) -> None:
    class Halve(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)

    x = torch.rand(1, 3, 16, 12, generator=torch.Generator().manual_seed(0))
    path, interpolate = tmp_path / "h.onnx", torch.nn.functional.interpolate
    trace(Halve(), (x,), path, 18, ["x"], ["y"])
    assert [n.op_type for n in onnx.load(str(path)).graph.node] == ["AveragePool"]
    assert torch.nn.functional.interpolate is interpolate  # put back after the trace
    got = runtime.open_session(path, ["CPUExecutionProvider"], 1).run(None, {"x": x.numpy()})[0]
    assert np.abs(got - Halve()(x).numpy()).max() <= 1e-6


def test_deformable_conv_for_export_is_torchvisions() -> None:
    g = torch.Generator().manual_seed(0)
    x, offset = torch.rand(2, 8, 9, 7, generator=g), torch.randn(2, 2 * 18, 9, 7, generator=g) * 4  # many taps fall outside
    weight, bias, mask = torch.randn(5, 8, 3, 3, generator=g), torch.randn(5, generator=g), torch.rand(2, 18, 9, 7, generator=g)
    expected = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    assert (deform_conv3x3_by_sampling(x, offset, weight, bias, mask) - expected).abs().max() < 1e-5


def test_difface_and_none_say_why_they_do_not_export(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="sampler loop"):
        export_onnx("difface", tmp_path / "d.onnx")
    result = CliRunner().invoke(app, ["export", "onnx", "--base", "none", "-o", str(tmp_path / "n.onnx")])
    assert result.exit_code == 2 and result.stderr == "bfrboost: base 'none' has no network; there is nothing to export\n"
    assert not (tmp_path / "n.onnx").exists()


# ---- restore --runtime onnx ----------------------------------------------------------------------


@pytest.fixture
def gpen_checkpoint(tmp_path: Path, monkeypatch) -> Path:
    """A narrow GPEN (512 px crops, so the whole pipeline runs) saved as the official bare state dict."""
    net = narrow(monkeypatch, "gpen", seed=3)
    path = tmp_path / "GPEN-BFR-512.pth"
    torch.save(net.state_dict(), path)
    return path


def _restore(tmp_path: Path, photo: Path, out: str, *args: str):
    argv = ["restore", str(photo), "-o", str(tmp_path / out), "-s", "1", "--ext", "png", "--json", "--base", "gpen", *args]
    return CliRunner().invoke(app, argv)


#: The engines the graphs run on here: ONNX Runtime's CPU provider, and OpenVINO where installed (make test installs it).
ENGINES = [p for p in ("cpu", "openvino") if p in runtime.available_providers()]


def test_restore_onnx_gives_the_torch_picture(tmp_path: Path, testdata: Path, gpen_checkpoint: Path, monkeypatch) -> None:
    photo = testdata / "whole" / "04.jpg"
    results = {}
    for rt, providers in (("torch", ()), *(("onnx", ("--providers", p)) for p in ENGINES)):
        out = providers[-1] if providers else rt
        result = _restore(tmp_path, photo, out, "--weights", str(gpen_checkpoint), "--runtime", rt, "--threads", "1", *providers)
        assert result.exit_code == 0, result.stderr
        results[out] = np.asarray(Image.open(json.loads(result.stdout)["output"]), dtype=np.int16)
    before = np.asarray(Image.open(photo).convert("RGB"), dtype=np.int16)
    assert np.abs(results["torch"] - before).max() > 20  # the face went through the network
    for engine in ENGINES:
        assert np.abs(results[engine] - results["torch"]).max() <= 1, engine
    cached = list(runtime.cache_dir().glob(f"gpen-*-opset18-g{runtime.GRAPH_VERSION}.onnx"))
    assert len(cached) == 1
    record = json.loads(runtime.record_path(cached[0]).read_text())
    assert record["base"] == "gpen" and record["parity_max_abs_diff"] <= 1e-4


def test_export_command_prints_parity_and_keeps_existing_files(tmp_path: Path, testdata: Path, gpen_checkpoint: Path) -> None:
    out = tmp_path / "gpen.onnx"
    argv = ["export", "onnx", "--base", "gpen", "--weights", str(gpen_checkpoint), "-o", str(out),
            "--check-image", str(testdata / "aligned" / "0368.png")]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"{out}: gpen (fp32, opset 18); parity vs PyTorch on a real face: max |diff| ")
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["bfrboost.weights_sha256"] == runtime.file_sha256(gpen_checkpoint)
    again = CliRunner().invoke(app, argv)
    assert again.exit_code == 1 and again.stderr == f"bfrboost: {out}: already exists; pass --overwrite to replace it\n"


def test_damaged_or_mismatched_onnx_is_refused_in_one_line(tmp_path: Path, testdata: Path, gpen_checkpoint: Path) -> None:
    photo = testdata / "whole" / "04.jpg"
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(b"\x08\x07not a model" * 50)
    result = _restore(tmp_path, photo, "a", "--runtime", "onnx", "--weights", str(damaged))
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"bfrboost: {damaged}: not a readable ONNX model (")
    assert result.stderr.endswith("; export it again with `bfrboost export onnx`\n")

    exported = tmp_path / "gpen.onnx"
    export_onnx("gpen", exported, weights=gpen_checkpoint)
    result = CliRunner().invoke(app, ["restore", str(photo), "-o", str(tmp_path / "b"), "--base", "gfpgan", "--runtime", "onnx",
                                      "--weights", str(exported)])
    assert result.exit_code == 1
    assert result.stderr == (f"bfrboost: {exported}: exported for base 'gpen', not 'gfpgan'; "
                             "export one with `bfrboost export onnx --base gfpgan`\n")


def test_openvino_answers_for_the_graph_as_onnx_runtime_does(tmp_path: Path, testdata: Path, gpen_checkpoint: Path) -> None:
    """The OpenVINO session reads the same provenance and inputs, refuses what ONNX Runtime refuses, and gives
    ONNX Runtime's numbers from several threads at once (the overlapped runner's paste threads share a parser)."""
    pytest.importorskip("openvino")
    path = tmp_path / "gpen.onnx"
    export_onnx("gpen", path, weights=gpen_checkpoint)
    spec = get_spec("gpen")
    on_openvino, on_ort = runtime.OpenVinoSession(path, 1), runtime.open_session(path, ["CPUExecutionProvider"], 1)
    assert runtime.check_graph(on_openvino, path, spec) == runtime.check_graph(on_ort, path, spec)
    assert [(i.name, i.shape) for i in on_openvino.get_inputs()] == [(i.name, i.shape) for i in on_ort.get_inputs()]
    faces = [three_faces(testdata, 512)[i:i + 1].numpy() for i in range(3)]
    expected = [on_ort.run(["restored"], {"image": f})[0] for f in faces]
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda f: on_openvino.run(["restored"], {"image": f})[0], faces))
    assert max(float(np.abs(a - b).max()) for a, b in zip(got, expected, strict=True)) <= 1e-5
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(b"\x08\x07not a model" * 50)
    with pytest.raises(WeightsError, match=r"damaged.onnx: not a readable ONNX model \(.*\); export it again"):
        runtime.OpenVinoSession(damaged)


def test_cached_graph_is_verified_before_use(tmp_path: Path, gpen_checkpoint: Path) -> None:
    path = runtime.cached_graph("gpen", gpen_checkpoint)
    assert runtime.cached_graph("gpen", gpen_checkpoint) == path  # made once, then reused
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"SHA-256 does not match its record \(damaged or changed\); delete it"):
        runtime.cached_graph("gpen", gpen_checkpoint)
    runtime.record_path(path).unlink()  # a graph dropped into the cache by hand has no record: not used
    with pytest.raises(WeightsError, match="its record .* is missing or unreadable"):
        runtime.cached_graph("gpen", gpen_checkpoint)


def test_missing_providers_are_named_in_one_line_with_what_is_installed(tmp_path: Path, testdata: Path) -> None:
    have = runtime.available_providers()
    if "cuda" in have or "tensorrt" in have:
        pytest.skip("this onnxruntime has GPU providers")
    result = CliRunner().invoke(app, ["restore", str(testdata / "whole" / "04.jpg"), "-o", str(tmp_path / "o"),
                                      "--base", "gfpgan", "--runtime", "onnx", "--providers", "cuda,tensorrt"])
    assert result.exit_code == 2
    assert result.stderr == (f"bfrboost: --providers: execution providers cuda, tensorrt are not in this onnxruntime "
                             f"(installed: {', '.join(have)}); install onnxruntime-gpu, onnxruntime-gpu with TensorRT, "
                             "or leave out --providers\n")
    assert not runtime.cache_dir().exists() or not list(runtime.cache_dir().glob("gfpgan-*"))  # nothing exported


def test_runtime_options_are_checked_before_any_export(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown execution provider 'cuda11'; known: cpu, cuda, tensorrt"):
        runtime.choose_providers(["cuda11"])
    missing = next(p for p in runtime.PROVIDERS if p not in runtime.available_providers())
    with pytest.raises(UsageError, match=f"execution provider {missing} is not in this onnxruntime"):
        runtime.choose_providers([missing])
    first = ["OpenVINOExecutionProvider"] if "openvino" in runtime.available_providers() else []
    assert runtime.choose_providers(None, "cpu") == [*first, "CPUExecutionProvider"]  # OpenVINO first where installed
    assert runtime.choose_providers(["cpu"], "cpu") == ["CPUExecutionProvider"]
    with pytest.raises(UsageError, match="randomize_noise is fixed in the ONNX graph at False; use --runtime torch"):
        Restorer("gfpgan", runtime="onnx", knobs={"randomize_noise": True}, aligned=True)
    with pytest.raises(UsageError, match="unknown runtime 'tf'; use one of: torch, onnx"):
        Restorer("none", runtime="tf", aligned=True)


# ---- the detector and the parser on ONNX Runtime -------------------------------------------------


@pytest.mark.usefixtures("trust_cache")
def test_retinaface_on_onnx_finds_the_same_faces(_isolated_cache, testdata: Path) -> None:
    torch.save(_facexlib_retinaface("mobile0.25").state_dict(), _isolated_cache / "detection_mobilenet0.25_Final.pth")
    detector = get_detector("retinaface_mobile0.25", score_threshold=0.5, short_side=None)
    images = [load_rgb(testdata / "whole" / "04.jpg")[:96, :128], load_rgb(testdata / "whole" / "03.jpg")[:80, :72]]
    expected = [detector.detect(image) for image in images]
    on_onnx = faces_on_onnx.onnx_detector(detector, threads=1)
    assert isinstance(on_onnx.forward, faces_on_onnx.SessionForward) and detector.forward is detector.net  # a new part
    for image, want in zip(images, expected, strict=True):  # two sizes: the graph takes any
        got = on_onnx.detect(image)
        assert len(got) == len(want) > 0
        np.testing.assert_allclose([f.box for f in got], [f.box for f in want], atol=1e-3)
        np.testing.assert_allclose([f.landmarks for f in got], [f.landmarks for f in want], atol=1e-3)
        np.testing.assert_allclose([f.score for f in got], [f.score for f in want], atol=1e-5)
    (graph,) = runtime.cache_dir().glob(f"retinaface_mobile0.25-*-opset18-g{runtime.GRAPH_VERSION}.onnx")
    assert json.loads(runtime.record_path(graph).read_text())["parity_max_abs_diff"] <= 1e-4
    dlib = get_detector("dlib")
    assert faces_on_onnx.onnx_detector(dlib) is dlib  # no network to move


@pytest.mark.usefixtures("trust_cache")
def test_parser_on_onnx_gives_the_same_masks(_isolated_cache) -> None:
    torch.save(_random_parsenet().state_dict(), _isolated_cache / "parsing_parsenet.pth")
    parser = load_parser(resolution=64)
    crops = [np.random.default_rng(i).integers(0, 256, (512, 512, 3), dtype=np.uint8) for i in range(3)]
    expected = parser.masks(crops, batch_size=2)
    on_onnx = faces_on_onnx.onnx_parser(parser, threads=1)
    assert isinstance(on_onnx.forward, faces_on_onnx.SessionForward) and parser.forward is parser.net
    got = on_onnx.masks(crops, batch_size=2)  # batches of 2 and 1: the graph takes any batch
    for mask, want in zip(got, expected, strict=True):
        np.testing.assert_allclose(mask, want, atol=1e-6)
    (graph,) = runtime.cache_dir().glob(f"parsenet-64-*-opset18-g{runtime.GRAPH_VERSION}.onnx")
    runtime.verify_cached(graph, "parsenet-64", runtime.file_sha256(_isolated_cache / "parsing_parsenet.pth"))


@pytest.mark.usefixtures("trust_cache")
def test_runtime_onnx_moves_the_detector_and_the_parser_too(_isolated_cache, monkeypatch) -> None:
    torch.save(_facexlib_retinaface("mobile0.25").state_dict(), _isolated_cache / "detection_mobilenet0.25_Final.pth")
    torch.save(_random_parsenet().state_dict(), _isolated_cache / "parsing_parsenet.pth")
    monkeypatch.setattr(parse, "load_parser", functools.partial(load_parser, resolution=64))  # a 512 px export takes 30 s
    on_torch = Restorer("none", detector="retinaface_mobile0.25")
    assert on_torch.paster.parser.forward is on_torch.paster.parser.net
    assert on_torch.finder.detector.forward is on_torch.finder.detector.net
    restorer = Restorer("none", runtime="onnx", detector="retinaface_mobile0.25", threads=1)
    assert isinstance(restorer.finder.detector.forward, faces_on_onnx.SessionForward)
    assert isinstance(restorer.paster.parser.forward, faces_on_onnx.SessionForward)
    assert {p.name.split("-")[0] for p in runtime.cache_dir().glob("*.onnx")} == {"retinaface_mobile0.25", "parsenet"}


@pytest.mark.usefixtures("trust_cache")
def test_dataset_cpu_stages_detect_and_parse_on_onnx_with_the_same_results(_isolated_cache, testdata: Path, tmp_path: Path,
                                                                           monkeypatch) -> None:
    """`restore-dataset --runtime onnx`: the Ray job's CPU stages (detect + align, parse + paste) get the ONNX
    detector and parser through the options object, and write the picture the PyTorch stages write."""
    from bfrboost.options import DetectOptions, OutputOptions, PasteOptions, RestoreOptions
    from bfrboost.runners.dataset import stages as ds

    torch.save(_facexlib_retinaface("mobile0.25").state_dict(), _isolated_cache / "detection_mobilenet0.25_Final.pth")
    torch.save(_random_parsenet().state_dict(), _isolated_cache / "parsing_parsenet.pth")
    monkeypatch.setattr(parse, "load_parser", functools.partial(load_parser, resolution=64))
    ds._cpu_restorer.cache_clear()  # restorers of other tests' caches
    monkeypatch.setattr(ds, "_cpu_restorer", functools.lru_cache(maxsize=4)(ds._cpu_restorer.__wrapped__))
    detect, paste = DetectOptions(detector="retinaface_mobile0.25", only_center_face=True), PasteOptions(upscale=1)
    on_onnx = RestoreOptions(runtime="onnx", threads=1)
    restorer = ds.cpu_restorer(detect, paste, on_onnx)
    assert isinstance(restorer.finder.detector.forward, faces_on_onnx.SessionForward)
    assert isinstance(restorer.paster.parser.forward, faces_on_onnx.SessionForward)
    assert ds.cpu_restorer(detect, paste).finder.detector.forward is ds.cpu_restorer(detect, paste).finder.detector.net
    row = {"source": str(testdata / "whole" / "04.jpg"), "rel": "04.jpg"}
    jobs, written = {}, {}
    for name, options in (("torch", None), ("onnx", on_onnx)):
        out = tmp_path / f"{name}.png"
        jobs[name] = ds._unpack(ds.prepare_row({**row, "output": str(out)}, detect, paste, restore=options))
        ds.cpu_restorer(detect, paste).restore_faces([jobs[name].prepared])  # the device stage, base none
        done = ds.finish_row(ds._pack(jobs[name]), detect, paste, OutputOptions(outdir=tmp_path), restore=options)
        assert done["error"] is None, done["error"]
        written[name] = np.asarray(Image.open(out), dtype=np.int16)
    faces = {name: job.prepared.faces for name, job in jobs.items()}
    assert len(faces["onnx"]) == len(faces["torch"]) == 1
    np.testing.assert_allclose(faces["onnx"][0].box, faces["torch"][0].box, atol=1e-3)
    np.testing.assert_allclose(faces["onnx"][0].landmarks, faces["torch"][0].landmarks, atol=1e-3)
    assert np.abs(written["onnx"] - written["torch"]).max() <= 1
