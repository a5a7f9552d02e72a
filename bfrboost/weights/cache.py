"""Using the cache: a verified path for a file (downloaded when missing), verification, status, import."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath

from bfrboost.errors import WeightsError
from bfrboost.safety import atomic_open
from bfrboost.weights.catalog import (
    CHUNK,
    SD21_CARD,
    VERIFY_CACHE,
    WeightFile,
    cached_sha256,
    cards,
    entry_for,
    home,
    is_offline,
    manifest,
    pin,
    read_json,
    remember_hash,
    resolve,
    say,
)
from bfrboost.weights.fetch import download


def ensure(file: str, offline: bool | None = None, progress: bool = True) -> Path:
    """Path of a verified cached file, downloading it first when missing or damaged (unless offline)."""
    entry = entry_for(file)
    path = entry.path
    if path.exists():
        problems = _check(entry, path)
        if not problems:
            if entry.sha256 is None:  # placed by hand and never pinned: trust on first use, like a download
                pin(entry, cached_sha256(path))
            return path
        if is_offline(offline):
            raise WeightsError(f"{problems[0]}; offline mode is on: replace it with a good copy from {entry.url} (or `bfrboost weights import FILE`)")
        say(f"{problems[0]}; downloading it again")
        path.unlink()
    elif is_offline(offline):
        raise WeightsError(f"{entry.file}: not in the cache and offline mode is on; download {entry.url} and put it at {path} (or run `bfrboost weights import FILE`)")
    return download(entry.file, progress=progress)


def sd21_dir(offline: bool | None = None, progress: bool = True) -> Path:
    """Diffusers folder of Stable Diffusion 2.1 base (VAE, UNet, scheduler), ensured file by file."""
    paths = [ensure(entry.file, offline=offline, progress=progress) for entry in cards()[SD21_CARD].weights]
    return Path(os.path.commonpath(paths))


def verify(name: str | None = None) -> list[str]:
    """One line per problem (size, SHA-256, missing). ``None`` checks every cached file."""
    if name is None:
        entries = [e for e in manifest().values() if e.path.exists()]
    else:
        entries = resolve(name)
    problems = []
    for entry in entries:
        if entry.path.exists():
            problems += _check(entry, entry.path)
        else:
            problems.append(f"{entry.path}: missing; run `bfrboost weights download {entry.file}`")
    return problems


def status(entry: WeightFile) -> str:
    """Cheap state for listings: 'missing', 'ok', 'size mismatch', 'SHA-256 mismatch' or 'unchecked'."""
    path = entry.path
    try:
        st = path.stat()
    except FileNotFoundError:
        return "missing"
    if entry.size is not None and st.st_size != entry.size:
        return "size mismatch"
    known = read_json(home() / VERIFY_CACHE).get(str(path.resolve()))
    if not known or (known.get("size"), known.get("mtime_ns")) != (st.st_size, st.st_mtime_ns):
        return "unchecked"
    if entry.sha256 is None or known.get("sha256") == entry.sha256:
        return "ok"
    return "SHA-256 mismatch"


def import_file(src: str | os.PathLike) -> Path:
    """Copy a manually downloaded file into the cache after checking it matches a card entry."""
    src = Path(src)
    if not src.is_file():
        raise WeightsError(f"{src}: no such file; give the path of a downloaded checkpoint")
    entry = _match_import(src)
    dest = entry.path
    size = src.stat().st_size
    if entry.size is not None and size != entry.size:
        raise WeightsError(f"{src}: {size} bytes but {entry.file} has {entry.size}; not imported (get it from {entry.url})")
    hasher = hashlib.sha256()
    with atomic_open(dest, overwrite=True) as out, src.open("rb") as inp:  # a bad copy never reaches the cache
        while chunk := inp.read(CHUNK):
            hasher.update(chunk)
            out.write(chunk)
        digest = hasher.hexdigest()
        if entry.sha256 is not None and digest != entry.sha256:
            raise WeightsError(f"{src}: SHA-256 {digest} does not match {entry.file} ({entry.sha256}); not imported (get it from {entry.url})")
    remember_hash(dest, digest)
    if entry.sha256 is None:
        pin(entry, digest)
    return dest


def _match_import(src: Path) -> WeightFile:
    """Card entry for ``src`` by file name; ``vae/config.json`` vs ``unet/config.json`` by parent folders."""
    candidates = [e for e in manifest().values() if PurePosixPath(e.file).name == src.name]
    if not candidates:
        raise WeightsError(f"{src}: no model card lists a file named {src.name!r}; see `bfrboost weights list` for the expected names")
    src_parts = src.resolve().parts

    def matching_tail(entry: WeightFile) -> int:
        parts = PurePosixPath(entry.file).parts
        n = 0
        while n < min(len(parts), len(src_parts)) and parts[-1 - n] == src_parts[-1 - n]:
            n += 1
        return n

    best = max(matching_tail(e) for e in candidates)
    candidates = [e for e in candidates if matching_tail(e) == best]
    if len(candidates) > 1:
        names = ", ".join(e.file for e in candidates)
        raise WeightsError(f"{src}: ambiguous, could be {names}; keep its folder names (e.g. .../{candidates[0].file}) and import again")
    return candidates[0]


def _check(entry: WeightFile, path: Path) -> list[str]:
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        return [f"{path}: {size} bytes, expected {entry.size}"]
    digest = cached_sha256(path)
    if entry.sha256 is not None and digest != entry.sha256:
        return [f"{path}: SHA-256 {digest} does not match the expected {entry.sha256}"]
    return []
