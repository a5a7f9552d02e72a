"""Restored clips keep their colours in players: solid patches go through the video runner and are
decoded again by decoders that honour the colour tags — a YUV→RGB conversion written here from the
BT.601/709 definitions, and Debian's Chromium drawing the <video> into a canvas."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import av
import numpy as np
import pytest

from bfrboost.io.colour import Colour
from bfrboost.pipeline import Restorer
from bfrboost.runners.video import VideoOptions, VideoRunner
from tests.support.clips import make_pan_clip

PATCHES = [(200, 160, 40), (30, 200, 90), (60, 70, 210), (235, 235, 235), (20, 20, 20), (128, 128, 128)]
BT709, BT601 = Colour(1, False, 1, 1), Colour(6, False, 6, 6)
# name: (input size, colour the input is encoded with, tagged, upscale)
CASES = {
    "360p_untagged": ((640, 360), None, False, 1),  # FFmpeg's default: BT.601, no tags
    "360p_untagged_x2_720p": ((640, 360), None, False, 2),  # the web app's default clip
    "720p_untagged_bt709": ((1280, 720), BT709, False, 1),  # untagged HD, encoded as players assume
    "1080p_bt709": ((1920, 1080), BT709, True, 1),
    "360p_full_range_bt601": ((640, 360), Colour(6, True, 6, 6), True, 1),
}
CHROMIUM = Path("/usr/bin/chromium")


def patch_image(width: int, height: int) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    for i, colour in enumerate(PATCHES):
        image[:, i * width // len(PATCHES) : (i + 1) * width // len(PATCHES)] = colour
    return image


def centres(width: int, height: int) -> list[tuple[int, int]]:
    """(x, y) in the middle of each patch."""
    return [((2 * i + 1) * width // (2 * len(PATCHES)), height // 2) for i in range(len(PATCHES))]


class NoFaces:
    name = "none"

    def detect(self, image: np.ndarray) -> list:
        return []


def reference_decode(path: Path) -> np.ndarray:
    """The first frame as RGB, converted from the raw YUV planes with the matrix and range of the
    stream's tags (or the players' guess by size when untagged) — not through swscale."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        tags = stream.codec_context
        frame = next(container.decode(stream))
        w, h = frame.width, frame.height
        planes = frame.to_ndarray().astype(np.float64)  # yuv420p: Y rows, then U, then V (each a quarter)
    y = planes[:h]
    u = planes[h : h + h // 4].reshape(h // 2, w // 2)
    v = planes[h + h // 4 :].reshape(h // 2, w // 2)
    u, v = (np.repeat(np.repeat(p, 2, 0), 2, 1) for p in (u, v))
    matrix = tags.colorspace if tags.colorspace != 2 else (1 if (w >= 1280 or h > 576) else 6)
    kr, kb = {1: (0.2126, 0.0722), 5: (0.299, 0.114), 6: (0.299, 0.114)}[matrix]
    if tags.color_range == 2:
        luma, pb, pr = y / 255, (u - 128) / 255, (v - 128) / 255
    else:
        luma, pb, pr = (y - 16) / 219, (u - 128) / 224, (v - 128) / 224
    r = luma + 2 * (1 - kr) * pr
    b = luma + 2 * (1 - kb) * pb
    g = (luma - kr * r - kb * b) / (1 - kr - kb)
    return np.clip(np.stack([r, g, b], -1) * 255, 0, 255).round().astype(np.uint8)


def errors(rgb: np.ndarray) -> int:
    """Largest difference (levels) between the patches' centres in ``rgb`` and their true colours."""
    h, w = rgb.shape[:2]
    return max(int(np.abs(rgb[y, x].astype(int) - colour).max()) for (x, y), colour in zip(centres(w, h), PATCHES, strict=True))


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Each case's (input, restored output)."""
    folder = tmp_path_factory.mktemp("colour")
    made = {}
    for name, (size, colour, tagged, upscale) in CASES.items():
        clip = make_pan_clip(
            patch_image(*size), folder / f"{name}.mp4", size, 2, pan=(0, 0), audio=False, colour=colour, tagged=tagged, crf=12
        )
        restorer = Restorer("none", device="cpu", detector="dlib", upscale=upscale)
        restorer.finder.detector = NoFaces()
        report = next(VideoRunner(restorer, VideoOptions(folder / name, crf=12, preset="veryfast")).run([clip]))
        assert report.error is None, report.error
        made[name] = (clip, Path(report.output))
    return made


def test_output_carries_the_input_colour_tags(clips: dict[str, tuple[Path, Path]]) -> None:
    def tags(path: Path) -> tuple[int, int, int, int]:
        with av.open(str(path)) as container:
            c = container.streams.video[0].codec_context
            return c.colorspace, c.color_range, c.color_primaries, c.color_trc

    assert tags(clips["360p_untagged"][1]) == (6, 1, 6, 6)  # BT.601 (SMPTE 170M), limited range
    assert tags(clips["360p_untagged_x2_720p"][1]) == (6, 1, 6, 6)  # the input's matrix, even at 720p
    assert tags(clips["720p_untagged_bt709"][1]) == (1, 1, 1, 1)
    assert tags(clips["1080p_bt709"][1]) == (1, 1, 1, 1)
    assert tags(clips["360p_full_range_bt601"][1]) == (6, 2, 6, 6)


@pytest.mark.parametrize("name", list(CASES))
def test_patches_decode_to_their_colours(clips: dict[str, tuple[Path, Path]], name: str) -> None:
    clip, out = clips[name]
    assert errors(reference_decode(clip)) <= 3  # the input itself is right
    rgb = reference_decode(out)
    size, _, _, upscale = CASES[name]
    assert rgb.shape[:2] == (size[1] * upscale, size[0] * upscale)
    assert errors(rgb) <= 3


def _serve(folder: Path) -> http.server.ThreadingHTTPServer:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


_DRAW = """async ([src, points]) => {
  const video = document.createElement('video');
  video.muted = true; video.src = src;
  await new Promise((ok, fail) => {
    video.onloadeddata = ok;
    video.onerror = () => fail(new Error(src + ': ' + video.error.message));
  });
  video.currentTime = 0.01;  // drawn right after loadeddata the frame may still be black: seek to it
  await new Promise((ok) => { video.onseeked = ok; });
  const canvas = document.createElement('canvas');
  canvas.width = video.videoWidth; canvas.height = video.videoHeight;
  const context = canvas.getContext('2d');
  for (let tries = 0; ; tries++) {  // a loaded machine may hand over the first frame late (black)
    context.drawImage(video, 0, 0);
    const seen = points.map(([x, y]) => Array.from(context.getImageData(x, y, 1, 1).data.slice(0, 3)));
    if (seen.flat().some((v) => v > 0) || tries >= 50) return seen;
    await new Promise((ok) => setTimeout(ok, 100));
  }
}"""


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (`make browser`)")
def test_chromium_shows_the_output_with_the_input_colours(clips: dict[str, tuple[Path, Path]]) -> None:
    """Chromium renders BT.601 exactly; its software path renders limited-range BT.709 up to 8 levels
    off in blue (for the input just as much), so there the output must match how the input looks."""
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    root = next(iter(clips.values()))[0].parents[0]
    server = _serve(root)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{server.server_port}/")

            def shown(path: Path, scale: int = 1) -> np.ndarray:
                size = CASES[path.stem][0]
                points = centres(size[0] * scale, size[1] * scale)
                return np.array(page.evaluate(_DRAW, ["/" + path.relative_to(root).as_posix(), points]), int)

            for name, (clip, out) in clips.items():
                truth = np.array(PATCHES)
                seen_in, seen_out = shown(clip), shown(out, CASES[name][3])
                assert np.abs(seen_out - seen_in).max() <= 3, name
                if CASES[name][1] is not BT709 and CASES[name][0][1] < 720:
                    assert np.abs(seen_out - truth).max() <= 3, name
            browser.close()
    finally:
        server.shutdown()
