"""Real-ESRGAN background upsampler: key names, file choice, exact output, tiling and refusals.

Checkpoints here are written with the official RRDBNet key names (basicsr ``rrdbnet_arch.py``:
``conv_first``, ``body.N.rdbR.convC``, ``conv_body``, ``conv_up1/2``, ``conv_hr``, ``conv_last``) inside
the official ``params_ema`` wrapper, listed independently of spandrel by :func:`official_shapes`.
Random weights cannot match the card's SHA-256, so ``weights.ensure`` is replaced by the test file;
the offline error uses the real ``ensure``.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from bfrboost import weights
from bfrboost.background import X2_FILE, X4_FILE, load_upsampler
from bfrboost.errors import UsageError, WeightsError


def official_shapes(scale: int, num_feat: int, num_block: int, num_grow_ch: int = 32) -> dict[str, tuple[int, int]]:
    """(out, in) channels of every 3×3 conv of basicsr's RRDBNet(num_in_ch=3, num_out_ch=3)."""
    shapes = {"conv_first": (num_feat, 3 * {1: 16, 2: 4}.get(scale, 1))}  # x2/x1 pixel-unshuffle first
    for i in range(num_block):
        for r in (1, 2, 3):
            for c in range(1, 5):
                shapes[f"body.{i}.rdb{r}.conv{c}"] = (num_grow_ch, num_feat + (c - 1) * num_grow_ch)
            shapes[f"body.{i}.rdb{r}.conv5"] = (num_feat, num_feat + 4 * num_grow_ch)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        shapes[name] = (num_feat, num_feat)
    shapes["conv_last"] = (3, num_feat)
    return shapes


def random_state_dict(scale: int, seed: int = 0, num_feat: int = 8, num_block: int = 1) -> dict[str, torch.Tensor]:
    """A reduced RRDBNet with seeded weights whose output is neither flat nor mostly clipped."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, (cout, cin) in official_shapes(scale, num_feat, num_block).items():
        bound = 1.7 / (cin * 9) ** 0.5
        sd[f"{name}.weight"] = (torch.rand(cout, cin, 3, 3, generator=g) * 2 - 1) * bound
        sd[f"{name}.bias"] = (torch.rand(cout, generator=g) * 2 - 1) * bound
    sd["conv_last.bias"] += 0.5
    return sd


def identity_x4_state_dict(num_feat: int = 8) -> dict[str, torch.Tensor]:
    """x4 weights computing exactly a nearest-neighbour ×4: RGB rides in feature channels 0–2,
    the dense blocks add zero and every other conv is a centre-tap identity (inputs are ≥ 0)."""
    sd = {}
    for name, (cout, cin) in official_shapes(4, num_feat, 1).items():
        w = torch.zeros(cout, cin, 3, 3)
        if not name.startswith("body.") and name != "conv_body":
            idx = torch.arange(min(cout, cin))
            w[idx, idx, 1, 1] = 1.0
        sd[f"{name}.weight"], sd[f"{name}.bias"] = w, torch.zeros(cout)
    return sd


@pytest.fixture
def cached(monkeypatch, tmp_path):
    """Write checkpoints under card file names; ``weights.ensure`` returns them and records the ask."""
    asked: list[str] = []

    def put(file: str, sd: dict[str, torch.Tensor], wrapper: str | None = "params_ema") -> Path:
        path = tmp_path / file
        torch.save({wrapper: sd} if wrapper else sd, path)
        return path

    def fake_ensure(file: str, offline: bool | None = None, progress: bool = True) -> Path:
        asked.append(file)
        return tmp_path / file

    monkeypatch.setattr(weights, "ensure", fake_ensure)
    put.asked = asked  # type: ignore[attr-defined]
    return put


@pytest.fixture(scope="module")
def photo(testdata) -> np.ndarray:
    """A 97×131 (odd sizes) RGB crop of a real photo (a face and background), cut in 3×3 tiles below."""
    bgr = cv2.imread(str(testdata / "whole" / "02.png"), cv2.IMREAD_COLOR)
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)[130:227, 350:481])


@pytest.mark.parametrize(("in_ch", "scale"), [(12, 2), (3, 4)])
def test_real_configs_keys_match_spandrel(in_ch, scale):
    """Full-size x2plus/x4plus key names load strictly into spandrel's RRDBNet (on meta: no memory)."""
    from spandrel import ModelLoader

    sd = {}
    for name, (cout, cin) in official_shapes(scale, num_feat=64, num_block=23).items():
        sd[f"{name}.weight"] = torch.empty(cout, cin, 3, 3, device="meta")
        sd[f"{name}.bias"] = torch.empty(cout, device="meta")
    with torch.device("meta"):
        descriptor = ModelLoader(device="meta").load_from_state_dict(dict(sd))
    hp = descriptor.model.hyperparameters
    assert descriptor.architecture.id == "ESRGAN" and descriptor.scale == scale and descriptor.input_channels == 3
    assert (hp["in_nc"], hp["num_filters"], hp["num_blocks"], hp["shuffle_factor"]) == (in_ch, 64, 23, 2 if scale == 2 else None)
    assert len(descriptor.model.state_dict()) == len(sd) == 2 * (1 + 23 * 15 + 5)


