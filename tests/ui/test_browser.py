"""The web app in a real browser: Debian's headless Chromium driven by Playwright, against the app
served on a free loopback port. Every request to anywhere else is refused (and must not happen).

Screenshots go to pytest's tmp dir and, when BFRBOOST_ARTEFACTS names a folder, there too.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path(os.environ.get("BFRBOOST_CHROMIUM", "/usr/bin/chromium"))  # Debian's package: make browser
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
TIMEOUT_MS = 90_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The app on 127.0.0.1:PORT, and a Chromium page on it that may reach nothing else."""
    pytest.importorskip("gradio", reason="the web app needs the ui extra: pip install -e '.[ui]'")
    sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need playwright: pip install -e '.[dev]'")
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (make test does: apt-get install chromium chromium-driver)")
    from bfrboost.ui import launch

    port = _free_port()
    app = launch(
        port=port, block=False, device="cpu", max_upload_mb=5, max_video_mb=5, workdir=tmp_path_factory.mktemp("ui_work")
    )
    url = f"http://127.0.0.1:{port}/"
    elsewhere: list[str] = []

    def only_loopback(route):
        if route.request.url.startswith(url):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        page.set_default_timeout(TIMEOUT_MS)
        page.route("**/*", only_loopback)
        page.goto(url)
        page.wait_for_selector("#run")
        yield app, page, elsewhere
        browser.close()
    app.close()
    app.engine.close()


