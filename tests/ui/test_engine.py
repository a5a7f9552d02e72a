"""The web app's engine without a browser: settings → Restorer options, the model cache, one-line
errors, and results identical to `bfrboost restore` (image bytes and JSON fields)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from bfrboost.cli import app
from bfrboost.errors import InputError, UsageError, WeightsError
from bfrboost.ui.engine import ClipOutcome, Engine, Settings, describe
from bfrboost.ui.words import has_cli_words


@pytest.fixture
def engine(tmp_path: Path):
    engine = Engine(device="cpu", cache_size=1, max_upload_mb=1, workdir=tmp_path / "ui")
    yield engine
    engine.close()


def test_settings_map_to_the_cli_options():
    assert Settings(base="none", upscale=3).restorer_kwargs("cpu") == {"base": "none", "upscale": 3.0, "device": "cpu"}
    # fidelity reaches only bases that have the knob (the CLI refuses --fidelity elsewhere)
    assert Settings(base="codeformer", fidelity=0.7).restorer_kwargs("cpu")["fidelity"] == 0.7
    assert "fidelity" not in Settings(base="gfpgan", fidelity=0.7).restorer_kwargs("cpu")
    kwargs = Settings(base="none", refine=True, refiner="/r", bg_enhance=True).restorer_kwargs("cpu")
    assert kwargs["refine"] is True and kwargs["refiner"] == Path("/r") and kwargs["bg_upsampler"] == "realesrgan"
    with pytest.raises(UsageError, match=r"^--upscale must be in \[1, 4\], got 5.0$"):  # the CLI's bound and message
        Settings(upscale=5).restorer_kwargs("cpu")
    with pytest.raises(UsageError, match="^the refiner is on but no refiner folder is given"):
        Settings(refine=True).restorer_kwargs("cpu")


def test_models_load_once_per_settings_combination(engine: Engine, testdata: Path):
    photo = testdata / "whole" / "04.jpg"
    first = engine.restore(photo, Settings(base="none", upscale=1))
    engine.restore(photo, Settings(base="none", upscale=1, draw_boxes=True))  # drawing needs no new models
    assert engine.cache.loads == 1
    engine.restore(photo, Settings(base="none", upscale=2))
    assert engine.cache.loads == 2 and len(engine.cache._items) == 1  # LRU of size 1: the first set was dropped
    assert first.after.shape == (225, 225, 3) and first.before.shape == first.after.shape


def test_result_equals_the_cli_on_a_gray_photo(engine: Engine, testdata: Path, tmp_path: Path, cli):
    """Same bytes as `bfrboost restore`, gray stays gray, and the report has the CLI's --json fields."""
    photo = testdata / "gray" / "Einstein01.png"
    outcome = engine.restore(photo, Settings(base="none", upscale=2))
    expected, line = cli(photo, tmp_path / "cli", "--base", "none", "-s", "2")
    assert outcome.image_path.read_bytes() == expected.read_bytes()
    assert np.array_equal(outcome.after, np.asarray(Image.open(expected).convert("RGB")))
    assert np.array_equal(outcome.after[..., 0], outcome.after[..., 2])
    report = json.loads(outcome.report_path.read_text())
    assert report.keys() == line.keys() and report == outcome.report
    assert report["input"] == "Einstein01.png" and report["output"] == "Einstein01.png"
    for key in ("width", "height", "faces", "error"):
        assert report[key] == line[key]
    assert report["faces"] and len(outcome.faces) == len(report["faces"])
    pair, caption = outcome.faces[0]
    assert pair.shape == (512, 1024, 3) and caption.startswith("face 1 · score ")


