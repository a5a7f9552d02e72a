"""`bfrboost ui`: serve the browser app (:func:`bfrboost.ui.launch`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bfrboost.cli import app
from bfrboost.cli import options as opt
from bfrboost.cli.common import err as _err
from bfrboost.cli.common import fail, interruptible
from bfrboost.errors import BfrboostError
from bfrboost.options import UiOptions

UI = opt.defaults(UiOptions)

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@app.command("ui")
def ui(
    host: opt.option(str, UiOptions, "host") = UI.host,
    port: opt.option(int | None, UiOptions, "port", show_default=False) = UI.port,
    share: Annotated[
        bool,
        typer.Option(
            "--share/--no-share",
            help="Ask Gradio for a public link (needs internet; anyone with the link uses your machine). Off by default.",
        ),
    ] = False,
    device: opt.option(str, UiOptions, "device") = UI.device,
    refiner: Annotated[Path | None, typer.Option("--refiner", help="Refiner folder pre-filled in the page.")] = None,
    max_upload_mb: opt.option(float, UiOptions, "max_upload_mb") = UI.max_upload_mb,
    max_video_mb: opt.option(float, UiOptions, "max_video_mb") = UI.max_video_mb,
    max_pixels: opt.option(int, UiOptions, "max_pixels") = UI.max_pixels,
    cache_size: opt.option(int, UiOptions, "cache_size") = UI.cache_size,
) -> None:
    """Serve the web app: upload a photo or a clip, pick the options, compare before/after, download."""
    settings = dict(locals())  # every option is an argument of launch() (or of the app it builds), by name
    from bfrboost.ui import launch

    if host not in _LOOPBACK:
        _err(f"note: listening on {host}: anyone who can reach this address can upload files and use this machine")
    if share:
        _err("note: --share makes a public link; anyone who has it can use this machine")
    try:
        # Ctrl-C: Gradio stops the server and launch() returns; SIGTERM/SIGHUP: the same, then exit 143/129
        with interruptible(resume="the server has stopped; start it again with `bfrboost ui`"):
            launch(**settings)
    except BfrboostError as exc:
        raise fail(exc) from None
    except OSError as exc:  # port taken, address not available
        _err(f"cannot serve on {host}:{port or 'auto'} ({exc}); choose another --host or --port")
        raise typer.Exit(1) from None