def screenshot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("BFRBOOST_ARTEFACTS"):
        folder = Path(os.environ["BFRBOOST_ARTEFACTS"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / path.name)
    assert path.stat().st_size > 10_000
    return path


def upload(page, path: Path) -> None:
    page.locator("#upload input[type=file]").set_input_files(str(path))
    page.wait_for_selector(f"#upload :text('{path.name}')")


def choose_base(page, name: str) -> None:
    page.locator("#base input").click()
    page.get_by_role("option", name=name, exact=True).click()


def fetch_image(page, src: str) -> np.ndarray:
    response = page.request.get(src)
    assert response.ok, src
    return np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB"))


def test_restore_in_the_browser_equals_the_cli(served, testdata: Path, tmp_path: Path, cli):
    app, page, elsewhere = served
    photo = testdata / "whole" / "00.jpg"
    upload(page, photo)
    choose_base(page, "none")
    page.locator("#boxes input").check()
    load = app.engine.cache.get

    def slow_load(*args, **kwargs):  # holds the "loading models" stage long enough to be seen
        restorer = load(*args, **kwargs)
        time.sleep(1.5)
        return restorer

    app.engine.cache.get = slow_load
    try:
        page.locator("#run").click()
        page.wait_for_function("() => document.querySelector('#compare').innerText.includes('loading models (first run')")
        screenshot(page, tmp_path, "ui_progress")
        page.wait_for_selector("#result img")
    finally:
        app.engine.cache.get = load
    shot = screenshot(page, tmp_path, "ui_restored")

    expected, line = cli(photo, tmp_path / "cli", "--base", "none", "-s", "2", "--draw-boxes")
    want = np.asarray(Image.open(expected).convert("RGB"))
    shown = fetch_image(page, page.locator("#result img").get_attribute("src"))
    assert shown.shape == want.shape == (620, 982, 3)
    assert np.array_equal(shown, want)  # pixel-exact: the same Restorer call and writer as the CLI

    with page.expect_download() as download:
        page.locator("#get-result").click()
    assert download.value.suggested_filename == "00.jpg"
    assert Path(download.value.path()).read_bytes() == expected.read_bytes()
    with page.expect_download() as download:
        page.locator("#get-report").click()
    report = json.loads(Path(download.value.path()).read_text())
    assert report.keys() == line.keys()
    assert {k: report[k] for k in ("width", "height", "faces", "error")} == {
        k: line[k] for k in ("width", "height", "faces", "error")
    }
    assert (report["input"], report["output"]) == ("00.jpg", "00.jpg")

    status = page.locator("#status").inner_text().strip()
    assert status.startswith(f"{len(line['faces'])} face(s) restored, ") and "\n" not in status
    assert page.locator("#faces img").count() == len(line["faces"]) > 0
    assert page.locator("#compare img").count() == 2  # before and after under the slider
    assert app.engine.cache.loads == 1
    assert elsewhere == []
    assert shot.is_file()


def test_a_text_file_shows_one_line_in_the_page(served, tmp_path: Path):
    app, page, elsewhere = served
    text = tmp_path / "notes.txt"
    text.write_text("these are not pixels\n")
    if page.locator("#upload button[aria-label='Clear']").count():
        page.locator("#upload button[aria-label='Clear']").first.click()
    upload(page, text)
    page.wait_for_selector("#status.error")  # the preview already says so, before Restore
    assert page.locator("#status").inner_text().strip().startswith("⚠ notes.txt: not an image")
    page.locator("#run").click()
    page.wait_for_function("() => !document.querySelector('#status').classList.contains('error')")  # cleared at once
    page.wait_for_selector("#status.error")
    screenshot(page, tmp_path, "ui_error")
    message = page.locator("#status").inner_text().strip()
    assert message == "⚠ notes.txt: not an image (unrecognised file format); give a JPEG, PNG, WebP, TIFF, BMP, GIF or AVIF file"
    assert "Traceback" not in page.locator("body").inner_text()
    assert elsewhere == []


def test_a_clip_restores_in_the_browser(served, testdata: Path, tmp_path: Path, monkeypatch):
    """Upload a short clip, press Restore: frame progress, then the restored video in a player with
    its source served byte for byte as the runner wrote it, and the clip's JSON report."""
    from bfrboost.io.read import read_image
    from bfrboost.pipeline import Restorer
    from tests.support.clips import make_pan_clip

    app, page, elsewhere = served
    photo = read_image(testdata / "whole" / "03.jpg").rgb
    clip = make_pan_clip(photo, tmp_path / "pan.mp4", (320, 180), 10, pan=(1.0, 0.5), origin=(30, 20))
    finish = Restorer.finish

    def slow_finish(self, prepared):  # holds each frame long enough for the progress to be seen
        time.sleep(0.15)
        return finish(self, prepared)

    monkeypatch.setattr(Restorer, "finish", slow_finish)
    if page.locator("#upload button[aria-label='Clear']").count():
        page.locator("#upload button[aria-label='Clear']").first.click()
    upload(page, clip)
    choose_base(page, "none")
    page.locator("#run").click()
    page.wait_for_function("() => document.body.innerText.includes('restoring frames: 8 of 10')")
    screenshot(page, tmp_path, "ui_video_progress")
    player = page.locator("#video video")
    player.wait_for()
    page.wait_for_function("() => document.querySelector('#video video').getAttribute('src')")
    page.wait_for_function("() => document.querySelector('#video video').readyState >= 1")  # Chromium decoded its header
    assert page.evaluate("() => document.querySelector('#video video').duration") == pytest.approx(0.4, abs=0.05)
    assert page.evaluate("() => document.querySelector('#video video').videoWidth") == 640  # -s 2 of 320
    shot = screenshot(page, tmp_path, "ui_video")

    (written,) = [p for p in Path(app.engine.root).rglob("pan.mp4") if p.parent.name == "restored_videos"]
    response = page.request.get(player.get_attribute("src"))
    assert response.ok and response.body() == written.read_bytes()
    with page.expect_download() as download:
        page.locator("#get-result").click()
    assert download.value.suggested_filename == "pan.mp4"
    with page.expect_download() as download:
        page.locator("#get-report").click()
    report = json.loads(Path(download.value.path()).read_text())
    assert (report["kind"], report["frames"], report["face_count"], report["input"]) == ("video", 10, 10, "pan.mp4")
    status = page.locator("#status").inner_text().strip()
    assert status.startswith("10 frames, 10 face(s) restored, ") and "\n" not in status
    assert not page.locator("#result img").is_visible()  # the image outputs give way to the player
    assert elsewhere == []
    assert shot.is_file()


def test_an_upload_over_the_cap_is_refused_with_a_clear_message(served, tmp_path: Path):
    app, page, elsewhere = served
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(6 * 1024 * 1024))  # the app was started with a 5 MB cap
    if page.locator("#upload button[aria-label='Clear']").count():
        page.locator("#upload button[aria-label='Clear']").first.click()
    page.locator("#upload input[type=file]").set_input_files(str(big))
    toast = page.get_by_text("exceed the maximum allowed size of 5.0 Mb")
    toast.wait_for()
    assert '"big.png"' in toast.inner_text()
    assert app.engine.max_upload_bytes == 5 * 1024 * 1024
    assert not list(Path(app.engine.root).rglob("big.png"))  # never reached the restorer
    assert elsewhere == []


