"""Guided sampler, properties and tasks on the tiny prior: directions and invariants, not pictures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bfrboost.errors import UsageError, WeightsError
from bfrboost.guidance import PGDiff, load_prior
from bfrboost.guidance.properties import (
    ColorStats,
    Identity,
    Lightness,
    SmoothSemantics,
    Step,
    Unmasked,
    gray,
    guidance_gradient,
)
from bfrboost.guidance.sampler import Guidance, dynamic_update, guided_step, sample
from bfrboost.guidance.schedule import Schedule, respaced_timesteps
from bfrboost.nets import rrdb as rrdb_module
from bfrboost.nets.arcface import random_arcface
from bfrboost.nets.iddpm import IDDPMUNet, linear_alphas_cumprod
from bfrboost.options import GuidanceOptions
from tests.guidance.conftest import TINY_PRIOR, TINY_RRDB, load_rgb, to_batch

SIZE = TINY_PRIOR.image_size


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(1)
    y = torch.rand(1, 3, SIZE, SIZE, generator=g) * 2 - 1
    mask = torch.zeros(1, 1, SIZE, SIZE)
    mask[..., 20:40, 20:40] = 1
    return dict(y=y, mask=mask, x=torch.randn(1, 3, SIZE, SIZE, generator=g), noise=torch.randn(1, 3, SIZE, SIZE, generator=g))


@pytest.fixture(scope="module")
def arcface():
    return random_arcface(0)


# ---- schedule ------------------------------------------------------------------------------------


def test_respacing_keeps_upstream_timesteps():
    assert respaced_timesteps(1000) == list(range(1000))
    assert respaced_timesteps(200) == list(range(0, 1000, 5))  # upstream's ddpm200
    assert respaced_timesteps(100) == list(range(0, 1000, 10))
    odd = respaced_timesteps(300)  # no integer stride gives 300: evenly spaced sections
    assert len(odd) == 300 and odd[0] == 0 and odd[-1] == 999
    with pytest.raises(UsageError):
        respaced_timesteps(0)


def test_respaced_schedule_keeps_the_noise_levels_and_recomputes_betas():
    full, spaced = Schedule.respaced(1000), Schedule.respaced(100)
    abar = linear_alphas_cumprod(1000).numpy()
    np.testing.assert_allclose(spaced.alphas_cumprod, abar[::10], rtol=1e-12)
    np.testing.assert_allclose(full.betas, np.linspace(1e-4, 0.02, 1000), rtol=1e-9)
    prev = np.concatenate([[1.0], abar[::10][:-1]])
    betas = 1 - abar[::10] / prev
    np.testing.assert_allclose(spaced.posterior_variance, betas * (1 - prev) / (1 - abar[::10]), rtol=1e-9)
    # posterior mean of x0 = x_t's own x0 is x0 scaled back to the previous noise level: c0·x0 + ct·√ᾱ·x0 = √ᾱ_prev·x0
    k = 50
    assert spaced.mean_coef_x0[k] + spaced.mean_coef_xt[k] * abar[::10][k] ** 0.5 == pytest.approx(prev[k] ** 0.5)


# ---- properties and updates ---------------------------------------------------------------------


def _properties(data, arcface):
    y, mask = data["y"], data["mask"]
    ref = arcface.embed(torch.rand(1, 3, 112, 112, generator=torch.Generator().manual_seed(5))).detach()
    return {
        "smooth_semantics": (SmoothSemantics(target=y), "mean", False),
        "lightness": (Lightness(y), "dynamic", True),
        "color": (ColorStats(), "dynamic", True),
        "unmasked": (Unmasked(y, mask), "dynamic", False),
        "identity": (Identity(embed=arcface.embed, reference=ref), "mean", False),
    }


@pytest.mark.parametrize("name", ["smooth_semantics", "lightness", "color", "unmasked", "identity"])
def test_each_property_loss_decreases_after_one_guided_update(name, data, arcface, tiny_prior):
    """From a fixed x_t, the guided x_{t-1} has a lower loss (on the prior's next x̂₀) than the unguided one."""
    prop, update, per_channel = _properties(data, arcface)[name]
    schedule, k = Schedule.respaced(20), 10
    losses = []
    for scale in (0.0, 1.0):
        guidance = Guidance(terms=[(1.0, prop)], update=update, scale=scale, per_channel=per_channel)
        x_prev = guided_step(tiny_prior, schedule, k, data["x"], guidance, data["noise"])
        t_prev = schedule.timesteps[k - 1]
        with torch.no_grad():
            eps = tiny_prior(x_prev, torch.full((1,), t_prev))[:, :3]
            x0 = schedule.predict_x0(k - 1, x_prev, eps).clamp(-1, 1)
            losses.append(float(prop.loss(x0, Step(x_prev, t_prev))))
    assert losses[1] < losses[0]


def test_composite_weights_sum_the_gradients(data):
    x0 = torch.rand(1, 3, SIZE, SIZE) * 2 - 1
    step = Step(x_t=x0, t=500)
    light, color = Lightness(data["y"]), ColorStats()
    g_light, _ = guidance_gradient(x0, [(1.0, light)], step)
    g_color, _ = guidance_gradient(x0, [(1.0, color)], step)
    both, losses = guidance_gradient(x0, [(2.0, light), (0.05, color)], step)
    torch.testing.assert_close(both, 2.0 * g_light + 0.05 * g_color, rtol=1e-5, atol=1e-5)
    assert set(losses) == {"lightness", "color"}
    # the lightness gradient is the analytic one: d/dx Σ (mean_c x − mean_c y)² = 2·(gray x − gray y)·3/3 per channel
    torch.testing.assert_close(g_light, 2 * (gray(x0) - gray(data["y"])), rtol=1e-5, atol=1e-5)


def test_dynamic_update_scales_the_gradient_to_the_step_size():
    g = torch.Generator().manual_seed(2)
    x, s, grad = (torch.randn(2, 3, 8, 8, generator=g) for _ in range(3))
    out = dynamic_update(x, s, grad, 0.3, per_channel=True)
    for b in range(2):
        for c in range(3):
            coef = (x[b, c] - s[b, c]).norm() / grad[b, c].norm()
            torch.testing.assert_close(out[b, c], s[b, c] - 0.3 * coef * grad[b, c])
    whole = dynamic_update(x, s, grad, 0.3, per_channel=False)
    torch.testing.assert_close(whole[0], s[0] - 0.3 * (x[0] - s[0]).norm() / grad[0].norm() * grad[0])
    assert torch.equal(dynamic_update(x, s, torch.zeros_like(grad), 0.3, True), s)  # no gradient, no move


def test_mask_zeroes_the_gradient_inside(data, tiny_prior):
    schedule, k = Schedule.respaced(20), 10
    prop = Unmasked(data["y"], data["mask"])
    plain = guided_step(tiny_prior, schedule, k, data["x"], Guidance(update="mean", scale=0.0), data["noise"])
    guidance = Guidance([(1.0, prop)], "mean", 1.0, mask=data["mask"])
    guided = guided_step(tiny_prior, schedule, k, data["x"], guidance, data["noise"])
    inside = data["mask"].bool().expand_as(plain)
    torch.testing.assert_close(guided[inside], plain[inside])
    assert (guided[~inside] - plain[~inside]).abs().mean() > 1e-3


# ---- tasks ---------------------------------------------------------------------------------------


def test_colorization_keeps_the_lightness_and_adds_chroma(tiny_prior, testdata):
    face = to_batch(load_rgb(testdata / "gray" / "Einstein01.png"))
    model = PGDiff(tiny_prior)
    light_error, chroma = {}, {}
    for scale in (0.0, 0.5):
        out = model("colorize", face, GuidanceOptions(steps=20, scale=scale))
        light_error[scale] = float((out.mean(1) - face.mean(1)).abs().mean())
        chroma[scale] = float((out - out.mean(1, keepdim=True)).abs().mean())
    assert light_error[0.5] < 0.05 and light_error[0.5] < light_error[0.0] / 3
    assert chroma[0.5] > 0.05  # colour, not gray


def test_inpainting_keeps_the_unmasked_region_and_fills_the_mask(tiny_prior, testdata):
    face = to_batch(load_rgb(testdata / "masked" / "00059.png"))
    mask = to_batch(load_rgb(testdata / "masked" / "masks" / "00059.png"))[:, :1].gt(0).float()
    known, hole = (mask == 0).expand_as(face), (mask == 1).expand_as(face)
    error = {}
    for scale in (0.0, 1.0):
        out = PGDiff(tiny_prior)("inpaint", face, GuidanceOptions(steps=20, scale=scale), masks=mask)
        error[scale] = float((out - face)[known].abs().mean())
    assert error[1.0] < 0.04 and error[1.0] < error[0.0] / 5  # within 10/255 on average, unguided is ~0.4
    assert (out - face)[hole].abs().mean() > 0.2  # the white strokes are replaced


def test_identity_guidance_raises_the_cosine_to_the_reference(tiny_prior, testdata, arcface):
    lq = to_batch(load_rgb(testdata / "reference" / "lq" / "00010.png"))
    ref = arcface.embed(to_batch(load_rgb(testdata / "reference" / "ref" / "00010.png")))
    model = PGDiff(tiny_prior, arcface=arcface)
    cosine = {}
    for weight in (0.0, 1e3):  # unit embeddings: squared L2 = 2 − 2·cos
        options = GuidanceOptions(steps=8, scale=0.1, ref_weight=weight)
        out = model("restore", lq, options, targets=lq, reference=ref)
        cosine[weight] = float((arcface.embed(out) * ref).sum())
    assert cosine[1e3] > cosine[0.0] + 0.1  # measured 0.38 vs 0.13


def test_same_seed_same_output_and_batch_does_not_matter(tiny_prior):
    faces = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(3))  # resized to the prior and back
    model = PGDiff(tiny_prior)
    options = GuidanceOptions(steps=6, seed=7)
    a = model("restore", faces, options, targets=faces)
    assert a.shape == faces.shape and 0 <= float(a.min()) and float(a.max()) <= 1
    torch.testing.assert_close(model("restore", faces, options, targets=faces), a, rtol=0, atol=0)
    torch.testing.assert_close(model("restore", faces[1:], options, targets=faces[1:]), a[1:], rtol=1e-5, atol=1e-5)
    other = model("restore", faces, GuidanceOptions(steps=6, seed=8), targets=faces)
    assert (other - a).abs().mean() > 1e-3


