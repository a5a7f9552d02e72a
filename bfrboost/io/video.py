"""Video files through PyAV: opening a clip for decoding (NVDEC when usable) and choosing the encoder.

PyAV is imported only when a clip is really opened, so images never pay for it. GPU: NVDEC decoding
and NVENC encoding are used when CUDA is there; when they cannot be opened (PyAV raises
``PermissionError`` for CUDA hwaccel on machines without a GPU) the CPU is used silently.
"""

from __future__ import annotations

import functools
from fractions import Fraction
from pathlib import Path
from typing import Any

from bfrboost.errors import InputError, UsageError
from bfrboost.io.inputs import VIDEO_EXTENSIONS
from bfrboost.options import X264_PRESETS
from bfrboost.safety import one_line

_NVENC_PRESETS = dict(zip(X264_PRESETS, ("p1", "p1", "p2", "p3", "p4", "p5", "p6", "p7", "p7", "p7")))
_VP9_SPEED = dict(zip(X264_PRESETS, ("8", "7", "6", "5", "4", "3", "2", "1", "0", "0")))


def is_video(path: Path | str) -> bool:
    """Whether ``path`` is a video clip, by extension (as folders and globs decide)."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def av_module() -> Any:
    """PyAV, imported when a clip is really opened (images never pay for it)."""
    try:
        import av
    except ImportError:
        raise UsageError("video needs PyAV: run `pip install av`") from None
    return av


def want_hardware(hardware: bool | None) -> bool:
    if hardware is not None:
        return hardware
    import torch

    return torch.cuda.is_available()


def open_input(path: Path, hardware: bool) -> tuple[Any, str]:
    """Open ``path`` for decoding, with NVDEC when asked and possible; returns (container, "cuda"|"cpu")."""
    av = av_module()
    name = one_line(path)
    if hardware:
        try:
            from av.codec.hwaccel import HWAccel

            return av.open(str(path), hwaccel=HWAccel("cuda", allow_software_fallback=True)), "cuda"
        except (PermissionError, OSError, ValueError, av.FFmpegError):
            pass  # no usable GPU decoder (or a bad file, which the plain open below reports)
    try:
        return av.open(str(path)), "cpu"
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except (OSError, av.FFmpegError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise InputError(f"{name}: cannot decode video ({reason}); check that it is a complete video file") from None


@functools.lru_cache(maxsize=4)
def nvenc_works(codec: str) -> bool:
    """Whether ``codec`` (an NVENC encoder) really opens here: it needs a GPU and the driver's library."""
    av = av_module()
    try:
        context = av.CodecContext.create(codec, "w")
        context.width, context.height, context.pix_fmt = 256, 256, "yuv420p"
        context.time_base = Fraction(1, 25)
        context.open()
        return True
    except (PermissionError, OSError, ValueError, av.FFmpegError):
        return False


def encoder(ext: str, crf: int, preset: str, hardware: bool) -> tuple[str, dict[str, str]]:
    """Codec name and options for ``ext``: NVENC H.264 when usable, else x264 (VP9 for WebM).

    ``crf`` / ``preset`` are x264's, mapped to NVENC's ``cq`` / ``p1``–``p7`` and VP9's ``crf`` / ``cpu-used``."""
    if ext == "webm":
        return "libvpx-vp9", {"crf": str(crf), "b": "0", "cpu-used": _VP9_SPEED[preset], "row-mt": "1"}
    if hardware and nvenc_works("h264_nvenc"):
        return "h264_nvenc", {"preset": _NVENC_PRESETS[preset], "rc": "vbr", "cq": str(crf), "b": "0"}
    return "libx264", {"crf": str(crf), "preset": preset}