def fresh(page) -> None:
    """The page as a new visitor sees it (a reload: a new session, every control at its default)."""
    page.reload()
    page.wait_for_selector("#run")


def _second_tab(page, elsewhere: list[str]):
    """Another tab of the same browser: a session of its own, held to the app like the first."""
    url = page.url
    other = page.context.browser.new_page(viewport={"width": 1280, "height": 900})
    other.set_default_timeout(TIMEOUT_MS)

    def only_loopback(route):
        if route.request.url.startswith(url):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    other.route("**/*", only_loopback)
    other.goto(url)
    other.wait_for_selector("#run")
    return other


def _until(page, done, what: str, timeout: float = 60.0):
    """Poll ``done()`` through Playwright's own wait: a plain sleep would hold the page's routed
    requests (sync Playwright answers them only while the test is inside a Playwright call)."""
    deadline = time.monotonic() + timeout
    while not (value := done()):
        assert time.monotonic() < deadline, what
        page.wait_for_timeout(20)
    return value


def test_cancel_queue_and_closed_tab(served, testdata: Path, tmp_path: Path, monkeypatch):
    """A long clip runs in tab 1; tab 2's photo waits and says what runs ahead (a clip, its frame
    progress); Cancel stops the clip within 2 s and tab 2's photo runs; closing a tab stops its clip."""
    from bfrboost.io.read import read_image
    from bfrboost.pipeline import Restorer
    from tests.support.clips import make_pan_clip

    app, page, elsewhere = served
    clip = make_pan_clip(read_image(testdata / "whole" / "03.jpg").rgb, tmp_path / "long.mp4", (320, 180), 60, audio=False)
    finish = Restorer.finish
    monkeypatch.setattr(Restorer, "finish", lambda self, prepared: (time.sleep(0.2), finish(self, prepared))[1])  # 12 s or more
    fresh(page)
    upload(page, clip)
    choose_base(page, "none")
    page.locator("#run").click()
    job = _until(page, app.engine.jobs.running, "no job started")
    other = _second_tab(page, elsewhere)
    upload(other, testdata / "whole" / "04.jpg")
    choose_base(other, "none")
    other.locator("#run").click()
    other.wait_for_function("() => /waiting: 1 job ahead — a clip, restoring frames: \\d+ of 60/.test(document.body.innerText)")
    screenshot(other, tmp_path, "ui_queue")

    start = time.monotonic()
    page.locator("#cancel").click()
    cancel_s = _until(page, lambda: job.ended, "the clip did not stop") - start
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('cancelled: nothing was kept')")
    screenshot(page, tmp_path, "ui_cancelled")
    assert cancel_s < 2.0, f"cancel took {cancel_s:.2f} s"
    other.wait_for_selector("#result img")
    assert other.locator("#status").inner_text().strip().startswith("1 face(s) restored, ")
    assert not list(Path(app.engine.root).rglob("long.mp4"))  # nothing of the cancelled clip is kept

    other.locator("#upload button[aria-label='Clear']").first.click()
    upload(other, clip)
    other.locator("#run").click()
    second = _until(other, lambda: (job := app.engine.jobs.running()) and "restoring frames:" in job.progress and job, "no clip")
    start = time.monotonic()
    other.close()
    closed_s = _until(page, lambda: second.ended, "closing the tab did not stop the clip") - start
    assert second.cancelled.is_set() and closed_s < 5.0, f"closing the tab stopped the clip after {closed_s:.2f} s"
    print(f"cancel button: {cancel_s:.2f} s, closed tab: {closed_s:.2f} s")
    assert elsewhere == []


