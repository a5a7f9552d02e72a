"""The demo photos: written from scikit-image's bundled data, atomically and idempotently."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from skimage import data

from bfrboost import demo
from bfrboost.io.read import read_image


def test_demo_writes_its_photos_idempotently(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outdir = tmp_path / "examples"
    demo.main([str(outdir)])
    names = ["astronaut.png", "astronaut_degraded.jpg", "cameraman.png"]
    assert capsys.readouterr().out.splitlines() == [str(outdir / name) for name in names]
    assert sorted(os.listdir(outdir)) == names

    astronaut = read_image(outdir / "astronaut.png")
    np.testing.assert_array_equal(astronaut.rgb, data.astronaut())
    degraded = read_image(outdir / "astronaut_degraded.jpg")
    assert degraded.format == "JPEG" and degraded.rgb.shape == (256, 256, 3)
    # blurred, halved and JPEG-compressed: close to the clean photo shrunk, but visibly worse
    reference = data.astronaut()[::2, ::2].astype(float)
    error = np.abs(degraded.rgb - reference).mean()
    assert 6 < error < 15
    cameraman = read_image(outdir / "cameraman.png")
    assert cameraman.mode == "L" and cameraman.gray
    np.testing.assert_array_equal(cameraman.rgb[..., 0], data.camera())

    before = {name: (outdir / name).read_bytes() for name in names}
    assert demo.write_demo_photos(outdir) == [outdir / name for name in names]
    assert {name: (outdir / name).read_bytes() for name in names} == before
    assert sorted(os.listdir(outdir)) == names  # no temp files left


def test_demo_reports_an_unwritable_folder_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "examples"
    blocker.write_text("a file")
    with pytest.raises(SystemExit) as info:
        demo.main([str(blocker)])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err == (
        f"{blocker / 'astronaut.png'}: cannot write into {blocker} ({blocker} is a file, not a folder); "
        "choose another output folder\n"
    )
