from __future__ import annotations

import cv2
import numpy as np
import pytest

from bfrboost.errors import InputError
from bfrboost.faces import FFHQ_TEMPLATE_512, Face, estimate_affine, warp_faces
from bfrboost.faces.align import BORDER_RGB, warp_affine


def _similarity(scale: float, degrees: float, tx: float, ty: float) -> np.ndarray:
    a = np.radians(degrees)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), tx], [scale * np.sin(a), scale * np.cos(a), ty]])


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def test_estimate_affine_recovers_a_known_similarity_exactly():
    truth = _similarity(3.7, -23.0, -410.0, 95.0)  # image → crop
    landmarks = _apply(cv2.invertAffineTransform(truth), FFHQ_TEMPLATE_512)
    np.testing.assert_allclose(estimate_affine(landmarks), truth, atol=1e-4)


def test_estimate_affine_scales_the_template_about_pixel_centres():
    # The 512 template itself, asked for a 256 crop: x_256 = (x_512 + 0.5) / 2 - 0.5.
    np.testing.assert_allclose(estimate_affine(FFHQ_TEMPLATE_512, 256), [[0.5, 0, -0.25], [0, 0.5, -0.25]], atol=1e-9)


def test_estimate_affine_ignores_one_misplaced_landmark():
    truth = _similarity(2.0, 10.0, 30.0, -40.0)
    landmarks = _apply(cv2.invertAffineTransform(truth), FFHQ_TEMPLATE_512)
    landmarks[2] += [25.0, -15.0]  # a nose far off: LMEDS must not follow it
    np.testing.assert_allclose(estimate_affine(landmarks), truth, atol=1e-4)


def test_degenerate_landmarks_raise_one_line():
    with pytest.raises(InputError, match=r"^face landmarks .* are degenerate; cannot align this face$"):
        estimate_affine(np.zeros((5, 2)))


def test_warp_faces_matches_a_full_frame_warp(whole_detections):
    image, faces = whole_detections["Solvay_conference_1927.png"]
    warp_faces(image, faces[:6])
    for face in faces[:6]:
        assert face.crop.shape == (512, 512, 3) and face.crop.dtype == np.uint8
        np.testing.assert_allclose(face.affine, estimate_affine(face.landmarks))
        reference = cv2.warpAffine(image, face.affine, (512, 512), flags=cv2.INTER_CUBIC, borderValue=BORDER_RGB)
        assert _psnr(face.crop, reference) > 45


def test_warp_faces_fills_outside_the_photo_with_gray_and_reads_only_the_face_region(monkeypatch):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (2000, 3000, 3), dtype=np.uint8)
    landmarks = _apply(cv2.invertAffineTransform(_similarity(4.0, 5.0, 200.0, 200.0)), FFHQ_TEMPLATE_512)  # face at the corner
    sources = []
    real_warp = cv2.warpAffine
    monkeypatch.setattr(cv2, "warpAffine", lambda src, *a, **k: sources.append(src.shape) or real_warp(src, *a, **k))
    (face,) = warp_faces(image, [Face(box=np.zeros(4), score=1.0, landmarks=landmarks)])
    assert tuple(face.crop[5, 5]) == BORDER_RGB and tuple(face.crop[-5, -5]) != BORDER_RGB
    assert all(h * w < 1000 * 1000 for h, w, *_ in sources), sources


def test_warp_affine_does_not_alias_when_shrinking():
    checker = np.indices((512, 512)).sum(0) % 2 * 255  # highest frequency there is
    matrix = _similarity(0.25, 7.0, 20.0, 10.0)
    ours = warp_affine(checker.astype(np.float32), matrix, (100, 100))
    plain = cv2.warpAffine(checker.astype(np.float32), matrix, (100, 100), flags=cv2.INTER_CUBIC)
    inner = (slice(30, 90), slice(30, 90))
    assert np.abs(ours[inner] - 127.5).max() < 3  # averaged to mid gray
    assert np.abs(plain[inner] - 127.5).max() > 60  # point sampling aliases


def test_warp_affine_enlarging_matches_bicubic_on_smooth_content():
    y, x = np.mgrid[0:64, 0:64].astype(np.float32)
    smooth = (127 + 100 * np.sin(x / 5.0) * np.cos(y / 7.0)).astype(np.float32)
    matrix = _similarity(6.0, 17.0, -40.0, -90.0)
    ours = warp_affine(smooth, matrix, (256, 256))
    reference = cv2.warpAffine(smooth, matrix, (256, 256), flags=cv2.INTER_CUBIC)
    inside = (slice(60, 200), slice(60, 200))
    assert np.abs(ours[inside] - reference[inside]).max() < 1.0
