"""DifFace adapter: official UNet keys/shapes, the IDDPM schedule, the sampler's algebra, loading.

The released prior (160 M parameters, 100 UNet passes at 512 px) cannot run in CPU tests: key and
shape checks use the real config on the meta device; forwards use a reduced config built by the
same code (prior at 64 px, which exercises upstream's resize-to-prior-size path on 512 crops).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from bfrboost import weights
from bfrboost.backbones import difface
from bfrboost.backbones.difface import DifFaceConfig, RestorerConfig
from bfrboost.errors import WeightsError
from bfrboost.nets import iddpm
from bfrboost.nets.iddpm import AttentionBlock, IDDPMUNet, UNetConfig
from bfrboost.weights import load_state_dict

SPEC = difface.SPECS[0]
TINY = DifFaceConfig(
    unet=UNetConfig(
        image_size=64, channel_mult=(1, 1, 2), num_res_blocks=(1, 1, 1), attention_resolutions=(16,), num_head_channels=32
    ),
    restorer=RestorerConfig(img_size=64, embed_dim=16, depths=(2,), num_heads=(2,)),
)

# Transcribed by hand from zsyOAOA/DifFace models/unet.py with configs/sample/iddpm_ffhq512_swinir.yaml:
# model_channels 32, channel_mult (1,2,4,8,8,16,16), num_res_blocks (1,2,2,2,2,3,4), attention at
# 32/16/8 px, 64 channels per head, scale-shift norm, conv resampling, 6 output channels.
OFFICIAL_SHAPES = {
    "time_embed.0.weight": (128, 32),
    "time_embed.2.weight": (128, 128),
    "input_blocks.0.0.weight": (32, 3, 3, 3),
    "input_blocks.1.0.in_layers.0.weight": (32,),
    "input_blocks.1.0.emb_layers.1.weight": (64, 128),
    "input_blocks.1.0.out_layers.3.weight": (32, 32, 3, 3),
    "input_blocks.2.0.op.weight": (32, 32, 3, 3),
    "input_blocks.3.0.skip_connection.weight": (64, 32, 1, 1),
    "input_blocks.12.1.qkv.weight": (768, 256, 1),
    "input_blocks.12.1.proj_out.weight": (256, 256, 1),
    "input_blocks.18.0.op.weight": (512, 512, 3, 3),
    "input_blocks.22.1.qkv.weight": (1536, 512, 1),
    "middle_block.0.in_layers.2.weight": (512, 512, 3, 3),
    "middle_block.1.norm.weight": (512,),
    "middle_block.1.qkv.bias": (1536,),
    "middle_block.2.emb_layers.1.weight": (1024, 128),
    "output_blocks.0.0.in_layers.2.weight": (512, 1024, 3, 3),
    "output_blocks.0.0.skip_connection.weight": (512, 1024, 1, 1),
    "output_blocks.4.2.conv.weight": (512, 512, 3, 3),
    "output_blocks.11.1.qkv.weight": (768, 256, 1),
    "output_blocks.11.2.conv.weight": (256, 256, 3, 3),
    "output_blocks.22.0.in_layers.2.weight": (32, 64, 3, 3),
    "out.0.weight": (32,),
    "out.2.weight": (6, 32, 3, 3),
}
NOT_OFFICIAL = [
    "input_blocks.10.1.qkv.weight",
    "input_blocks.11.1.norm.weight",
    "output_blocks.12.1.qkv.weight",
    "output_blocks.22.1.conv.weight",
    "input_blocks.1.0.skip_connection.weight",
    "label_emb.weight",
]
OFFICIAL_FILE_BYTES = 639_362_581


def _random_prior(cfg: UNetConfig, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: torch.randn_like(v) * 0.1 for k, v in IDDPMUNet(cfg).state_dict().items()}


def _restorer_as_released(seed: int) -> dict[str, torch.Tensor]:
    """A random SwinIR with DifFace's key names: its first conv sits after a PixelUnshuffle."""
    torch.manual_seed(seed)
    sd = difface._new_restorer(TINY.restorer).state_dict()
    return {k.replace("conv_first.", "conv_first.1."): v for k, v in sd.items()}


