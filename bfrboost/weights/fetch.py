"""Downloading a card's file: HTTP Range resume, retries, a progress bar and the licence notice."""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bfrboost.errors import WeightsError
from bfrboost.weights.catalog import (
    CHUNK,
    LOCK_FILE,
    WeightFile,
    cards,
    entry_for,
    home,
    pin,
    read_json,
    remember_hash,
    say,
    sha256_of,
    write_json,
)

_MAX_STALLED_ATTEMPTS = 3  # download attempts in a row that add no bytes before giving up
_TIMEOUT_S = 60


def download(file: str, progress: bool = True) -> Path:
    """Fetch ``file`` now into ``PATH.part`` (resuming a previous ``.part``), check it, rename it in place.

    An explicit request, so it does not consult offline mode: code that merely needs a file calls
    :func:`ensure`, which never reaches this function when offline.
    """
    entry = entry_for(file)
    path = entry.path
    part = path.with_name(path.name + ".part")
    path.parent.mkdir(parents=True, exist_ok=True)
    _licence_notice(entry)
    digest = _fetch(entry, part, progress)
    size = part.stat().st_size
    if entry.size is not None and size != entry.size:
        part.unlink()
        raise WeightsError(f"{entry.file}: downloaded {size} bytes but the card expects {entry.size} (from {entry.url}); removed the download, try again")
    if entry.sha256 is not None and digest != entry.sha256:
        part.unlink()
        raise WeightsError(f"{entry.file}: SHA-256 {digest} does not match the expected {entry.sha256} (from {entry.url}); removed the download, try again")
    os.replace(part, path)
    remember_hash(path, digest)
    if entry.sha256 is None:
        pin(entry, digest)
    return path


def _fetch(entry: WeightFile, part: Path, progress: bool) -> str:
    """Download into ``part`` with HTTP Range resume and retries; return the SHA-256 of the whole file."""
    stalled = 0
    with _progress_bar(entry.file, progress) as advance:
        while True:
            start = part.stat().st_size if part.exists() else 0
            if entry.size is not None and start > entry.size:
                part.unlink()
                start = 0
            if entry.size is not None and start == entry.size:
                return sha256_of(part).hexdigest()
            try:
                digest = _fetch_once(entry, part, start, advance)
            except urllib.error.HTTPError as exc:
                if exc.code == 416 and start:  # nothing after `start`: complete if the server's length agrees
                    if (exc.headers.get("Content-Range") or "").endswith(f"/{start}"):
                        return sha256_of(part).hexdigest()
                    part.unlink()
                    continue
                raise WeightsError(f"{entry.file}: download failed, HTTP {exc.code} from {entry.url}; download it by hand and run `bfrboost weights import FILE`") from None
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                digest, reason = None, getattr(exc, "reason", exc)
            else:
                reason = "connection closed early"
            if digest is not None:
                return digest
            grew = (part.stat().st_size if part.exists() else 0) > start
            stalled = 0 if grew else stalled + 1
            if stalled >= _MAX_STALLED_ATTEMPTS:
                if part.exists() and part.stat().st_size == 0:
                    part.unlink()
                kept = f"; the partial file {part} is kept and resumed next time" if part.exists() else ""
                raise WeightsError(f"{entry.file}: download from {entry.url} failed ({reason}){kept}; or download it by hand and run `bfrboost weights import FILE`")


def _fetch_once(entry: WeightFile, part: Path, start: int, advance: Any) -> str | None:
    """One HTTP request appending to ``part``; the file's SHA-256 if complete, None if cut off."""
    headers = {"User-Agent": "bfrboost"}
    if start:
        headers["Range"] = f"bytes={start}-"
    request = urllib.request.Request(entry.url, headers=headers)
    with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
        if response.status != 206:  # no Range asked, or the server ignored it: start over
            start = 0
        hasher = sha256_of(part) if start else hashlib.sha256()
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None else None
        advance(completed=start, total=start + expected if expected is not None else entry.size)
        received = 0
        with part.open("ab" if start else "wb") as out:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                hasher.update(chunk)
                received += len(chunk)
                advance(advance=len(chunk))
    return hasher.hexdigest() if expected is None or received == expected else None


@contextmanager
def _progress_bar(label: str, enabled: bool) -> Iterator[Any]:
    """Rich download bar on stderr; yields ``advance(completed=, total=, advance=)``."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    console = Console(stderr=True)
    if enabled and not console.is_terminal:  # logs and pipes get one line, not a redrawn bar
        say(f"downloading {label}")
    with Progress(*columns, console=console, disable=not enabled or not console.is_terminal) as bar:
        task = bar.add_task(label, total=None)
        yield lambda **kwargs: bar.update(task, **kwargs)


def _licence_notice(entry: WeightFile) -> None:
    """Print a non-commercial licence once per card, before its first download starts."""
    if entry.commercial_use:
        return
    lock = read_json(home() / LOCK_FILE)
    shown = lock.setdefault("licence_shown", [])
    if entry.card in shown:
        return
    card = cards()[entry.card]
    say(f"{card.display_name} ({entry.card}) is licensed under {card.license}: NOT for commercial use; terms: {card.homepage}")
    shown.append(entry.card)
    write_json(home() / LOCK_FILE, lock)
