"""Weights: model cards, cache, download with resume, verification, offline mode, safe loading.

Every checkpoint bfrboost uses is listed in a TOML model card (``backbones/*.toml``, see
``backbones/FORMAT.md``). Files live in one cache folder (:func:`home`) under their card path.
Upstream projects download without checks and users get silently truncated files, so here every
file is size- and SHA-256-checked before use; hashes a card does not know are pinned on the first
download (trust on first use) in ``weights.lock.json`` inside the cache.

Loading a checkpoint is a security boundary: :func:`load_state_dict` is the only loader, and it
accepts tensor-only files (safetensors, or ``torch.load(weights_only=True)``) and nothing that runs code.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import pickle
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from platformdirs import user_cache_dir

from bfrboost.errors import UsageError, WeightsError
from bfrboost.safety import atomic_open, write_bytes

if TYPE_CHECKING:
    import torch

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

LOCK_FILE = "weights.lock.json"  # pinned hashes and licence notices: keep it with the cache
VERIFY_CACHE = ".verified.json"  # hashes by (size, mtime): a 350 MB file is hashed once, not every run
SD21_CARD = "sd21"
_WRAPPERS = ("params_ema", "params", "state_dict", "g_ema")  # order = preference
_CHUNK = 1 << 20
_MAX_STALLED_ATTEMPTS = 3  # download attempts in a row that add no bytes before giving up
_TIMEOUT_S = 60
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


# ---- locations ---------------------------------------------------------------------------------


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


# ---- model cards and manifest ------------------------------------------------------------------


def cards() -> dict[str, Card]:
    """All model cards by name, with sizes/hashes pinned on first download filled in."""
    pins = _read_json(home() / LOCK_FILE).get("pinned", {})
    found: dict[str, Card] = {}
    owner: dict[str, str] = {}
    for path in sorted(cards_dir().glob("*.toml")):
        card = _parse_card(path, pins)
        for entry in card.weights:
            if entry.file in owner:
                raise WeightsError(f"{path}: file {entry.file!r} is already listed by card {owner[entry.file]!r}; list each file once")
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

    def bad(what: str) -> WeightsError:
        return WeightsError(f"{path}: {what}; see backbones/FORMAT.md")

    missing = sorted(_CARD_KEYS - data.keys())
    if missing:
        raise bad(f"missing key(s) {', '.join(missing)}")
    for key in ("name", "display_name", "license", "homepage"):
        if not isinstance(data[key], str) or not data[key]:
            raise bad(f"{key!r} must be a non-empty string")
    if data["name"] != path.stem:
        raise bad(f"name {data['name']!r} must equal the file name {path.stem!r}")
    if not isinstance(data["commercial_use"], bool):
        raise bad("'commercial_use' must be true or false")
    if not isinstance(data["weights"], list) or not data["weights"]:
        raise bad("needs at least one [[weights]] entry")

    entries = []
    for raw in data["weights"]:
        if not isinstance(raw, dict):
            raise bad("[[weights]] entries must be tables")
        unknown = sorted(raw.keys() - _ENTRY_KEYS)
        if unknown:
            raise bad(f"unknown [[weights]] key(s) {', '.join(unknown)} (allowed: file, url, size, sha256)")
        file, url = raw.get("file"), raw.get("url")
        if not isinstance(file, str) or not _is_safe_relpath(file):
            raise bad(f"[[weights]] file {file!r} must be a relative path inside the cache ('/' separators, no '..')")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise bad(f"{file}: 'url' must be an http(s) URL")
        size, sha = raw.get("size"), raw.get("sha256")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
            raise bad(f"{file}: 'size' must be a positive number of bytes")
        if sha is not None and (not isinstance(sha, str) or not _SHA256.fullmatch(sha)):
            raise bad(f"{file}: 'sha256' must be 64 lowercase hex digits")
        pin = pins.get(file, {})
        pinned = sha is None and "sha256" in pin
        entries.append(
            WeightFile(
                file=file,
                url=url,
                size=size if size is not None else pin.get("size") if pinned else None,
                sha256=sha if sha is not None else pin.get("sha256"),
                card=data["name"],
                license=data["license"],
                commercial_use=data["commercial_use"],
                pinned=pinned,
            )
        )
    return Card(
        name=data["name"],
        display_name=data["display_name"],
        license=data["license"],
        commercial_use=data["commercial_use"],
        homepage=data["homepage"],
        weights=tuple(entries),
        path=path,
        data=data,
    )


def _is_safe_relpath(file: str) -> bool:
    p = PurePosixPath(file)
    return bool(file) and "\\" not in file and not p.is_absolute() and ".." not in p.parts and p.parts[0] != "." and file == str(p)


# ---- using the cache ---------------------------------------------------------------------------


def ensure(file: str, offline: bool | None = None, progress: bool = True) -> Path:
    """Path of a verified cached file, downloading it first when missing or damaged (unless offline)."""
    entry = _entry(file)
    path = entry.path
    if path.exists():
        problems = _check(entry, path)
        if not problems:
            if entry.sha256 is None:  # placed by hand and never pinned: trust on first use, like a download
                _pin(entry, _cached_sha256(path))
            return path
        if is_offline(offline):
            raise WeightsError(f"{problems[0]}; offline mode is on: replace it with a good copy from {entry.url} (or `bfrboost weights import FILE`)")
        _err(f"{problems[0]}; downloading it again")
        path.unlink()
    elif is_offline(offline):
        raise WeightsError(f"{entry.file}: not in the cache and offline mode is on; download {entry.url} and put it at {path} (or run `bfrboost weights import FILE`)")
    return download(entry.file, progress=progress)


def sd21_dir(offline: bool | None = None, progress: bool = True) -> Path:
    """Diffusers folder of Stable Diffusion 2.1 base (VAE, UNet, scheduler), ensured file by file."""
    paths = [ensure(entry.file, offline=offline, progress=progress) for entry in cards()[SD21_CARD].weights]
    return Path(os.path.commonpath(paths))


def download(file: str, progress: bool = True) -> Path:
    """Fetch ``file`` now into ``PATH.part`` (resuming a previous ``.part``), check it, rename it in place.

    An explicit request, so it does not consult offline mode: code that merely needs a file calls
    :func:`ensure`, which never reaches this function when offline.
    """
    entry = _entry(file)
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
    _remember_hash(path, digest)
    if entry.sha256 is None:
        _pin(entry, digest)
    return path


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
    known = _read_json(home() / VERIFY_CACHE).get(str(path.resolve()))
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
        while chunk := inp.read(_CHUNK):
            hasher.update(chunk)
            out.write(chunk)
        digest = hasher.hexdigest()
        if entry.sha256 is not None and digest != entry.sha256:
            raise WeightsError(f"{src}: SHA-256 {digest} does not match {entry.file} ({entry.sha256}); not imported (get it from {entry.url})")
    _remember_hash(dest, digest)
    if entry.sha256 is None:
        _pin(entry, digest)
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


def _entry(file: str) -> WeightFile:
    entry = manifest().get(file)
    if entry is None:
        raise WeightsError(f"{file}: no model card in {cards_dir()} lists this file; check the name with `bfrboost weights list`")
    return entry


def _check(entry: WeightFile, path: Path) -> list[str]:
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        return [f"{path}: {size} bytes, expected {entry.size}"]
    digest = _cached_sha256(path)
    if entry.sha256 is not None and digest != entry.sha256:
        return [f"{path}: SHA-256 {digest} does not match the expected {entry.sha256}"]
    return []


# ---- downloading -------------------------------------------------------------------------------


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
                return _sha256_of(part).hexdigest()
            try:
                digest = _fetch_once(entry, part, start, advance)
            except urllib.error.HTTPError as exc:
                if exc.code == 416 and start:  # nothing after `start`: complete if the server's length agrees
                    if (exc.headers.get("Content-Range") or "").endswith(f"/{start}"):
                        return _sha256_of(part).hexdigest()
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
        hasher = _sha256_of(part) if start else hashlib.sha256()
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None else None
        advance(completed=start, total=start + expected if expected is not None else entry.size)
        received = 0
        with part.open("ab" if start else "wb") as out:
            while chunk := response.read(_CHUNK):
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
        _err(f"downloading {label}")
    with Progress(*columns, console=console, disable=not enabled or not console.is_terminal) as bar:
        task = bar.add_task(label, total=None)
        yield lambda **kwargs: bar.update(task, **kwargs)


def _licence_notice(entry: WeightFile) -> None:
    """Print a non-commercial licence once per card, before its first download starts."""
    if entry.commercial_use:
        return
    lock = _read_json(home() / LOCK_FILE)
    shown = lock.setdefault("licence_shown", [])
    if entry.card in shown:
        return
    card = cards()[entry.card]
    _err(f"{card.display_name} ({entry.card}) is licensed under {card.license}: NOT for commercial use; terms: {card.homepage}")
    shown.append(entry.card)
    _write_json(home() / LOCK_FILE, lock)


def _pin(entry: WeightFile, digest: str) -> None:
    """Record the size and SHA-256 of a file its card has no hash for (trust on first download)."""
    lock = _read_json(home() / LOCK_FILE)
    lock.setdefault("pinned", {})[entry.file] = {"sha256": digest, "size": entry.path.stat().st_size, "url": entry.url}
    _write_json(home() / LOCK_FILE, lock)


# ---- hashing with a (size, mtime) cache --------------------------------------------------------


def _sha256_of(path: Path) -> Any:
    hasher = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            hasher.update(chunk)
    return hasher


def _cached_sha256(path: Path) -> str:
    """SHA-256 of ``path``, re-hashed only when its size or mtime changed since the last time."""
    st = path.stat()
    key = str(path.resolve())
    known = _read_json(home() / VERIFY_CACHE).get(key)
    if known and (known.get("size"), known.get("mtime_ns")) == (st.st_size, st.st_mtime_ns):
        return known["sha256"]
    digest = _sha256_of(path).hexdigest()
    _remember_hash(path, digest)
    return digest


def _remember_hash(path: Path, digest: str) -> None:
    st = path.stat()
    cache_file = home() / VERIFY_CACHE
    known = _read_json(cache_file)
    known[str(path.resolve())] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    _write_json(cache_file, known)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        raise WeightsError(f"{path}: unreadable bookkeeping file; delete it (hashes are recomputed)") from None
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Atomic write, so a crash never leaves a half-written lock or cache file."""
    write_bytes(path, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"), overwrite=True)


def _err(line: str) -> None:
    print(line, file=sys.stderr)


# ---- safe loading ------------------------------------------------------------------------------


def load_state_dict(path: str | os.PathLike, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint, loaded without running any code from the file.

    Training wrappers (``params_ema`` preferred, then ``params``, ``state_dict``, ``g_ema``) are
    unwrapped and a DataParallel ``module.`` prefix is stripped.
    """
    return _unwrap(load_checkpoint(path, expected_sha256), Path(path))


def load_checkpoint(path: str | os.PathLike, expected_sha256: str | None = None) -> Any:
    """The checkpoint's content as stored (wrappers, counters and all), loaded without running code:
    for loaders that must look past a training wrapper themselves."""
    import torch  # here, not at module level: `bfrboost weights ...` should not wait for torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such checkpoint; run `bfrboost weights download NAME` or give the right path")
    if expected_sha256 is not None:
        digest = _cached_sha256(path)
        if digest != expected_sha256:
            raise WeightsError(f"{path}: SHA-256 {digest} does not match the expected {expected_sha256}; download it again")
    sd: Any
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path))
        except (SafetensorError, OSError, ValueError):
            raise _damaged(path) from None
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            # the weights-only unpickler refuses a GLOBAL it will not import (unsafe: code would run);
            # any other complaint ("Unsupported operand", bad opcodes) means the bytes are no valid pickle
            if _UNSAFE_GLOBAL.search(str(exc)) is None:
                raise _damaged(path) from None
            raise WeightsError(f"{path}: refused: {_refusal_reason(str(exc))}; only tensor-only .pth or .safetensors files are accepted") from None
        except Exception:  # noqa: BLE001 - a damaged file raises RuntimeError, EOFError, KeyError, struct.error, ...
            raise _damaged(path) from None
    return sd


_UNSAFE_GLOBAL = re.compile(r"GLOBAL|allowlisted|add_safe_globals|reduce")  # torch's words for "would run code"


def _damaged(path: Path) -> WeightsError:
    """A file that is no checkpoint at all (cut short, overwritten, another file type): download it again."""
    name = "NAME"
    try:
        resolved = path.resolve()
        name = next((e.card for e in manifest().values() if e.path.resolve() == resolved), name)
    except (OSError, WeightsError):
        pass
    return WeightsError(f"{path}: damaged or not a checkpoint; re-download it with `bfrboost weights download {name}`")


class CheckpointMismatch(ValueError):
    """A state dict does not fit an architecture; the message is a one-line summary."""


def check_state_dict(net: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Raise :class:`CheckpointMismatch` summarising missing/unexpected keys and wrong shapes."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k!r} is {tuple(state_dict[k].shape)}, expected {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and state_dict[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s), e.g. {missing[0]!r}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]!r}")
    if shapes:
        problems.append(f"{len(shapes)} wrong shape(s), e.g. {shapes[0]}")
    if problems:
        raise CheckpointMismatch("; ".join(problems))


def load_into(net: torch.nn.Module, path: str | os.PathLike, what: str, card: str) -> None:
    """Safe-load ``path`` into ``net`` strictly; a checkpoint of another model is refused in one line."""
    state = load_state_dict(path)
    try:
        check_state_dict(net, state)
    except CheckpointMismatch as exc:
        raise WeightsError(f"{path}: not a {what} checkpoint ({exc}); run `bfrboost weights download {card}`") from None
    net.load_state_dict(state, strict=True)


def _unwrap(sd: Any, path: Path) -> dict[str, torch.Tensor]:
    import torch

    while isinstance(sd, dict):
        inner = next((sd[k] for k in _WRAPPERS if isinstance(sd.get(k), dict)), None)
        if inner is None:
            break
        sd = inner
    if not isinstance(sd, dict):
        raise WeightsError(f"{path}: holds a {type(sd).__name__}, not a state dict of tensors; use the checkpoint named in the model card")
    odd = [str(k) for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if odd:
        raise WeightsError(f"{path}: not a state dict of tensors (non-tensor entries: {', '.join(odd[:5])}); use the checkpoint named in the model card")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def _refusal_reason(text: str) -> str:
    """Short reason from torch's multi-paragraph weights-only error."""
    found = re.search(r"GLOBAL (\S+)", text)
    if found:
        return f"this checkpoint needs code execution to load (it references {found.group(1)})"
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    details = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(boilerplate)]
    return f"not a tensor-only checkpoint ({details[0] if details else 'unsupported pickle content'})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
