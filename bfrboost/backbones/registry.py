"""Base restorers by name: a name maps to a small descriptor, nothing magic.

Each base model lives in its own module (``gfpgan.py``, ``codeformer.py``, …) that defines one or
more ``BaseSpec`` objects in a ``SPECS`` list; :func:`_registry` imports every such module by
name. Adding a base model = one new module + its name in that import line.

Contract for every adapter:
- ``spec.build(state_dict)`` returns an ``nn.Module`` (official architecture config) whose
  ``load_state_dict(strict=True)`` succeeded on the official checkpoint's (unwrapped) state dict;
  ``spec.build(None)`` returns the same architecture randomly initialised (tests, benchmarks).
  :func:`build_strict` does this for any architecture class.
- ``spec.forward(net, x, **knobs)`` takes RGB crops ``x`` as float in [0, 1], shape
  (B, 3, 512, 512), and returns restored crops of the same shape in [0, 1]. Any
  model-specific normalisation (e.g. mean 0.5 / std 0.5) happens inside ``forward``.
- ``spec.knobs`` maps each option the user may set (``--knob fidelity=0.7``) to a :class:`Knob`
  (a plain default value is accepted too: a knob of that type with no range).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bfrboost import weights as weights_manager
from bfrboost.errors import UsageError, WeightsError
from bfrboost.weights import CheckpointMismatch, check_state_dict  # noqa: F401  (adapters and tests use them from here)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
#: Faces per forward when the caller gives no batch size. On CPU, batching buys no speed (the
#: convolutions already use every core: bench/bench_backbones.py) but multiplies peak memory.
DEFAULT_BATCH = {"cuda": 8, "cpu": 1}


@dataclass(frozen=True)
class Knob:
    """One user-settable option of a base model, validated before any model is built."""

    default: bool | int | float | None
    help: str = ""
    low: float | None = None  # inclusive bounds for numbers; None = unbounded
    high: float | None = None
    kind: type | None = None  # bool, int or float; taken from ``default`` when None

    @property
    def type(self) -> type:
        return self.kind or type(self.default)

    def parse(self, value: Any, what: str) -> bool | int | float | None:
        """``value`` (a Python value or the CLI's string) as this knob's type, range-checked."""
        kind = self.type
        if value is None and self.default is None:
            return None
        if isinstance(value, str):
            text = value.strip().lower()
            try:
                if kind is bool:
                    if text not in _TRUE | _FALSE:
                        raise ValueError(text)
                    value = text in _TRUE
                else:
                    value = kind(text)
            except ValueError:
                raise UsageError(f"{what}={value!r} is not a valid {kind.__name__}") from None
        elif isinstance(value, bool) != (kind is bool) or not isinstance(value, (int, float)):
            raise UsageError(f"{what}={value!r} must be a {kind.__name__}")
        elif kind is int and value != int(value):
            raise UsageError(f"{what}={value!r} must be a whole number")
        value = kind(value)
        if kind is float and not math.isfinite(value):
            raise UsageError(f"{what}={value} must be a finite number")
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            low = "-inf" if self.low is None else f"{self.low:g}"
            high = "inf" if self.high is None else f"{self.high:g}"
            raise UsageError(f"{what}={value:g} is out of range [{low}, {high}]")
        return value


@dataclass(frozen=True)
class BaseSpec:
    """What the registry knows about one base model (one CLI name)."""

    name: str  # CLI name, e.g. "gfpgan"
    display_name: str  # e.g. "GFPGAN v1.4"
    card: str  # model card stem: backbones/<card>.toml ("" = no card, no weights)
    weight_file: str  # file name (as listed in the card) of the main checkpoint ("" = none)
    build: Callable[[Mapping[str, torch.Tensor] | None], nn.Module]
    forward: Callable[..., torch.Tensor]
    knobs: Mapping[str, Knob | bool | int | float] = field(default_factory=dict)  # knob name -> Knob
    input_size: int = 512

    def knob(self, name: str) -> Knob:
        value = self.knobs[name]
        return value if isinstance(value, Knob) else Knob(default=value)


def build_strict(make: Callable[[], nn.Module], state_dict: Mapping[str, torch.Tensor] | None) -> nn.Module:
    """``make()`` randomly initialised, or with ``state_dict`` loaded strictly.

    With a state dict the module is created on the meta device and the checkpoint's tensors are
    assigned, so loading a 350 MB model does not first spend seconds on a random init it discards.
    """
    if state_dict is None:
        return make()
    with torch.device("meta"):
        net = make()
    check_state_dict(net, state_dict)
    net.load_state_dict(state_dict, strict=True, assign=True)
    left = [n for n, t in [*net.named_parameters(), *net.named_buffers()] if t.is_meta]
    if left:  # a non-persistent buffer: not in any checkpoint, so it must be built for real
        raise RuntimeError(f"{type(net).__name__}: {left[0]} is not in the state dict; build it without meta init")
    return net


def to_signed(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] → [-1, 1]: the mean 0.5 / std 0.5 normalisation the upstream face restorers use."""
    return x * 2 - 1


def from_signed(y: torch.Tensor) -> torch.Tensor:
    """[-1, 1] → [0, 1], clipped like upstream ``tensor2img(min_max=(-1, 1))``."""
    return ((y + 1) / 2).clamp(0, 1)


@dataclass
class LoadedBase:
    """A built base model on its device, ready to restore batches of aligned crops."""

    spec: BaseSpec
    net: nn.Module
    device: torch.device
    dtype: torch.dtype
    batch_size: int
    knobs: dict[str, Any]
    weights: Path | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def restore(self, crops: torch.Tensor) -> torch.Tensor:
        """Crops (B, 3, S, S) in [0, 1] → restored crops, float32 on the crops' device."""
        size = self.spec.input_size
        if crops.ndim != 4 or tuple(crops.shape[1:]) != (3, size, size):
            raise ValueError(f"base {self.name!r} expects crops of shape (B, 3, {size}, {size}), got {tuple(crops.shape)}")
        out = []
        with torch.inference_mode():
            for chunk in crops.split(self.batch_size):
                x = chunk.to(self.device, self.dtype).contiguous()  # some archs .view() their features
                out.append(self.spec.forward(self.net, x, **self.knobs).to(crops.device, torch.float32))
        return torch.cat(out) if out else crops.new_empty(crops.shape, dtype=torch.float32)


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
        path = Path(weights) if weights is not None else weights_manager.ensure(spec.weight_file)
        state_dict = weights_manager.load_state_dict(path)
        try:
            net = spec.build(state_dict)
        except (CheckpointMismatch, RuntimeError, KeyError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WeightsError(
                f"{path}: not a {spec.display_name} checkpoint ({reason}); use {spec.weight_file} from `bfrboost weights download {spec.card}`"
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
        card = weights_manager.cards()[spec.card]
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
    """Every adapter module, explicitly, ``none`` first so it leads listings.

    Imported on first use, not at the top: adapters import this module's types, so importing an
    adapter first would otherwise find the other half-initialised.
    """
    from bfrboost.backbones import (
        codeformer,
        difface,
        gfpgan,
        gpen,
        identity,
        restoreformer,
        vqfr,
    )

    modules = (identity, gfpgan, restoreformer, codeformer, gpen, vqfr, difface)
    return {spec.name: spec for module in modules for spec in module.SPECS}


def __getattr__(name: str) -> Any:
    """``REGISTRY``: every base model by CLI name (``dict[str, BaseSpec]``), built on first access."""
    if name == "REGISTRY":
        return _registry()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
