"""`bfrboost ui`: serve the browser app (:func:`bfrboost.ui.launch`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bfrboost.cli import app
from bfrboost.cli.common import err as _err
from bfrboost.cli.common import fail, interruptible
from bfrboost.errors import BfrboostError

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@app.command("ui")
def ui(
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; 0.0.0.0 opens the app to your whole network.")
    ] = "127.0.0.1",
    port: Annotated[
        int | None,
        typer.Option("--port", min=1, max=65535, help="Port (default: the first free one from 7860).", show_default=False),
    ] = None,
    share: Annotated[
        bool,
        typer.Option(
            "--share/--no-share",
            help="Ask Gradio for a public link (needs internet; anyone with the link uses your machine). Off by default.",
        ),
    ] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    refiner: Annotated[Path | None, typer.Option("--refiner", help="Refiner folder pre-filled in the page.")] = None,
    max_upload_mb: Annotated[
        float, typer.Option("--max-upload-mb", min=0.01, help="Largest image upload accepted, in MB.")
    ] = 20.0,
    max_video_mb: Annotated[
        float, typer.Option("--max-video-mb", min=0.01, help="Largest video clip upload accepted, in MB.")
    ] = 200.0,
    max_pixels: Annotated[int, typer.Option("--max-pixels", min=1, help="Largest image accepted, in pixels.")] = 40_000_000,
    cache_size: Annotated[
        int, typer.Option("--cache-size", min=1, help="Model sets kept loaded (one per settings combination).")
    ] = 2,
) -> None:
    """Serve the web app: upload a photo or a clip, pick the options, compare before/after, download."""
    from bfrboost.ui import launch

    if host not in _LOOPBACK:
        _err(f"note: listening on {host}: anyone who can reach this address can upload files and use this machine")
    if share:
        _err("note: --share makes a public link; anyone who has it can use this machine")
    try:
        # Ctrl-C: Gradio stops the server and launch() returns; SIGTERM/SIGHUP: the same, then exit 143/129
        with interruptible(resume="the server has stopped; start it again with `bfrboost ui`"):
            launch(
                host=host,
                port=port,
                share=share,
                device=device,
                refiner=refiner,
                max_upload_mb=max_upload_mb,
                max_video_mb=max_video_mb,
                max_pixels=max_pixels,
                cache_size=cache_size,
            )
    except BfrboostError as exc:
        raise fail(exc) from None
    except OSError as exc:  # port taken, address not available
        _err(f"cannot serve on {host}:{port or 'auto'} ({exc}); choose another --host or --port")
        raise typer.Exit(1) from None
