from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from bfrboost.errors import UsageError, WeightsError
from bfrboost.faces import DETECTORS, Face, estimate_affine, get_detector
from bfrboost.faces.detect import five_points_from_68, resolve
from tests.faces.conftest import load_rgb


def test_dlib_finds_faces_on_every_whole_photo(whole_detections):
    counts = {name: len(faces) for name, (_, faces) in whole_detections.items()}
    assert counts.pop("Solvay_conference_1927.png") >= 25
    assert all(n >= 1 for n in counts.values()), counts
    for image, faces in whole_detections.values():
        h, w = image.shape[:2]
        for face in faces:
            x1, y1, x2, y2 = face.box
            assert -0.1 * w < x1 < x2 < 1.1 * w and -0.1 * h < y1 < y2 < 1.1 * h
            left_eye, right_eye, nose, mouth_left, mouth_right = face.landmarks
            assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]  # image-left first
            assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
        assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)


def _transform_error(matrix: np.ndarray) -> tuple[float, float, float]:
    """Scale, rotation (degrees) and displacement of the crop centre for a crop → crop transform."""
    scale = float(np.sqrt(np.linalg.det(matrix[:, :2])))
    rotation = float(np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0])))
    centre = np.array([255.5, 255.5])
    shift = float(np.linalg.norm(matrix[:, :2] @ centre + matrix[:, 2] - centre))
    return scale, rotation, shift


def test_realigning_aligned_crops_gives_nearly_the_identity(testdata):
    detector = get_detector("dlib")
    near_identity = 0
    for path in sorted((testdata / "aligned").iterdir()):
        faces = detector.detect(load_rgb(path))
        assert len(faces) >= 1, path.name
        scale, rotation, shift = _transform_error(estimate_affine(faces[0].landmarks))
        near_identity += abs(scale - 1) <= 0.10 and abs(rotation) <= 5 and shift <= 12
    assert near_identity >= 5


def test_tiny_image_works(testdata):
    image = load_rgb(testdata / "whole" / "04.jpg")[12:212, 12:212]  # 200×200
    faces = get_detector("dlib").detect(image)
    assert len(faces) == 1
    assert 30 < faces[0].box[2] - faces[0].box[0] < 120


def test_five_points_from_68_uses_eye_contours_nose_tip_and_mouth_corners():
    points = np.arange(136, dtype=np.float64).reshape(68, 2)
    five = five_points_from_68(points)
    np.testing.assert_allclose(five[0], points[36:42].mean(0))
    np.testing.assert_allclose(five[1], points[42:48].mean(0))
    np.testing.assert_allclose(five[2:], points[[30, 48, 54]])


def test_unknown_detector_lists_known_names():
    with pytest.raises(UsageError) as err:
        get_detector("yolo")
    assert str(err.value) == "unknown face detector 'yolo'; choose one of: auto, dlib, retinaface_resnet50, retinaface_mobile0.25"
    assert list(DETECTORS) == ["auto", "dlib", "retinaface_resnet50", "retinaface_mobile0.25"]


def test_detector_rejects_non_rgb_input():
    with pytest.raises(UsageError, match=r"RGB uint8 H×W×3 image, got float32 \(8, 8, 3\)"):
        get_detector("dlib").detect(np.zeros((8, 8, 3), np.float32))


def test_retinaface_missing_weights_names_file_and_command(_isolated_cache):
    with pytest.raises(WeightsError) as err:
        get_detector("retinaface_resnet50")
    assert str(err.value).startswith("detection_Resnet50_Final.pth: not in the cache and offline mode is on; download https://")
    assert f"put it at {_isolated_cache / 'detection_Resnet50_Final.pth'}" in str(err.value)
    assert resolve("auto") == "dlib"
    assert get_detector("auto").name == "dlib"


