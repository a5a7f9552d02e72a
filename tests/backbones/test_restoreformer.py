"""RestoreFormer adapter: official layout, strict loading, and parity with spandrel's own pipeline.

For RestoreFormer (unlike GFPGAN/CodeFormer) spandrel's descriptor call normalises exactly like
GFPGANer, and spandrel infers the config from the weights itself: an independent reference.
"""

from __future__ import annotations

import pytest
import torch
from spandrel import ModelLoader
from spandrel.architectures.RestoreFormer import RestoreFormer, RestoreFormerArch

from bfrboost.backbones import restoreformer
from bfrboost.backbones.registry import build_strict, describe, get_spec, load_base
from tests.backbones.conftest import (
    assert_same_weights,
    meta_state_dict,
    roundtrip_checkpoint,
    swap_spec,
    two_aligned_faces,
)

SPEC = get_spec("restoreformer")
# Transcribed from TencentARC/GFPGAN gfpgan/archs/restoreformer_arch.py, RestoreFormer() defaults
# (what GFPGANer builds for arch="RestoreFormer").
OFFICIAL_SHAPES = {
    "encoder.conv_in.weight": (64, 3, 3, 3),
    "encoder.down.5.block.1.conv2.weight": (512, 512, 3, 3),  # ch_mult (1, 2, 2, 4, 4, 8)
    "encoder.down.5.attn.1.q.weight": (512, 512, 1, 1),  # attention at 16 px only
    "encoder.mid.attn_1.proj_out.weight": (512, 512, 1, 1),
    "encoder.conv_out.weight": (256, 512, 3, 3),  # z_channels 256, double_z False
    "quant_conv.weight": (256, 256, 1, 1),
    "quantize.embedding.weight": (1024, 256),
    "decoder.up.5.attn.2.k.weight": (512, 512, 1, 1),  # num_res_blocks + 1 blocks per decoder level
    "decoder.up.0.block.2.conv2.weight": (64, 64, 3, 3),
    "decoder.conv_out.weight": (3, 64, 3, 3),
}
# Same class at 32 base channels, one block per level, tiny codebook; run on 64 px crops.
TINY = {
    **restoreformer.CONFIG,
    "ch": 32,
    "ch_mult": (1, 1, 1, 1, 1, 1),
    "num_res_blocks": 1,
    "n_embed": 64,
    "embed_dim": 16,
    "z_channels": 32,
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    return roundtrip_checkpoint(SPEC, tmp_path_factory.mktemp("restoreformer"), net=RestoreFormer(**TINY))


def test_official_config_has_the_released_layout_and_size():
    sd = meta_state_dict(SPEC)
    for key, shape in OFFICIAL_SHAPES.items():
        assert tuple(sd[key].shape) == shape, key
    assert "encoder.down.4.attn.0.q.weight" not in sd
    assert len(sd) == 405 and RestoreFormerArch().detect(sd)
    tensor_bytes = 4 * sum(t.numel() for t in sd.values())
    file_size = describe("restoreformer")["size"]
    assert 0 < file_size - tensor_bytes < 1e-3 * file_size


def test_released_layout_loads_strictly_from_pth_and_safetensors(tmp_path):
    ckpt = roundtrip_checkpoint(SPEC, tmp_path, wrapper="params")  # GFPGANer reads params_ema, else params
    for path in (ckpt.pth, ckpt.safetensors):
        base = load_base("restoreformer", weights=path)
        assert_same_weights(base.net, ckpt.state_dict)
        assert base.knobs == {}


def test_restores_real_faces_exactly_like_spandrel_and_gfpganer(tiny, testdata, monkeypatch):
    swap_spec(monkeypatch, "restoreformer", build=lambda sd: build_strict(lambda: RestoreFormer(**TINY), sd), input_size=64)
    faces = two_aligned_faces(testdata, size=64)
    out = load_base("restoreformer", weights=tiny.pth, batch_size=1).restore(faces)
    assert out.shape == faces.shape and 0 <= out.min() and out.max() <= 1
    assert (out - faces).abs().mean() > 0.05

    descriptor = ModelLoader().load_from_state_dict(tiny.state_dict)
    assert descriptor.architecture.id == "RestoreFormer"
    descriptor.model.eval()
    with torch.no_grad():
        expected = descriptor(faces)  # spandrel: normalise, forward, (y + 1) / 2, clamp to [0, 1]
    assert (out - expected).abs().max() < 1e-4
