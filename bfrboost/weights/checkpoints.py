"""Loading a checkpoint: a security boundary.

:func:`load_state_dict` is the only loader; it accepts tensor-only files (safetensors, or
``torch.load(weights_only=True)``) and nothing that runs code.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bfrboost.errors import WeightsError
from bfrboost.weights.catalog import cached_sha256, manifest

if TYPE_CHECKING:
    import torch
_WRAPPERS = ("params_ema", "params", "state_dict", "g_ema")  # order = preference


def load_state_dict(path: str | os.PathLike, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint, loaded without running any code from the file.

    Training wrappers (``params_ema`` preferred, then ``params``, ``state_dict``, ``g_ema``) are
    unwrapped and a DataParallel ``module.`` prefix is stripped.
    """
    return _unwrap(load_checkpoint(path, expected_sha256), Path(path))


def load_checkpoint(path: str | os.PathLike, expected_sha256: str | None = None) -> Any:
    """The checkpoint's content as stored (wrappers, counters and all), loaded without running code:
    for loaders that must look past a training wrapper themselves."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such checkpoint; run `bfrboost weights download NAME` or give the right path")
    if expected_sha256 is not None:
        digest = cached_sha256(path)
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
            sd = torch_load_safely(path)
        except DamagedFile:
            raise _damaged(path) from None
    return sd


class DamagedFile(WeightsError):
    """The bytes are no checkpoint at all (cut short, overwritten, another file type)."""


def torch_load_safely(path: str | os.PathLike) -> Any:
    """``torch.load(weights_only=True)`` on the CPU (tensors, numbers, containers: no code from the file).

    Raises :class:`WeightsError` ("refused: …") for a pickle that would run code and
    :class:`DamagedFile` for anything that is no valid checkpoint; never torch's advice to load unsafely."""
    import torch  # here, not at module level: `bfrboost weights ...` should not wait for torch

    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DamagedFile(f"{path}: missing") from None
    except pickle.UnpicklingError as exc:
        # the weights-only unpickler refuses a GLOBAL it will not import (unsafe: code would run);
        # any other complaint ("Unsupported operand", bad opcodes) means the bytes are no valid pickle
        if _UNSAFE_GLOBAL.search(str(exc)) is None:
            raise DamagedFile(f"{path}: damaged (not a valid checkpoint)") from None
        reason = _refusal_reason(str(exc))
        raise WeightsError(f"{path}: refused: {reason}; only tensor-only .pth or .safetensors files are accepted") from None
    except Exception:  # noqa: BLE001 - a damaged file raises RuntimeError, EOFError, KeyError, struct.error, ...
        raise DamagedFile(f"{path}: damaged (cut short or not a checkpoint)") from None


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
        raise WeightsError(
            f"{path}: holds a {type(sd).__name__}, not a state dict of tensors; use the checkpoint named in the model card"
        )
    odd = [str(k) for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if odd:
        raise WeightsError(
            f"{path}: not a state dict of tensors (non-tensor entries: {', '.join(odd[:5])}); "
            "use the checkpoint named in the model card"
        )
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return dict(sd)


def _refusal_reason(text: str) -> str:
    """Short reason from torch's multi-paragraph weights-only error."""
    found = re.search(r"GLOBAL (\S+)", text)
    if found:
        return f"this checkpoint needs code execution to load (it references {found.group(1)})"
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    details = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(boilerplate)]
    return f"not a tensor-only checkpoint ({details[0] if details else 'unsupported pickle content'})"