def test_examples_preview_web_words_and_face_selection(served, testdata: Path, tmp_path: Path):
    """An example photo with base auto and no weights: a preview, then a warning in web words. A group
    photo with face number 2 and a lowered rescaling factor: one face, and a note saying why."""
    from bfrboost.ui.words import has_cli_words

    app, page, elsewhere = served
    fresh(page)
    page.locator("#examples").get_by_text("astronaut_degraded.jpg").click()
    page.wait_for_selector("#upload :text('astronaut_degraded')")  # the page shows the name and extension apart
    page.wait_for_selector("#preview img")
    choose_base(page, "auto")
    page.locator("#run").click()
    page.wait_for_selector("#status.warning")
    status = page.locator("#status").inner_text().strip()
    assert status.startswith("⚠ no base model is installed on this server (the gfpgan weights are missing)")
    assert "face(s) found, none restored" in status and not has_cli_words(status)
    screenshot(page, tmp_path, "ui_fallback")

    page.locator("#upload button[aria-label='Clear']").first.click()
    upload(page, testdata / "whole" / "01.jpg")  # 4 faces, 248×189
    choose_base(page, "none")
    page.get_by_text("faces to restore").click()
    page.locator("#face-index input").fill("2")
    app.engine.max_output_pixels = 100_000  # 2× would be 187 500 pixels
    try:
        page.locator("#run").click()
        page.wait_for_function("() => document.querySelector('#status').innerText.startsWith('1 face(s) restored')")
    finally:
        app.engine.max_output_pixels = app.engine.max_pixels
    status = page.locator("#status").inner_text()
    assert "note: rescaling factor lowered from 2 to 1: a 2× result of this 248×189 photo would be 0.187 MP" in status
    assert page.locator("#faces img").count() == 1
    screenshot(page, tmp_path, "ui_face_index")

    folder = testdata / "faces" / "whole"  # two people side by side; the reference: another photo of the right one
    pair = [np.asarray(Image.open(folder / n).convert("RGB")) for n in ("dlib_John_Savage_000264_01099001.jpg",
                                                                         "dlib_John_Simm_000288_00470387.jpg")]
    Image.fromarray(np.concatenate(pair, axis=1)).save(tmp_path / "two.png")
    page.locator("#upload button[aria-label='Clear']").first.click()
    upload(page, tmp_path / "two.png")
    page.locator("#face-index input").fill("")
    page.locator("#person input[type=file]").set_input_files(str(folder / "dlib_John_Simm_000300_00470148.jpg"))
    page.wait_for_selector("#person :text('dlib_John_Simm_000300_00470148')")
    page.locator("#blend input[type=number]").fill("0.5")
    page.locator("#run").click()
    page.wait_for_function("() => document.querySelector('#status').innerText.startsWith('1 face(s) restored')")
    with page.expect_download() as download:
        page.locator("#get-report").click()
    (face,) = json.loads(Path(download.value.path()).read_text())["faces"]
    assert face["box"][0] > 150  # the right-hand person (each photo is 150 px wide)
    screenshot(page, tmp_path, "ui_person")
    assert elsewhere == []
