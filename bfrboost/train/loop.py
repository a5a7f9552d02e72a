"""The training loop of ``bfrboost train``: accelerate (one or many GPUs, CPU), checkpoints, exact resume.

Determinism is by construction: the sample order of every epoch is fixed by the seed, and every
step draws its flips and noise from a generator seeded by (seed, step, micro-batch, process). A
checkpoint therefore needs only the trainable weights, the optimizer, the scheduler, the step and the
data position (plus, for completeness, every global RNG state) for ``--resume`` to reproduce the
uninterrupted run's next loss exactly.

RUN_DIR layout: ``cache/`` (unless ``--cache``), ``checkpoints/step-NNNNNNNN/``, ``log.jsonl`` (one line
per step), ``val.jsonl``, ``val/step-NNNNNNNN.png`` (input | base | refined | ground truth),
``curves.png`` (every loss term against the step) and ``refiner/`` (the result, a refiner folder).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from bfrboost.errors import InputError, UsageError
from bfrboost.nets.arcface import ArcFace
from bfrboost.options import PAPER_STATS_FACES, TrainConfig
from bfrboost.plots import figure_png, pyplot
from bfrboost.safety import append_line, atomic_dir, atomic_path, write_bytes
from bfrboost.train.cache import CacheConfig, CachedFaces, build_cache
from bfrboost.train.data import apply_flips, batch_indices, flip_mask
from bfrboost.train.degrade import file_seed
from bfrboost.train.losses import InfoBFRLoss, LossWeights, build_lpips, build_vgg19

LOG_NAME = "log.jsonl"
VAL_LOG_NAME = "val.jsonl"
CURVES_NAME = "curves.png"
REFINER_DIR = "refiner"
TINY_SD_DIR = "sd-tiny"
TERMS = ("loss", "mse", "perceptual", "lpips", "info")


# ---- pieces --------------------------------------------------------------------------------------


def step_seed(seed: int, step: int, micro: int, rank: int) -> int:
    return file_seed(seed, f"step{step}/micro{micro}/rank{rank}")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on weight matrices/kernels only, not on biases, norms or the λ head."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (plain if p.ndim < 2 or "lambda_head" in name or "norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Linear warmup over ``warmup`` steps, then constant or cosine to zero at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    return 1.0


def psnr(a01: torch.Tensor, b01: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of [0, 1] RGB images."""
    mse = (a01.float() - b01.float()).square().mean((1, 2, 3)).clamp_min(1e-12)
    return 10 * torch.log10(1 / mse)


def validation_arcface(device: str | torch.device, note: Callable[[str], None]) -> ArcFace | None:
    """ArcFace for validation's identity cosine (``ids``) when its weights are in the cache; otherwise
    one note and ``None``: training never downloads a network it only reports with."""
    from bfrboost import weights
    from bfrboost.nets.arcface import ARCFACE_CARD, ARCFACE_FILE, load_arcface

    if not weights.manifest()[ARCFACE_FILE].path.is_file():
        note(f"validation without identity cosine (ids): the ArcFace weights are not in the cache; "
             f"run `bfrboost weights download {ARCFACE_CARD}` to add it")
        return None
    return load_arcface(device)


def plot_curves(log_path: Path, out: Path) -> None:
    """Every loss term against the step (log scale) as a PNG."""
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    if not rows:
        return
    fig, ax = pyplot().subplots(figsize=(8, 4.5), dpi=100)
    steps = [r["step"] for r in rows]
    for term in TERMS:
        values = [max(r[term], 1e-12) for r in rows]
        ax.plot(steps, values, label=term, linewidth=1.2 if term == "loss" else 0.8)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss term")
    ax.legend()
    ax.grid(alpha=0.3)
    write_bytes(out, figure_png(fig), overwrite=True)


