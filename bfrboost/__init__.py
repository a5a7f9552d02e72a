"""bfrboost: plug-and-play blind face restoration booster (base model → InfoBFR refiner).

``bfrboost.Restorer`` is imported lazily so that ``bfrboost --help`` does not pay for torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
_OPTIONS = ("DetectOptions", "GuidanceOptions", "OutputOptions", "PasteOptions", "RestoreOptions", "VideoOptions")
__all__ = [
    "Face", "FileReport", "FileRunner", "Restorer", "Result", "VideoRunner", *_OPTIONS,
    "restore_files", "restore_paths", "restore_videos", "__version__",
]


def __getattr__(name: str) -> Any:
    if name in ("Restorer", "Result"):
        from bfrboost import pipeline

        return getattr(pipeline, name)
    if name in _OPTIONS:
        from bfrboost import options

        return getattr(options, name)
    if name == "restore_paths":
        from bfrboost.runners.paths import restore_paths

        return restore_paths
    if name in ("FileRunner", "restore_files"):
        from bfrboost.runners import files

        return getattr(files, name)
    if name in ("VideoRunner", "restore_videos"):
        from bfrboost.runners import video

        return getattr(video, name)
    if name == "FileReport":
        from bfrboost.reports import FileReport

        return FileReport
    if name == "Face":
        from bfrboost.faces.types import Face

        return Face
    raise AttributeError(f"module 'bfrboost' has no attribute {name!r}")
