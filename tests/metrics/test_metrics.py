"""Each metric on known inputs, against an independent computation where one exists."""

from __future__ import annotations

import os
import pickle

import cv2
import numpy as np
import pytest
import torch
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from bfrboost.errors import UsageError, WeightsError
from bfrboost.evaluation.evaluator import Evaluator, MetricModels
from bfrboost.metrics import parse_metrics
from bfrboost.metrics.fidelity import psnr, rgb_to_y, ssim
from bfrboost.metrics.inception import ReferenceStats, fid, inception_features, kid, load_inception
from bfrboost.metrics.musiq import NOT_INSTALLED


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    ok, data = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1].copy()


# ---- PSNR / SSIM ---------------------------------------------------------------------------------


def test_y_channel_is_bt601_studio_range_like_scikit_image(aligned_faces):
    face = aligned_faces[0]
    np.testing.assert_allclose(rgb_to_y(face), rgb2ycbcr(face)[..., 0], atol=1e-9)


def test_identical_images_give_psnr_inf_and_ssim_1(aligned_faces):
    face = aligned_faces[1]
    assert psnr(face, face.copy()) == float("inf")
    assert ssim(face, face.copy()) == pytest.approx(1.0, abs=1e-12)


def test_psnr_and_ssim_equal_scikit_image_on_real_photos(aligned_faces):
    for face, quality in zip(aligned_faces[:3], (20, 50, 80)):
        degraded = _jpeg(face, quality)
        y, y_ref = rgb_to_y(degraded), rgb_to_y(face)
        expected_ssim = structural_similarity(
            y, y_ref, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
        )
        assert ssim(degraded, face) == pytest.approx(expected_ssim, abs=1e-9)
        assert psnr(degraded, face) == pytest.approx(peak_signal_noise_ratio(y_ref, y, data_range=255), abs=1e-9)
    assert ssim(_jpeg(face, 10), face) < ssim(_jpeg(face, 90), face) < 1


# ---- FID / KID -----------------------------------------------------------------------------------


@pytest.fixture
def inception64(inception_file):
    """torch-fidelity's InceptionV3 with official-format random weights. FID tests read its 64-d
    pool1 layer: same code path, without the 2048² eigen-decomposition (13–35 s on this CPU)."""
    return load_inception(feature="64")


def test_fid_of_a_set_against_itself_is_zero_and_positive_against_another(inception64, aligned_faces):
    feats = inception_features(inception64, aligned_faces + [f[:, ::-1] for f in aligned_faces])
    assert feats.shape == (12, 64)
    whole = ReferenceStats.from_features(feats, 512)
    assert fid(whole, whole) == pytest.approx(0.0, abs=1e-6)
    first, second = ReferenceStats.from_features(feats[:6], 512), ReferenceStats.from_features(feats[6:], 512)
    assert fid(first, second) > 1e-3


def test_fid_matches_torchmetrics(inception64, inception_file, aligned_faces):
    torchmetrics_fid = pytest.importorskip("torchmetrics.image.fid")
    a, b = aligned_faces[:3] + [f[::-1] for f in aligned_faces[:3]], aligned_faces[3:] + [f[:, ::-1] for f in aligned_faces[3:]]
    ours = fid(
        ReferenceStats.from_features(inception_features(inception64, a), 512),
        ReferenceStats.from_features(inception_features(inception64, b), 512),
    )
    # antialias=False: torchmetrics' default antialiased resize departs from the TF-exact one of FID
    metric = torchmetrics_fid.FrechetInceptionDistance(
        feature=64, feature_extractor_weights_path=str(inception_file), antialias=False
    )
    metric.update(torch.from_numpy(np.stack(a)).permute(0, 3, 1, 2).contiguous(), real=True)
    metric.update(torch.from_numpy(np.stack(b)).permute(0, 3, 1, 2).contiguous(), real=False)
    assert ours == pytest.approx(float(metric.compute()), rel=1e-3)


