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

from bfrboost.errors import BfrboostError, InputError, UsageError
from bfrboost.options import PasteOptions, UiOptions, default_of
from bfrboost.ui.engine import (
    DEFAULT_CACHE_SIZE,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_MAX_VIDEO_MB,
    ClipOutcome,
    Engine,
    Outcome,
    Settings,
    describe,
    has_fidelity,
)
from bfrboost.ui.jobs import Cancelled

log = logging.getLogger("bfrboost.ui")

DEFAULT_HOST = default_of(UiOptions, "host")
PREVIEW_SIDE = 4096
"""Longest side of the images shown in the page; the download always has the full size."""
PREVIEW_UPLOAD = 1024
"""Longest side of the upload's preview."""
_CSS = (
    "#status p { margin: 0; } #status.error p { color: #b00020 !important; font-weight: 600; } "
    "#status.warning p { color: #a15c00 !important; font-weight: 600; }"
)


def _gradio() -> Any:
    try:
        import gradio
    except ImportError:
        raise UsageError("the web app needs Gradio: install it with pip install 'bfrboost[ui]'") from None
    return gradio


def _preview(image: np.ndarray, side: int = PREVIEW_SIDE) -> np.ndarray:
    """A copy small enough for the browser: a 4× result of a big photo would be hundreds of MB as PNG."""
    scale = side / max(image.shape[:2])
    if scale >= 1:
        return image
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _status(text: str, kind: str = "") -> Any:
    """The status line; ``kind`` ``error`` (red) or ``warning`` (orange) colours it."""
    gr = _gradio()
    return gr.update(value=text, elem_classes=[kind] if kind else [])


def _first_frame(path: Path, max_pixels: int) -> np.ndarray:
    """The upload as the page previews it: a photo decoded as the restorer decodes it, a clip's first frame."""
    from bfrboost.io.read import read_image
    from bfrboost.io.video import is_video

    if not is_video(path):
        return read_image(path, name=path.name, max_pixels=max_pixels).rgb
    import av

    try:
        with av.open(str(path)) as container:
            frame = next(container.decode(video=0))
            return frame.to_ndarray(format="rgb24")
    except (av.FFmpegError, StopIteration, IndexError) as exc:
        raise InputError(f"{path.name}: cannot decode video ({exc}); check that it is a complete video file") from None


def _failed(text: str, kind: str = "error") -> tuple[Any, ...]:
    """The run's outputs for a failure (or a cancel): one line in the status, no stale result."""
    gr = _gradio()
    hidden = gr.update(value=None, visible=False)
    return _status(text, kind), gr.update(value=None), gr.update(value=None), hidden, hidden, hidden, gr.update(value=[])


def _cleared() -> tuple[Any, ...]:
    """The run's outputs the moment Restore is pressed: the last result and message go, the image
    outputs show (empty) so the progress bar has a place."""
    gr = _gradio()
    empty, hidden = gr.update(value=None, visible=True), gr.update(value=None, visible=False)
    return _status("starting…"), empty, empty, hidden, hidden, hidden, gr.update(value=[], visible=True)


def _shown(outcome: Outcome | ClipOutcome) -> tuple[Any, ...]:
    """The run's outputs for a result: the player for a clip, the slider, image and faces for a photo."""
    gr = _gradio()
    kind = "warning" if outcome.warnings else ""
    if isinstance(outcome, ClipOutcome):
        return (
            _status(outcome.summary(), kind),
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
        _status(summary, kind),
        gr.update(value=(_preview(outcome.before), after), visible=True),
        gr.update(value=after, visible=True),
        gr.update(value=None, visible=False),
        gr.update(value=str(outcome.image_path), visible=True, label=f"download image ({outcome.image_path.name})"),
        gr.update(value=str(outcome.report_path), visible=True),
        gr.update(value=outcome.faces, visible=True),
    )


def _settings(values: dict[str, Any]) -> Settings:
    """The page's control values → :class:`Settings` (an empty face number means every face)."""
    index = values["face_index"]
    return Settings(
        base=values["base"],
        fidelity=float(values["fidelity"]),
        refine=bool(values["refine"]),
        refiner=values["refiner"] or "",
        refiner_strength=float(values["strength"]),
        bg_enhance=bool(values["bg"]),
        face_upsample=bool(values["face_upsample"]),
        upscale=float(values["upscale"]),
        draw_boxes=bool(values["boxes"]),
        smooth=bool(values["smooth"]),
        face_index=None if index is None or index == "" else int(index),
        largest=bool(values["largest"]),
        person=tuple(str(p) for p in values["person"] or ()),
        blend=float(values["blend"]),
    )