def test_repeats_apply_in_the_early_window_only(tiny_prior):
    seen = []
    guidance = Guidance(update="mean", scale=0.0, repeats=3, repeat_from=0.7)
    sample(tiny_prior, (1, 3, SIZE, SIZE), guidance, steps=10, on_step=lambda done, total: seen.append(total))
    early = sum(t > 700 for t in respaced_timesteps(10))  # stride 100: 0, 100, …, 900 → 800 and 900
    assert early == 2 and seen[-1] == 10 + 2 * early and len(seen) == seen[-1]


def test_tasks_refuse_missing_inputs(tiny_prior):
    model = PGDiff(tiny_prior)
    face = torch.rand(1, 3, SIZE, SIZE)
    with pytest.raises(UsageError, match="needs a smooth-semantics restorer"):
        model("restore", face)
    with pytest.raises(UsageError, match="unknown guided task"):
        model("deblur", face)
    with pytest.raises(UsageError, match="ref-loss|identity loss"):
        GuidanceOptions(ref_loss="l1")


def test_rrdb_restorer_is_time_conditioned_and_drives_smooth_semantics(tiny_prior):
    torch.manual_seed(0)
    rrdb = rrdb_module.build(None, TINY_RRDB)
    x, y = torch.randn(1, 3, SIZE, SIZE), torch.rand(1, 3, SIZE, SIZE) * 2 - 1
    a, b = rrdb(x, y, torch.tensor([10])), rrdb(x, y, torch.tensor([900]))
    assert a.shape == (1, 3, SIZE, SIZE) and (a - b).abs().max() > 0
    out = PGDiff(tiny_prior, rrdb=rrdb)("old-photo", (y + 1) / 2, GuidanceOptions(steps=4))
    assert out.shape == (1, 3, SIZE, SIZE)


