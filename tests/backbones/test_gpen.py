"""GPEN-BFR-512 adapter: official key names/shapes, strict checkpoint loading, StyleGAN2 operators.

The released network takes ~50 s for two faces on this CPU, so the key/shape checks use the real
config on the meta device and forwards use a narrow config (same code, size 512) on real faces.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from bfrboost.backbones import gpen
from bfrboost.backbones.gpen import GPEN, Blur, ConvLayer, GPENConfig, ModulatedConv2d
from bfrboost.backbones.registry import CheckpointMismatch, load_base
from bfrboost.errors import WeightsError
from bfrboost.weights import load_state_dict

SPEC = gpen.SPECS[0]
NARROW = GPENConfig(style_dim=32, n_mlp=2, narrow=1 / 32)  # 16 channels at 4…32 px, 2 at 512 px

# Transcribed by hand from yangxy/GPEN face_model/gpen_model.py (FullGenerator) with face_gan.py's
# GPEN-BFR-512 settings: size 512, style_dim 512, n_mlp 8, channel_multiplier 2, narrow 1, isconcat.
OFFICIAL_SHAPES = {
    "generator.style.1.weight": (512, 512),
    "generator.style.8.bias": (512,),
    "generator.input.input": (1, 512, 4, 4),
    "generator.conv1.conv.weight": (1, 512, 512, 3, 3),
    "generator.conv1.conv.modulation.weight": (512, 512),
    "generator.conv1.conv.modulation.bias": (512,),
    "generator.conv1.noise.weight": (1,),
    "generator.conv1.activate.bias": (1024,),
    "generator.to_rgb1.conv.weight": (1, 3, 1024, 1, 1),
    "generator.to_rgb1.conv.modulation.weight": (1024, 512),
    "generator.to_rgb1.bias": (1, 3, 1, 1),
    "generator.convs.0.conv.weight": (1, 512, 1024, 3, 3),
    "generator.convs.0.conv.blur.kernel": (4, 4),
    "generator.convs.12.conv.weight": (1, 64, 256, 3, 3),
    "generator.convs.13.conv.weight": (1, 64, 128, 3, 3),
    "generator.convs.13.activate.bias": (128,),
    "generator.to_rgbs.6.conv.weight": (1, 3, 128, 1, 1),
    "generator.to_rgbs.6.upsample.kernel": (4, 4),
    "ecd0.0.0.weight": (64, 3, 1, 1),
    "ecd0.0.1.bias": (64,),
    "ecd1.0.0.kernel": (4, 4),
    "ecd1.0.1.weight": (128, 64, 3, 3),
    "ecd1.0.2.bias": (128,),
    "ecd3.0.1.weight": (512, 256, 3, 3),
    "ecd7.0.1.weight": (512, 512, 3, 3),
    "final_linear.0.weight": (512, 8192),
    "final_linear.0.bias": (512,),
}
NOT_OFFICIAL = ["ecd8.0.1.weight", "generator.style.0.weight", "generator.to_rgb1.upsample.kernel",
                "generator.convs.1.conv.blur.kernel", "ecd0.0.0.bias", "generator.noises.noise_0"]
OFFICIAL_FILE_BYTES = 284_085_738


def _random_state_dict(cfg: GPENConfig, seed: int) -> dict[str, torch.Tensor]:
    """Official-layout tensors with random values (noise weights non-zero so features matter)."""
    torch.manual_seed(seed)
    sd = GPEN(cfg).state_dict()
    return {k: v if k.endswith("kernel") else torch.randn_like(v) * 0.5 for k, v in sd.items()}


def _faces(testdata, names=("0143.png", "0368.png")) -> torch.Tensor:
    arrays = [np.asarray(Image.open(testdata / "aligned" / n).convert("RGB"), dtype=np.float32) / 255 for n in names]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def test_official_keys_shapes_and_file_size():
    with torch.device("meta"):
        sd = GPEN().state_dict()
    assert {k: tuple(sd[k].shape) for k in OFFICIAL_SHAPES} == OFFICIAL_SHAPES
    assert not set(NOT_OFFICIAL) & sd.keys()
    assert len(sd) == 163  # 16 mapping + 1 const + 5 conv1 + 4 to_rgb1 + 77 convs + 35 to_rgbs + 23 encoder + 2
    fp32_bytes = 4 * sum(v.numel() for v in sd.values())
    assert abs(fp32_bytes - OFFICIAL_FILE_BYTES) / OFFICIAL_FILE_BYTES < 0.01


def test_spec_contract():
    assert (SPEC.name, SPEC.display_name, SPEC.card, SPEC.weight_file) == ("gpen", "GPEN-BFR-512", "gpen", "GPEN-BFR-512.pth")
    assert SPEC.knobs == {}


@pytest.mark.parametrize("upsample", [False, True])
def test_modulated_conv_matches_per_sample_reference(upsample):
    """The batched grouped conv equals modulating, demodulating and convolving each sample alone."""
    torch.manual_seed(0)
    conv = ModulatedConv2d(6, 5, 3, style_dim=4, upsample=upsample)
    x, style = torch.randn(2, 6, 8, 8), torch.randn(2, 4)
    with torch.no_grad():
        out = conv(x, style)
        for b in range(2):
            s = F.linear(style[b], conv.modulation.weight * conv.modulation.scale, conv.modulation.bias)
            w = conv.weight[0] / math.sqrt(6 * 9) * s.view(1, 6, 1, 1)
            w = w / torch.sqrt((w**2).sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
            if upsample:
                ref = F.conv_transpose2d(x[b : b + 1], w.transpose(0, 1), stride=2)  # 17×17
                k = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64
                ref = F.conv2d(F.pad(ref, (1, 1, 1, 1)), (4 * k).expand(5, 1, 4, 4), groups=5)
            else:
                ref = F.conv2d(x[b : b + 1], w, padding=1)
            torch.testing.assert_close(out[b : b + 1], ref, atol=1e-5, rtol=1e-5)
    assert out.shape == (2, 5, 16, 16) if upsample else (2, 5, 8, 8)


def test_blur_upsample_equals_transposed_conv_and_encoder_halves():
    """upfirdn2d(up=2, pad=(2, 1), gain 4) is a stride-2 transposed conv with the same kernel."""
    x = torch.randn(1, 3, 9, 7)
    up = Blur((2, 1), up=2, gain=4.0)
    ref = F.conv_transpose2d(x, up.kernel.expand(3, 1, 4, 4), stride=2, padding=1, groups=3)
    torch.testing.assert_close(up(x), ref)
    assert up.kernel.sum().item() == pytest.approx(4.0)
    assert ConvLayer(3, 4, 3, downsample=True)(torch.randn(1, 3, 32, 32)).shape == (1, 4, 16, 16)


def test_loads_pth_and_safetensors_strictly_and_restores_real_faces(testdata, tmp_path):
    sd = _random_state_dict(NARROW, seed=1)
    torch.save(sd, tmp_path / "GPEN-BFR-512.pth")  # the official file is an unwrapped state dict
    save_file(sd, str(tmp_path / "GPEN-BFR-512.safetensors"))
    nets = [gpen.build(load_state_dict(tmp_path / f"GPEN-BFR-512.{ext}"), config=NARROW) for ext in ("pth", "safetensors")]
    torch.testing.assert_close(nets[0].state_dict(), sd)

    faces = _faces(testdata)
    with torch.no_grad():
        out = SPEC.forward(nets[0], faces)
        again = SPEC.forward(nets[1], faces)
        alone = SPEC.forward(nets[0], faces[1:])
    assert out.shape == (2, 3, 512, 512) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert (out - faces).abs().mean() > 0.05  # the face was changed
    assert torch.equal(out, again)  # encoder features replace noise: deterministic
    torch.testing.assert_close(alone, out[1:], atol=1e-5, rtol=1e-5)  # batching does not mix faces


def test_strict_loading_rejects_a_missing_key_and_load_base_names_the_file(tmp_path):
    sd = _random_state_dict(NARROW, seed=2)
    del sd["generator.to_rgbs.0.upsample.kernel"]
    with pytest.raises(CheckpointMismatch, match="^1 missing key\\(s\\), e.g. 'generator.to_rgbs.0.upsample.kernel'$"):
        gpen.build(sd, config=NARROW)
    torch.save(sd, tmp_path / "narrow.pth")  # right names, wrong widths for the released config
    with pytest.raises(WeightsError, match=f"^{tmp_path / 'narrow.pth'}: not a GPEN-BFR-512 checkpoint"):
        load_base("gpen", weights=tmp_path / "narrow.pth")


def test_forward_normalises_rgb_to_minus_one_one_and_back():
    """Upstream face_gan: (img/255 - 0.5) / 0.5 in RGB, output * 0.5 + 0.5, clipped to [0, 1]."""
    seen = {}

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen["x"] = x
            return x * 1.5  # pushes the extremes out of range

    x = torch.rand(1, 3, 8, 8)
    out = gpen.forward(Probe(), x)
    torch.testing.assert_close(seen["x"], x * 2 - 1)
    torch.testing.assert_close(out, ((x * 2 - 1) * 1.5 * 0.5 + 0.5).clamp(0, 1))