def _run(engine: Engine, path: str | None, values: dict[str, Any], session: str, progress: Any) -> tuple[Any, ...]:
    """One Restore press: wait in the engine's queue (the progress bar says what runs ahead), restore,
    show. Cancelled (button, closed tab) or failed: one line, nothing stale."""
    if not path:
        return _failed("⚠ no image or video: upload one first")
    name = Path(path).name
    job = engine.submit(name, session)
    try:
        settings = _settings(values)
        for line in engine.jobs.wait(job):
            progress(0.0, desc=line)
        outcome = engine.restore(path, settings, name=name, progress=lambda f, t: progress(f, desc=t), job=job)
    except Cancelled:
        return _failed("cancelled: nothing was kept; press Restore to run again", "warning")
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line on the page
        if not isinstance(exc, BfrboostError):
            log.exception("restore failed")  # the traceback goes to the server log, never the page
        return _failed(f"⚠ {describe(exc)}")
    finally:
        engine.jobs.done(job)
    return _shown(outcome)


def _examples(engine: Engine) -> list[Path]:
    """The project's demo photos (``bfrboost.demo``, from scikit-image's wheel), in the work folder."""
    from bfrboost.demo import write_demo_photos

    try:
        return write_demo_photos(engine.root / "examples")
    except Exception:  # noqa: BLE001 - examples are a convenience: the page works without them
        log.exception("could not write the example photos")
        return []