# ---- official checkpoints ------------------------------------------------------------------------


def _official_format_file(path, net_on_meta: torch.nn.Module, prefix: str = "", wrapper: str | None = None):
    """Every official key and shape, each tensor a 4-byte storage expanded to its shape (no 640 MB)."""
    one = torch.zeros(1)
    state = {f"{prefix}{k}": one.expand(v.shape) for k, v in net_on_meta.state_dict().items()}
    torch.save(state if wrapper is None else {wrapper: state}, path)
    return state


def test_the_real_prior_loads_strictly_from_an_official_format_file(tmp_path, monkeypatch):
    with torch.device("meta"):
        real = IDDPMUNet()
    path = tmp_path / "iddpm_ffhq512_ema500000.pth"
    state = _official_format_file(path, real, prefix="module.")  # the released file is a DataParallel state dict
    assert path.stat().st_size < 2_000_000
    assert sum(v.numel() for v in state.values()) * 4 == pytest.approx(639_362_581, rel=0.01)
    prior = load_prior(path)
    assert prior.config.image_size == 512 and prior.out[2].weight.shape == (6, 32, 3, 3)
    wrong = tmp_path / "wrong.pth"
    torch.save({"input_blocks.0.0.weight": torch.zeros(32, 3, 3, 3)}, wrong)
    with pytest.raises(WeightsError, match=r"wrong.pth: not an IDDPM FFHQ-512 prior \(.*missing key"):
        load_prior(wrong)


