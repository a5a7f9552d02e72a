"""Model cards (``backbones/*.toml``), the cache folder, and the lock/verify bookkeeping kept in it.

Every checkpoint bfrboost uses is listed in a TOML model card (see ``backbones/FORMAT.md``). Hashes a
card does not know are pinned on the first download (trust on first use) in ``weights.lock.json``;
files already hashed are remembered by (size, mtime) in ``.verified.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from platformdirs import user_cache_dir

from bfrboost.errors import UsageError, WeightsError
from bfrboost.safety import write_bytes

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib
LOCK_FILE = "weights.lock.json"  # pinned hashes and licence notices: keep it with the cache
VERIFY_CACHE = ".verified.json"  # hashes by (size, mtime): a 350 MB file is hashed once, not every run
SD21_CARD = "sd21"
CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CARD_KEYS = {"name", "display_name", "license", "commercial_use", "homepage", "weights"}
_ENTRY_KEYS = {"file", "url", "size", "sha256"}


@dataclass(frozen=True)
class WeightFile:
    """One downloadable file; ``size``/``sha256`` come from the card or, if ``pinned``, the lock file."""

    file: str
    url: str
    size: int | None
    sha256: str | None
    card: str
    license: str
    commercial_use: bool
    pinned: bool = False

    @property
    def path(self) -> Path:
        return home() / self.file


@dataclass(frozen=True)
class Card:
    """A parsed model card. ``data`` is the whole TOML, for sections other modules own (e.g. knobs)."""

    name: str
    display_name: str
    license: str
    commercial_use: bool
    homepage: str
    weights: tuple[WeightFile, ...]
    path: Path
    data: Mapping[str, Any] = field(repr=False, compare=False)


def home() -> Path:
    """Cache folder: ``$BFRBOOST_HOME`` (the Makefile points it at ``weights/``) or the user cache dir."""
    return Path(os.environ.get("BFRBOOST_HOME") or user_cache_dir("bfrboost"))


def cards_dir() -> Path:
    """Model cards: ``bfrboost/_cards`` in an installed wheel, else the checkout's ``backbones/``."""
    packaged = Path(__file__).resolve().parents[1] / "_cards"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "backbones"


