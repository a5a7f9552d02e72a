"""Base restorers by name: a name maps to a small descriptor (:class:`~bfrboost.backbones.spec.BaseSpec`).

Each base model lives in its own module (``gfpgan.py``, ``codeformer.py``, …) that defines one or
more ``BaseSpec`` objects in a ``SPECS`` list, importing its types from ``spec.py``. Adding a base
model = one new module + its name in the import line below.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

import bfrboost.weights
from bfrboost.backbones import codeformer, difface, gfpgan, gpen, none, restoreformer, vqfr
from bfrboost.backbones.spec import (  # noqa: F401  (re-exported: callers and tests use them from here)
    DEFAULT_BATCH,
    BaseSpec,
    CheckpointMismatch,
    Knob,
    LoadedBase,
    build_strict,
    check_state_dict,
    from_signed,
    to_signed,
)
from bfrboost.errors import UsageError, WeightsError


def names() -> list[str]:
    """CLI names of every base model, ``none`` first."""
    return list(_registry())


def get_spec(name: str) -> BaseSpec:
    specs = _registry()
    if name not in specs:
        raise UsageError(f"unknown base {name!r}; known: {', '.join(specs)}")
    return specs[name]


def validate_knobs(name: str, knobs: Mapping[str, Any]) -> dict[str, Any]:
    """Every knob of base ``name``: given values parsed and range-checked, the rest at defaults."""
    spec = get_spec(name)
    unknown = [k for k in knobs if k not in spec.knobs]
    if unknown and not spec.knobs:
        raise UsageError(f"base {name!r} takes no options (got {unknown[0]!r})")
    if unknown:
        raise UsageError(f"unknown option {unknown[0]!r} for base {name!r}; known: {', '.join(spec.knobs)}")
    values = {k: spec.knob(k).default for k in spec.knobs}
    for key, value in knobs.items():
        values[key] = spec.knob(key).parse(value, f"base {name!r} option {key}")
    return values


def fidelity_knob(name: str) -> str:
    """The knob ``--fidelity`` sets for base ``name`` (each base names its quality/fidelity trade-off)."""
    spec = get_spec(name)
    for knob in ("fidelity", "fidelity_ratio"):
        if knob in spec.knobs:
            return knob
    have = [n for n, s in _registry().items() if {"fidelity", "fidelity_ratio"} & set(s.knobs)]
    raise UsageError(f"base {name!r} has no fidelity knob; --fidelity works with: {', '.join(have)}")


def default_batch_size(device: torch.device) -> int:
    return DEFAULT_BATCH.get(device.type, 1)


def load_base(
    name: str,
    device: str | torch.device = "cpu",
    weights: str | os.PathLike | None = None,
    batch_size: int | None = None,
    dtype: torch.dtype | None = None,
    **knobs: Any,
) -> LoadedBase:
    """Build base model ``name`` with its verified checkpoint (or the ``weights`` file given).

    Options are checked before anything is loaded, so a typo fails in milliseconds, not after
    reading 350 MB.
    """
    spec = get_spec(name)
    values = validate_knobs(name, knobs)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise UsageError(f"batch size must be a whole number >= 1, got {batch_size!r}")
    device = torch.device(device)
    dtype = dtype or torch.float32
    path: Path | None = None
    if not spec.weight_file:
        if weights is not None:
            raise UsageError(f"base {name!r} uses no weights; drop the weights file {weights}")
        net = spec.build(None)
    else:
        path = Path(weights) if weights is not None else bfrboost.weights.ensure(spec.weight_file)
        state_dict = bfrboost.weights.load_state_dict(path)
        try:
            net = spec.build(state_dict)
        except (CheckpointMismatch, RuntimeError, KeyError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WeightsError(
                f"{path}: not a {spec.display_name} checkpoint ({reason}); "
                f"use {spec.weight_file} from `bfrboost weights download {spec.card}`"
            ) from None
        del state_dict
    net = net.eval().requires_grad_(False).to(device=device, dtype=dtype)
    return LoadedBase(
        spec=spec,
        net=net,
        device=device,
        dtype=dtype,
        batch_size=batch_size or default_batch_size(device),
        knobs=values,
        weights=path,
    )


def describe(name: str) -> dict[str, Any]:
    """What the README table and ``bfrboost`` listings show about one base model."""
    spec = get_spec(name)
    info: dict[str, Any] = {
        "name": spec.name,
        "display_name": spec.display_name,
        "license": "-",
        "commercial_use": True,
        "homepage": "",
        "weight_file": spec.weight_file or None,
        "size": 0,
        "knobs": {
            k: {"default": kn.default, "type": kn.type.__name__, "low": kn.low, "high": kn.high, "help": kn.help}
            for k, kn in ((k, spec.knob(k)) for k in spec.knobs)
        },
    }
    if spec.card:
        card = bfrboost.weights.cards()[spec.card]
        entry = next((w for w in card.weights if w.file == spec.weight_file), None)
        info.update(
            license=card.license,
            commercial_use=card.commercial_use,
            homepage=card.homepage,
            size=entry.size if entry is not None else None,
        )
    return info


@functools.cache
def _registry() -> dict[str, BaseSpec]:
    """Every adapter module, explicitly, ``none`` first so it leads listings."""
    modules = (none, gfpgan, restoreformer, codeformer, gpen, vqfr, difface)
    return {spec.name: spec for module in modules for spec in module.SPECS}


def __getattr__(name: str) -> Any:
    """``REGISTRY``: every base model by CLI name (``dict[str, BaseSpec]``), built on first access."""
    if name == "REGISTRY":
        return _registry()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
