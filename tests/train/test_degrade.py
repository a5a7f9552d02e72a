from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from bfrboost.cli import app
from bfrboost.errors import UsageError
from bfrboost.train.degrade import (
    DegradeConfig,
    DegradeParams,
    anisotropic_kernel,
    apply_degradation,
    degrade,
    file_seed,
    gaussian_kernel,
    jpeg,
    sample_params,
)

runner = CliRunner()


@pytest.fixture(scope="module")
def face(testdata) -> np.ndarray:
    with Image.open(testdata / "aligned" / "0143.png") as image:
        return np.asarray(image.convert("RGB").resize((128, 128), Image.Resampling.LANCZOS))


@pytest.mark.parametrize("sigma", [0.1, 1.0, 10.0])
def test_kernels_sum_to_one_and_have_the_right_shape(sigma):
    for kernel in (gaussian_kernel(41, sigma), anisotropic_kernel(41, sigma, 2 * sigma, 0.7)):
        assert kernel.shape == (41, 41)
        assert kernel.sum() == pytest.approx(1.0, abs=1e-12)
        assert np.all(kernel >= 0)


def test_isotropic_kernel_equals_opencv_and_anisotropic_is_rotated():
    reference = cv2.getGaussianKernel(41, 3.0, cv2.CV_64F)
    np.testing.assert_allclose(gaussian_kernel(41, 3.0), reference @ reference.T, atol=1e-12)
    k = anisotropic_kernel(41, 6.0, 1.0, 0.0)  # wide along x
    assert k[20, 30] > k[30, 20]
    np.testing.assert_allclose(anisotropic_kernel(41, 6.0, 1.0, np.pi / 2), k.T, atol=1e-12)


def test_same_seed_same_image_and_per_file_seeds(face):
    assert np.array_equal(degrade(face, 7), degrade(face, 7))
    assert not np.array_equal(degrade(face, 7), degrade(face, 8))
    assert file_seed(0, "a.png") == file_seed(0, "a.png") != file_seed(0, "b.png") != file_seed(1, "a.png")


def test_every_range_is_honoured():
    config = DegradeConfig(blur_sigma=(2.0, 3.0), scale=(1.5, 2.5), noise=(4.0, 5.0), jpeg_quality=(70, 72))
    rng = np.random.default_rng(0)
    draws = [sample_params(rng, config) for _ in range(300)]
    assert all(2.0 <= s <= 3.0 for p in draws for s in p.sigma)
    assert all(1.5 <= p.scale <= 2.5 and 4.0 <= p.noise <= 5.0 and 70 <= p.quality <= 72 for p in draws)
    assert {p.quality for p in draws} == {70, 71, 72}
    assert any(p.sigma[0] != p.sigma[1] for p in draws) and any(p.sigma[0] == p.sigma[1] for p in draws)
    skipped = sum(4 - len(p.order) for p in draws) / (4 * len(draws))
    assert 0.05 < skipped < 0.15  # skip_prob 0.1
    defaults = [sample_params(s) for s in range(300)]
    assert all(
        0.1 <= min(p.sigma) and max(p.sigma) <= 10 and 0.8 <= p.scale <= 8 and 0 <= p.noise <= 20 and 60 <= p.quality <= 100
        for p in defaults
    )
    assert all(p.order == ["blur", "down", "noise", "jpeg"] for p in draws if len(p.order) == 4)  # the formula's order
    shuffled = [sample_params(s, DegradeConfig(shuffle_prob=1.0, skip_prob=0.0)).order for s in range(50)]
    assert len({tuple(o) for o in shuffled}) > 5


def test_each_operation_alone_is_what_it_says(face):
    only = lambda op, **kw: apply_degradation(face, DegradeParams(order=[op], **kw))  # noqa: E731
    blurred = only("blur", sigma=(2.0, 2.0))
    want = cv2.filter2D(
        face.astype(np.float32), -1, gaussian_kernel(41, 2.0).astype(np.float32), borderType=cv2.BORDER_REFLECT_101
    )
    np.testing.assert_array_equal(blurred, np.clip(np.rint(want), 0, 255).astype(np.uint8))
    down = only("down", scale=4.0)
    assert down.shape == face.shape
    small = cv2.resize(face.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(
        down, np.clip(np.rint(cv2.resize(small, (128, 128), interpolation=cv2.INTER_CUBIC)), 0, 255).astype(np.uint8)
    )
    noisy = only("noise", noise=10.0, noise_seed=3).astype(np.float64) - face
    assert abs(noisy[(face > 40) & (face < 215)].std() - 10.0) < 0.3


@pytest.mark.parametrize("quality", [60, 85, 100])
def test_jpeg_quality_is_honoured(face, quality):
    got = apply_degradation(face, DegradeParams(order=["jpeg"], quality=quality))
    ok, data = cv2.imencode(".jpg", face[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    np.testing.assert_array_equal(got, cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1])
    assert np.array_equal(got, jpeg(face, quality))
    if quality < 100:
        assert not np.array_equal(got, jpeg(face, quality + 10))


def test_bad_ranges_are_one_line_usage_errors():
    with pytest.raises(UsageError, match=r"^degrade: scale range must be LOW HIGH with LOW ≤ HIGH, got 4.0 2.0$"):
        DegradeConfig(scale=(4.0, 2.0))
    with pytest.raises(UsageError, match="kernel size must be odd"):
        DegradeConfig(kernel_size=40)


def test_cli_is_reproducible_per_file_and_never_overwrites_inputs(testdata, tmp_path):
    src = tmp_path / "hq"
    src.mkdir()
    for name in ("0143.png", "0368.png"):
        with Image.open(testdata / "aligned" / name) as image:
            image.convert("RGB").resize((96, 96)).save(src / name)
    (src / "broken.png").write_bytes(b"not an image")
    first = runner.invoke(app, ["degrade", str(src), "-o", str(tmp_path / "a"), "--seed", "5"])
    assert first.exit_code == 1  # the broken file fails, the others are written
    assert "broken.png" in first.stderr and first.stdout == f"2 image(s) degraded into {tmp_path / 'a'}, 1 failed (seed 5)\n"
    alone = runner.invoke(
        app, ["degrade", str(src / "0368.png"), "-o", str(tmp_path / "b"), "--seed", "5", "--jpeg-quality", "60", "100"]
    )
    assert alone.exit_code == 0, alone.output
    a, b = (np.asarray(Image.open(tmp_path / d / "0368.png")) for d in ("a", "b"))
    assert np.array_equal(a, b)  # same file, same seed: same output, whatever else was in the run
    log = [json.loads(line) for line in (tmp_path / "a" / "degrade.jsonl").read_text().splitlines()]
    assert [r["file"] for r in log] == ["0143.png", "0368.png"] and 60 <= log[0]["quality"] <= 100
    again = runner.invoke(app, ["degrade", str(src / "0143.png"), "-o", str(tmp_path / "a"), "--seed", "5"])
    assert again.exit_code == 1 and "already exists; pass --overwrite" in again.stderr
    into_input = runner.invoke(app, ["degrade", str(src / "0143.png"), "-o", str(src), "--overwrite"])
    assert into_input.exit_code == 1 and "would overwrite the input" in into_input.stderr
    with Image.open(src / "0143.png") as image:
        assert image.size == (96, 96)
