from __future__ import annotations

import cv2
import numpy as np
import pytest

from bfrboost.errors import UsageError
from bfrboost.faces import (
    FFHQ_TEMPLATE_512,
    Face,
    match_color,
    paste_faces,
    soft_square_mask,
    warp_faces,
)


def _crop_region(shape, faces, upscale: float = 1.0) -> np.ndarray:
    """Independent reference for "the pasted region": each crop square polygon in the frame."""
    region = np.zeros(shape[:2], np.uint8)
    corners = np.array([[-0.5, -0.5], [511.5, -0.5], [511.5, 511.5], [-0.5, 511.5]])
    for face in faces:
        inverse = cv2.invertAffineTransform(face.affine)
        quad = (corners @ inverse[:, :2].T + inverse[:, 2] + 0.5) * upscale - 0.5
        cv2.fillConvexPoly(region, np.round(quad * 16).astype(np.int32), 1, lineType=cv2.LINE_8, shift=4)
    return region.astype(bool)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def _identity_restore(image, faces):
    warp_faces(image, faces)
    for face in faces:
        face.restored = face.crop.copy()
    return faces


@pytest.mark.parametrize("residual, min_psnr", [(True, 38.0), (False, 45.0)])
def test_identity_round_trip_on_every_whole_photo(whole_detections, residual, min_psnr):
    for name, (image, faces) in whole_detections.items():
        out = paste_faces(image, _identity_restore(image, faces), 1.0, residual=residual)
        assert out.shape == image.shape and out.dtype == np.uint8
        region = _crop_region(image.shape, faces)
        outside = np.abs(out.astype(int) - image.astype(int))[~region]
        assert outside.max(initial=0) <= 1, name
        assert _psnr(out[region], image[region]) >= min_psnr, name


