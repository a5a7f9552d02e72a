"""VQFR v2 adapter: official key names/shapes, strict checkpoint loading, the fidelity knob, DCN wiring.

The released network is too slow for CPU tests at 512 px, so forwards run on real aligned faces
downscaled to 64 px (the network is fully convolutional) and, where the test is about behaviour
rather than the released key set, on a reduced config built by the same code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from bfrboost.backbones import registry, vqfr
from bfrboost.backbones.registry import CheckpointMismatch
from bfrboost.backbones.vqfr import AttnBlock, DCNv2Pack, VQFRv2, VQFRv2Config
from bfrboost.errors import UsageError, WeightsError
from bfrboost.weights import load_state_dict

SPEC = vqfr.SPECS[0]
TINY = VQFRv2Config(
    base_channels=32,
    channel_multipliers=(1, 2, 2),
    num_enc_blocks=1,
    num_dec_blocks=1,
    code_dim=16,
    num_code=64,
    inpfeat_dim=8,
    deformable_groups=2,
)

# Transcribed by hand from upstream vqfrv2_arch.py / vqganv2_arch.py / quantizer_arch.py with the
# network config of options/test/VQFR/test_vqfr_v2.yml (base 64, multipliers 1,2,2,4,4,8, two
# blocks per level, attention on, code_dim 256, 1024 codes, inpfeat 32, 4 deformable groups).
OFFICIAL_SHAPES = {
    "encoder.conv_in.weight": (64, 3, 3, 3),
    "encoder.blocks.0.1.conv2.weight": (64, 64, 3, 3),
    "encoder.blocks.1.0.conv.weight": (64, 64, 3, 3),
    "encoder.blocks.1.1.residual_func.weight": (128, 64, 1, 1),
    "encoder.blocks.5.0.conv.weight": (256, 256, 3, 3),
    "encoder.blocks.5.1.residual_func.weight": (512, 256, 1, 1),
    "encoder.blocks.5.2.q.weight": (512, 512, 1, 1),
    "encoder.blocks.5.4.proj_out.weight": (512, 512, 1, 1),
    "encoder.mid_blocks.1.norm.weight": (512,),
    "encoder.conv_out.0.weight": (512,),
    "encoder.conv_out.2.weight": (256, 512, 3, 3),
    "feat2index.0.weight": (256,),
    "feat2index.1.weight": (1024, 256),
    "feat2index.1.bias": (1024,),
    "quantizer.embedding.weight": (1024, 256),
    "decoder.conv_in.weight": (512, 256, 3, 3),
    "decoder.blocks.0.3.v.weight": (512, 512, 1, 1),
    "decoder.blocks.1.0.conv.weight": (512, 512, 3, 3),
    "decoder.blocks.1.1.residual_func.weight": (256, 512, 1, 1),
    "decoder.blocks.5.1.residual_func.weight": (64, 128, 1, 1),
    "decoder.conv_out.2.weight": (3, 64, 3, 3),
    "main_branch.align_func_dict.Level_32.offset_conv1.0.weight": (512, 544, 1, 1),
    "main_branch.align_func_dict.Level_32.offset_conv2.0.weight": (512, 512, 3, 3),
    "main_branch.align_func_dict.Level_32.dcn.conv_offset.weight": (108, 512, 3, 3),
    "main_branch.align_func_dict.Level_16.offset_conv2.0.weight": (256, 768, 3, 3),
    "main_branch.align_func_dict.Level_1.offset_conv1.0.weight": (64, 96, 1, 1),
    "main_branch.align_func_dict.Level_1.offset_conv1.3.weight": (64, 1, 7, 7),
    "main_branch.align_func_dict.Level_1.offset_conv1.4.bias": (64,),
    "main_branch.align_func_dict.Level_1.offset_conv1.6.weight": (64, 64, 1, 1),
    "main_branch.align_func_dict.Level_1.offset_conv2.0.weight": (64, 192, 3, 3),
    "main_branch.align_func_dict.Level_1.dcn.weight": (64, 64, 3, 3),
    "main_branch.align_func_dict.Level_1.dcn.bias": (64,),
    "main_branch.align_func_dict.Level_1.dcn.conv_offset.bias": (108,),
    "main_branch.pre_upsample_dict.Level_16.1.weight": (256, 512, 3, 3),
    "main_branch.pre_upsample_dict.Level_1.1.weight": (64, 128, 3, 3),
    "main_branch.decoder_dict.Level_16.residual_func.weight": (256, 512, 1, 1),
    "main_branch.decoder_dict.Level_1.conv1.weight": (64, 128, 3, 3),
    "inpfeat_extraction.weight": (32, 3, 3, 3),
}
# Keys the upstream v2 network does NOT have (v1 quantizer convs, no pre-upsampling at the
# coarsest level, no downsampling at the finest, non-persistent codebook usage counter).
NOT_OFFICIAL = [
    "quantizer.quant_conv.weight",
    "quantizer.usage",
    "main_branch.pre_upsample_dict.Level_32.1.weight",
    "main_branch.decoder_dict.Level_32.conv1.weight",
    "encoder.blocks.0.0.conv.weight",
    "decoder.blocks.0.0.conv.weight",
]


def _meta_state_dict(config: VQFRv2Config | None = None) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return VQFRv2(config).state_dict()


@pytest.fixture(autouse=True)
def _inference_only():
    """Every forward here is inference (as in LoadedBase.restore): no autograd graphs."""
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def faces(testdata) -> torch.Tensor:
    """Two real aligned 512 crops, downscaled to 64 px, as (2, 3, 64, 64) floats in [0, 1]."""
    crops = []
    for name in ("0143.png", "0368.png"):
        img = Image.open(testdata / "aligned" / name).convert("RGB").resize((64, 64), Image.Resampling.BOX)
        crops.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255)
    return torch.stack(crops)


def test_spec_describes_vqfr_v2():
    assert (SPEC.name, SPEC.display_name, SPEC.card, SPEC.weight_file) == ("vqfr", "VQFR v2", "vqfr", "VQFR_v2.pth")
    knob = SPEC.knob("fidelity_ratio")
    assert list(SPEC.knobs) == ["fidelity_ratio"]
    assert (knob.default, knob.low, knob.high, knob.type) == (0.0, 0.0, 1.0, float)  # upstream demo.py default
    assert SPEC.input_size == 512
    assert registry.get_spec("vqfr") is SPEC


def test_released_config_matches_official_keys_and_shapes():
    sd = _meta_state_dict()
    for key, shape in OFFICIAL_SHAPES.items():
        assert tuple(sd[key].shape) == shape, key
    assert not set(NOT_OFFICIAL) & sd.keys()
    assert {k.split(".")[0] for k in sd} == {
        "encoder", "feat2index", "decoder", "main_branch", "inpfeat_extraction", "quantizer"
    }
    # Counts that follow from the upstream structure: attention = 2 (encoder level 5) + 1 (mid)
    # per side; one texture-warping DCN per level; main-branch fusion blocks on 5 of 6 levels.
    assert sum(k.endswith(".q.weight") for k in sd) == 6
    assert sum(k.endswith("dcn.conv_offset.weight") for k in sd) == 6
    assert sum(k.startswith("main_branch.decoder_dict.") and k.endswith("conv1.weight") for k in sd) == 5
    # Regression guard of our own count (83.5 M params, about 334 MB as float32).
    assert (len(sd), sum(v.numel() for v in sd.values())) == (503, 83_486_539)


def test_released_checkpoint_pth_loads_strictly_and_restores(tmp_path, faces):
    torch.manual_seed(0)
    official = VQFRv2().state_dict()
    path = tmp_path / "VQFR_v2.pth"
    torch.save({"params": official}, path)  # upstream checkpoints wrap weights in "params"

    base = registry.load_base("vqfr", weights=path)  # weights.load_state_dict -> spec.build (strict)
    net = base.net
    assert all(torch.equal(v, official[k]) for k, v in net.state_dict().items())
    assert not net.training and base.knobs == {"fidelity_ratio": 0.0}

    out = SPEC.forward(net, faces, fidelity_ratio=1.0)
    assert out.shape == faces.shape and out.dtype == torch.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert ((out > 0) & (out < 1)).float().mean() > 0.5  # mostly not clipped
    assert (out - faces).abs().mean() > 0.02  # the face was changed


def test_safetensors_checkpoint_loads_strictly(tmp_path, faces):
    torch.manual_seed(1)
    weights = VQFRv2(TINY).state_dict()
    path = tmp_path / "vqfr_tiny.safetensors"
    save_file(weights, str(path))

    net = vqfr.build(load_state_dict(path), config=TINY)
    assert all(torch.equal(v, weights[k]) for k, v in net.state_dict().items())
    out = SPEC.forward(net, faces)
    assert out.shape == faces.shape and 0.0 <= out.min() and out.max() <= 1.0
    assert (out - faces).abs().mean() > 0.02


def test_fidelity_ratio_blends_main_branch_linearly(faces):
    torch.manual_seed(2)
    net = vqfr.build(None, config=TINY)
    fused = []  # what the shared RGB head sees: texture feature + ratio * main-branch feature
    net.decoder.conv_out.register_forward_pre_hook(lambda _m, args: fused.append(args[0]))

    outs = {r: SPEC.forward(net, faces, fidelity_ratio=r) for r in (0.0, 0.5, 1.0)}
    f0, f_half, f1 = fused
    assert (outs[1.0] - outs[0.0]).abs().mean() > 1e-3  # the knob changes the result
    assert (f1 - f0).abs().max() > 1e-3
    # 0.0 takes the shortcut (main branch skipped); linearity shows it equals the full path.
    torch.testing.assert_close(f_half, (f0 + f1) / 2, atol=1e-4, rtol=1e-4)


def test_batched_forward_equals_one_by_one(faces):
    torch.manual_seed(3)
    net = vqfr.build(None, config=TINY)
    small = F.avg_pool2d(faces, 2)  # 32 px is enough to see cross-sample leaks
    batched = SPEC.forward(net, small, fidelity_ratio=0.7)
    single = torch.cat([SPEC.forward(net, small[i : i + 1], fidelity_ratio=0.7) for i in range(2)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_dcn_offsets_then_mask_layout():
    """Constant offsets (0, +1) and mask logits 0 must equal a plain conv on the input shifted
    one pixel left, times sigmoid(0) = 0.5: checks which conv_offset channels are offsets/mask."""
    torch.manual_seed(4)
    dcn = DCNv2Pack(channels=8, deformable_groups=2)
    torch.nn.init.zeros_(dcn.conv_offset.weight)
    bias = torch.zeros(2 * 27)
    bias[1 : 2 * 18 : 2] = 1.0  # torchvision layout (dy, dx) per kernel point: every dx = +1
    dcn.conv_offset.bias.copy_(bias)
    dcn.bias.normal_()
    x = torch.randn(2, 8, 9, 11)
    out = dcn(x, torch.randn(2, 8, 9, 11))
    # out[y, x] = sum_k w[ky, kx] * x[y + ky - 1, x + kx] with zeros outside the image
    shifted = F.conv2d(F.pad(x, (1, 2, 1, 1)), dcn.weight)[..., 1:]
    expected = 0.5 * shifted + dcn.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_attention_matches_explicit_softmax():
    torch.manual_seed(5)
    attn = AttnBlock(32)
    x = torch.randn(2, 32, 4, 5)
    y = attn.norm(x)
    q, k, v = (m(y).flatten(2) for m in (attn.q, attn.k, attn.v))  # (b, c, hw)
    weights = torch.softmax(q.transpose(1, 2) @ k / 32**0.5, dim=-1)  # (b, hw_q, hw_k)
    expected = x + attn.proj_out((v @ weights.transpose(1, 2)).view_as(x))
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("ratio", ["-0.1", "1.5"])
def test_fidelity_ratio_out_of_range_is_a_usage_error(ratio):
    with pytest.raises(UsageError) as err:
        registry.validate_knobs("vqfr", {"fidelity_ratio": ratio})
    assert str(err.value) == f"base 'vqfr' option fidelity_ratio={float(ratio):g} is out of range [0, 1]"


def test_wrong_checkpoints_are_rejected(tmp_path):
    weights = VQFRv2(TINY).state_dict()
    missing = {k: v for k, v in weights.items() if k != "feat2index.1.bias"}
    with pytest.raises(CheckpointMismatch, match=r"^1 missing key\(s\), e\.g\. 'feat2index\.1\.bias'$"):
        vqfr.build(missing, config=TINY)
    wrong = weights | {"quantizer.embedding.weight": torch.zeros(32, 16)}
    with pytest.raises(CheckpointMismatch, match=r"'quantizer\.embedding\.weight' is \(32, 16\), expected \(64, 16\)"):
        vqfr.build(wrong, config=TINY)

    # A checkpoint of another VQFR size, loaded as the released model: a one-line user error.
    path = tmp_path / "VQFR_v2.pth"
    torch.save({"params": weights}, path)
    with pytest.raises(WeightsError) as err:
        registry.load_base("vqfr", weights=path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: not a VQFR v2 checkpoint (")
    assert message.endswith("; use VQFR_v2.pth from `bfrboost weights download vqfr`")