def _faces(testdata, names=("0478.png", "0500.png")) -> torch.Tensor:
    arrays = [np.asarray(Image.open(testdata / "aligned" / n).convert("RGB"), dtype=np.float32) / 255 for n in names]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def test_official_unet_keys_shapes_and_file_size():
    with torch.device("meta"):
        sd = IDDPMUNet().state_dict()
    assert {k: tuple(sd[k].shape) for k in OFFICIAL_SHAPES} == OFFICIAL_SHAPES
    assert not set(NOT_OFFICIAL) & sd.keys()
    fp32_bytes = 4 * sum(v.numel() for v in sd.values())
    assert abs(fp32_bytes - OFFICIAL_FILE_BYTES) / OFFICIAL_FILE_BYTES < 0.01


def test_spec_contract():
    assert (SPEC.name, SPEC.card, SPEC.weight_file) == ("difface", "difface", "iddpm_ffhq512_ema500000.pth")
    assert {k: SPEC.knob(k).default for k in SPEC.knobs} == {"steps": 100, "seed": 12345}
    assert (SPEC.knob("steps").low, SPEC.knob("steps").high) == (10, 400)
    files = [w.file for w in weights.cards()["difface"].weights]
    assert files == ["iddpm_ffhq512_ema500000.pth", "swinir_restoration512_L1.pth"]


def test_schedule_is_iddpm_linear_and_upstream_ddim250_start_100():
    abar = iddpm.linear_alphas_cumprod()
    assert abar[0].item() == pytest.approx(1 - 1e-4)
    assert abar[-1].item() == pytest.approx(4.0358e-05, rel=1e-3)  # DDPM linear schedule's ᾱ_T
    # upstream: space_timesteps(1000, "ddim250") = range(0, 1000, 4), started at index 100
    assert difface.respaced_timesteps(100).tolist() == list(range(0, 401, 4))
    assert difface.respaced_timesteps(10).tolist() == list(range(0, 401, 40))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        difface.respaced_timesteps(0)


def test_attention_matches_legacy_qkv_reference():
    """Heads are split before q/k/v (upstream QKVAttentionLegacy), scaled by ch^-1/4 on q and k."""
    torch.manual_seed(0)
    block = AttentionBlock(64, head_channels=32)
    x = torch.randn(2, 64, 4, 4)
    with torch.no_grad():
        qkv = block.qkv(block.norm(x.reshape(2, 64, 16)))
        q, k, v = qkv.reshape(2 * 2, 3 * 32, 16).split(32, dim=1)
        scale = 1 / math.sqrt(math.sqrt(32))
        weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
        a = torch.einsum("bts,bcs->bct", weight, v).reshape(2, 64, 16)
        ref = (x.reshape(2, 64, 16) + block.proj_out(a)).reshape(2, 64, 4, 4)
        torch.testing.assert_close(block(x), ref, atol=1e-5, rtol=1e-5)


class _OraclePrior(torch.nn.Module):
    """Predicts the exact ε that leads back to ``target``; records timesteps and the ε it returned."""

    def __init__(self, target: torch.Tensor) -> None:
        super().__init__()
        self.target, self.calls, self.eps = target, [], []
        self.config = TINY.unet
        self.abar = iddpm.linear_alphas_cumprod()

    def forward(self, x, t):
        a = self.abar[t].float().view(-1, 1, 1, 1)
        eps = (x - a.sqrt() * self.target) / (1 - a).sqrt()
        self.calls.append(int(t[0]))
        self.eps.append(eps.flatten())
        return torch.cat([eps, torch.zeros_like(eps)], dim=1)