def image_grid(columns: list[torch.Tensor]) -> np.ndarray:
    """Rows of faces, columns side by side: list of (B, 3, H, W) in [-1, 1] → H·B × W·C × 3 uint8."""
    rows = torch.cat([torch.cat(list(c.float().clamp(-1, 1)), dim=1) for c in columns], dim=2)  # (3, H·B, W·C)
    return ((rows + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def _append_line(path: Path, record: dict[str, Any]) -> None:
    """One JSON line per step; a resumed run rewrites the log atomically up to its checkpoint."""
    append_line(path, json.dumps(record))


def _truncate_log(path: Path, last_step: int) -> None:
    if path.is_file():
        keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= last_step]
        write_bytes(path, "".join(line + "\n" for line in keep).encode(), overwrite=True)


# ---- model ---------------------------------------------------------------------------------------


def write_tiny_sd(config: TrainConfig, run: Path) -> None:
    """Save a tiny random SD (vae, unet, prompt) to RUN_DIR/sd-tiny unless there: all parts or none,
    written by one process before the others read it; a resumed run reloads the same one."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from bfrboost.refiner.model import TINY_PROMPT_SHAPE, TINY_UNET_CONFIG, TINY_VAE_CONFIG

    sd = run / TINY_SD_DIR
    if not (sd / "unet" / "config.json").is_file():
        torch.manual_seed(config.seed)
        with atomic_dir(sd) as temp:
            AutoencoderKL.from_config(TINY_VAE_CONFIG).save_pretrained(temp / "vae")
            UNet2DConditionModel.from_config(TINY_UNET_CONFIG).save_pretrained(temp / "unet")
            torch.save(torch.randn(TINY_PROMPT_SHAPE, generator=torch.Generator().manual_seed(config.seed)), temp / "prompt.pt")


def make_model(config: TrainConfig, run: Path):
    """A fresh refiner: the tiny random SD of :func:`write_tiny_sd`, or SD 2.1."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from bfrboost.refiner.model import InfoBFR, InfoBFRConfig

    stats_mode = "channel" if config.per_channel_stats or config.tiny else "element"
    refiner_config = InfoBFRConfig(rank=config.rank, stats_mode=stats_mode, timestep=config.timestep)
    if config.beta is not None:
        refiner_config.beta = config.beta
    if not config.tiny:
        return InfoBFR.create(refiner_config, sd_model=config.sd_model)
    sd = run / TINY_SD_DIR
    vae = AutoencoderKL.from_pretrained(sd / "vae")
    unet = UNet2DConditionModel.from_pretrained(sd / "unet")
    prompt = torch.load(sd / "prompt.pt", weights_only=True)
    tiny_config = dataclasses.replace(refiner_config, transformer_width=16, transformer_heads=2, sd_model="tiny-random")
    return InfoBFR(tiny_config, vae, unet, prompt)


def compute_stats(model, cache: CachedFaces, limit: int, per_element: bool, warn: Callable[[str], None]) -> None:
    """μ_R, σ_R over up to ``limit`` clean faces of the cache (the paper: 3000 FFHQ faces)."""
    from bfrboost.refiner.stats import RunningMoments

    moments = RunningMoments(per_element)
    seen = 0
    for shard in range(len(cache.shards)):
        gt = cache.clean_faces(shard)
        for chunk in gt[: max(0, limit - seen)].split(8):
            with torch.no_grad():
                moments.update(model.encode_manifold(chunk.to(model.device).float() / 127.5 - 1))
            seen += chunk.shape[0]
        if seen >= limit:
            break
    if seen < PAPER_STATS_FACES:
        warn(f"manifold statistics from {seen} faces (the paper uses {PAPER_STATS_FACES}); add faces to --data for better ones")
    stats = moments.result()
    model.bottleneck.set_stats(stats.mean, stats.std)
    model.config.stats_faces = stats.faces


def copy_stats(model, source: Path) -> None:
    """Reuse μ_R, σ_R of a refiner folder written by `bfrboost refiner stats`."""
    from bfrboost import weights
    from bfrboost.refiner.model import CONFIG_NAME, WEIGHTS_NAME, InfoBFRConfig

    other = InfoBFRConfig.from_json(source / CONFIG_NAME)
    if other.stats_faces <= 0:
        raise UsageError(f"{source}: --stats-from has no statistics either; run `bfrboost refiner stats --faces HQ_DIR --refiner {source}`")
    state = weights.load_state_dict(source / WEIGHTS_NAME)
    model.config.stats_mode = other.stats_mode
    model.bottleneck.stats_mode = other.stats_mode
    model.bottleneck.set_stats(state["bottleneck.stats_mean"], state["bottleneck.stats_std"])
    model.config.stats_faces = other.stats_faces


# ---- checkpoints ---------------------------------------------------------------------------------


def checkpoints(run: Path) -> list[Path]:
    """Complete checkpoints (state.json is written last), oldest first."""
    folder = run / "checkpoints"
    return sorted(p for p in folder.glob("step-*") if (p / "state.json").is_file()) if folder.is_dir() else []


def save_checkpoint(run: Path, step: int, position: int, model, optimizer, scheduler, ema: dict[str, torch.Tensor] | None,
                    config: TrainConfig, cache_config: dict[str, Any] | None = None) -> Path:
    folder = run / "checkpoints" / f"step-{step:08d}"
    with atomic_path(folder / "trainable.safetensors", overwrite=True) as temp:
        save_file(model.trainable_state_dict(), str(temp))
    if ema is not None:
        with atomic_path(folder / "ema.safetensors", overwrite=True) as temp:
            save_file({k: v.detach().cpu().contiguous() for k, v in ema.items()}, str(temp))
    rng = {"torch": torch.get_rng_state(), **({"cuda": torch.stack(torch.cuda.get_rng_state_all())} if torch.cuda.is_available() else {})}
    for name, obj in (("optimizer.pt", optimizer.state_dict()), ("scheduler.pt", scheduler.state_dict()), ("rng.pt", rng)):
        with atomic_path(folder / name, overwrite=True) as temp:
            torch.save(obj, temp)
    np_state = np.random.get_state()
    state = {
        "step": step,
        "position": position,
        "stats_faces": model.config.stats_faces,
        "stats_mode": model.config.stats_mode,
        "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python_rng": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "config": config.to_dict(),
        "cache": cache_config,
    }
    write_bytes(folder / "state.json", (json.dumps(state) + "\n").encode(), overwrite=True)
    for old in checkpoints(run)[: -config.keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def load_checkpoint(folder: Path, model, optimizer, scheduler) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """Restore weights, optimizer, scheduler and global RNG states; returns state.json and the EMA."""
    state = json.loads((folder / "state.json").read_text())
    model.config.stats_faces = state["stats_faces"]
    model.config.stats_mode = model.bottleneck.stats_mode = state["stats_mode"]
    model.load_trainable_state_dict(load_file(str(folder / "trainable.safetensors")), str(folder / "trainable.safetensors"))
    # weights_only: tensors, numbers and containers only, no code from the file
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", map_location="cpu", weights_only=True))
    rng = torch.load(folder / "rng.pt", map_location="cpu", weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(rng["cuda"]))
    np_state = state["numpy_rng"]
    np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))
    random.setstate((state["python_rng"][0], tuple(state["python_rng"][1]), state["python_rng"][2]))
    ema_path = folder / "ema.safetensors"
    return state, (load_file(str(ema_path)) if ema_path.is_file() else None)


