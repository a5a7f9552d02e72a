"""`run_boost`'s one-line refusals and its handling of reference faces whose size differs (no models needed)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from bfrboost.errors import UsageError
from bfrboost.evaluation.boost import run_boost


class _Identity:
    """Stands in for bfrboost.Restorer: every base returns the face it is given."""

    def __init__(self, base, **settings):
        self.base = base

    def restore_batch(self, images):
        return [SimpleNamespace(image=image) for image in images]


def _faces(folder: Path, size: int, count: int = 2) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
    return folder


@pytest.mark.parametrize(
    ("bases", "message"),
    [
        ([" ", ""], "no base given; pass --base NAME[,NAME…] (e.g. gfpgan,codeformer)"),
        (["a", "a"], "a base is listed twice in a,a"),
    ],
)
def test_boost_refuses_bad_base_lists(tmp_path, bases, message):
    with pytest.raises(UsageError) as info:
        run_boost(bases, tmp_path, tmp_path, tmp_path / "out", metrics="psnr", device="cpu", restorer_factory=_Identity)
    assert str(info.value) == message


def test_a_reference_of_another_size_is_left_out_of_paired_metrics(tmp_path):
    lq = _faces(tmp_path / "lq", 64)
    hq = _faces(tmp_path / "hq", 32)
    report = run_boost(
        ["same"], tmp_path, lq, tmp_path / "out", reference=hq, metrics="psnr", device="cpu", restorer_factory=_Identity
    )
    assert report.problems == [
        f"{hq / f'{i:04d}.png'}: 32×32 but the restored face is 64×64; left out of paired metrics" for i in range(2)
    ]
    assert report.pairs == 0
