"""Registry runtime: names, option checking, loading (custom file, cache, errors), chunked restore."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bfrboost import weights
from bfrboost.backbones import registry
from bfrboost.backbones.registry import (
    BaseSpec,
    CheckpointMismatch,
    Knob,
    build_strict,
    load_base,
    validate_knobs,
)
from bfrboost.errors import UsageError, WeightsError


class Gain(nn.Module):
    """A toy base model: one learned gain, so expected outputs are easy to write down."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(3))
        self.calls: list[tuple[int, torch.dtype, bool]] = []


def gain_forward(net: Gain, x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    net.calls.append((x.shape[0], x.dtype, torch.is_inference_mode_enabled()))
    return (x * net.gain.view(1, 3, 1, 1) * strength).clamp(0, 1)


TOY = BaseSpec(
    name="toy",
    display_name="Toy gain",
    card="toy",
    weight_file="toy.pth",
    build=lambda sd: build_strict(Gain, sd),
    forward=gain_forward,
    knobs={"strength": Knob(1.0, "output scale", low=0.0, high=2.0)},
    input_size=8,
)


@pytest.fixture
def toy(monkeypatch, tmp_path):
    """The toy spec registered as ``toy`` and a checkpoint for it (gain 0.5, 0.25, 1.0)."""
    monkeypatch.setitem(registry.REGISTRY, "toy", TOY)
    path = tmp_path / "toy.pth"
    torch.save({"params_ema": {"gain": torch.tensor([0.5, 0.25, 1.0])}}, path)
    return path


def test_names_start_with_none_and_list_every_adapter_once():
    names = registry.names()
    assert names[:5] == ["none", "gfpgan", "gfpgan-1.3", "restoreformer", "codeformer"]
    assert {"gpen", "vqfr", "difface"} <= set(names)
    assert len(names) == len(set(names))
    assert all(registry.REGISTRY[n].name == n for n in names)


def test_every_spec_points_at_a_file_of_its_model_card():
    cards = weights.cards()
    for name in registry.names()[1:]:
        spec = registry.get_spec(name)
        assert spec.weight_file in {w.file for w in cards[spec.card].weights}, name


def test_unknown_base_names_every_known_base():
    with pytest.raises(UsageError) as err:
        registry.get_spec("gfgan")
    assert str(err.value) == f"unknown base 'gfgan'; known: {', '.join(registry.names())}"
    with pytest.raises(UsageError):
        load_base("gfgan")


def test_none_returns_the_crops_and_takes_no_weights(tmp_path):
    base = load_base("none")
    crops = torch.rand(3, 3, 512, 512)
    out = base.restore(crops)
    assert torch.equal(out, crops) and out is not crops
    with pytest.raises(UsageError, match="^base 'none' uses no weights; drop the weights file "):
        load_base("none", weights=tmp_path / "x.pth")


@pytest.mark.parametrize(
    ("name", "knobs", "message"),
    [
        ("codeformer", {"fidelity": 1.5}, "base 'codeformer' option fidelity=1.5 is out of range [0, 1]"),
        ("codeformer", {"fidelity": "-0.01"}, "base 'codeformer' option fidelity=-0.01 is out of range [0, 1]"),
        ("codeformer", {"fidelity": "high"}, "base 'codeformer' option fidelity='high' is not a valid float"),
        ("codeformer", {"fidelity": "nan"}, "base 'codeformer' option fidelity=nan must be a finite number"),
        ("codeformer", {"w": 0.7}, "unknown option 'w' for base 'codeformer'; known: fidelity"),
        ("restoreformer", {"fidelity": 0.7}, "base 'restoreformer' takes no options (got 'fidelity')"),
        ("gfpgan", {"randomize_noise": "maybe"}, "base 'gfpgan' option randomize_noise='maybe' is not a valid bool"),
        ("gfpgan", {"randomize_noise": 1}, "base 'gfpgan' option randomize_noise=1 must be a bool"),
    ],
)
def test_bad_options_are_one_line_usage_errors(name, knobs, message):
    with pytest.raises(UsageError) as err:
        validate_knobs(name, knobs)
    assert str(err.value) == message


def test_options_from_the_command_line_are_parsed_and_defaults_filled():
    assert validate_knobs("codeformer", {}) == {"fidelity": 0.5}
    assert validate_knobs("codeformer", {"fidelity": "0.7"}) == {"fidelity": 0.7}
    assert validate_knobs("codeformer", {"fidelity": 1}) == {"fidelity": 1.0}
    assert validate_knobs("gfpgan", {"randomize_noise": "yes"}) == {"randomize_noise": True}
    seed = Knob(None, kind=int, low=0)
    assert seed.parse("7", "seed") == 7 and seed.parse(None, "seed") is None
    with pytest.raises(UsageError, match=r"^seed=2\.5 must be a whole number$"):
        seed.parse(2.5, "seed")
    assert Knob(4).parse("5", "steps") == 5  # a plain default works like a Knob of that type


def test_options_are_checked_before_any_weights_are_looked_up():
    with pytest.raises(UsageError):  # offline with an empty cache, yet the option error comes first
        load_base("codeformer", fidelity=2)


def test_missing_weights_offline_is_one_line_naming_the_file():
    with pytest.raises(WeightsError) as err:
        load_base("gfpgan")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("GFPGANv1.4.pth: not in the cache and offline mode is on; download https://github.com/TencentARC/")


def test_weights_from_the_cache_are_used_when_no_file_is_given(toy, monkeypatch):
    asked = []
    monkeypatch.setattr(weights, "ensure", lambda file: asked.append(file) or toy)
    base = load_base("toy")
    assert asked == ["toy.pth"] and base.weights == toy


def test_restore_chunks_by_batch_size_in_inference_mode(toy):
    base = load_base("toy", weights=toy, batch_size=2, strength="2")
    crops = torch.rand(5, 3, 8, 8)
    out = base.restore(crops)
    expected = (crops * torch.tensor([0.5, 0.25, 1.0]).view(1, 3, 1, 1) * 2).clamp(0, 1)
    torch.testing.assert_close(out, expected)
    assert [c[0] for c in base.net.calls] == [2, 2, 1]
    assert all(c[2] for c in base.net.calls)
    assert not any(p.requires_grad for p in base.net.parameters())
    assert base.restore(crops[:0]).shape == (0, 3, 8, 8)


def test_restore_casts_to_the_model_dtype_and_returns_float32(toy):
    base = load_base("toy", weights=toy, dtype=torch.bfloat16)
    crops = torch.rand(2, 3, 8, 8)
    out = base.restore(crops)
    assert base.net.calls[0][1] == torch.bfloat16 and out.dtype == torch.float32
    torch.testing.assert_close(out, crops * torch.tensor([0.5, 0.25, 1.0]).view(1, 3, 1, 1), atol=1e-2, rtol=1e-2)


def test_default_batch_size_is_one_on_cpu_and_eight_on_cuda(toy):
    assert load_base("toy", weights=toy).batch_size == 1
    assert registry.default_batch_size(torch.device("cuda", 0)) == 8


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, True])
def test_bad_batch_size_is_a_usage_error(toy, batch_size):
    with pytest.raises(UsageError, match="^batch size must be a whole number >= 1, got "):
        load_base("toy", weights=toy, batch_size=batch_size)