def test_bad_uploads_get_one_line_naming_the_file(engine: Engine, tmp_path: Path, testdata: Path):
    text = tmp_path / "upload" / "notes.txt"
    text.parent.mkdir()
    text.write_text("not a photo\n")
    with pytest.raises(InputError) as caught:
        engine.restore(text, Settings(base="none"))
    assert (
        str(caught.value)
        == "notes.txt: not an image (unrecognised file format); give a JPEG, PNG, WebP, TIFF, BMP, GIF or AVIF file"
    )
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(2 * 1024 * 1024))
    with pytest.raises(InputError) as caught:
        engine.restore(big, Settings(base="none"), name="holiday.png")
    assert str(caught.value) == "holiday.png: 2.0 MB is over this app's upload limit of 1 MB; use a smaller image"
    tiny = Engine(device="cpu", max_pixels=1000, workdir=tmp_path / "tiny")
    too_big = r"^04\.jpg: image is 225x225 \(.* MP\), above this app's .* MP limit; use a smaller image$"
    with pytest.raises(InputError, match=too_big):
        tiny.restore(shutil.copy(testdata / "whole" / "04.jpg", tmp_path / "04.jpg"), Settings(base="none"))
    with pytest.raises(WeightsError) as caught:  # offline, no CodeFormer checkpoint in the cache
        engine.restore(testdata / "whole" / "04.jpg", Settings(base="codeformer"))
    message = str(caught.value)
    assert "\n" not in message and "codeformer" in message.lower() and not has_cli_words(message)
    assert message.endswith(
        " is not installed on this server; install it there (see the weights page of the docs), or choose another base model"
    )
    assert (
        describe(RuntimeError("boom\nline two"))
        == "unexpected error (RuntimeError: boom\\nline two); the server log has the details"
    )


