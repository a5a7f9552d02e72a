"""ONNX export and the ONNX Runtime path (`bfrboost export onnx`, `restore --runtime onnx`).

Parity is checked against PyTorch on a real aligned face: narrow variants of every exportable base
(the same classes and code paths; the released sizes take 10–50 s per face here), plus one export
of a released-size network (GPEN-BFR-512's configuration, random weights).
"""

from __future__ import annotations

import json
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
from bfrboost.onnx import runtime
from bfrboost.onnx.export import export_onnx
from bfrboost.pipeline import Restorer
from tests.backbones.conftest import swap_spec
from tests.backbones.test_gfpgan import TINY as GFPGAN_TINY
from tests.backbones.test_gpen import NARROW as GPEN_NARROW
from tests.backbones.test_restoreformer import TINY as RESTOREFORMER_TINY
from tests.backbones.test_vqfr import TINY as VQFR_TINY

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


def aligned_face(testdata: Path) -> np.ndarray:
    return np.asarray(Image.open(testdata / "aligned" / "0143.png").convert("RGB"))


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


#: Largest |ONNX Runtime − PyTorch| accepted on [0, 1] outputs. CodeFormer's: its 512-px VQGAN (64 channels,
#: GroupNorm after every conv) accumulates float32 rounding differently in MLAS and oneDNN convolutions:
#: 1.1e-4 (w = 0) and 3.3e-4 (w = 1) with every ONNX Runtime optimisation off; 3.4e-4 at released size: 0.09 of a level.
TOLERANCE = {"codeformer": 5e-4}


@pytest.mark.parametrize("name", sorted(NARROW))
def test_every_base_exports_with_parity_and_provenance(name: str, tmp_path: Path, testdata: Path, monkeypatch) -> None:
    net = narrow(monkeypatch, name)
    report = export_onnx(name, tmp_path / "m.onnx", net=net, check_face=aligned_face(testdata))
    assert report.max_abs_diff <= TOLERANCE.get(name, 1e-4), report.summary()
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    size = get_spec(name).input_size
    assert meta["bfrboost.base"] == name and meta["bfrboost.weights_sha256"] == "random"
    assert meta["bfrboost.input"] == f"image: float32 RGB (1, 3, {size}, {size}) in [0, 1]"
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


def test_released_size_gpen_exports_with_parity(tmp_path: Path, testdata: Path) -> None:
    torch.manual_seed(0)
    net = get_spec("gpen").build(None)
    report = export_onnx("gpen", tmp_path / "gpen.onnx", net=net, check_face=aligned_face(testdata))
    assert report.max_abs_diff <= 1e-4, report.summary()


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


def test_restore_onnx_gives_the_torch_picture(tmp_path: Path, testdata: Path, gpen_checkpoint: Path, monkeypatch) -> None:
    photo = testdata / "whole" / "04.jpg"
    results = {}
    for rt in ("torch", "onnx"):
        result = _restore(tmp_path, photo, rt, "--weights", str(gpen_checkpoint), "--runtime", rt, "--threads", "1")
        assert result.exit_code == 0, result.stderr
        results[rt] = np.asarray(Image.open(json.loads(result.stdout)["output"]), dtype=np.int16)
    before = np.asarray(Image.open(photo).convert("RGB"), dtype=np.int16)
    assert np.abs(results["torch"] - before).max() > 20  # the face went through the network
    assert np.abs(results["onnx"] - results["torch"]).max() <= 1
    cached = list(runtime.cache_dir().glob("gpen-*-opset18.onnx"))
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


def test_runtime_options_are_checked_before_any_export(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown execution provider 'cuda11'; known: cpu, cuda, tensorrt"):
        runtime.choose_providers(["cuda11"])
    missing = next(p for p in runtime.PROVIDERS if p not in runtime.available_providers())
    with pytest.raises(UsageError, match=f"execution provider '{missing}' is not in this onnxruntime"):
        runtime.choose_providers([missing])
    assert runtime.choose_providers(None, "cpu") == ["CPUExecutionProvider"]
    with pytest.raises(UsageError, match="randomize_noise is fixed in the ONNX graph at False; use --runtime torch"):
        Restorer("gfpgan", runtime="onnx", knobs={"randomize_noise": True}, aligned=True)
    with pytest.raises(UsageError, match="unknown runtime 'tf'; use one of: torch, onnx"):
        Restorer("none", runtime="tf", aligned=True)
