"""`bfrboost train cache`: degrade each HQ face K times, run the frozen base model(s) once, store the results.

Training then reads base outputs (and, optionally, their VAE moments) from disk instead of running the
base restorer and the VAE encoder every step. Layout of CACHE_DIR:

- ``cache.plan.json``: settings and the shard list, written first; a killed build re-run with the same
  settings keeps every finished shard (each is written atomically) and builds only the rest, so its
  result equals an uninterrupted build byte for byte.
- ``cache.json``: the manifest, written last: a folder without it is an unfinished cache.
- ``train-NNNNN.safetensors`` / ``val-NNNNN.safetensors``: one shard per ``shard_faces`` faces. Images are
  stored compressed, one encoded file per image, concatenated in a uint8 tensor with an offsets tensor:
  ``gt`` (once per face) and ``base`` (per entry = face × repeat × base) as lossless PNG (the target and
  the refiner's input must not carry codec artefacts), ``lq`` (val shards only, for the image grid) as
  JPEG q95. ``face`` (E,) indexes ``gt``, ``base_id`` (E,) the base; with ``moments`` the fp16 VAE
  moments of ``base`` and of its mirror image (``moments_flip``).

Faces are loaded, degraded and encoded by ``workers`` threads (OpenCV and numpy release the GIL); the
base restorer runs in the calling thread.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from bfrboost.errors import InputError, UsageError
from bfrboost.io.read import read_face
from bfrboost.options import CacheOptions, TrainConfig, default_of
from bfrboost.safety import atomic_path, write_bytes
from bfrboost.train.data import list_hq_faces, split_faces
from bfrboost.train.degrade import DegradeConfig, degrade, file_seed

MANIFEST = "cache.json"
PLAN = "cache.plan.json"
VERSION = 2
IMAGE_KEYS = ("gt", "base", "lq")


@dataclass
class CacheConfig:
    """What a cache holds; stored in ``cache.json`` so training can check it matches the run."""

    bases: list[str]
    size: int = default_of(CacheOptions, "size")  # training face size (base outputs are resized to it)
    repeats: int = default_of(TrainConfig, "repeats")  # degradations per face (K)
    seed: int = default_of(TrainConfig, "seed")
    val_count: int = default_of(TrainConfig, "val_count")  # faces held out for validation (fixed by the seed)
    shard_faces: int = default_of(CacheOptions, "shard_faces")
    moments: bool = default_of(TrainConfig, "moments")  # also store the VAE moments of the base outputs (fp16)
    degrade_size: int | None = None  # size the HQ face is degraded at (None: the base's input size; --tiny: the training size)

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


def encode_image(chw: torch.Tensor, lossless: bool = True) -> np.ndarray:
    """(3, H, W) uint8 RGB → PNG (lossless) or JPEG q95 bytes as a uint8 array."""
    bgr = np.ascontiguousarray(chw.permute(1, 2, 0).numpy()[..., ::-1])
    if lossless:
        ok, data = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    else:
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise UsageError("train cache: image encoding failed")
    return data.reshape(-1)


def decode_image(data: np.ndarray) -> torch.Tensor:
    """Encoded bytes → (3, H, W) uint8 RGB."""
    bgr = cv2.imdecode(np.asarray(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    return torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1])).permute(2, 0, 1)


def pack_images(images: torch.Tensor, pool: ThreadPoolExecutor, lossless: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, H, W) uint8 → (concatenated encoded bytes, offsets (N + 1,) int64)."""
    blobs = list(pool.map(lambda im: encode_image(im, lossless), list(images)))
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    return torch.from_numpy(np.concatenate(blobs)), torch.from_numpy(offsets)


def _plan(data: Path, config: CacheConfig) -> tuple[dict[str, Any], dict[str, list[list[Path]]]]:
    train_faces, val_faces = split_faces(list_hq_faces(data), config.val_count, config.seed)
    chunks = {
        split: [faces[i : i + config.shard_faces] for i in range(0, len(faces), config.shard_faces)]
        for split, faces in (("train", train_faces), ("val", val_faces))
    }
    plan = {
        "version": VERSION,
        "config": config.to_dict(),
        "data": str(data),
        "shards": {split: [[str(p.relative_to(data)) for p in chunk] for chunk in parts] for split, parts in chunks.items()},
    }
    return json.loads(json.dumps(plan)), chunks  # as read back from cache.plan.json (tuples → lists)


def _start(out: Path, plan: dict[str, Any], overwrite: bool) -> None:
    """Refuse an unfinished cache of other settings (unless ``overwrite``); write the plan."""
    old = json.loads((out / PLAN).read_text()) if (out / PLAN).is_file() else None
    if overwrite or (old is not None and old != plan):
        if old is not None and old != plan and not overwrite:
            raise UsageError(f"{out}: holds an unfinished cache of other settings ({PLAN}); pass --overwrite to start it again")
        for stale in [*out.glob("train-*.safetensors"), *out.glob("val-*.safetensors"), out / MANIFEST]:
            stale.unlink(missing_ok=True)
    write_bytes(out / PLAN, (json.dumps(plan, indent=1) + "\n").encode(), overwrite=True)