def _facexlib_retinaface(network: str):
    from facexlib.detection.retinaface import RetinaFace

    torch.manual_seed(0)
    with warnings.catch_warnings():  # torchvision: resnet50(pretrained=False) is deprecated
        warnings.simplefilter("ignore", UserWarning)
        net = RetinaFace(network_name=network, half=False, device=torch.device("cpu"))
    # Random weights score nothing above threshold; bias the class heads so every anchor is a face.
    for head in net.ClassHead:
        head.conv1x1.bias.data = torch.tensor([-8.0, 8.0] * (head.conv1x1.bias.numel() // 2))
    return net.eval()


def test_retinaface_mobile_matches_facexlib_on_random_weights(_isolated_cache, trust_cache, testdata):
    net = _facexlib_retinaface("mobile0.25")
    torch.save(net.state_dict(), _isolated_cache / "detection_mobilenet0.25_Final.pth")
    detector = get_detector("retinaface_mobile0.25", score_threshold=0.5, short_side=None)
    image = load_rgb(testdata / "whole" / "04.jpg")[:96, :128]
    faces = detector.detect(image)
    with torch.inference_mode():
        rows = net.detect_faces(np.ascontiguousarray(image[..., ::-1]), conf_threshold=0.5, nms_threshold=0.4)
    assert len(faces) == len(rows) > 0
    rows = rows[np.argsort(-rows[:, 4], kind="stable")]
    np.testing.assert_allclose([f.box for f in faces], rows[:, :4], atol=1e-3)
    np.testing.assert_allclose([f.landmarks.ravel() for f in faces], rows[:, 5:15], atol=1e-3)
    np.testing.assert_allclose([f.score for f in faces], rows[:, 4], atol=1e-6)


def test_retinaface_resnet50_loads_module_prefixed_checkpoint_and_runs(_isolated_cache, trust_cache):
    net = _facexlib_retinaface("resnet50")
    state = {f"module.{k}": v for k, v in net.state_dict().items()}  # DataParallel-style keys
    torch.save(state, _isolated_cache / "detection_Resnet50_Final.pth")
    assert resolve("auto") == "retinaface_resnet50"
    detector = get_detector("auto", short_side=64)
    assert detector.name == "retinaface_resnet50"
    for key, value in net.state_dict().items():
        assert torch.equal(detector.net.state_dict()[key], value), key
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    faces = detector.detect(image)
    assert all(isinstance(f, Face) and f.landmarks.shape == (5, 2) and f.score > 0.97 for f in faces)


def test_retinaface_wrong_checkpoint_is_refused(_isolated_cache, trust_cache):
    net = _facexlib_retinaface("mobile0.25")
    path = _isolated_cache / "detection_Resnet50_Final.pth"
    torch.save(net.state_dict(), path)
    with pytest.raises(WeightsError) as err:
        get_detector("retinaface_resnet50")
    assert str(err.value).startswith(f"{path}: not a RetinaFace resnet50 checkpoint (")
    assert str(err.value).endswith("run `bfrboost weights download retinaface`")


def _face(x1, y1, x2, y2) -> Face:
    return Face(box=np.array([x1, y1, x2, y2], float), score=1.0, landmarks=np.zeros((5, 2)))


def test_retinaface_file_that_fails_verification_is_never_loaded(_isolated_cache):
    path = _isolated_cache / "detection_mobilenet0.25_Final.pth"
    torch.save(_facexlib_retinaface("mobile0.25").state_dict(), path)  # right keys, wrong bytes
    with pytest.raises(WeightsError, match="offline mode is on: replace it with a good copy"):
        get_detector("retinaface_mobile0.25")


def test_dlib_threads_share_one_predictor_and_detect_as_one_thread(whole_detections):
    """Threads detecting at once (one shared shape predictor, a detector copy each) find exactly what one
    thread finds, and only the first detector is loaded: the others are copies that take milliseconds."""
    import threading
    import time

    from bfrboost.faces import dlib_models

    photos = [(name, image) for name, (image, _) in whole_detections.items() if image.shape[0] * image.shape[1] < 4e5][:4]
    expected = {name: whole_detections[name][1] for name, _ in photos}
    detector, seen, start = get_detector("dlib"), {}, threading.Barrier(len(photos))

    def detect(name: str, image: np.ndarray) -> None:
        start.wait()
        with dlib_models.detector() as hog:
            seen.setdefault("pairs", []).append((id(hog), id(dlib_models.predictor())))
        seen[name] = [detector.detect(image) for _ in range(3)]

    threads = [threading.Thread(target=detect, args=photo) for photo in photos]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name, runs in ((n, seen[n]) for n, _ in photos):
        for faces in runs:
            assert len(faces) == len(expected[name]), name
            for face, reference in zip(faces, expected[name]):
                np.testing.assert_array_equal(face.box, reference.box)
                np.testing.assert_array_equal(face.landmarks, reference.landmarks)
    assert len({predictor for _, predictor in seen["pairs"]}) == 1
    begin = time.perf_counter()
    with dlib_models.detector(), dlib_models.detector(), dlib_models.detector(), dlib_models.detector(), dlib_models.detector():
        pass  # at least one of these five is a new copy (four threads ran at most four at once)
    assert time.perf_counter() - begin < 0.1
