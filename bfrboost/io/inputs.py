"""Finding inputs: files, folders and globs expanded into paths, with one line per unusable input.

The one list of image extensions (:data:`IMAGE_EXTENSIONS`) and the one folder scanner live here;
restoring, training, statistics and the dataset job all find images the same way.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from bfrboost.safety import describe_missing, one_line, special_file

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".avif"})
"""What folders and globs are searched for (compared lower-case). AVIF needs Pillow >= 11.2."""
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"})
"""Video clips folders and globs also yield with ``collect_inputs(..., videos=True)`` (``bfrboost restore``)."""


class InputProblem(str):
    """One input that failed while collecting: the one-line message (a ``str``), plus ``input``, the
    path or argument it is about, so a runner can give it its own report (one ``--json`` object)."""

    input: str

    def __new__(cls, input: Path | str, reason: str) -> InputProblem:
        problem = super().__new__(cls, f"{one_line(input)}: {reason}")
        problem.input = str(input)
        return problem


def collect_inputs(inputs: Iterable[str], recursive: bool = False, videos: bool = False) -> tuple[list[Path], list[InputProblem]]:
    """Expand files, folders (images by extension, sorted) and globs (``photos/**/*.png``) into paths;
    with ``videos`` folders and globs also yield video clips (:data:`VIDEO_EXTENSIONS`).

    Returns the paths in the order given, without duplicates, and one :class:`InputProblem` per input
    that cannot be used (missing path, dangling symbolic link, FIFO or other special file, folder
    without images, glob matching nothing) for the caller to report before going on.
    A file named explicitly is kept whatever its extension; reading it reports if it is no image.
    """
    paths: list[Path] = []
    problems: list[InputProblem] = []
    seen: set[str] = set()
    extensions = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS if videos else IMAGE_EXTENSIONS
    for item in inputs:
        path = Path(os.path.expanduser(item))
        special = special_file(path)
        if special is not None:
            problems.append(InputProblem(item, special))
            continue
        if path.is_file():
            found = [path]
        elif path.is_dir():
            try:
                found, inside = _scan(_folder_entries(path, recursive, problems), extensions)
                hint = "" if found or recursive or not any(_visible_dirs(path)) else " (pass --recursive to look in subfolders)"
            except OSError as exc:
                problems.append(InputProblem(item, f"cannot read folder ({exc.strerror}); check its permissions"))
                continue
            problems += inside
            if not found and not inside:
                problems.append(InputProblem(item, f"folder has no images{hint}"))
        elif any(char in item for char in "*?[") and not os.path.lexists(path):
            found, inside = _scan((Path(p) for p in sorted(glob.glob(os.path.expanduser(item), recursive=True))), extensions)
            problems += inside
            if not found and not inside:
                problems.append(
                    InputProblem(item, "pattern matches no images; check the pattern (quote it so the shell does not expand it)")
                )
        else:
            problems.append(InputProblem(item, describe_missing(path)))
            continue
        for found_path in found:
            key = os.path.normcase(os.path.realpath(found_path))
            if key not in seen:
                seen.add(key)
                paths.append(found_path)
    return paths, problems


def _scan(candidates: Iterable[Path], extensions: frozenset[str] = IMAGE_EXTENSIONS) -> tuple[list[Path], list[InputProblem]]:
    """Files among ``candidates`` with one of ``extensions`` (not hidden) and those that are FIFOs,
    sockets, devices or dangling links: named like images, so the user expects them restored."""
    found: list[Path] = []
    problems: list[InputProblem] = []
    for path in candidates:
        if path.suffix.lower() not in extensions or path.name.startswith("."):
            continue
        if path.is_file():
            found.append(path)
        elif (special := special_file(path)) is not None:
            problems.append(InputProblem(path, special))
        elif path.is_symlink() and not path.exists():
            problems.append(InputProblem(path, describe_missing(path)))
    return found, problems


def _visible_dirs(folder: Path) -> Iterator[Path]:
    return (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _folder_entries(folder: Path, recursive: bool, problems: list[InputProblem]) -> list[Path]:
    """Entries of a folder, sorted; hidden files and folders (and our own temp files) are left out.

    An unreadable sub-folder is a problem reported, not a silent gap in the batch."""
    if not recursive:
        return sorted(folder.iterdir())

    def unreadable(exc: OSError) -> None:
        problems.append(InputProblem(exc.filename or folder, f"cannot read folder ({exc.strerror}); check its permissions"))

    found = []
    for root, dirs, files in os.walk(folder, onerror=unreadable):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(Path(root) / f for f in files)
    return sorted(found)


def scan_folder(folder: Path, recursive: bool = True, extensions: frozenset[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Files under ``folder`` with one of ``extensions``, sorted; hidden files and folders left out.

    The one folder scanner: ``restore`` (through :func:`collect_inputs`), training, statistics and
    the dataset job see the same files in the same order."""
    found, _ = _scan(_folder_entries(Path(folder), recursive, []), extensions)
    return found