def build_cache(
    data: Path,
    out: Path,
    config: CacheConfig,
    restorers: Sequence[Callable[[torch.Tensor], torch.Tensor]],
    base_input_size: int = 512,
    encode_moments: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: Callable[[int], None] | None = None,
    overwrite: bool = False,
    workers: int | None = None,
) -> dict[str, Any]:
    """Write (or finish) the cache of ``data`` in ``out``; returns the manifest plus ``build``: seconds,
    faces built now, bytes of the shards.

    ``restorers[i]`` runs base ``config.bases[i]`` on (B, 3, s, s) [0, 1] crops (s = ``base_input_size``);
    ``encode_moments`` maps (B, 3, S, S) [-1, 1] images to VAE moments (needed when ``config.moments``).
    """
    if len(restorers) != len(config.bases) or not restorers:
        raise UsageError("train cache: give one restorer per base name (at least one)")
    if config.moments and encode_moments is None:
        raise UsageError("train cache: moments requested but no VAE encoder given")
    started = time.perf_counter()
    if (out / MANIFEST).exists() and not overwrite:
        raise UsageError(
            f"{out}: already holds a cache ({MANIFEST}); pass --overwrite to rebuild it "
            f"or use it with `bfrboost train --cache {out}`"
        )
    plan, chunks = _plan(data, config)
    _start(out, plan, overwrite)
    shards: dict[str, list[dict[str, Any]]] = {"train": [], "val": []}
    built = 0
    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
        for split, parts in chunks.items():
            for index, chunk in enumerate(parts):
                name = f"{split}-{index:05d}.safetensors"
                if not (out / name).is_file():  # a finished shard of the same plan is kept as it is
                    tensors = _shard(chunk, config, restorers, base_input_size, encode_moments, split == "val", pool)
                    with atomic_path(out / name, overwrite=True) as temp:
                        # one metadata key: safetensors writes several in no fixed order (a resumed build must equal a whole one)
                        save_file(tensors, str(temp), metadata={"bfrboost": f"train-cache-v{VERSION}"})
                    built += len(chunk)
                with safe_open(str(out / name), framework="pt") as f:
                    entries = int(f.get_slice("face").get_shape()[0])
                shards[split].append({"file": name, "faces": len(chunk), "entries": entries})
                if progress is not None:
                    progress(len(chunk))
    manifest = {
        "version": VERSION,
        "config": config.to_dict(),
        "shards": shards,
        "val_faces": [name for part in plan["shards"]["val"] for name in part],
        "data": str(data),
    }
    write_bytes(out / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode(), overwrite=True)
    size = sum((out / s["file"]).stat().st_size for parts in shards.values() for s in parts)
    return manifest | {"build": {"seconds": time.perf_counter() - started, "faces_built": built, "bytes": size}}


def _degraded(path: Path, config: CacheConfig, base_input_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One face: (HQ (3, S, S) uint8 at the training size, K degradations (K, 3, s, s) [0, 1] at the base's input size)."""
    hq = read_face(path, config.degrade_size or base_input_size)
    lq = np.stack([degrade(hq, file_seed(config.seed, f"{path.name}#{k}"), config.degrade) for k in range(config.repeats)])
    lq01 = resize01(torch.from_numpy(lq).permute(0, 3, 1, 2).float() / 255, base_input_size)
    gt = to_uint8(resize01(torch.from_numpy(hq).permute(2, 0, 1)[None].float() / 255, config.size))[0]
    return gt, lq01


def _shard(faces, config, restorers, base_input_size, encode_moments, keep_lq, pool):
    bases, lqs, face_ids, base_ids, gts = [], [], [], [], []
    for local, (gt, lq01) in enumerate(pool.map(lambda p: _degraded(p, config, base_input_size), faces)):
        gts.append(gt)

        for b, restore in enumerate(restorers):
            bases.append(to_uint8(resize01(restore(lq01).float().cpu(), config.size)))
            lqs.append(to_uint8(resize01(lq01, config.size)))
            face_ids += [local] * config.repeats
            base_ids += [b] * config.repeats
    base = torch.cat(bases)
    tensors = {"face": torch.tensor(face_ids, dtype=torch.int64), "base_id": torch.tensor(base_ids, dtype=torch.int64)}
    tensors["gt"], tensors["gt_offsets"] = pack_images(torch.stack(gts), pool)
    tensors["base"], tensors["base_offsets"] = pack_images(base, pool)
    if keep_lq:
        tensors["lq"], tensors["lq_offsets"] = pack_images(torch.cat(lqs), pool, lossless=False)
    if config.moments:
        x = base.float() / 127.5 - 1
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
            raise InputError(
                f"{self.cache}: no {MANIFEST}; "
                f"build the cache with `bfrboost train cache --data HQ_DIR --base NAME -o {self.cache}`"
            )
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

    def _image(self, f, key: str, i: int) -> torch.Tensor:
        """Image ``i`` of ``key``: reads and decodes only its own bytes."""
        start, stop = f.get_slice(f"{key}_offsets")[i : i + 2].tolist()
        return decode_image(f.get_slice(key)[start:stop].numpy())

    def clean_faces(self, shard: int) -> torch.Tensor:
        """All ground-truth faces of one shard (F, 3, S, S) uint8: e.g. for the manifold statistics."""
        f = self._handle(shard)
        return torch.stack([self._image(f, "gt", i) for i in range(self.shards[shard]["faces"])])

    def entry(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        shard = int(np.searchsorted(self.offsets, index, side="right") - 1)
        f, local = self._handle(shard), index - int(self.offsets[shard])
        row = lambda key, i: f.get_slice(key)[i : i + 1][0]  # noqa: E731
        face = int(row("face", local))
        item = {"gt": self._image(f, "gt", face), "base": self._image(f, "base", local), "base_id": row("base_id", local)}
        keys = f.keys()
        if "lq" in keys:
            item["lq"] = self._image(f, "lq", local)
        for key in ("moments", "moments_flip"):
            if key in keys:
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
