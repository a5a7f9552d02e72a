"""`bfrboost train cache`: degrade each HQ face K times, run the frozen base model(s) once, store the results.

Training then reads base outputs (and, optionally, their VAE moments) from disk instead of running the
base restorer and the VAE encoder every step. Layout of CACHE_DIR:

- ``cache.json``: settings (size, bases, repeats, seed, degradation ranges) and the shard list; written
  last, so a folder without it is an unfinished cache.
- ``train-NNNNN.safetensors`` / ``val-NNNNN.safetensors``: one shard per ``shard_faces`` faces with
  ``gt`` (F, 3, S, S) uint8 once per face, and per entry (face × repeat × base) ``base`` (E, 3, S, S)
  uint8, ``face`` (E,) index into ``gt``, ``base_id`` (E,), ``lq`` (val shards only, for the image grid),
  and with ``moments`` the fp16 VAE moments of ``base`` and of its mirror image (``moments_flip``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from bfrboost.errors import InputError, UsageError
from bfrboost.io.read import read_face
from bfrboost.options import TRAIN_SIZE, TrainConfig, default_of
from bfrboost.safety import atomic_path, write_bytes
from bfrboost.train.data import list_hq_faces, split_faces
from bfrboost.train.degrade import DegradeConfig, degrade, file_seed

MANIFEST = "cache.json"
VERSION = 1


@dataclass
class CacheConfig:
    """What a cache holds; stored in ``cache.json`` so training can check it matches the run."""

    bases: list[str]
    size: int = TRAIN_SIZE  # training face size (base outputs are resized to it)
    repeats: int = default_of(TrainConfig, "repeats")  # degradations per face (K)
    seed: int = default_of(TrainConfig, "seed")
    val_count: int = default_of(TrainConfig, "val_count")  # faces held out for validation (fixed by the seed)
    shard_faces: int = 256
    moments: bool = default_of(TrainConfig, "moments")  # also store the VAE moments of the base outputs (fp16)
    degrade: DegradeConfig = dataclasses.field(default_factory=DegradeConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CacheConfig:
        data = dict(data)
        data["degrade"] = DegradeConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data["degrade"].items()})
        return cls(**data)


def to_uint8(x01: torch.Tensor) -> torch.Tensor:
    return (x01.clamp(0, 1) * 255).round().to(torch.uint8)


def resize01(x01: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, H, W) [0, 1] → (B, 3, size, size), antialiased when shrinking."""
    if x01.shape[-1] == size and x01.shape[-2] == size:
        return x01
    return F.interpolate(x01, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


def build_cache(
    data: Path,
    out: Path,
    config: CacheConfig,
    restorers: Sequence[Callable[[torch.Tensor], torch.Tensor]],
    base_input_size: int = 512,
    encode_moments: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: Callable[[int], None] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the cache of ``data`` into ``out``; returns the manifest.

    ``restorers[i]`` runs base ``config.bases[i]`` on (B, 3, s, s) [0, 1] crops (s = ``base_input_size``);
    ``encode_moments`` maps (B, 3, S, S) [-1, 1] images to VAE moments (needed when ``config.moments``).
    """
    if len(restorers) != len(config.bases) or not restorers:
        raise UsageError("train cache: give one restorer per base name (at least one)")
    if config.moments and encode_moments is None:
        raise UsageError("train cache: moments requested but no VAE encoder given")
    if (out / MANIFEST).exists() and not overwrite:
        raise UsageError(f"{out}: already holds a cache ({MANIFEST}); pass --overwrite to rebuild it or use it with `bfrboost train --cache {out}`")
    train_faces, val_faces = split_faces(list_hq_faces(data), config.val_count, config.seed)
    shards: dict[str, list[dict[str, Any]]] = {"train": [], "val": []}
    for split, faces in (("train", train_faces), ("val", val_faces)):
        for start in range(0, len(faces), config.shard_faces):
            chunk = faces[start : start + config.shard_faces]
            tensors = _shard(chunk, config, restorers, base_input_size, encode_moments, keep_lq=split == "val")
            name = f"{split}-{len(shards[split]):05d}.safetensors"
            with atomic_path(out / name, overwrite=True) as temp:
                save_file(tensors, str(temp), metadata={"bfrboost": "train-cache", "version": str(VERSION)})
            shards[split].append({"file": name, "faces": len(chunk), "entries": int(tensors["base"].shape[0])})
            if progress is not None:
                progress(len(chunk))
    manifest = {"version": VERSION, "config": config.to_dict(), "shards": shards,
                "val_faces": [str(p.relative_to(data)) for p in val_faces], "data": str(data)}
    write_bytes(out / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode(), overwrite=True)
    return manifest


def _shard(faces, config, restorers, base_input_size, encode_moments, keep_lq):
    gts, bases, lqs, face_ids, base_ids = [], [], [], [], []
    for local, path in enumerate(faces):
        hq = read_face(path, base_input_size)
        gts.append(torch.from_numpy(hq).permute(2, 0, 1))
        lq = np.stack([degrade(hq, file_seed(config.seed, f"{path.name}#{k}"), config.degrade) for k in range(config.repeats)])
        lq01 = torch.from_numpy(lq).permute(0, 3, 1, 2).float() / 255
        for b, restore in enumerate(restorers):
            bases.append(to_uint8(resize01(restore(lq01).float().cpu(), config.size)))
            lqs.append(to_uint8(resize01(lq01, config.size)))
            face_ids += [local] * config.repeats
            base_ids += [b] * config.repeats
    gt = to_uint8(resize01(torch.stack(gts).float() / 255, config.size))
    tensors = {"gt": gt.contiguous(), "base": torch.cat(bases).contiguous(),
               "face": torch.tensor(face_ids, dtype=torch.int64), "base_id": torch.tensor(base_ids, dtype=torch.int64)}
    if keep_lq:
        tensors["lq"] = torch.cat(lqs).contiguous()
    if config.moments:
        x = tensors["base"].float() / 127.5 - 1
        with torch.no_grad():
            tensors["moments"] = torch.cat([encode_moments(c).half().cpu() for c in x.split(8)]).contiguous()
            tensors["moments_flip"] = torch.cat([encode_moments(c.flip(-1)).half().cpu() for c in x.split(8)]).contiguous()
    return tensors


class CachedFaces:
    """Read side of a cache split: ``batch(indices)`` gives float tensors in [-1, 1] (and moments)."""

    def __init__(self, cache: Path, split: str = "train") -> None:
        self.cache = Path(cache)
        manifest_path = self.cache / MANIFEST
        if not manifest_path.is_file():
            raise InputError(f"{self.cache}: no {MANIFEST}; build the cache with `bfrboost train cache --data HQ_DIR --base NAME -o {self.cache}`")
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{manifest_path}: cannot read the cache manifest ({exc}); rebuild the cache") from None
        if self.manifest.get("version") != VERSION:
            raise InputError(f"{manifest_path}: cache version {self.manifest.get('version')} is not {VERSION}; rebuild the cache")
        self.config = CacheConfig.from_dict(self.manifest["config"])
        self.split = split
        self.shards = self.manifest["shards"][split]
        self.offsets = np.cumsum([0] + [s["entries"] for s in self.shards])
        self._open: dict[int, Any] = {}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def has_moments(self) -> bool:
        return bool(self.config.moments)

    def _handle(self, shard: int):
        """The shard opened lazily (memory-mapped): an entry reads only its own rows, so random access
        over a large cache never loads whole shards."""
        if shard not in self._open:
            path = self.cache / self.shards[shard]["file"]
            try:
                self._open[shard] = safe_open(str(path), framework="pt")
            except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
                raise InputError(f"{path}: cannot read cache shard ({exc}); rebuild the cache") from None
        return self._open[shard]

    def clean_faces(self, shard: int) -> torch.Tensor:
        """All ground-truth faces of one shard (F, 3, S, S) uint8: e.g. for the manifold statistics."""
        return self._handle(shard).get_tensor("gt")

    def entry(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        shard = int(np.searchsorted(self.offsets, index, side="right") - 1)
        f, local = self._handle(shard), index - int(self.offsets[shard])
        row = lambda key, i: f.get_slice(key)[i : i + 1][0]  # noqa: E731
        face = int(row("face", local))
        item = {"gt": row("gt", face), "base": row("base", local), "base_id": row("base_id", local)}
        for key in ("lq", "moments", "moments_flip"):
            if key in f.keys():
                item[key] = row(key, local)
        return item

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Stacked entries; images as float32 in [-1, 1], moments as float32."""
        items = [self.entry(i) for i in indices]
        out = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        for key in ("gt", "base", "lq"):
            if key in out:
                out[key] = out[key].float() / 127.5 - 1
        for key in ("moments", "moments_flip"):
            if key in out:
                out[key] = out[key].float()
        return out