def test_sampler_with_an_oracle_prior_follows_ddim_eta_half_and_returns_the_estimate():
    """Diffuse to t=400, DDIM(η=0.5) with perfect ε: recovers x̂0, and each step keeps a fraction
    √(1 − ᾱ_prev − σ²)/√(1 − ᾱ_prev) of the previous ε (σ as upstream ``ddim_sample``)."""
    net = difface.build(None, config=TINY)
    y = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        estimate = net.restorer(y).clamp(0, 1)
    net.prior = _OraclePrior(estimate * 2 - 1)
    out = SPEC.forward(net, y, steps=100, seed=3)
    assert net.prior.calls == list(range(396, -1, -4))  # index N-1 … 0 on the ddim250 grid
    torch.testing.assert_close(out, estimate, atol=2e-4, rtol=0)

    net.prior = _OraclePrior(estimate * 2 - 1)
    SPEC.forward(net, y, steps=10, seed=3)
    abar = iddpm.linear_alphas_cumprod()
    for t, eps, next_eps in zip(net.prior.calls, net.prior.eps, net.prior.eps[1:]):
        a, a_prev = abar[t].item(), abar[t - 40].item()
        sigma = 0.5 * math.sqrt((1 - a_prev) / (1 - a)) * math.sqrt(1 - a / a_prev)
        kept = math.sqrt(1 - a_prev - sigma**2) / math.sqrt(1 - a_prev)
        assert (next_eps @ eps / (eps @ eps)).item() == pytest.approx(kept, abs=0.01)  # η=0: 1, η=1: ≤ 0.83
        # marginal q(x_t | x0) is kept; the start offset (x at t=400 read as t=360) adds up to ~5 %
        assert next_eps.std().item() == pytest.approx(1.0, abs=0.06)


def test_loads_released_layouts_and_restores_real_faces(testdata, tmp_path):
    prior = _random_prior(TINY.unet, seed=1)
    torch.save(prior, tmp_path / "prior.pth")
    save_file(prior, str(tmp_path / "prior.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in _restorer_as_released(2).items()}}, tmp_path / "swinir.pth")
    restorer = load_state_dict(tmp_path / "swinir.pth")  # upstream loaders unwrap both, so do we
    nets = [
        difface.build(load_state_dict(tmp_path / f"prior.{ext}"), restorer_state_dict=restorer, config=TINY)
        for ext in ("pth", "safetensors")
    ]
    torch.testing.assert_close(nets[0].prior.state_dict(), prior)

    faces = _faces(testdata)
    out = SPEC.forward(nets[0], faces, steps=2, seed=7)
    assert out.shape == (2, 3, 512, 512) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert (out - faces).abs().mean() > 0.05  # the face was changed
    assert torch.equal(SPEC.forward(nets[1], faces, steps=2, seed=7), out)  # same seed, same result
    assert not torch.allclose(SPEC.forward(nets[0], faces, steps=2, seed=8), out)


def test_restorer_comes_from_the_cache_when_only_the_prior_is_given(tmp_path, monkeypatch):
    """``--weights FILE`` replaces the prior; the SwinIR restorer is always the cached file."""
    released = _restorer_as_released(4)
    torch.save(released, tmp_path / "swinir.pth")
    asked = []
    monkeypatch.setattr(weights, "ensure", lambda file, *a, **k: asked.append(file) or tmp_path / "swinir.pth")
    net = difface.build(_random_prior(TINY.unet, seed=5), config=TINY)
    assert asked == ["swinir_restoration512_L1.pth"]
    torch.testing.assert_close(net.restorer.conv_first.weight, released["conv_first.1.weight"])


def test_a_restorer_file_that_is_not_swinir_is_refused():
    prior = _random_prior(TINY.unet, seed=6)
    message = "^swinir_restoration512_L1.pth: not DifFace's SwinIR restorer; delete it and download it again$"
    with pytest.raises(WeightsError, match=message):
        difface.build(prior, restorer_state_dict=prior, config=TINY)