def _sine_image(height: int, width: int, upscale: float = 1.0) -> np.ndarray:
    """A steep pattern sampled at pixel centres of an image ``upscale`` times larger."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    x, y = (x + 0.5) / upscale - 0.5, (y + 0.5) / upscale - 0.5
    value = 127.5 + 100 * np.sin(x / 2.5) * np.cos(y / 3.0)
    return np.repeat(np.rint(value)[..., None], 3, axis=2).astype(np.uint8)


def test_upscale_two_puts_the_face_at_the_right_subpixel_place():
    image = _sine_image(160, 200)
    landmarks = FFHQ_TEMPLATE_512 / 5.0 + [40.0, 20.0]  # a 100-pixel face: the crop is a 5× zoom
    faces = _identity_restore(image, [Face(box=np.zeros(4), score=1.0, landmarks=landmarks)])
    frame = _sine_image(320, 400, upscale=2.0)
    out = paste_faces(frame, faces, 2.0, residual=False)
    assert out.shape == (320, 400, 3)
    inside = (slice(70, 210), slice(110, 250))  # the crop covers x 80–285, y 40–245; mask is 1 here
    assert _psnr(out[inside], frame[inside]) > 40  # 49 dB measured; half a frame pixel off gives 33 dB


@pytest.mark.parametrize("zoom", [4.0, 5.5, 9.0, 13.0])
def test_small_faces_land_at_the_right_subpixel_place(zoom):
    """Faces shrunk 4–13× on the way back take the box-filtered path (k = 2, 3, 5, 7: with and without
    leftover crop pixels); box centres off by one crop pixel (a tenth of a frame pixel) fail."""
    image = _sine_image(240, 240)
    landmarks = FFHQ_TEMPLATE_512 / zoom + [30.0, 25.0]
    faces = _identity_restore(image, [Face(box=np.zeros(4), score=1.0, landmarks=landmarks)])
    out = paste_faces(image, faces, 1.0, residual=False)
    lo, hi = 30 + round(140 / zoom), 25 + round(380 / zoom)  # where the soft square is 1
    inside = (slice(lo, hi), slice(lo, hi))
    assert _psnr(out[inside], image[inside]) > 45  # 55–61 dB measured; the blocks off by one crop pixel: 34–38 dB


def test_a_face_under_a_pixel_wide_pastes_without_error():
    """Degenerate landmarks (a detector's bad guess) shrink the 512 crop more than 512×: one block, no empty resize."""
    image = _sine_image(120, 120)
    faces = _identity_restore(image, [Face(box=np.zeros(4), score=1.0, landmarks=FFHQ_TEMPLATE_512 / 2000 + [60.0, 60.0])])
    mask = np.ones((512, 512), np.float32)
    out = paste_faces(image, faces, 1.0, masks=[mask], residual=False)
    assert out.shape == image.shape and np.abs(out.astype(int) - image).max() <= 255  # ran; the region is one pixel
    assert (out != image).any(axis=2).sum() <= 9


def test_soft_square_mask_shape():
    mask = soft_square_mask(512)
    assert mask.shape == (512, 512) and mask.dtype == np.float32
    np.testing.assert_allclose(mask, mask.T)
    np.testing.assert_allclose(mask, mask[::-1, ::-1], atol=1e-6)
    assert mask[256, 256] == pytest.approx(1.0, abs=1e-6) and mask[0, 256] < 1e-3
    profile = mask[256, :256]
    assert np.all(np.diff(profile) >= 0) and profile[51] > 0.99


def _synthetic_face(frame_shape=(300, 300), colour=(10, 200, 30)):
    frame = np.full(frame_shape + (3,), 90, np.uint8)
    landmarks = FFHQ_TEMPLATE_512 / 4.0 + [80.0, 70.0]
    (face,) = warp_faces(frame, [Face(box=np.zeros(4), score=1.0, landmarks=landmarks)])
    face.restored = np.full((512, 512, 3), colour, np.uint8)
    return frame, face


def test_masks_replace_the_soft_square():
    frame, face = _synthetic_face()
    unchanged = paste_faces(frame, [face], masks=[np.zeros((512, 512), np.float32)], residual=False)
    assert np.array_equal(unchanged, frame)
    full = paste_faces(frame, [face], masks=[np.ones((512, 512), np.float32)], residual=False)
    assert np.array_equal(full[75:190, 85:200], np.broadcast_to([10, 200, 30], (115, 115, 3)))
    with pytest.raises(UsageError, match="^got 0 masks for 1 faces; pass one mask \\(or None\\) per face$"):
        paste_faces(frame, [face], masks=[])
    with pytest.raises(UsageError, match=r"^face 0: mask is \(256, 256\), expected \(512, 512\) like the restored face$"):
        paste_faces(frame, [face], masks=[np.ones((256, 256), np.float32)])


def test_overlapping_faces_blend_in_order():
    frame, first = _synthetic_face(colour=(255, 0, 0))
    _, second = _synthetic_face(colour=(0, 0, 255))
    out = paste_faces(frame, [first, second], residual=False)
    assert tuple(out[130, 140]) == (0, 0, 255)
    out = paste_faces(frame, [second, first], residual=False)
    assert tuple(out[130, 140]) == (255, 0, 0)


def test_residual_paste_adds_the_restoration_change():
    frame, face = _synthetic_face()
    face.restored = np.clip(face.crop.astype(int) + 20, 0, 255).astype(np.uint8)
    out = paste_faces(frame, [face])
    assert np.all(out[100:170, 110:180] == 110)  # 90 + 20 where the mask is 1
    face.restored = None
    assert np.array_equal(paste_faces(frame, [face]), frame)


def test_paste_needs_the_crop():
    frame, face = _synthetic_face()
    face.crop = None
    with pytest.raises(UsageError, match="^face 0: paste needs the aligned crop"):
        paste_faces(frame, [face])


def test_paste_works_on_face_regions_only(whole_detections, monkeypatch):
    image, faces = whole_detections["Solvay_conference_1927.png"]
    _identity_restore(image, faces)
    calls = []
    for name in ("warpAffine", "GaussianBlur", "erode", "resize"):
        real = getattr(cv2, name)
        monkeypatch.setattr(
            cv2, name, lambda src, *a, _real=real, _name=name, **k: calls.append((_name, src.shape)) or _real(src, *a, **k)
        )
    paste_faces(image, faces, 1.0)
    assert {name for name, _ in calls} <= {"warpAffine", "resize"}
    # crop-sized (the 512 crop, or a view of it) or a face's region, never the 1328×568 frame
    assert all(max(shape[:2]) <= 512 or shape[0] * shape[1] < 200 * 200 for _, shape in calls), calls


def test_match_color_restores_the_original_statistics():
    rng = np.random.default_rng(3)
    original = cv2.GaussianBlur(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8), (0, 0), 3)
    shifted = np.clip(original.astype(np.float32) * [0.7, 0.9, 1.2] + [40, -10, 5], 0, 255).astype(np.uint8)
    assert _psnr(match_color(shifted, original), original) > 35
    gray = np.repeat(original[..., :1], 3, axis=2)
    matched = match_color(shifted, gray)
    assert np.abs(matched.astype(int) - matched[..., :1].astype(int)).max() <= 3  # a gray photo stays gray


def test_color_match_flag_is_used_by_paste():
    frame, face = _synthetic_face(colour=(200, 40, 40))
    out = paste_faces(frame, [face], residual=False, color_match=True)
    assert np.abs(out[130, 140].astype(int) - 90).max() <= 2  # the red face took the gray crop's colour