# ---- the run -------------------------------------------------------------------------------------


class Trainer:
    """One training run; :meth:`run` returns the refiner folder inside RUN_DIR."""

    def __init__(self, config: TrainConfig, warn: Callable[[str], None] = print, progress: Callable[[int, int, dict], None] | None = None,
                 arcface: ArcFace | None = None) -> None:
        """``arcface``: the identity network of validation's ``ids``; default: the cached ArcFace when present."""
        self.config = config
        self.warn = warn
        self.progress = progress
        self.arcface = arcface

    # -- setup
    def _accelerator(self):
        from accelerate import Accelerator

        cpu = self.config.device == "cpu" or not torch.cuda.is_available()
        precision = self.config.precision
        if precision == "auto":
            precision = "no" if cpu else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
        from accelerate.state import AcceleratorState

        # accelerate keeps one process-wide state; a second run in the same process (tests, notebooks)
        # may ask for another precision. The distributed part (PartialState) is kept.
        AcceleratorState._reset_state()
        return Accelerator(cpu=cpu, mixed_precision=precision)

    def _cache(self, accelerator) -> Path:
        config, run = self.config, self.config.out
        cache = config.cache or run / "cache"
        if (cache / "cache.json").is_file():
            return cache
        if config.data is None:
            raise UsageError(f"{cache}: no cache there; pass --data HQ_DIR to build it (or --cache a folder built by `bfrboost train cache`)")
        if accelerator.is_main_process:
            build_training_cache(config.data, cache, CacheConfig(bases=config.bases, size=config.size, repeats=config.repeats, seed=config.seed,
                                                                 val_count=config.val_count, moments=config.moments),
                                 tiny=config.tiny, sd_model=config.sd_model, device=accelerator.device)
        accelerator.wait_for_everyone()
        return cache

    def run(self) -> Path:
        config, run = self.config, self.config.out
        accelerator = self._accelerator()
        device = accelerator.device
        log_path, val_path = run / LOG_NAME, run / VAL_LOG_NAME
        found = checkpoints(run)
        if config.resume and not found:
            raise UsageError(f"{run}: no checkpoint to resume from (checkpoints/step-*/state.json); start without --resume")
        if not config.resume and (found or log_path.is_file()):
            raise UsageError(f"{run}: already holds a training run; pass --resume to continue it or choose another --out")
        run.mkdir(parents=True, exist_ok=True)
        if config.tiny and accelerator.is_main_process:
            write_tiny_sd(config, run)
        accelerator.wait_for_everyone()
        model = make_model(config, run).to(device)  # before the cache: a tiny run's cached moments need its tiny VAE
        cache_dir = self._cache(accelerator)
        train_set, val_set = CachedFaces(cache_dir, "train"), CachedFaces(cache_dir, "val")
        if len(train_set) == 0:
            raise InputError(f"{cache_dir}: the cache has no training entries; add faces to --data")
        if train_set.config.size != config.size:
            raise UsageError(f"{cache_dir}: cache faces are {train_set.config.size} px but --size is {config.size}; rebuild the cache or pass --size {train_set.config.size}")
        if config.stats_from is not None:
            copy_stats(model, config.stats_from)
        elif not config.resume:
            compute_stats(model, train_set, config.stats_faces, model.config.stats_mode == "element",
                          self.warn if accelerator.is_main_process else (lambda message: None))
        with torch.random.fork_rng(devices=[]):  # --tiny's random loss nets: the same on every (resumed) run
            torch.manual_seed(config.seed)
            loss_fn = InfoBFRLoss(build_vgg19(pretrained=not config.tiny), build_lpips(config.lpips_net, pretrained=not config.tiny),
                                  LossWeights(beta=model.config.beta)).to(device)
        if accelerator.mixed_precision in ("bf16", "fp16"):
            frozen = torch.bfloat16 if accelerator.mixed_precision == "bf16" else torch.float16
            model.vae.to(frozen)
            model.unet.to(frozen)
            loss_fn.to(frozen)
            for p in model.trainable_parameters():
                p.data = p.data.float()  # trainable weights (LoRA inside the bf16 UNet too) stay fp32
        if config.grad_checkpoint:
            model.unet.enable_gradient_checkpointing()
            model.vae.enable_gradient_checkpointing()
        model.train()
        optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config.warmup, config.steps, config.schedule))
        step, position, ema = 0, 0, None
        if config.resume:
            state, ema = load_checkpoint(found[-1], model, optimizer, scheduler)
            if state.get("cache") not in (None, train_set.manifest["config"]):
                raise UsageError(f"{cache_dir}: not the cache this run was trained on (settings differ from {found[-1] / 'state.json'}); "
                                 "resume with the same --cache")
            step, position = state["step"], state["position"]
            if accelerator.is_main_process:
                _truncate_log(log_path, step)
                _truncate_log(val_path, step)
        if config.ema > 0 and ema is None:
            ema = {n: p.detach().clone().float() for n, p in model.named_parameters() if p.requires_grad}
        ddp_model, optimizer = accelerator.prepare(model, optimizer)
        rank, world = accelerator.process_index, accelerator.num_processes
        identity = self.arcface
        if identity is None and accelerator.is_main_process:
            identity = validation_arcface(device, self.warn)
        if identity is not None:
            identity = identity.to(device)

        try:
            if step == 0:
                self._validate(model, loss_fn, val_set, 0, run, identity, accelerator)
            while step < config.steps:
                started = time.perf_counter()
                sums = dict.fromkeys((*TERMS, "lambda_mean"), 0.0)
                for micro in range(config.accumulate):
                    indices, position = batch_indices(len(train_set), config.batch_size * world, config.seed, position)
                    mine = indices[rank * config.batch_size : (rank + 1) * config.batch_size]
                    generator = torch.Generator(device).manual_seed(step_seed(config.seed, step, micro, rank))
                    batch = train_set.batch(mine)
                    flips = flip_mask(len(mine), torch.Generator().manual_seed(step_seed(config.seed, step, micro, rank) ^ 1))
                    gt = apply_flips(batch["gt"], flips).to(device)
                    sync = accelerator.no_sync(ddp_model) if micro < config.accumulate - 1 and world > 1 else nullcontext()
                    with sync, accelerator.autocast():
                        if train_set.has_moments:
                            r = torch.where(flips.view(-1, 1, 1, 1), batch["moments_flip"], batch["moments"]).to(device)
                            x_hat, aux = ddp_model(r, generator, manifold=True)
                        else:
                            x_hat, aux = ddp_model(apply_flips(batch["base"], flips).to(device), generator)
                        terms = loss_fn(x_hat, gt, aux.info_loss)
                        accelerator.backward(terms["loss"] / config.accumulate)
                    # One device→host copy per micro-step for every logged value (not one sync each).
                    values = torch.stack([terms[k].detach().float() for k in TERMS] + [aux.lam.detach().mean().float()]).tolist()
                    for key, value in zip(sums, values):
                        sums[key] += value / config.accumulate
                grad_norm = accelerator.clip_grad_norm_(model.trainable_parameters(), config.grad_clip)
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    with torch.no_grad():
                        for n, p in model.named_parameters():
                            if n in ema:
                                ema[n].mul_(config.ema).add_(p.detach().float(), alpha=1 - config.ema)
                step += 1
                if world > 1:
                    values = accelerator.reduce(torch.tensor([sums[k] for k in sums], device=device), reduction="mean")
                    sums = dict(zip(sums, values.tolist()))
                record = {"step": step, **{k: float(v) for k, v in sums.items()}, "lr": lr, "grad_norm": float(grad_norm),
                          "seconds": time.perf_counter() - started}
                if accelerator.is_main_process:
                    _append_line(log_path, record)
                if self.progress is not None:
                    self.progress(step, config.steps, record)
                if step % config.val_every == 0 or step == config.steps:
                    self._validate(model, loss_fn, val_set, step, run, identity, accelerator)
                if step % config.checkpoint_every == 0 or step == config.steps:
                    if accelerator.is_main_process:
                        save_checkpoint(run, step, position, model, optimizer, scheduler, ema, config, train_set.manifest["config"])
                        plot_curves(log_path, run / CURVES_NAME)
                    accelerator.wait_for_everyone()
        except torch.OutOfMemoryError:
            raise UsageError(f"out of GPU memory at --batch-size {config.batch_size}, {config.size} px; pass --grad-checkpoint, "
                             "or a smaller --batch-size with --accumulate N to keep the effective batch") from None
        self.model = model
        return self._save_result(model, ema, run, accelerator)

    def _validate(self, model, loss_fn, val_set: CachedFaces, step: int, run: Path, identity, accelerator) -> dict[str, float] | None:
        """PSNR, LPIPS, identity cosine ``ids`` (if ArcFace is there), mean λ, L_info and the val loss; grid PNG."""
        if not accelerator.is_main_process or len(val_set) == 0:
            return None
        model.eval()
        sums: dict[str, float] = {}
        grid = []
        with torch.no_grad(), accelerator.autocast():
            for start in range(0, len(val_set), 4):
                batch = val_set.batch(range(start, min(start + 4, len(val_set))))
                base, gt = batch["base"].to(model.device), batch["gt"].to(model.device)
                x_hat, aux = model(base)
                terms = loss_fn(x_hat, gt, aux.info_loss)
                n = base.shape[0]
                values = {**{k: terms[k].item() * n for k in TERMS}, "lambda_mean": aux.lam.mean().item() * n,
                          "psnr": psnr((x_hat + 1) / 2, (gt + 1) / 2).sum().item(), "psnr_base": psnr((base + 1) / 2, (gt + 1) / 2).sum().item()}
                if identity is not None:  # float32 whatever the autocast: a cosine near 1 needs the precision
                    with torch.autocast(model.device.type, enabled=False):
                        values["ids"] = identity.similarity((x_hat.float() + 1) / 2, (gt.float() + 1) / 2).sum().item()
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                if not grid:
                    grid = [batch.get("lq", batch["base"]), batch["base"], x_hat.float().cpu(), batch["gt"]]
        model.train()
        record = {"step": step, **{k: v / len(val_set) for k, v in sums.items()}}
        _append_line(run / VAL_LOG_NAME, record)
        from bfrboost.io.write import write_image

        write_image(run / "val" / f"step-{step:08d}.png", image_grid(grid), overwrite=True)
        return record

    def _save_result(self, model, ema, run: Path, accelerator) -> Path:
        out = run / REFINER_DIR
        if accelerator.is_main_process:
            if ema is not None:
                with torch.no_grad():
                    for n, p in model.named_parameters():
                        if n in ema:
                            p.copy_(ema[n].to(p.dtype))
            if self.config.tiny:  # the tiny SD parts first (each whole or absent), so config.json comes last
                for part in ("vae", "unet"):
                    if not (out / part).is_dir():  # the same parts on every (resumed) run of RUN_DIR
                        with atomic_dir(out / part) as temp:
                            shutil.copytree(run / TINY_SD_DIR / part, temp, dirs_exist_ok=True)
            model.save_pretrained(out)  # trainables, statistics and prompt are float32 whatever the frozen parts are
        accelerator.wait_for_everyone()
        return out


