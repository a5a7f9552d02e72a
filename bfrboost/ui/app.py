"""The Gradio page: CodeFormer's demo controls plus ours, over :class:`bfrboost.ui.engine.Engine`.

Gradio because it is what the field's demos use (CodeFormer, GFPGAN on Hugging Face Spaces) and gives
upload, progress, a before/after slider and galleries without hand-written JavaScript. The input is a
plain file upload, not ``gr.Image``: Gradio would decode and re-encode the picture first, and the
result could then differ from ``bfrboost restore`` on the same file (16-bit scans, EXIF rotation, ICC).
The same upload takes video clips (by extension, as the CLI decides); their result is shown in a
``gr.Video`` player, served as the runner wrote it (H.264 MP4 plays in browsers without conversion).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bfrboost.errors import BfrboostError, UsageError
from bfrboost.options import PasteOptions
from bfrboost.ui.engine import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_MAX_VIDEO_MB,
    ClipOutcome,
    Engine,
    Settings,
    describe,
    has_fidelity,
)

log = logging.getLogger("bfrboost.ui")

DEFAULT_HOST = "127.0.0.1"
PREVIEW_SIDE = 4096
"""Longest side of the images shown in the page; the download always has the full size."""
_CSS = "#status p { margin: 0; } #status.error p { color: #b00020 !important; font-weight: 600; }"


def _gradio() -> Any:
    try:
        import gradio
    except ImportError:
        raise UsageError("the web app needs Gradio: install it with pip install 'bfrboost[ui]'") from None
    return gradio


def _preview(image: np.ndarray) -> np.ndarray:
    """A copy small enough for the browser: a 4× result of a big photo would be hundreds of MB as PNG."""
    scale = PREVIEW_SIDE / max(image.shape[:2])
    if scale >= 1:
        return image
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _status(text: str, error: bool = False) -> Any:
    gr = _gradio()
    return gr.update(value=text, elem_classes=["error"] if error else [])


def build_app(
    device: str = "auto",
    cache_size: int = 2,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    refiner: str | Path | None = None,
    workdir: str | Path | None = None,
    engine: Engine | None = None,
    max_video_mb: float = DEFAULT_MAX_VIDEO_MB,
) -> Any:
    """The ``gradio.Blocks`` app (not started). ``refiner``: folder pre-filled in the refiner box;
    ``workdir``: where results wait for download (default: a fresh temp folder);
    ``max_upload_mb`` caps images, ``max_video_mb`` clips.
    """
    gr = _gradio()

    from bfrboost.backbones.registry import names

    engine = engine or Engine(
        device=device, cache_size=cache_size, max_upload_mb=max_upload_mb, max_pixels=max_pixels,
        workdir=Path(workdir) if workdir is not None else None, max_video_mb=max_video_mb,
    )
    bases = ["auto", *names()]

    defaults = Settings()
    with gr.Blocks(title="bfrboost", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        app.engine = engine  # launch() reads its upload cap; tests read its cache
        gr.Markdown(
            "## bfrboost — blind face restoration\n"
            "Upload a photo or a video clip (mp4, mov, mkv, webm, avi), choose a base model (and optionally "
            "the InfoBFR refiner), press **Restore**. "
            f"Images up to {engine.max_upload_mb:g} MB and {engine.max_pixels / 1e6:g} megapixels, "
            f"clips up to {engine.max_video_mb:g} MB."
        )
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="input image or video", file_count="single", type="filepath", elem_id="upload")
                base = gr.Dropdown(bases, value=defaults.base, label="base model", elem_id="base")
                fidelity = gr.Slider(
                    0, 1, value=defaults.fidelity, step=0.01, label="fidelity (0 = better quality, 1 = closer to the input)",
                    info="CodeFormer w / VQFR fidelity ratio", interactive=has_fidelity("auto"), elem_id="fidelity",
                )
                with gr.Row():
                    refine = gr.Checkbox(defaults.refine, label="InfoBFR refiner", elem_id="refine")
                    strength = gr.Slider(
                        0, 1, value=defaults.refiner_strength, step=0.05, label="refiner strength", elem_id="strength"
                    )
                refiner_dir = gr.Textbox(
                    str(refiner or ""), label="refiner folder", placeholder="path to a refiner folder (save_pretrained layout)",
                    elem_id="refiner",
                )
                with gr.Row():
                    bg_enhance = gr.Checkbox(defaults.bg_enhance, label="background enhance (Real-ESRGAN)", elem_id="bg")
                    face_upsample = gr.Checkbox(
                        defaults.face_upsample, label="face upsample (with rescaling > 1)", elem_id="face-upsample"
                    )
                with gr.Row():
                    draw_boxes = gr.Checkbox(defaults.draw_boxes, label="draw boxes (images)", elem_id="boxes")
                    smooth = gr.Checkbox(
                        defaults.smooth, label="steady faces (video: landmark smoothing)", elem_id="smooth"
                    )
                low, high = (PasteOptions.__dataclass_fields__["upscale"].metadata[k] for k in ("min", "max"))
                upscale = gr.Slider(
                    low, high, value=defaults.upscale, step=0.5, label=f"rescaling factor (up to {high:g})", elem_id="upscale"
                )
                run = gr.Button("Restore", variant="primary", elem_id="run")
            with gr.Column(scale=2):
                status = gr.Markdown("", elem_id="status")
                compare = gr.ImageSlider(label="before / after", type="numpy", format="png", elem_id="compare")
                result = gr.Image(label="result", type="numpy", format="png", interactive=False, elem_id="result")
                video = gr.Video(label="restored video", format=None, interactive=False, visible=False, elem_id="video")
                with gr.Row():
                    get_image = gr.DownloadButton("download result", visible=False, elem_id="get-result")
                    get_report = gr.DownloadButton("download JSON report", visible=False, elem_id="get-report")
                gallery = gr.Gallery(label="faces: before | after", columns=2, object_fit="contain", format="png", elem_id="faces")

        def on_base(name: str) -> Any:
            return gr.update(interactive=has_fidelity(name))

        base.change(on_base, base, fidelity)

        def on_run(path, base_name, fid, refine_on, refiner_path, strength_value, bg, face_up, boxes, smooth_on, scale,
                   progress=gr.Progress()):  # noqa: B008 - Gradio injects the tracker through this default
            hidden = gr.update(visible=False)
            if not path:
                return _status("no image or video: upload one first", error=True), None, None, hidden, hidden, hidden, []
            settings = Settings(
                base=base_name, fidelity=float(fid), refine=bool(refine_on), refiner=refiner_path or "",
                refiner_strength=float(strength_value), bg_enhance=bool(bg), face_upsample=bool(face_up),
                upscale=float(scale), draw_boxes=bool(boxes), smooth=bool(smooth_on),
            )
            try:
                outcome = engine.restore(path, settings, name=Path(path).name, progress=lambda f, t: progress(f, desc=t))
            except Exception as exc:  # noqa: BLE001 - every failure becomes one line on the page
                if not isinstance(exc, BfrboostError):
                    log.exception("restore failed")  # the traceback goes to the server log, never the page
                return _status(f"⚠ {describe(exc)}", error=True), None, None, hidden, hidden, hidden, []
            if isinstance(outcome, ClipOutcome):
                return (
                    _status(outcome.summary()),
                    gr.update(value=None, visible=False),
                    gr.update(value=None, visible=False),
                    gr.update(value=str(outcome.video_path), visible=True),
                    gr.update(value=str(outcome.video_path), visible=True, label=f"download video ({outcome.video_path.name})"),
                    gr.update(value=str(outcome.report_path), visible=True),
                    gr.update(value=[], visible=False),
                )
            after = _preview(outcome.after)
            summary = outcome.summary()
            if after is not outcome.after:
                height, width = outcome.after.shape[:2]
                summary += f" · shown at {after.shape[1]}×{after.shape[0]}; the download has the full {width}×{height}"
            return (
                _status(summary),
                gr.update(value=(_preview(outcome.before), after), visible=True),
                gr.update(value=after, visible=True),
                gr.update(value=None, visible=False),
                gr.update(value=str(outcome.image_path), visible=True, label=f"download image ({outcome.image_path.name})"),
                gr.update(value=str(outcome.report_path), visible=True),
                gr.update(value=outcome.faces, visible=True),
            )

        run.click(
            on_run,
            [upload, base, fidelity, refine, refiner_dir, strength, bg_enhance, face_upsample, draw_boxes, smooth, upscale],
            [status, compare, result, video, get_image, get_report, gallery],
            concurrency_limit=1,  # one restore at a time: models are shared, CPU/GPU is the bottleneck
        )
    return app


def launch(
    host: str = DEFAULT_HOST,
    port: int | None = None,
    share: bool = False,
    block: bool = True,
    app: Any | None = None,
    **build_options: Any,
) -> Any:
    """Start the app (``build_app(**build_options)`` unless ``app`` is given) on ``host:port``.

    ``share=True`` asks Gradio for a public tunnel URL: anyone with the link can use your machine.
    ``block=False`` returns at once with the server running (tests, notebooks); call ``app.close()``.
    """
    app = app if app is not None else build_app(**build_options)
    engine: Engine = app.engine
    app.queue(default_concurrency_limit=1)
    try:
        app.launch(
            server_name=host,
            server_port=port,
            share=share,
            prevent_thread_lock=not block,
            max_file_size=engine.max_request_bytes,
            allowed_paths=[str(engine.root)],
            ssr_mode=False,
            show_error=False,
            quiet=not block,
            footer_links=[],
            css=_CSS,
        )
    finally:
        if block:  # the server has stopped (Ctrl-C, SIGTERM under the CLI) or failed to start: results and models go
            app.close(verbose=False)
            engine.close()
    return app