# Transcribed from pq-yang/PGDiff guided_diffusion/restorer (create_restorer: in 9, mid 64, 23 blocks, growth 32, ×1).
RRDB_SHAPES = {
    "generator.conv_first.weight": (64, 144, 3, 3),
    "generator.body.0.rdb1.conv1.weight": (32, 64, 3, 3),
    "generator.body.22.rdb3.conv5.weight": (64, 192, 3, 3),
    "generator.conv_body.weight": (64, 64, 3, 3),
    "generator.conv_up2.bias": (64,),
    "generator.conv_hr.weight": (64, 64, 3, 3),
    "generator.conv_last.weight": (3, 64, 3, 3),
    "time_embed.0.weight": (3, 100),
    "time_embed.2.weight": (3, 3),
}


def test_rrdb_official_keys_load_strictly(tmp_path):
    with torch.device("meta"):
        real = rrdb_module.TimeRRDB()
    sd = real.state_dict()
    assert {k: tuple(sd[k].shape) for k in RRDB_SHAPES} == RRDB_SHAPES
    assert "generator.body.23.rdb1.conv1.weight" not in sd
    path = tmp_path / "rrdb_iter_100000.pth"
    _official_format_file(path, real, wrapper="state_dict")  # upstream reads checkpoint['state_dict']
    net = rrdb_module.load(path)
    assert net.generator.conv_first.weight.shape == (64, 144, 3, 3)
    bad = tmp_path / "bad.pth"
    torch.save({"conv_first.weight": torch.zeros(64, 144, 3, 3)}, bad)  # a bare RRDBNet without the wrapper's names
    with pytest.raises(WeightsError, match="bad.pth: not PGDiff's RRDB restorer"):
        rrdb_module.load(bad)