def build_app(
    device: str = "auto",
    cache_size: int = DEFAULT_CACHE_SIZE,
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
    engine = engine or Engine(
        device=device,
        cache_size=cache_size,
        max_upload_mb=max_upload_mb,
        max_pixels=max_pixels,
        workdir=Path(workdir) if workdir is not None else None,
        max_video_mb=max_video_mb,
    )
    with gr.Blocks(title="bfrboost", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        app.engine = engine  # launch() reads its upload cap; tests read its cache
        gr.Markdown(
            "## bfrboost — blind face restoration\n"
            "Upload a photo or a video clip (mp4, mov, mkv, webm, avi), choose a base model (and optionally "
            "the InfoBFR refiner), press **Restore**. "
            f"Images up to {engine.max_upload_mb:g} MB and {engine.max_pixels / 1e6:g} megapixels (larger results get a "
            f"lower rescaling factor), clips up to {engine.max_video_mb:g} MB."
        )
        with gr.Row():
            with gr.Column(scale=1):
                upload, controls, run, cancel = _controls(gr, engine, refiner)
            with gr.Column(scale=2):
                outputs = _outputs(gr)
        status = outputs[0]
        preview = controls.pop("preview")
        upload.change(lambda path: _on_upload(engine, path), upload, [preview, status], queue=False)
        names = list(controls)  # the settings' inputs, by the names _settings reads

        def on_run(data: dict, request: gr.Request, progress=gr.Progress()):  # noqa: B008 - Gradio injects both
            values = {name: data[controls[name]] for name in names}
            return _run(engine, data[upload], values, request.session_hash or "", progress)

        def on_cancel(request: gr.Request) -> None:
            engine.jobs.cancel(request.session_hash or "")

        for handler in (on_run, on_cancel):  # the real class: Gradio finds the request by its annotation
            handler.__annotations__["request"] = gr.Request
        clear = run.click(_cleared, None, outputs, queue=False)
        clear.then(on_run, {upload, *(controls[n] for n in names)}, outputs, concurrency_limit=16)
        cancel.click(on_cancel, None, None, queue=False)
        app.unload(on_cancel)  # a closed or reloaded tab cancels its jobs
    return app


def _on_upload(engine: Engine, path: str | None) -> tuple[Any, Any]:
    gr = _gradio()
    if not path:
        return gr.update(value=None, visible=False), _status("")
    try:
        return gr.update(value=_preview(_first_frame(Path(path), engine.max_pixels), PREVIEW_UPLOAD), visible=True), _status("")
    except BfrboostError as exc:
        return gr.update(value=None, visible=False), _status(f"⚠ {describe(exc)}", "error")


def _controls(gr: Any, engine: Engine, refiner: str | Path | None) -> tuple[Any, dict[str, Any], Any, Any]:
    """The left column: upload, preview, examples, the restore options, face selection, Restore and Cancel."""
    from bfrboost.backbones.registry import names

    defaults = Settings()  # every default and bound comes from bfrboost.options, through Settings
    upload = gr.File(label="input image or video", file_count="single", type="filepath", elem_id="upload")
    c: dict[str, Any] = {
        "preview": gr.Image(label="preview", type="numpy", interactive=False, visible=False, height=220, elem_id="preview")
    }
    examples = _examples(engine)
    if examples:
        gr.Examples([[str(p)] for p in examples], inputs=[upload], label="example photos", elem_id="examples")
    c["base"] = gr.Dropdown(["auto", *names()], value=defaults.base, label="base model", elem_id="base")
    c["fidelity"] = gr.Slider(
        0,
        1,
        value=defaults.fidelity,
        step=0.01,
        label="fidelity (0 = better quality, 1 = closer to the input)",
        info="CodeFormer w / VQFR fidelity ratio",
        interactive=has_fidelity("auto"),
        elem_id="fidelity",
    )
    c["base"].change(lambda name: gr.update(interactive=has_fidelity(name)), c["base"], c["fidelity"])
    with gr.Row():
        c["refine"] = gr.Checkbox(defaults.refine, label="InfoBFR refiner", elem_id="refine")
        c["strength"] = gr.Slider(0, 1, value=defaults.refiner_strength, step=0.05, label="refiner strength", elem_id="strength")
    c["refiner"] = gr.Textbox(
        str(refiner or ""),
        label="refiner folder",
        elem_id="refiner",
        placeholder="path to a refiner folder (save_pretrained layout)",
    )
    with gr.Row():
        c["bg"] = gr.Checkbox(defaults.bg_enhance, label="background enhance (Real-ESRGAN)", elem_id="bg")
        c["face_upsample"] = gr.Checkbox(
            defaults.face_upsample, label="face upsample (with rescaling > 1)", elem_id="face-upsample"
        )
    with gr.Row():
        c["boxes"] = gr.Checkbox(defaults.draw_boxes, label="draw boxes (images)", elem_id="boxes")
        c["smooth"] = gr.Checkbox(defaults.smooth, label="steady faces (video: landmark smoothing)", elem_id="smooth")
    low, high = (PasteOptions.__dataclass_fields__["upscale"].metadata[k] for k in ("min", "max"))
    c["upscale"] = gr.Slider(
        low, high, value=defaults.upscale, step=0.5, label=f"rescaling factor (up to {high:g})", elem_id="upscale"
    )
    with gr.Accordion("faces to restore", open=False, elem_id="faces-to-restore"):
        with gr.Row():
            c["face_index"] = gr.Number(
                defaults.face_index,
                label="only face number (0 = leftmost; empty = all)",
                precision=0,
                minimum=0,
                elem_id="face-index",
            )
            c["largest"] = gr.Checkbox(defaults.largest, label="only the largest face", elem_id="largest")
        c["person"] = gr.File(
            label="only this person: reference photo(s), one person each",
            file_count="multiple",
            type="filepath",
            elem_id="person",
        )
        c["blend"] = gr.Slider(
            0, 1, value=defaults.blend, step=0.05, label="blend (1 = restored face, 0 = original face)", elem_id="blend"
        )
    with gr.Row():
        run = gr.Button("Restore", variant="primary", elem_id="run")
        cancel = gr.Button("Cancel", variant="stop", elem_id="cancel")
    return upload, c, run, cancel


def _outputs(gr: Any) -> list[Any]:
    """The right column: status, before/after slider, result, player, downloads, faces (the run's outputs, in order)."""
    status = gr.Markdown("", elem_id="status")
    compare = gr.ImageSlider(label="before / after", type="numpy", format="png", elem_id="compare")
    result = gr.Image(label="result", type="numpy", format="png", interactive=False, elem_id="result")
    video = gr.Video(label="restored video", format=None, interactive=False, visible=False, elem_id="video")
    with gr.Row():
        get_image = gr.DownloadButton("download result", visible=False, elem_id="get-result")
        get_report = gr.DownloadButton("download JSON report", visible=False, elem_id="get-report")
    gallery = gr.Gallery(label="faces: before | after", columns=2, object_fit="contain", format="png", elem_id="faces")
    return [status, compare, result, video, get_image, get_report, gallery]


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
