"""CodeFormer adapter: official layout, strict loading, the fidelity knob reaching the network.

CodeFormer's trunk is fixed at 512 px / 64 channels in the architecture class, so one forward takes
15–50 s on this shared CPU: the forward wiring is checked with a probe network through the real
``load_base`` path, and bench/bench_backbones.py runs the released config.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from spandrel_extra_arches.architectures.CodeFormer import CodeFormer, CodeFormerArch
from torch import nn
from torchvision.transforms.functional import normalize

from bfrboost.backbones import codeformer
from bfrboost.backbones.registry import build_strict, describe, get_spec, load_base
from tests.backbones.conftest import (
    assert_same_weights,
    meta_state_dict,
    roundtrip_checkpoint,
    swap_spec,
    two_aligned_faces,
)

SPEC = get_spec("codeformer")
# Transcribed from sczhou/CodeFormer basicsr/archs/codeformer_arch.py with inference_codeformer.py's
# settings: dim_embd 512, n_head 8, n_layers 9, codebook 1024, connect_list 32/64/128/256.
OFFICIAL_SHAPES = {
    "position_emb": (256, 512),
    "feat_emb.weight": (512, 256),
    "ft_layers.8.self_attn.in_proj_weight": (1536, 512),
    "ft_layers.8.linear1.weight": (1024, 512),  # dim_mlp = 2 * dim_embd
    "idx_pred_layer.1.weight": (1024, 512),
    "quantize.embedding.weight": (1024, 256),
    "encoder.blocks.0.weight": (64, 3, 3, 3),
    "generator.blocks.0.weight": (512, 256, 3, 3),
    "fuse_convs_dict.32.scale.2.weight": (256, 256, 3, 3),
    "fuse_convs_dict.256.shift.2.weight": (128, 128, 3, 3),
}


class Probe(nn.Module):
    """Stands in for the network: records what it is called with, returns out-of-range values."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(1.5))
        self.calls: list[tuple[torch.Tensor, float]] = []

    def forward(self, x: torch.Tensor, weight: float = 0.5, **kwargs) -> tuple[torch.Tensor, None]:
        self.calls.append((x.clone(), weight))
        return x * self.gain, None


def test_official_config_has_the_released_layout_and_size():
    sd = meta_state_dict(SPEC)
    for key, shape in OFFICIAL_SHAPES.items():
        assert tuple(sd[key].shape) == shape, key
    assert {k.split(".")[1] for k in sd if k.startswith("fuse_convs_dict.")} == {"32", "64", "128", "256"}
    assert len(sd) == 515 and CodeFormerArch().detect(sd)
    tensor_bytes = 4 * sum(t.numel() for t in sd.values())
    file_size = describe("codeformer")["size"]
    assert 0 < file_size - tensor_bytes < 1e-3 * file_size


def test_released_layout_loads_strictly_from_pth_and_safetensors(tmp_path):
    ckpt = roundtrip_checkpoint(SPEC, tmp_path, wrapper="params_ema")
    for path in (ckpt.pth, ckpt.safetensors):
        base = load_base("codeformer", weights=path, fidelity=0.7)
        assert_same_weights(base.net, ckpt.state_dict)
        assert base.knobs == {"fidelity": 0.7}


def test_fidelity_keyword_exists_upstream_side():
    """spandrel calls upstream's ``w`` ``weight`` and swallows unknown keywords: pin the name."""
    params = inspect.signature(CodeFormer.forward).parameters
    assert params["weight"].default == 0.5


def test_forward_normalises_passes_fidelity_and_maps_back(testdata, monkeypatch, tmp_path):
    swap_spec(monkeypatch, "codeformer", build=lambda sd: build_strict(Probe, sd))
    path = tmp_path / "probe.pth"
    torch.save({"params_ema": Probe().state_dict()}, path)
    faces = two_aligned_faces(testdata)
    base = load_base("codeformer", weights=path, fidelity="0.3")
    out = base.restore(faces)

    # inference_codeformer.py: normalize(0.5, 0.5) → net(x, w=w, adain=True)[0] → tensor2img(min_max=(-1, 1))
    assert [w for _, w in base.net.calls] == [0.3, 0.3]  # batch size 1 on CPU: one call per face
    torch.testing.assert_close(torch.cat([x for x, _ in base.net.calls]), normalize(faces, [0.5] * 3, [0.5] * 3))
    expected = ((normalize(faces, [0.5] * 3, [0.5] * 3) * 1.5).clamp(-1, 1) + 1) / 2
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("fidelity", [0.0, 1.0])
def test_fidelity_bounds_are_accepted(fidelity, tmp_path, monkeypatch):
    swap_spec(monkeypatch, "codeformer", build=lambda sd: build_strict(Probe, sd))
    path = tmp_path / "probe.pth"
    torch.save(Probe().state_dict(), path)
    assert load_base("codeformer", weights=path, fidelity=fidelity).knobs == {"fidelity": fidelity}
    assert codeformer.SPECS[0].knob("fidelity").default == 0.5