def test_wrong_crop_shape_is_refused(toy):
    with pytest.raises(ValueError, match=r"^base 'toy' expects crops of shape \(B, 3, 8, 8\), got \(2, 3, 16, 16\)$"):
        load_base("toy", weights=toy).restore(torch.rand(2, 3, 16, 16))


def test_a_checkpoint_of_another_model_is_one_line_naming_the_file(toy, tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"params": {"gain": torch.ones(3), "bias": torch.ones(3)}}, path)
    with pytest.raises(WeightsError) as err:
        load_base("toy", weights=path)
    assert str(err.value) == (
        f"{path}: not a Toy gain checkpoint (1 unexpected key(s), e.g. 'bias'); use toy.pth from `bfrboost weights download toy`"
    )


def test_a_build_that_raises_torch_errors_still_gives_one_line(monkeypatch, tmp_path):
    def plain_build(sd):  # an adapter that calls load_state_dict itself: torch's multi-line error
        net = Gain()
        if sd is not None:
            net.load_state_dict(sd)
        return net

    monkeypatch.setitem(registry.REGISTRY, "toy", BaseSpec("toy", "Toy gain", "toy", "toy.pth", plain_build, gain_forward))
    path = tmp_path / "bad.safetensors"
    from safetensors.torch import save_file

    save_file({"gain": torch.ones(4)}, str(path))
    with pytest.raises(WeightsError) as err:
        load_base("toy", weights=path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: not a Toy gain checkpoint (Error(s) in loading state_dict for Gain:")


def test_check_state_dict_summarises_missing_unexpected_and_shapes():
    sd = {"gain": torch.ones(4), "extra": torch.ones(1)}
    with pytest.raises(CheckpointMismatch) as err:
        registry.check_state_dict(Gain(), sd)
    assert str(err.value) == "1 unexpected key(s), e.g. 'extra'; 1 wrong shape(s), e.g. 'gain' is (4,), expected (3,)"
    with pytest.raises(CheckpointMismatch, match=r"^1 missing key\(s\), e.g. 'gain'$"):
        registry.check_state_dict(Gain(), {})


def test_build_strict_assigns_the_checkpoint_without_random_init():
    gain = torch.tensor([1.0, 2.0, 3.0])
    net = build_strict(Gain, {"gain": gain})
    assert torch.equal(net.gain, gain) and not net.gain.is_meta

    class WithScratch(Gain):  # a non-persistent buffer is not in any checkpoint: refuse meta init
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("scratch", torch.zeros(2), persistent=False)

    with pytest.raises(RuntimeError, match="scratch is not in the state dict"):
        build_strict(WithScratch, {"gain": gain})


def test_describe_gives_the_readme_table_row():
    row = registry.describe("codeformer")
    assert row["display_name"] == "CodeFormer"
    assert (row["license"], row["commercial_use"], row["size"]) == ("S-Lab License 1.0", False, 376637898)
    assert row["knobs"] == {
        "fidelity": {
            "default": 0.5,
            "type": "float",
            "low": 0.0,
            "high": 1.0,
            "help": "0 = best quality, 1 = closest to the input (upstream -w)",
        }
    }
    assert registry.describe("none")["weight_file"] is None
    assert registry.describe("gfpgan-1.3")["size"] == 348632874