@pytest.mark.parametrize(
    ("upscale", "file"), [(1, X2_FILE), (1.5, X2_FILE), (2, X2_FILE), (2.01, X4_FILE), (3, X4_FILE), (4, X4_FILE)]
)
def test_file_chosen_by_scale(cached, upscale, file):
    cached(file, random_state_dict(2 if file == X2_FILE else 4))
    up = load_upsampler("realesrgan", upscale)
    assert cached.asked == [file] and up.file == file and up.scale == (2 if file == X2_FILE else 4)


@pytest.mark.parametrize("outscale", [1, 2, 3, 4])
def test_output_size(cached, outscale):
    cached(X2_FILE, random_state_dict(2))
    cached(X4_FILE, random_state_dict(4))
    rgb = np.random.default_rng(0).integers(0, 256, (37, 50, 3), dtype=np.uint8)
    out = load_upsampler("realesrgan", outscale, tile=16).upscale(rgb, outscale)
    assert out.dtype == np.uint8 and out.shape == (round(37 * outscale), round(50 * outscale), 3)


def test_identity_weights_give_nearest_upsampling(cached, photo):
    """End to end (unwrap, key mapping, [0, 1] RGB, tiles, uint8) against an independent reference."""
    cached(X4_FILE, identity_x4_state_dict())
    up = load_upsampler("realesrgan", 4, tile=64)
    nearest = photo.repeat(4, axis=0).repeat(4, axis=1)
    np.testing.assert_array_equal(up.upscale(photo, 4), nearest)
    size = (round(photo.shape[1] * 3.5), round(photo.shape[0] * 3.5))
    np.testing.assert_array_equal(up.upscale(photo, 3.5), cv2.resize(nearest, size, interpolation=cv2.INTER_LANCZOS4))


@pytest.mark.parametrize("wrapper", ["params_ema", "params", None])
def test_checkpoint_wrappers(cached, wrapper):
    """Official files wrap the weights (``params_ema``, or ``params`` as RealESRGANer also accepts); a bare
    state dict (e.g. re-saved) loads too."""
    cached(X4_FILE, identity_x4_state_dict(), wrapper=wrapper)
    rgb = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out = load_upsampler("realesrgan", 4).upscale(rgb, 4)
    np.testing.assert_array_equal(out, rgb.repeat(4, axis=0).repeat(4, axis=1))


@pytest.mark.parametrize(("file", "scale"), [(X2_FILE, 2), (X4_FILE, 4)])
def test_tiled_matches_untiled(cached, photo, file, scale):
    """With context covering the receptive field (~37 px for one block) tiles reproduce the whole
    image (x2plus tiles of odd size must be moved onto the pixel-unshuffle grid for that); with
    upstream's 10 px context these weights stay within 2 levels too."""
    cached(file, random_state_dict(scale, seed=scale))
    whole = load_upsampler("realesrgan", scale, tile=0).upscale(photo, scale)
    assert whole.std() > 10 and ((whole == 0) | (whole == 255)).mean() < 0.5  # not flat, not clipped
    tiled = load_upsampler("realesrgan", scale, tile=45, tile_pad=48).upscale(photo, scale)
    assert np.abs(tiled.astype(int) - whole).max() <= 1
    upstream_pad = load_upsampler("realesrgan", scale, tile=45).upscale(photo, scale)
    assert np.abs(upstream_pad.astype(int) - whole).max() <= 2


