"""The web app's job queue (order, the line about what runs ahead, cancel while waiting and while
running) and its web words, without a browser."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bfrboost.errors import InputError, WeightsError
from bfrboost.io.read import read_image
from bfrboost.pipeline import Restorer
from bfrboost.ui.engine import Engine, Settings
from bfrboost.ui.jobs import Cancelled, Checked, JobQueue
from bfrboost.ui.words import has_cli_words, web_words


def test_queue_says_what_runs_ahead_and_cancels_a_waiting_job() -> None:
    queue = JobQueue(poll_s=0.01)
    clip, photo, mine = queue.submit("clip", "a"), queue.submit("photo", "b"), queue.submit("photo", "c")
    assert list(queue.wait(clip)) == [] and clip.running
    clip.progress = "restoring frames: 8 of 40"
    lines = queue.wait(mine)
    assert next(lines) == "waiting: 2 jobs ahead — a clip, restoring frames: 8 of 40; a photo, waiting"
    assert queue.cancel("b") == 1
    with pytest.raises(Cancelled):
        list(queue.wait(photo))
    queue.done(photo)
    assert next(lines) == "waiting: 1 job ahead — a clip, restoring frames: 8 of 40"
    queue.done(clip)
    assert list(lines) == [] and mine.running and queue.running() is mine


def test_a_cancelled_job_stops_at_the_next_stage(testdata: Path) -> None:
    queue = JobQueue()
    job = queue.submit("photo")
    list(queue.wait(job))
    restorer = Checked(Restorer("none", upscale=1, device="cpu", detector="dlib"), job)
    image = read_image(testdata / "whole" / "04.jpg").rgb
    assert len(restorer.restore_batch([image])[0].faces) == 1 and restorer.upscale == 1
    prepared = restorer.prepare(image)
    job.cancelled.set()
    with pytest.raises(Cancelled):
        restorer.restore_faces([prepared])


def test_messages_are_in_web_words(testdata: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        read_image(testdata / "whole" / "04.jpg", max_pixels=1000)
    assert web_words(str(caught.value)).endswith("(0.0506 MP), above this app's 0.001 MP limit; use a smaller image")
    note = Restorer("none", upscale=1, device="cpu", face_upsample=True, parse=False, detector="dlib").notes[0]
    assert web_words(note) == "face upsample does nothing at rescaling factor 1; set the rescaling factor above 1 to use it"
    with pytest.raises(WeightsError) as caught:
        Restorer("gfpgan", device="cpu", detector="dlib")
    assert web_words(str(caught.value)).startswith("the model file GFPGANv1.4.pth is not installed on this server; ")
    skipped = f"{tmp_path / 'x.png'}: already exists; pass --overwrite to replace it"
    for message in (str(caught.value), note, skipped,
                    "clip.mkv: its opus audio cannot be copied into .mp4; choose --ext mkv (takes any audio) or mp4"):
        assert has_cli_words(message) and not has_cli_words(web_words(message)), message
    assert web_words(skipped) == f"{tmp_path / 'x.png'}: already exists"


def test_big_photos_get_a_lower_rescaling_factor_with_a_note(testdata: Path, tmp_path: Path) -> None:
    engine = Engine(device="cpu", max_pixels=200_000, workdir=tmp_path / "work")
    photo = shutil.copy(testdata / "whole" / "04.jpg", tmp_path / "04.jpg")  # 225×225: 4× would be 0.81 MP
    outcome = engine.restore(photo, Settings(base="none", upscale=4))
    assert outcome.after.shape == (338, 338, 3)  # 1.5×: the largest step of 0.5 under 0.2 MP
    assert outcome.notes[0] == ("rescaling factor lowered from 4 to 1.5: a 4× result of this 225×225 photo would be 0.81 MP, "
                                "over this app's 0.2 MP limit")
    engine.close()


def test_auto_without_weights_warns_that_nothing_was_restored(testdata: Path, tmp_path: Path) -> None:
    engine = Engine(device="cpu", workdir=tmp_path / "work")
    outcome = engine.restore(testdata / "whole" / "04.jpg", Settings(base="auto", upscale=1))
    assert outcome.warnings == [
        "no base model is installed on this server (the gfpgan weights are missing): faces were only aligned and pasted back, "
        "not restored; choose a base model whose weights are installed"
    ]
    summary = outcome.summary()
    assert summary.startswith("⚠ no base model is installed") and " · 1 face(s) found, none restored, " in summary
    assert not has_cli_words(summary) and "GFPGANv1.4.pth" not in summary
    engine.close()


def test_face_selection_settings(testdata: Path, tmp_path: Path) -> None:
    engine = Engine(device="cpu", workdir=tmp_path / "work")
    group = testdata / "whole" / "01.jpg"
    one = engine.restore(group, Settings(base="none", upscale=1, face_index=2))
    assert len(one.report["faces"]) == 1
    plain = engine.restore(group, Settings(base="none", upscale=1)).image_path.read_bytes()
    restorer = engine.cache.get(Settings(base="none", upscale=1))  # the loaded one: give it a visible base
    restorer.base.restore = lambda crops: 1.0 - crops
    original = engine.restore(group, Settings(base="none", upscale=1, blend=0.0))
    assert len(original.report["faces"]) == 4 and original.image_path.read_bytes() == plain
    assert engine.restore(group, Settings(base="none", upscale=1, blend=1.0)).image_path.read_bytes() != plain
    folder = testdata / "faces" / "whole"
    people = [read_image(folder / n).rgb for n in ("dlib_John_Savage_000264_01099001.jpg", "dlib_John_Simm_000288_00470387.jpg")]
    from PIL import Image

    Image.fromarray(np.concatenate(people, axis=1)).save(tmp_path / "two.png")
    reference = str(folder / "dlib_John_Simm_000300_00470148.jpg")
    simm = engine.restore(tmp_path / "two.png", Settings(base="none", upscale=1, person=(reference,)))
    (face,) = simm.report["faces"]
    assert face["box"][0] > 150  # the right-hand person (each photo is 150 px wide)
    assert engine.cache.loads == 1  # selection and blend change without reloading models
    engine.close()


def test_cancel_stops_a_running_clip_within_two_seconds(testdata: Path, tmp_path: Path, monkeypatch) -> None:
    from tests.support.clips import make_pan_clip

    clip = make_pan_clip(read_image(testdata / "whole" / "03.jpg").rgb, tmp_path / "pan.mp4", (320, 180), 60, audio=False)
    finish = Restorer.finish
    monkeypatch.setattr(Restorer, "finish", lambda self, prepared: (time.sleep(0.05), finish(self, prepared))[1])
    engine = Engine(device="cpu", workdir=tmp_path / "work")
    job = engine.submit("pan.mp4", "tab")
    list(engine.jobs.wait(job))
    failure: list[BaseException] = []

    def work() -> None:
        try:
            engine.restore(clip, Settings(base="none", upscale=1), job=job)
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            failure.append(exc)
        finally:
            engine.jobs.done(job)

    thread = threading.Thread(target=work)
    thread.start()
    while "restoring frames: 8" not in job.progress:
        time.sleep(0.01)
    start = time.monotonic()
    engine.jobs.cancel("tab")
    thread.join(10)
    latency = job.ended - start
    assert isinstance(failure[0], Cancelled) and latency < 2.0, latency
    assert not [p for p in (tmp_path / "work").rglob("*") if p.is_file() and p.suffix in (".mp4", ".partial")]
    engine.close()