def test_ui_command_binds_to_localhost_by_default(monkeypatch):
    import bfrboost.ui

    calls = []
    monkeypatch.setattr(bfrboost.ui, "launch", lambda **kw: calls.append(kw))
    result = CliRunner().invoke(app, ["ui", "--port", "7999"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert calls[0]["host"] == "127.0.0.1" and calls[0]["port"] == 7999 and calls[0]["share"] is False
    result = CliRunner().invoke(app, ["ui", "--host", "0.0.0.0"], catch_exceptions=False)
    assert "note: listening on 0.0.0.0: anyone who can reach this address" in result.stderr


def test_the_page_has_every_control():
    gradio = pytest.importorskip("gradio")
    from bfrboost.ui import build_app

    page = build_app(device="cpu")
    controls = {block.elem_id: block for block in page.blocks.values() if isinstance(block, gradio.components.Component)}
    assert controls["face-upsample"].visible is True  # Restorer(face_upsample=...) exists: the control shows
    assert {
        "upload",
        "base",
        "fidelity",
        "refine",
        "strength",
        "refiner",
        "bg",
        "boxes",
        "smooth",
        "upscale",
        "video",
    } <= controls.keys()
    assert controls["base"].choices[0][0] == "auto" and ("none", "none") in controls["base"].choices
    page.engine.close()


def test_refiner_strength_changes_without_a_reload_and_matches_the_cli(engine: Engine, testdata: Path, tmp_path: Path, cli):
    refiner = tmp_path / "tiny"
    assert CliRunner().invoke(app, ["refiner", "init", "--tiny", str(refiner)]).exit_code == 0
    photo = testdata / "whole" / "04.jpg"  # one face: the tiny refiner still costs seconds per face on CPU
    steps: list[tuple[float, str]] = []
    half = engine.restore(
        photo,
        Settings(base="none", upscale=1, refine=True, refiner=str(refiner), refiner_strength=0.5),
        progress=lambda fraction, text: steps.append((fraction, text)),
    )
    full = engine.restore(photo, Settings(base="none", upscale=1, refine=True, refiner=str(refiner), refiner_strength=1.0))
    assert engine.cache.loads == 1  # the strength is a blend after the refiner, not a new model
    assert "refine" in half.report["seconds"] and "note: the refiner runs on the CPU" in half.summary()
    expected, _ = cli(
        photo, tmp_path / "cli", "--base", "none", "-s", "1", "--refiner", str(refiner), "--refiner-strength", "0.5"
    )
    assert half.image_path.read_bytes() == expected.read_bytes()
    assert not np.array_equal(half.after, full.after)
    fractions = [f for f, _ in steps]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert "loading models (first run with these settings)" in [t for _, t in steps]


def test_the_page_shows_big_results_reduced():
    from bfrboost.ui.app import PREVIEW_SIDE, _preview

    small = np.zeros((620, 982, 3), np.uint8)
    assert _preview(small) is small  # shown as written: the browser test compares it with the CLI's file
    assert _preview(np.zeros((PREVIEW_SIDE * 2, 300, 3), np.uint8)).shape == (PREVIEW_SIDE, 150, 3)


def test_background_enhance_is_the_clis_realesrgan(engine: Engine, cached, testdata: Path, tmp_path: Path, cli):
    from bfrboost.background import X2_FILE
    from tests.test_background import random_state_dict

    cached(X2_FILE, random_state_dict(2))
    photo = testdata / "whole" / "04.jpg"
    enhanced = engine.restore(photo, Settings(base="none", upscale=2, bg_enhance=True))
    plain = engine.restore(photo, Settings(base="none", upscale=2))
    expected, _ = cli(photo, tmp_path / "cli", "--base", "none", "-s", "2", "--bg-upsampler", "realesrgan")
    assert enhanced.image_path.read_bytes() == expected.read_bytes()
    assert set(cached.asked) == {X2_FILE} and not np.array_equal(enhanced.after, plain.after)


def test_face_upsample_is_the_clis_face_upsample(engine: Engine, testdata: Path, tmp_path: Path, cli, monkeypatch):
    """The checkbox is ``--face-upsample``: the same upsampler call on the restored face, the same bytes."""
    import bfrboost.faces.paster as pipeline
    from tests.test_video import InvertingUpsampler

    fake = InvertingUpsampler()
    monkeypatch.setattr(pipeline, "load_upsampler", lambda name, upscale, **kw: fake if name == "realesrgan" else None)
    photo = testdata / "whole" / "03.jpg"  # one face
    assert Settings(base="none", face_upsample=True).restorer_kwargs("cpu")["face_upsample"] is True
    upsampled = engine.restore(photo, Settings(base="none", upscale=2, face_upsample=True))
    assert fake.calls == [((512, 512, 3), 2.0)]
    expected, line = cli(photo, tmp_path / "cli", "--base", "none", "-s", "2", "--face-upsample")
    assert len(fake.calls) == 2  # the CLI's run went through the same upsampler
    assert upsampled.image_path.read_bytes() == expected.read_bytes()
    plain, _ = cli(photo, tmp_path / "plain", "--base", "none", "-s", "2")
    assert plain.read_bytes() != expected.read_bytes()  # the option changed the result


def test_runtime_is_the_clis_runtime(engine: Engine, cached, testdata: Path, tmp_path: Path, cli, monkeypatch):
    """The runtime control is ``--runtime``: onnx runs the base on ONNX Runtime, the same bytes as the CLI's onnx run."""
    pytest.importorskip("onnxruntime")
    from bfrboost.onnx.runtime import OnnxBase
    from tests.test_onnx import narrow

    cached("GPEN-BFR-512.pth", narrow(monkeypatch, "gpen", seed=3).state_dict(), wrapper=None)
    assert Settings(base="gpen", runtime="onnx").restorer_kwargs("cpu")["runtime"] == "onnx"
    assert "runtime" not in Settings(base="gpen").restorer_kwargs("cpu")  # torch: the CLI's default, as the CLI builds it
    with pytest.raises(UsageError, match=r"^unknown runtime 'tf'; use one of: torch, onnx$"):
        Settings(runtime="tf").restorer_kwargs("cpu")
    photo = testdata / "whole" / "03.jpg"  # one face
    on_onnx = engine.restore(photo, Settings(base="gpen", upscale=1, runtime="onnx"))
    assert isinstance(next(iter(engine.cache._items.values())).face_restorer.base, OnnxBase)
    expected, _ = cli(photo, tmp_path / "cli", "--base", "gpen", "-s", "1", "--runtime", "onnx")
    assert on_onnx.image_path.read_bytes() == expected.read_bytes()
    on_torch = engine.restore(photo, Settings(base="gpen", upscale=1))
    diff = np.abs(on_onnx.after.astype(int) - on_torch.after.astype(int))
    # 1 level apart before JPEG (tests/test_onnx.py compares PNGs); the page's results are JPEG-decoded, and a 1-level
    # change can move a quantised 8×8 block by a few levels (measured 4–5): the mean says the pictures are the same
    assert engine.cache.loads == 2 and diff.max() <= 8 and diff.mean() < 0.05


def _decoded(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


@pytest.fixture(scope="module")
def clip(testdata: Path, tmp_path_factory) -> Path:
    """8 frames, 320×180, of a slow pan over a real photo with one face, with an AAC track."""
    from bfrboost.io.read import read_image
    from tests.support.clips import make_pan_clip

    photo = read_image(testdata / "whole" / "03.jpg").rgb
    return make_pan_clip(photo, tmp_path_factory.mktemp("clips") / "pan.mp4", (320, 180), 8, pan=(1.0, 0.5), origin=(30, 20))


@pytest.mark.parametrize("smooth", [True, False], ids=["smooth", "no-smooth"])
def test_a_video_upload_equals_the_cli(engine: Engine, clip: Path, tmp_path: Path, cli, smooth: bool):
    """A clip goes through the CLI's VideoRunner: same frames, same bytes, the --json line's fields."""
    steps: list[tuple[float, str]] = []
    outcome = engine.restore(
        clip,
        Settings(base="none", upscale=2, smooth=smooth),
        name="holiday.mp4",
        progress=lambda fraction, text: steps.append((fraction, text)),
    )
    assert isinstance(outcome, ClipOutcome)
    expected, line = cli(clip, tmp_path / "cli", "--base", "none", "-s", "2", *([] if smooth else ["--no-smooth"]))
    assert expected.parent.name == "restored_videos" and outcome.video_path.name == "pan.mp4"
    mine, theirs = _decoded(outcome.video_path), _decoded(expected)
    assert len(mine) == len(theirs) == 8 and mine[0].shape == (360, 640, 3)
    assert all(np.array_equal(a, b) for a, b in zip(mine, theirs))
    assert outcome.video_path.read_bytes() == expected.read_bytes()  # x264 with the same settings is deterministic
    report = json.loads(outcome.report_path.read_text())
    assert report == outcome.report and report.keys() == line.keys()
    assert (report["input"], report["output"]) == ("holiday.mp4", "pan.mp4")
    for key in ("kind", "frames", "fps", "face_count", "tracks", "audio_streams", "width", "height", "error"):
        assert report[key] == line[key], key
    assert report["kind"] == "video" and report["frames"] == 8 and report["face_count"] == 8
    assert (report["tracks"] is None) is not smooth
    assert outcome.summary().startswith("8 frames, 8 face(s) restored, ")
    assert ("restoring frames: 8 of 8" in [t for _, t in steps]) and steps[-1] == (1.0, "done")
    fractions = [f for f, _ in steps]
    assert fractions == sorted(fractions)


def test_video_uploads_have_their_own_cap(tmp_path: Path):
    small = Engine(device="cpu", max_upload_mb=3, max_video_mb=1, workdir=tmp_path / "ui")
    big = tmp_path / "big.mp4"
    big.write_bytes(bytes(2 * 1024 * 1024))
    with pytest.raises(InputError) as caught:
        small.restore(big, Settings(base="none"), name="holiday.mp4")
    assert str(caught.value) == ("holiday.mp4: 2.0 MB is over this app's video upload limit of 1 MB; upload a shorter clip")
    assert small.max_request_bytes == 3 * 1024 * 1024  # the web server lets the larger cap through
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    with pytest.raises(InputError) as caught:
        small.restore(broken, Settings(base="none"))
    assert str(caught.value).startswith("broken.mp4: cannot decode video (") and "\n" not in str(caught.value)
