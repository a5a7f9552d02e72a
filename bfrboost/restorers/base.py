"""The usual face restorer: a registered base model (GFPGAN, CodeFormer, …), optionally boosted by the
InfoBFR refiner and blended with the base output by ``refiner_strength``."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bfrboost.backbones.registry import LoadedBase, default_batch_size, fidelity_knob, load_base
from bfrboost.errors import WeightsError
from bfrboost.faces.types import Face
from bfrboost.options import RestoreOptions
from bfrboost.restorers.protocol import StepCallback, Timer, to_tensor, to_uint8

#: The base model ``base="auto"`` uses when its weights can be had; otherwise faces pass through.
AUTO_BASE = "gfpgan"


def base_loader(runtime: str, providers: Sequence[str] | None, threads: int | None) -> Callable[..., LoadedBase]:
    """``load_base``, or its ONNX Runtime counterpart (:mod:`bfrboost.onnx.runtime`) for ``runtime="onnx"``."""
    if runtime == "torch":
        return load_base
    from bfrboost.onnx.runtime import load_onnx_base

    return functools.partial(load_onnx_base, providers=providers, threads=threads)


class BaseRestorer:
    """Base model → (InfoBFR refiner) over batches of aligned crops."""

    keeps_gray = True
    reports_steps = False

    def __init__(self, options: RestoreOptions, device: torch.device) -> None:
        self.device = device
        self.notes: list[str] = []
        self.on_step: StepCallback | None = None
        self.refiner_strength = float(options.refiner_strength)
        knobs = dict(options.knobs or {})
        if options.fidelity is not None:
            knobs[fidelity_knob(AUTO_BASE if options.base == "auto" else options.base)] = options.fidelity
        self._load = base_loader(options.runtime, options.providers, options.threads)
        self.base: LoadedBase = self._load_base(options.base, options.weights, options.batch_size, knobs)
        self.refiner = None
        if options.refine is not False and options.refiner is not None:
            from bfrboost.refiner import load_refiner

            refiner = Path(options.refiner)
            self.refiner = load_refiner(refiner, device=device, sd_model=options.sd_model, compile=options.compile)
            self.refine_batch = options.batch_size or default_batch_size(device)
            if device.type == "cpu":
                self.notes.append("the refiner runs on the CPU: about 40 s per face with SD 2.1 on 2 cores; a GPU is far faster")

    @property
    def name(self) -> str:
        return self.base.name

    def _load_base(self, base: str, weights: Any, batch_size: int | None, knobs: dict) -> LoadedBase:
        kwargs = dict(device=self.device, weights=weights, batch_size=batch_size, **knobs)
        load = self._load if base != "none" else load_base  # base 'none' has no network to run elsewhere
        if base != "auto":
            return load(base, **kwargs)
        try:
            return load(AUTO_BASE, **kwargs)
        except WeightsError as exc:
            self.notes.append(f"{exc} — restoring with base 'none' (faces aligned and pasted back only)")
            return load_base("none", device=self.device)

    def image_extras(self, image: np.ndarray, extras: Mapping[str, Any] | None) -> dict[str, Any]:
        return dict(extras or {})

    def restore_faces(self, faces: list[Face], timer: Timer) -> list[np.ndarray]:
        return self.restore_crops([face.crop for face in faces], timer)

    def restore_crops(self, crops: list[np.ndarray], timer: Timer) -> list[np.ndarray]:
        """Restored RGB uint8 crops: the base model, then the refiner (blended by ``refiner_strength``)."""
        if not crops:
            return []
        if self._passes_through():
            with timer("base"):  # the uint8 → float → uint8 round trip is exact: skip it
                return [crop.copy() for crop in crops]
        with timer("base"):
            batch = to_tensor(crops, self.device)
            restored = self.base.restore(batch)
        if self.refiner is not None:
            with timer("refine"):
                refined = torch.cat([self.refiner.refine(chunk) for chunk in restored.split(self.refine_batch)])
                if self.refiner_strength < 1.0:
                    refined = torch.lerp(restored, refined.to(restored.dtype), self.refiner_strength)
                restored = refined
        return to_uint8(restored)

    def _passes_through(self) -> bool:
        """Base ``none`` (its own ``restore``, not a replacement) and no refiner: crops stay as they are."""
        restore = getattr(self.base.restore, "__func__", None)
        return self.base.name == "none" and self.refiner is None and restore is type(self.base).restore