def test_none_and_unknown_names():
    assert load_upsampler("none", 2) is None
    with pytest.raises(UsageError) as err:
        load_upsampler("esrgan", 2)
    assert str(err.value) == "unknown background upsampler 'esrgan'; choose one of: none, realesrgan"


def test_bad_options_refused(cached):
    cached(X2_FILE, random_state_dict(2))
    with pytest.raises(UsageError, match=r"^fp16 background upsampling needs a CUDA device, not cpu"):
        load_upsampler("realesrgan", 2, half=True)
    with pytest.raises(UsageError, match=r"must be >= 0"):
        load_upsampler("realesrgan", 2, tile=-1)
    with pytest.raises(UsageError, match=r"RGB uint8 H×W×3"):
        load_upsampler("realesrgan", 2).upscale(np.zeros((8, 8, 4), np.uint8), 2)


def test_missing_file_offline(_isolated_cache):
    """The real ``ensure``: offline and not cached gives its one-line message naming the file."""
    with pytest.raises(WeightsError) as err:
        load_upsampler("realesrgan", 4)
    message = str(err.value)
    assert message.startswith(f"{X4_FILE}: not in the cache and offline mode is on; download https://github.com/xinntao/")
    assert str(_isolated_cache / X4_FILE) in message and "\n" not in message


def _compact_state_dict() -> dict[str, torch.Tensor]:
    """Another architecture spandrel knows: Real-ESRGAN's SRVGGNetCompact (realesr-general-x4v3)."""
    from spandrel.architectures.Compact import Compact

    return Compact(num_feat=8, num_conv=2, upscale=4).state_dict()


@pytest.mark.parametrize(
    ("file", "sd"),
    [
        (X4_FILE, _compact_state_dict),  # another architecture
        (X4_FILE, lambda: random_state_dict(2)),  # the x2 model under the x4 name
        (X2_FILE, lambda: {"conv_first.weight": torch.zeros(8, 12, 3, 3)}),  # a truncated RRDBNet
    ],
)
def test_wrong_checkpoint_refused(cached, file, sd):
    path = cached(file, sd(), wrapper=None)
    scale = 2 if file == X2_FILE else 4
    with pytest.raises(WeightsError) as err:
        load_upsampler("realesrgan", scale)
    assert str(err.value) == (
        f"{path}: not a Real-ESRGAN x{scale} RRDBNet checkpoint; delete it and run `bfrboost weights download {file}`"
    )


def test_restore_with_realesrgan_background(cached, tmp_path, testdata):
    """`restore -s 4 --bg-upsampler realesrgan`: the photo outside the faces is Real-ESRGAN's output."""
    from typer.testing import CliRunner

    from bfrboost.cli import app
    from tests.test_cli import face_regions

    cached("RealESRGAN_x4plus.pth", identity_x4_state_dict())
    source = testdata / "whole" / "04.jpg"
    args = ["restore", str(source), "-o", str(tmp_path / "out"), "--base", "none", "-s", "4", "--ext", "png",
            "--json", "--bg-upsampler", "realesrgan", "--bg-tile", "64"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert cached.asked == ["RealESRGAN_x4plus.pth"]
    line = json.loads(result.stdout)
    rgb = np.asarray(Image.open(source).convert("RGB"))
    out = np.asarray(Image.open(line["output"]))
    expected = np.repeat(np.repeat(rgb, 4, axis=0), 4, axis=1)  # what the identity weights compute
    assert out.shape == expected.shape
    outside = ~face_regions(out.shape[:2], line["faces"], upscale=4)
    assert np.array_equal(out[outside], expected[outside])