def build_training_cache(data: Path, out: Path, cache_config: CacheConfig, tiny: bool = False, sd_model: Path | None = None,
                         device: str | torch.device = "cpu", progress: Callable[[int], None] | None = None, overwrite: bool = False):
    """Load the frozen base model(s) (and the VAE when moments are cached) and write the cache."""
    from bfrboost.backbones.registry import get_spec, load_base

    bases = [load_base(name, device) for name in cache_config.bases]
    sizes = {get_spec(name).input_size for name in cache_config.bases}
    if len(sizes) != 1:
        raise UsageError(f"bases {cache_config.bases} take different input sizes {sorted(sizes)}; cache them separately")
    encode = None
    if cache_config.moments:
        from bfrboost.refiner.model import vae_moments

        vae = _frozen_vae(tiny, out.parent, sd_model).to(device).eval()
        encode = lambda x: vae_moments(vae, x.to(device))  # noqa: E731
    restorers = [lambda x, b=b: b.restore(x.to(device)) for b in bases]
    return build_cache(data, out, cache_config, restorers, sizes.pop(), encode, progress, overwrite)


def _frozen_vae(tiny: bool, run: Path, sd_model: Path | None):
    from diffusers import AutoencoderKL

    from bfrboost.refiner.model import load_diffusers_module, resolve_sd_dir

    if tiny:
        folder = run / TINY_SD_DIR / "vae"
        if not folder.is_dir():
            raise UsageError(f"{folder}: cached moments of a tiny run need its tiny SD; build the cache from `bfrboost train --tiny` itself")
        return AutoencoderKL.from_pretrained(folder)
    return load_diffusers_module(AutoencoderKL, resolve_sd_dir(sd_model) / "vae")


def train(config: TrainConfig, warn: Callable[[str], None] = print, progress: Callable[[int, int, dict], None] | None = None) -> Path:
    """Train a refiner as ``config`` says; returns RUN_DIR/refiner (config.json + refiner.safetensors)."""
    return Trainer(config, warn, progress).run()
