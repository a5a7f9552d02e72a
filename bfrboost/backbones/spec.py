"""What a base model is: :class:`BaseSpec`, :class:`Knob`, :class:`LoadedBase` and the helpers adapters share.

Adapters (``gfpgan.py``, ``codeformer.py``, …) import from here, never from the registry, so the
registry can import every adapter at the top without an import circle.

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

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bfrboost.errors import UsageError
from bfrboost.weights import CheckpointMismatch, check_state_dict  # noqa: F401  (adapters and tests use them from here)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
#: Faces per forward when the caller gives no batch size, on PyTorch and ONNX Runtime alike. On CPU,
#: batching buys no speed on either runtime (the convolutions already use every core:
#: bench/bench_backbones.py, bench/bench_onnx.py) but multiplies peak memory.
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
