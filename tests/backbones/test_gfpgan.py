"""GFPGAN v1.3/v1.4 adapter: official layout, strict loading, GFPGANer's normalisation, noise knob."""

from __future__ import annotations

import inspect

import pytest
import torch
from spandrel.architectures.GFPGAN import GFPGAN, GFPGANArch
from torchvision.transforms.functional import normalize

from bfrboost.backbones import gfpgan
from bfrboost.backbones.registry import build_strict, describe, get_spec, load_base
from tests.backbones.conftest import (
    assert_same_weights,
    meta_state_dict,
    roundtrip_checkpoint,
    swap_spec,
    two_aligned_faces,
)

SPEC = get_spec("gfpgan")
# Transcribed from TencentARC/GFPGAN gfpgan/archs/gfpganv1_clean_arch.py (+ stylegan2_clean_arch.py)
# with GFPGANer's arch="clean" settings: out_size 512, channel_multiplier 2, narrow 1 (U-Net at half width).
OFFICIAL_SHAPES = {
    "conv_body_first.weight": (32, 3, 1, 1),
    "final_conv.weight": (256, 256, 3, 3),
    "final_linear.weight": (8192, 4096),  # (log2(512) * 2 - 2) * 512 different styles from 256 * 4 * 4
    "conv_body_up.6.conv2.weight": (32, 64, 3, 3),  # ResBlock up: conv1 keeps 64, conv2 halves
    "toRGB.6.weight": (3, 32, 1, 1),
    "condition_scale.6.2.weight": (32, 32, 3, 3),  # sft_half: SFT on half the decoder channels
    "stylegan_decoder.style_mlp.15.weight": (512, 512),  # 8 MLP layers after NormStyleCode
    "stylegan_decoder.constant_input.weight": (1, 512, 4, 4),
    "stylegan_decoder.style_conv1.modulated_conv.weight": (1, 512, 512, 3, 3),
    "stylegan_decoder.style_convs.13.modulated_conv.weight": (1, 64, 64, 3, 3),
    "stylegan_decoder.to_rgbs.6.modulated_conv.weight": (1, 3, 64, 1, 1),
    "stylegan_decoder.noises.noise14": (1, 1, 512, 512),  # fixed noise maps are in the file
}
# A narrow GFPGAN at 64 px: same class and code paths, ~1/500 of the compute.
TINY = {**gfpgan.CONFIG, "out_size": 64, "num_style_feat": 32, "channel_multiplier": 1, "num_mlp": 2, "narrow": 0.25}


def tiny_build(state_dict):
    return build_strict(lambda: GFPGAN(**TINY), state_dict)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A narrow GFPGAN checkpoint whose noise-injection strengths are non-zero (they start at 0)."""
    torch.manual_seed(0)
    net = GFPGAN(**TINY)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.startswith("stylegan_decoder.style_conv") and name.endswith(".weight") and param.shape == (1,):
                param.fill_(0.5)
    return roundtrip_checkpoint(SPEC, tmp_path_factory.mktemp("gfpgan"), net=net)


@pytest.fixture
def tiny_gfpgan(monkeypatch, tiny):
    swap_spec(monkeypatch, "gfpgan", build=tiny_build, input_size=64)
    return tiny


def test_official_config_has_the_released_layout_and_size():
    sd = meta_state_dict(SPEC)
    for key, shape in OFFICIAL_SHAPES.items():
        assert tuple(sd[key].shape) == shape, key
    assert len(sd) == 285 and GFPGANArch().detect(sd)  # spandrel recognises the official key set
    tensor_bytes = 4 * sum(t.numel() for t in sd.values())
    for spec in gfpgan.SPECS:  # the .pth file (size from the model card) = float32 tensors + ~60 kB of pickle
        file_size = describe(spec.name)["size"]
        assert 0 < file_size - tensor_bytes < 1e-3 * file_size, spec.name
    assert [s.weight_file for s in gfpgan.SPECS] == ["GFPGANv1.4.pth", "GFPGANv1.3.pth"]
    assert gfpgan.SPECS[1].build is SPEC.build


def test_released_layout_loads_strictly_from_pth_and_safetensors(tmp_path):
    ckpt = roundtrip_checkpoint(SPEC, tmp_path, wrapper="params_ema")
    for path in (ckpt.pth, ckpt.safetensors):
        base = load_base("gfpgan-1.3", weights=path)
        assert_same_weights(base.net, ckpt.state_dict)
        assert (base.weights, base.knobs, base.net.training) == (path, {"randomize_noise": False}, False)


def test_forward_keywords_exist_upstream_side():
    """GFPGANv1Clean.forward takes **kwargs: a renamed keyword would be swallowed silently."""
    params = inspect.signature(GFPGAN.forward).parameters
    assert params["randomize_noise"].default is True and "return_rgb" in params


def test_restores_real_faces_exactly_like_gfpganer(tiny_gfpgan, testdata):
    faces = two_aligned_faces(testdata, size=64)
    out = load_base("gfpgan", weights=tiny_gfpgan.pth, batch_size=1).restore(faces)
    assert out.shape == faces.shape and out.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 1 and (out - faces).abs().mean() > 0.05

    # GFPGANer.enhance: normalize(mean 0.5, std 0.5) → net(return_rgb=False)[0] → tensor2img(min_max=(-1, 1)),
    # here with the stored noise maps, on both faces at once (ours ran one face per forward).
    ref = GFPGAN(**TINY)
    ref.load_state_dict(tiny_gfpgan.state_dict)
    with torch.no_grad():
        y = ref.eval()(normalize(faces, [0.5] * 3, [0.5] * 3), return_rgb=False, randomize_noise=False)[0]
    expected = (y.clamp(-1, 1) + 1) / 2
    assert (out - expected).abs().max() < 1e-4


def test_noise_is_fixed_by_default_and_random_on_request(tiny_gfpgan, testdata):
    face = two_aligned_faces(testdata, size=64)[:1]
    fixed = load_base("gfpgan", weights=tiny_gfpgan.pth)
    noisy = load_base("gfpgan", weights=tiny_gfpgan.pth, randomize_noise="true")
    assert torch.equal(fixed.restore(face), fixed.restore(face))
    first, second = noisy.restore(face), noisy.restore(face)
    assert (first - second).abs().mean() > 1e-4


def test_upstream_gfpgan_package_gives_the_same_output(tiny, testdata):
    try:
        from gfpgan.archs.gfpganv1_clean_arch import GFPGANv1Clean
    except ImportError as exc:  # basicsr, which gfpgan needs, does not import with current torchvision
        pytest.skip(f"upstream gfpgan package not importable: {exc}")
    net = GFPGANv1Clean(**TINY)
    net.load_state_dict(tiny.state_dict)
    faces = two_aligned_faces(testdata, size=64)
    with torch.no_grad():
        expected = ((net.eval()(faces * 2 - 1, return_rgb=False, randomize_noise=False)[0] + 1) / 2).clamp(0, 1)
        ours = gfpgan.forward(tiny_build(tiny.state_dict).eval(), faces)
    assert (ours - expected).abs().max() < 1e-4
