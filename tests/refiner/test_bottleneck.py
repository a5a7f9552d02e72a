from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from bfrboost.errors import UsageError
from bfrboost.refiner import ManifoldBottleneck, ManifoldTransformer, information_loss


def make(stats_mode: str = "channel", **kw) -> ManifoldBottleneck:
    torch.manual_seed(0)
    return ManifoldBottleneck(channels=8, width=16, heads=2, mlp_ratio=2.0, stats_mode=stats_mode, **kw)


def set_lambda(b: ManifoldBottleneck, logit: float) -> None:
    with torch.no_grad():
        b.lambda_head.weight.zero_()
        b.lambda_head.bias.fill_(logit)


def test_transformer_keeps_shape_and_sees_position():
    torch.manual_seed(0)
    block = ManifoldTransformer(channels=8, width=16, heads=2, mlp_ratio=4.0)
    r = torch.randn(2, 8, 6, 5)
    assert torch.equal(block(r), r)  # residual with a zero output projection: h == r at init
    torch.nn.init.normal_(block.proj_out.weight, std=0.1)
    h = block(r)
    assert h.shape == r.shape
    # identical tokens at every position still give position-dependent outputs (2-D sin/cos embedding)
    flat = block(torch.ones(1, 8, 6, 5))
    assert not torch.allclose(flat[..., 0, 0], flat[..., 3, 2])


def test_outputs_have_the_manifold_shape_and_lambda_starts_near_one():
    b = make(lambda_init=0.99)
    r = torch.randn(2, 8, 12, 12)
    out = b(r)
    for t in (out.z, out.lam, out.h):
        assert t.shape == r.shape
    assert out.info_loss.shape == ()
    torch.testing.assert_close(out.lam, torch.full_like(r, 0.99))


def test_lambda_one_passes_the_manifold_unchanged():
    b = make()
    set_lambda(b, 100.0)  # sigmoid(100) == 1.0 exactly in float32
    b.set_stats(torch.full((8, 1, 1), 3.0), torch.full((8, 1, 1), 2.0))
    r = torch.randn(2, 8, 10, 10) * 4
    out = b(r, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.z, r)


def test_lambda_zero_gives_noise_with_the_stored_statistics():
    b = make()
    set_lambda(b, -100.0)
    mean = torch.linspace(-2, 2, 8).view(8, 1, 1)
    std = torch.tensor([0.5, 1, 2, 3, 0.1, 0.001, 1.5, 0.7]).view(8, 1, 1)
    b.set_stats(mean, std)
    r = torch.randn(4, 8, 32, 32) * 10 + 7  # nothing of r must survive
    z = b(r, generator=torch.Generator().manual_seed(0)).z
    got_mean, got_std = z.mean((0, 2, 3)), z.std((0, 2, 3))
    want_std = std.flatten().clamp_min(0.01)  # σ_R is clamped at sigma_min
    # 4096 samples per channel: standard error of the mean is σ/64, of the std ≈ σ/90
    assert torch.all((got_mean - mean.flatten()).abs() < 4 * want_std / 64)
    assert torch.all((got_std / want_std - 1).abs() < 0.05)


def test_per_element_statistics_are_used_elementwise():
    b = make("element")
    set_lambda(b, -100.0)
    mean = torch.arange(8 * 4 * 4, dtype=torch.float32).view(8, 4, 4)
    b.set_stats(mean, torch.full((8, 4, 4), 1e-6))
    z = b(torch.zeros(3, 8, 4, 4)).z
    torch.testing.assert_close(z, mean.expand(3, -1, -1, -1), atol=0.05, rtol=0)  # σ clamped to 0.01
    with pytest.raises(
        UsageError, match=r"per-element statistics are \(4, 4\) but the manifold is \(8, 8\); recompute stats at this face size"
    ):
        b(torch.zeros(1, 8, 8, 8))


def test_statistics_shape_must_fit_the_mode():
    with pytest.raises(UsageError, match=r"statistics of shape \(8, 4, 4\) do not fit stats_mode='channel'"):
        make("channel").set_stats(torch.zeros(8, 4, 4), torch.ones(8, 4, 4))


def test_information_loss_matches_torch_kl_divergence():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(2, 8, 6, 6, generator=g) * 3 + 1
    logits = torch.randn(2, 8, 6, 6, generator=g) * 2
    mean, std = torch.randn(8, 1, 1, generator=g), torch.rand(8, 1, 1, generator=g) + 0.5
    lam = torch.sigmoid(logits).double()
    r_tilde = (r.double() - mean.double()) / std.double()
    reference = kl_divergence(Normal(lam * r_tilde, 1 - lam), Normal(0.0, 1.0)).mean()
    torch.testing.assert_close(information_loss(r, logits, mean, std).double(), reference, rtol=1e-5, atol=1e-6)


def test_information_loss_is_finite_when_lambda_saturates():
    loss = information_loss(torch.ones(1, 8, 2, 2), torch.full((1, 8, 2, 2), 50.0), torch.zeros(8, 1, 1), torch.ones(8, 1, 1))
    assert torch.isfinite(loss) and loss.item() == pytest.approx(50.0, rel=1e-3)  # −log(1−λ) ≈ logit


def test_the_bottleneck_filters_the_transformer_output():
    """The manifold is VAE + Transformer (Eq. 4): changing the Transformer changes z and the KL."""
    b = make()
    b.set_stats(torch.zeros(8, 1, 1), torch.ones(8, 1, 1))
    r = torch.randn(2, 8, 6, 6, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(r.shape, generator=torch.Generator().manual_seed(1))
    before = b(r, noise=noise)
    torch.testing.assert_close(before.h, r)
    with torch.no_grad():
        for p in b.transformer.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.1)
    after = b(r, noise=noise)
    assert not torch.allclose(after.z, before.z)
    torch.testing.assert_close(after.z, after.lam * after.h + (1 - after.lam) * noise)
    assert after.info_loss != before.info_loss


def test_defaults_follow_the_paper():
    from bfrboost.refiner import InfoBFRConfig

    config = InfoBFRConfig()
    assert config.beta == 20.0  # Table III: "adopt β=20"
    assert config.stats_mode == "element" and config.sigma_min == 0.01  # IBA's per-element estimator
    assert config.latent_choice == "sample"
    assert ManifoldBottleneck().stats_mode == "element"


def test_lambda_mix_and_kl_stay_float32_under_bf16_autocast():
    b = make(lambda_init=0.99)
    b.set_stats(torch.zeros(8, 1, 1), torch.ones(8, 1, 1))
    r = torch.randn(1, 8, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = b(r, noise=torch.zeros_like(r))
    assert out.lam.dtype == out.z.dtype == out.info_loss.dtype == torch.float32
    torch.testing.assert_close(out.lam, torch.full_like(r, 0.99), atol=1e-7, rtol=0)  # bf16 would give 0.98828
    set_lambda(b, math.log(0.999 / 0.001))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.all(b(r, noise=torch.zeros_like(r)).lam < 1)  # bf16 rounds λ ≥ 0.998 to exactly 1
