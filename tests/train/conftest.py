"""The CPU-scale configuration shared by the training tests: a tiny SD fitted once, on training faces only.

Fitted at test time (never shipped: the shared faces are partly non-commercial, see testdata SOURCES.md)
on the training split of ``faces/aligned`` that every test run here uses (``VAL_COUNT`` faces, seed 0,
left out), and kept in pytest's cache under a key of the fitting code and settings, so a second
session (or the other xdist worker, behind a file lock) reuses it.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from bfrboost.io.read import read_face
from bfrboost.train import tiny
from bfrboost.train.data import list_hq_faces, split_faces

SIZE = 32  # face size of the CPU-scale tests (the CLI default of --tiny is 64)
VAL_COUNT = 16
FIT = tiny.TinyFit(size=SIZE)  # the defaults of `bfrboost train tiny-sd`


@pytest.fixture(scope="session")
def faces_dir(testdata) -> Path:
    return testdata / "faces" / "aligned"


@pytest.fixture(scope="session")
def tiny_sd(faces_dir, request) -> Path:
    train_faces, _ = split_faces(list_hq_faces(faces_dir), VAL_COUNT, FIT.seed)
    key = hashlib.sha256((inspect.getsource(tiny) + repr(FIT) + "".join(p.name for p in train_faces)).encode()).hexdigest()[:16]
    folder = Path(request.config.cache.mkdir("bfrboost-tiny-sd")) / key
    with FileLock(str(folder) + ".lock"):
        if not tiny.is_tiny_sd(folder):
            faces = torch.stack([torch.from_numpy(read_face(p, SIZE)).permute(2, 0, 1) for p in train_faces])
            tiny.fit_tiny_sd(faces, folder, FIT)
    return folder
