"""Seconds per face stage on the real photos, and our align + paste against facexlib's.

Run: ``python bench/bench_faces.py [--detector NAME] [--repeat N]``. For each ``whole/`` photo it
times decode, detect, align, paste (identity restore, upscale 1) and PNG encode, then runs
facexlib's ``FaceRestoreHelper`` align + paste on the SAME landmarks and prints a markdown table
with the ratios ours / facexlib for the paste-back alone and for align + paste (best of ``repeat``
runs) and the identity round-trip PSNR inside
the pasted regions: ours (residual paste, the default), ours pasting pixels directly, facexlib.
"""

from __future__ import annotations

import argparse
import io
import os
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from bfrboost.faces import get_detector, paste_faces, warp_faces
from bfrboost.faces.detect import resolve

TESTDATA = Path(os.environ.get("BFRBOOST_TESTDATA", Path(__file__).resolve().parents[2] / "shared" / "testdata"))


def best_time(fn, repeat: int):
    """(smallest wall time, last result): the minimum is the least disturbed by a busy machine."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def region_psnr(a: np.ndarray, b: np.ndarray, faces) -> float:
    """PSNR inside the pasted regions: the union of the crop squares mapped into the frame."""
    region = np.zeros(a.shape[:2], np.uint8)
    corners = np.array([[-0.5, -0.5, 1], [511.5, -0.5, 1], [511.5, 511.5, 1], [-0.5, 511.5, 1]])
    for face in faces:
        quad = corners @ cv2.invertAffineTransform(face.affine).T
        cv2.fillConvexPoly(region, np.round(quad * 16).astype(np.int32), 1, shift=4)
    inside = region.astype(bool)
    mse = float(np.mean((a[inside].astype(np.float64) - b[inside].astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def facexlib_helper():
    """A FaceRestoreHelper without its constructor, which would download detection weights."""
    from facexlib.utils.face_restoration_helper import FaceRestoreHelper

    helper = FaceRestoreHelper.__new__(FaceRestoreHelper)
    helper.upscale_factor = 1
    helper.face_size = (512, 512)
    helper.crop_ratio = (1, 1)
    helper.template_3points = False
    helper.pad_blur = False
    helper.use_parse = False
    helper.save_ext = "png"
    helper.face_template = np.array(
        [[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935], [201.26117, 371.41043], [313.08905, 371.15118]]
    )
    return helper


def facexlib_align_paste(helper, bgr: np.ndarray, landmarks: list[np.ndarray]) -> np.ndarray:
    helper.clean_all()
    helper.input_img = bgr
    helper.all_landmarks_5 = [lm.copy() for lm in landmarks]
    helper.align_warp_face()
    helper.get_inverse_affine(None)
    for crop in helper.cropped_faces:
        helper.add_restored_face(crop)
    return helper.paste_faces_to_input_image()


def facexlib_paste_only(helper, bgr: np.ndarray, landmarks: list[np.ndarray]):
    """facexlib's paste-back alone, as a function to time: its align and inverse affines are done first."""
    facexlib_align_paste(helper, bgr, landmarks)
    inverses = [m.copy() for m in helper.inverse_affine_matrices]

    def paste() -> np.ndarray:
        helper.inverse_affine_matrices = [m.copy() for m in inverses]  # it shifts them in place when upscaling
        return helper.paste_faces_to_input_image()

    return paste


def bench_photo(path: Path, detector, helper, repeat: int) -> str:
    """One markdown row for one photo."""
    t_decode, image = best_time(lambda: np.asarray(Image.open(path).convert("RGB")), repeat)
    t_detect, faces = best_time(lambda: detector.detect(image), 1)
    t_align, _ = best_time(lambda: warp_faces(image, faces), repeat)
    for face in faces:
        face.restored = face.crop
    t_paste, pasted = best_time(lambda: paste_faces(image, faces, 1.0), repeat)

    def encode() -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(pasted).save(buffer, format="PNG")
        return buffer.getvalue()

    t_encode, _ = best_time(encode, repeat)
    bgr = np.ascontiguousarray(image[..., ::-1])
    landmarks = [face.landmarks for face in faces]
    t_fx, fx_out = best_time(lambda: facexlib_align_paste(helper, bgr, landmarks), repeat)
    t_fx_paste, _ = best_time(facexlib_paste_only(helper, bgr, landmarks), repeat)
    direct = paste_faces(image, faces, 1.0, residual=False)
    ours = t_align + t_paste
    return (
        f"| {path.name} | {image.shape[1]}×{image.shape[0]} | {len(faces)} | {t_decode:.3f} | {t_detect:.3f} | {t_align:.3f} "
        f"| {t_paste:.4f} | {t_fx_paste:.4f} | {t_paste / t_fx_paste:.2f} | {t_encode:.3f} "
        f"| {ours:.4f} | {t_fx:.4f} | {ours / t_fx:.2f} "
        f"| {region_psnr(pasted, image, faces):.1f} | {region_psnr(direct, image, faces):.1f} "
        f"| {region_psnr(np.ascontiguousarray(fx_out[..., ::-1]), image, faces):.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", default="auto")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    detector = get_detector(args.detector)
    helper = facexlib_helper()
    print(f"detector: {resolve(args.detector)}; best of {args.repeat}; seconds\n")
    print(
        "| photo | size | faces | decode | detect | align | paste | facexlib paste | paste ours / facexlib | encode "
        "| align+paste | facexlib align+paste | ours / facexlib | PSNR ours | PSNR ours direct | PSNR facexlib |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for path in sorted((TESTDATA / "whole").iterdir()):
        print(bench_photo(path, detector, helper, args.repeat))


if __name__ == "__main__":
    main()