def is_offline(offline: bool | None = None) -> bool:
    """An explicit argument wins; otherwise ``BFRBOOST_OFFLINE=1`` (or true/yes) means offline."""
    if offline is not None:
        return offline
    return os.environ.get("BFRBOOST_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def cards() -> dict[str, Card]:
    """All model cards by name, with sizes/hashes pinned on first download filled in."""
    pins = read_json(home() / LOCK_FILE).get("pinned", {})
    found: dict[str, Card] = {}
    owner: dict[str, str] = {}
    for path in sorted(cards_dir().glob("*.toml")):
        card = _parse_card(path, pins)
        for entry in card.weights:
            if entry.file in owner:
                raise WeightsError(
                    f"{path}: file {entry.file!r} is already listed by card {owner[entry.file]!r}; list each file once"
                )
            owner[entry.file] = card.name
        found[card.name] = card
    return found


def manifest() -> dict[str, WeightFile]:
    """Every file of every card, keyed by its cache-relative path."""
    return {entry.file: entry for card in cards().values() for entry in card.weights}


def resolve(name: str) -> list[WeightFile]:
    """Files meant by a CLI name: ``all``, a card name, a cache path or a unique file name."""
    all_cards = cards()
    files = manifest()
    if name == "all":
        return list(files.values())
    if name in all_cards:
        return list(all_cards[name].weights)
    if name in files:
        return [files[name]]
    by_basename = [e for e in files.values() if PurePosixPath(e.file).name == name]
    if len(by_basename) == 1:
        return by_basename
    known = ", ".join(["all", *all_cards, *files])
    raise UsageError(f"unknown weights name {name!r}; known names: {known}")


def _parse_card(path: Path, pins: Mapping[str, Any]) -> Card:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise WeightsError(f"{path}: not a readable TOML model card ({exc}); fix it following backbones/FORMAT.md") from None
    problem = _card_problem(path, data)
    if problem is None:
        problem = next((p for raw in data["weights"] if (p := _entry_problem(raw)) is not None), None)
    if problem is not None:
        raise WeightsError(f"{path}: {problem}; see backbones/FORMAT.md")
    return Card(
        name=data["name"],
        display_name=data["display_name"],
        license=data["license"],
        commercial_use=data["commercial_use"],
        homepage=data["homepage"],
        weights=tuple(_entry(raw, data, pins) for raw in data["weights"]),
        path=path,
        data=data,
    )


def _card_problem(path: Path, data: dict[str, Any]) -> str | None:
    """What is wrong with a card's top-level keys, or None."""
    missing = sorted(_CARD_KEYS - data.keys())
    if missing:
        return f"missing key(s) {', '.join(missing)}"
    for key in ("name", "display_name", "license", "homepage"):
        if not isinstance(data[key], str) or not data[key]:
            return f"{key!r} must be a non-empty string"
    if data["name"] != path.stem:
        return f"name {data['name']!r} must equal the file name {path.stem!r}"
    if not isinstance(data["commercial_use"], bool):
        return "'commercial_use' must be true or false"
    if not isinstance(data["weights"], list) or not data["weights"]:
        return "needs at least one [[weights]] entry"
    return None


def _entry_problem(raw: Any) -> str | None:
    """What is wrong with one ``[[weights]]`` table, or None."""
    if not isinstance(raw, dict):
        return "[[weights]] entries must be tables"
    unknown = sorted(raw.keys() - _ENTRY_KEYS)
    if unknown:
        return f"unknown [[weights]] key(s) {', '.join(unknown)} (allowed: file, url, size, sha256)"
    file, url = raw.get("file"), raw.get("url")
    if not isinstance(file, str) or not _is_safe_relpath(file):
        return f"[[weights]] file {file!r} must be a relative path inside the cache ('/' separators, no '..')"
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        return f"{file}: 'url' must be an http(s) URL"
    size, sha = raw.get("size"), raw.get("sha256")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
        return f"{file}: 'size' must be a positive number of bytes"
    if sha is not None and (not isinstance(sha, str) or not _SHA256.fullmatch(sha)):
        return f"{file}: 'sha256' must be 64 lowercase hex digits"
    return None


def _entry(raw: dict[str, Any], data: dict[str, Any], pins: Mapping[str, Any]) -> WeightFile:
    """A checked ``[[weights]]`` table as a file of the card; size and hash from the pins when the card has none."""
    file, size, sha = raw["file"], raw.get("size"), raw.get("sha256")
    pin = pins.get(file, {})
    pinned = sha is None and "sha256" in pin
    return WeightFile(
        file=file,
        url=raw["url"],
        size=size if size is not None else pin.get("size") if pinned else None,
        sha256=sha if sha is not None else pin.get("sha256"),
        card=data["name"],
        license=data["license"],
        commercial_use=data["commercial_use"],
        pinned=pinned,
    )


def _is_safe_relpath(file: str) -> bool:
    p = PurePosixPath(file)
    return (
        bool(file) and "\\" not in file and not p.is_absolute() and ".." not in p.parts and p.parts[0] != "." and file == str(p)
    )


def entry_for(file: str) -> WeightFile:
    entry = manifest().get(file)
    if entry is None:
        raise WeightsError(f"{file}: no model card in {cards_dir()} lists this file; check the name with `bfrboost weights list`")
    return entry


def pin(entry: WeightFile, digest: str) -> None:
    """Record the size and SHA-256 of a file its card has no hash for (trust on first download)."""
    lock = read_json(home() / LOCK_FILE)
    lock.setdefault("pinned", {})[entry.file] = {"sha256": digest, "size": entry.path.stat().st_size, "url": entry.url}
    write_json(home() / LOCK_FILE, lock)


def sha256_of(path: Path) -> Any:
    hasher = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            hasher.update(chunk)
    return hasher


def cached_sha256(path: Path) -> str:
    """SHA-256 of ``path``, re-hashed only when its size or mtime changed since the last time."""
    st = path.stat()
    key = str(path.resolve())
    known = read_json(home() / VERIFY_CACHE).get(key)
    if known and (known.get("size"), known.get("mtime_ns")) == (st.st_size, st.st_mtime_ns):
        return known["sha256"]
    digest = sha256_of(path).hexdigest()
    remember_hash(path, digest)
    return digest


def remember_hash(path: Path, digest: str) -> None:
    st = path.stat()
    cache_file = home() / VERIFY_CACHE
    known = read_json(cache_file)
    known[str(path.resolve())] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    write_json(cache_file, known)


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        raise WeightsError(f"{path}: unreadable bookkeeping file; delete it (hashes are recomputed)") from None
    return data if isinstance(data, dict) else {}


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Atomic write, so a crash never leaves a half-written lock or cache file."""
    write_bytes(path, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"), overwrite=True)


def say(line: str) -> None:
    print(line, file=sys.stderr)