def test_kid_is_the_unbiased_polynomial_mmd(inception_file, aligned_faces):
    net = load_inception()  # the real 2048-d features: KID needs no eigen-decomposition
    feats = inception_features(net, aligned_faces + [f[:, ::-1] for f in aligned_faces]).astype(np.float64)
    x, y = feats[:6], feats[6:]

    def mmd2(x: np.ndarray, y: np.ndarray) -> float:  # independent: Bińkowski et al. 2018, Eq. 4
        k = lambda a, b: (a @ b.T / a.shape[1] + 1) ** 3  # noqa: E731
        n, m = len(x), len(y)
        kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
        return (kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()

    # with subsets as large as the sets, every subset is the whole set: KID is exactly the full MMD²
    assert kid(x, y, subsets=3) == pytest.approx(mmd2(x, y), rel=1e-4)
    assert abs(kid(feats, feats, subsets=3)) < abs(kid(x, y, subsets=3)) + 1e-12
    with pytest.raises(ValueError):
        kid(x[:1], y)


def test_stats_file_round_trips_and_other_files_are_refused(tmp_path):
    feats = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    stats = ReferenceStats.from_features(feats, 512, max_kid_features=10)
    path = stats.save(tmp_path / "ffhq.npz")
    loaded = ReferenceStats.load(path)
    np.testing.assert_array_equal(loaded.mu, stats.mu)
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)
    assert loaded.features.shape == (10, 8) and loaded.count == 20 and loaded.size == 512
    np.savez(tmp_path / "other.npz", mu=np.zeros(3))
    with pytest.raises(Exception) as err:
        ReferenceStats.load(tmp_path / "other.npz")
    assert "not a bfrboost reference statistics file; make one with `bfrboost eval stats FFHQ_DIR -o other.npz`" in str(err.value)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_inception_loading_never_runs_code_from_the_file(_isolated_cache, trust_cache):
    from bfrboost.metrics.inception import INCEPTION_FILE

    with open(_isolated_cache / INCEPTION_FILE, "wb") as f:
        torch.save({"x": _Evil()}, f)
    with pytest.raises(pickle.UnpicklingError):
        load_inception()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


# ---- LPIPS / IDS / NIQE / MUSIQ ------------------------------------------------------------------


def test_lpips_is_zero_for_identical_images_and_uses_the_vgg16_backbone(vgg16_file, random_vgg16_state, aligned_faces):
    import torchvision

    from bfrboost.metrics.perceptual import load_lpips, lpips_distance

    net = load_lpips()
    a = cv2.resize(aligned_faces[0], (64, 64), interpolation=cv2.INTER_AREA)
    b = cv2.resize(aligned_faces[1], (64, 64), interpolation=cv2.INTER_AREA)
    assert lpips_distance(net, a, a.copy()) == 0.0
    assert lpips_distance(net, a, b) > 0
    # independent: torchvision's VGG16 with the same file gives the features lpips' slices give
    vgg = torchvision.models.vgg16(weights=None)
    vgg.load_state_dict(random_vgg16_state)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(net.net(x)[4].numpy(), vgg.features[:30](x).numpy(), rtol=1e-4, atol=1e-5)


def test_lpips_refuses_a_non_vgg_checkpoint(_isolated_cache, trust_cache):
    from bfrboost.metrics.perceptual import VGG16_FILE, load_lpips

    torch.save({"conv1.weight": torch.zeros(1)}, _isolated_cache / VGG16_FILE)
    with pytest.raises(WeightsError) as err:
        load_lpips()
    assert "not a torchvision VGG16 checkpoint" in str(err.value) and str(err.value).endswith(
        "run `bfrboost weights download lpips`"
    )


def test_ids_of_identical_faces_is_one(aligned_faces, monkeypatch):
    from bfrboost.metrics.ids import identity_similarity
    from bfrboost.nets.arcface import random_arcface

    model = random_arcface(0)
    assert identity_similarity(model, aligned_faces[0], aligned_faces[0].copy()) == pytest.approx(1.0, abs=1e-5)
    assert identity_similarity(model, aligned_faces[0], aligned_faces[2]) < 0.999


def test_niqe_matches_basicsr_on_real_photos(niqe_file, testdata):
    from basicsr.metrics.niqe import calculate_niqe

    from bfrboost.metrics.niqe import niqe

    from .conftest import load_rgb

    for path in (testdata / "aligned" / "0143.png", testdata / "whole" / "02.png"):
        rgb = load_rgb(path)
        # BasicSR computes in float32; ours in float64 like MATLAB: they agree to 0.2 %
        assert niqe(rgb) == pytest.approx(calculate_niqe(rgb[..., ::-1], 0), rel=2e-3), path.name


def test_niqe_resize_is_matlab_imresize(niqe_file):
    from basicsr.utils.matlab_functions import imresize as basicsr_imresize

    from bfrboost.metrics.niqe import imresize

    img = np.random.default_rng(0).random((37, 50))
    np.testing.assert_allclose(imresize(img, 0.5), basicsr_imresize(img, 0.5), atol=1e-6)


