"""μ_R, σ_R: statistics of the VAE manifold r over high-quality aligned faces (3000 FFHQ faces in the paper).

The bottleneck replaces what it drops by noise with these statistics, and the information loss
normalises r with them, so they must describe *clean* faces. Streamed in batches; sums in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from bfrboost import weights
from bfrboost.errors import InputError, UsageError
from bfrboost.io.inputs import IMAGE_EXTENSIONS, scan_folder
from bfrboost.io.read import read_face
from bfrboost.options import RefinerToolOptions, default_of
from bfrboost.refiner.bottleneck import STATS_MODES
from bfrboost.refiner.model import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    InfoBFRConfig,
    is_self_contained,
    load_diffusers_module,
    resolve_sd_dir,
    save_refiner_files,
    vae_moments,
)


@dataclass
class ManifoldStats:
    mean: torch.Tensor  # (C, 1, 1) per channel or (C, H, W) per element, float32
    std: torch.Tensor  # same shape, population standard deviation (not yet clamped)
    faces: int  # number of faces they were computed on


class RunningMoments:
    """Sum and sum of squares in float64: exact enough for 3000 × 64 × 64 values per channel."""

    def __init__(self, per_element: bool) -> None:
        self.per_element = per_element
        self.total: torch.Tensor | None = None
        self.total_sq: torch.Tensor | None = None
        self.count = 0  # values per accumulated element
        self.faces = 0

    def update(self, r: torch.Tensor) -> None:
        r = r.detach().to("cpu", torch.float64)
        dims = (0,) if self.per_element else (0, 2, 3)
        total, total_sq = r.sum(dims), (r * r).sum(dims)
        if not self.per_element:
            total, total_sq = total[:, None, None], total_sq[:, None, None]
        self.total = total if self.total is None else self.total + total
        self.total_sq = total_sq if self.total_sq is None else self.total_sq + total_sq
        self.count += r.shape[0] if self.per_element else r.shape[0] * r.shape[2] * r.shape[3]
        self.faces += r.shape[0]

    def result(self) -> ManifoldStats:
        if self.total is None:
            raise UsageError("no faces were accumulated; nothing to compute statistics from")
        mean = self.total / self.count
        var = (self.total_sq / self.count - mean * mean).clamp_min(0.0)
        return ManifoldStats(mean=mean.float(), std=var.sqrt().float(), faces=self.faces)


def list_faces(folder: Path, limit: int | None = None) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted: the same faces on every run), at most ``limit``."""
    action = "give --faces a folder of aligned 512 face crops (e.g. cropped_faces/ of `bfrboost restore --save-faces`)"
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder of aligned faces; {action}")
    paths = scan_folder(folder)
    if not paths:
        raise InputError(f"{folder}: no faces found (no {', '.join(sorted(IMAGE_EXTENSIONS))} files); {action}")
    return paths[:limit] if limit else paths


def load_face(path: Path, size: int) -> torch.Tensor:
    """One aligned face as (3, size, size) in [-1, 1] (the VAE's input range)."""
    return torch.from_numpy(read_face(path, size)).permute(2, 0, 1).float() / 127.5 - 1.0


def compute_manifold_stats(
    vae: AutoencoderKL,
    faces: Sequence[Path],
    per_element: bool = False,
    batch_size: int = default_of(RefinerToolOptions, "batch_size"),
    size: int = default_of(RefinerToolOptions, "size"),
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
) -> ManifoldStats:
    """Statistics of r = VAE moments over ``faces``; ``progress(n)`` is called after each batch of n."""
    moments = RunningMoments(per_element)
    vae = vae.to(device).eval()
    for start in range(0, len(faces), batch_size):
        batch = torch.stack([load_face(p, size) for p in faces[start : start + batch_size]]).to(device)
        with torch.inference_mode():
            moments.update(vae_moments(vae, batch))
        if progress is not None:
            progress(batch.shape[0])
    return moments.result()


def save_stats(directory: Path, stats: ManifoldStats) -> None:
    """Store μ_R, σ_R in an existing refiner (weights file and ``stats_mode`` / ``stats_faces`` in its config)."""
    config = InfoBFRConfig.from_json(directory / CONFIG_NAME)
    config.stats_mode = STATS_MODES[0] if stats.mean.shape[1:] == (1, 1) else STATS_MODES[1]
    config.stats_faces = stats.faces
    state = weights.load_state_dict(directory / WEIGHTS_NAME)
    state["bottleneck.stats_mean"] = stats.mean.contiguous()
    state["bottleneck.stats_std"] = stats.std.contiguous()
    save_refiner_files(directory, state, config)


def refiner_vae(directory: Path, sd_model: str | Path | None = None) -> AutoencoderKL:
    """Only the frozen VAE is needed for statistics: skip loading the UNet."""
    if not (directory / CONFIG_NAME).is_file():
        raise UsageError(
            f"{directory}: not a bfrboost refiner (no {CONFIG_NAME}); run `bfrboost refiner init` or train one first"
        )
    sd_dir = directory if is_self_contained(directory) else resolve_sd_dir(sd_model)
    return load_diffusers_module(AutoencoderKL, sd_dir / "vae")