def test_niqe_is_lower_for_the_clean_face(niqe_file, aligned_faces):
    from bfrboost.metrics.niqe import niqe

    face = aligned_faces[0]
    noisy = np.clip(face + np.random.default_rng(0).normal(0, 25, face.shape), 0, 255).astype(np.uint8)
    assert niqe(face) < niqe(noisy)


def test_musiq_without_pyiqa_is_skipped_with_its_licence(monkeypatch, aligned_faces):
    import builtins

    real_import = builtins.__import__

    def no_pyiqa(name, *args, **kwargs):
        if name == "pyiqa":
            raise ImportError("No module named 'pyiqa'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyiqa)
    evaluator = Evaluator(["musiq", "psnr"])
    evaluator.update(aligned_faces[:1], aligned_faces[:1])
    results = evaluator.results()
    assert results["musiq"].value is None and results["musiq"].skipped == NOT_INSTALLED
    assert "non-commercial" in NOT_INSTALLED and "bfrboost[eval-nc]" in NOT_INSTALLED
    assert results["psnr"].value == float("inf")


def test_musiq_through_pyiqa_loads_the_cached_checkpoint_quietly(_isolated_cache, trust_cache, aligned_faces, capsys):
    pytest.importorskip("pyiqa")
    from pyiqa.archs.musiq_arch import MUSIQ

    from bfrboost.metrics.musiq import MUSIQ_FILE, load_musiq, musiq_score

    torch.manual_seed(0)
    reference = MUSIQ(pretrained=False).eval()  # pyiqa's own architecture: the official key layout
    torch.save(reference.state_dict(), _isolated_cache / MUSIQ_FILE)
    net = load_musiq()
    face = cv2.resize(aligned_faces[0], (224, 224), interpolation=cv2.INTER_AREA)
    with torch.no_grad():
        expected = float(reference(torch.from_numpy(face).permute(2, 0, 1)[None].float() / 255.0).item())
    assert musiq_score(net, face) == pytest.approx(expected, rel=1e-5)
    assert capsys.readouterr().out == ""  # pyiqa's loading message must not reach stdout (--json)


# ---- missing weights, metric names ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("metric", "message"),
    [
        (
            "fid",
            "weights-inception-2015-12-05-6726825d.pth: the FID weights are not in the cache; "
            "run `bfrboost weights download inception`",
        ),
        ("lpips", "vgg16-397923af.pth: the LPIPS weights are not in the cache; run `bfrboost weights download lpips`"),
        ("ids", "recognition_arcface_ir_se50.pth: the IDS weights are not in the cache; run `bfrboost weights download arcface`"),
        ("niqe", "niqe_pris_params.npz: the NIQE weights are not in the cache; run `bfrboost weights download niqe`"),
    ],
)
def test_missing_metric_weights_name_the_download_command(metric, message):
    with pytest.raises(WeightsError) as err:
        Evaluator([metric]).check_weights()
    assert str(err.value) == message


def test_metric_names_are_checked():
    assert parse_metrics("PSNR, ssim,psnr") == ["psnr", "ssim"]
    assert parse_metrics("all")[0] == "fid"
    with pytest.raises(UsageError) as err:
        parse_metrics("fid,sharpness")
    assert str(err.value) == "unknown metric 'sharpness'; choose from fid, kid, niqe, musiq, lpips, psnr, ssim, ids (or all)"


def test_evaluator_shares_models_and_reports_timings(inception_file, aligned_faces):
    models = MetricModels("cpu", inception_feature="64")
    faces = aligned_faces[:4]
    stats = ReferenceStats.from_features(inception_features(models.get("inception"), faces), 512)
    evaluator = Evaluator(["fid", "kid", "psnr", "ssim"], models=models, reference_stats=stats, kid_subsets=2)
    evaluator.update(faces[:2], faces[:2])
    evaluator.update(faces[2:], [None, faces[3]])
    results = evaluator.results()
    assert results["fid"].value == pytest.approx(0.0, abs=1e-6) and results["fid"].count == 4
    assert results["psnr"].count == 3 and results["psnr"].value == float("inf")
    assert all(v.seconds >= 0 for v in results.values())
    assert results["psnr"].as_dict()["value"] == "inf" and results["fid"].as_dict()["better"] == "lower"
