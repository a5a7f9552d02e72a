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
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bfrboost.errors import InputError, UsageError
from bfrboost.nets.arcface import ArcFace
from bfrboost.options import PAPER_STATS_FACES, TrainConfig
from bfrboost.plots import figure_png, pyplot
from bfrboost.safety import append_line, atomic_dir, write_bytes
from bfrboost.train.cache import CacheConfig, CachedFaces, build_cache
from bfrboost.train.checkpoint import apply_checkpoint, resume_point, save_checkpoint, truncate_log
from bfrboost.train.data import apply_flips, batch_indices, flip_mask
from bfrboost.train.degrade import DegradeConfig, file_seed, tiny_degradation
from bfrboost.train.losses import InfoBFRLoss, LossWeights, build_lpips, build_vgg19

LOG_NAME = "log.jsonl"
VAL_LOG_NAME = "val.jsonl"
CURVES_NAME = "curves.png"
REFINER_DIR = "refiner"
TINY_SD_DIR = "sd-tiny"
TERMS = ("loss", "mse", "perceptual", "lpips", "info")
LAMBDA_LOW, LAMBDA_HIGH = 0.05, 0.995  # mean λ outside these at two validations in a row: a warning names --beta


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
        note(
            f"validation without identity cosine (ids): the ArcFace weights are not in the cache; "
            f"run `bfrboost weights download {ARCFACE_CARD}` to add it"
        )
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


# ---- model ---------------------------------------------------------------------------------------


def write_tiny_sd(config: TrainConfig, run: Path, note: Callable[[str], None]) -> None:
    """RUN_DIR/sd-tiny: the tiny SD of the CPU-scale configuration, unless there. Copied from ``--tiny-sd``,
    or fitted (seeded, minutes) on the training split of ``--data`` (else of the cache): the validation
    faces are never fitted on. Written by one process before the others read it; a resumed run reuses it."""
    from bfrboost.train.tiny import TinyFit, fit_tiny_sd, is_tiny_sd

    sd = run / TINY_SD_DIR
    if is_tiny_sd(sd):
        return
    if config.tiny_sd is not None:
        if not is_tiny_sd(config.tiny_sd):
            raise UsageError(
                f"{config.tiny_sd}: not a tiny SD (needs vae/, unet/, prompt.pt, fit.json); "
                "make one with `bfrboost train tiny-sd`"
            )
        with atomic_dir(sd) as temp:
            shutil.copytree(config.tiny_sd, temp, dirs_exist_ok=True)
        return
    faces = _tiny_fit_faces(config)
    note(
        f"fitting the tiny SD (VAE + UNet) on {faces.shape[0]} training faces, once per run; "
        "`bfrboost train tiny-sd` makes one to reuse with --tiny-sd"
    )
    fit_tiny_sd(faces, sd, TinyFit(size=config.size, seed=config.seed, timestep=config.timestep))


def _tiny_fit_faces(config: TrainConfig) -> torch.Tensor:
    """Clean faces of the training split (never the validation split), (N, 3, S, S) uint8."""
    from bfrboost.io.read import read_face
    from bfrboost.train.data import list_hq_faces, split_faces

    if config.data is not None:
        train_faces, _ = split_faces(list_hq_faces(config.data), config.val_count, config.seed)
        return torch.stack([torch.from_numpy(read_face(p, config.size)).permute(2, 0, 1) for p in train_faces])
    cache = CachedFaces(config.cache or config.out / "cache", "train")
    return torch.cat([cache.clean_faces(i) for i in range(len(cache.shards))])


def make_model(config: TrainConfig, run: Path):
    """A fresh refiner: the tiny SD of :func:`write_tiny_sd`, or SD 2.1."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from bfrboost.refiner.model import InfoBFR, InfoBFRConfig

    stats_mode = "channel" if config.per_channel_stats or config.tiny else "element"
    refiner_config = InfoBFRConfig(
        rank=config.rank,
        stats_mode=stats_mode,
        timestep=config.timestep,
        transformer=not config.no_transformer,
        mib=not config.no_mib,
        lora=not config.no_lora,
        face_size=config.size,  # restore runs it at the size it learned
    )
    if config.beta is not None:
        refiner_config.beta = config.beta
    if not config.tiny:
        return InfoBFR.create(refiner_config, sd_model=config.sd_model)
    from bfrboost.train.tiny import read_fit

    sd = run / TINY_SD_DIR
    vae = AutoencoderKL.from_pretrained(sd / "vae")
    unet = UNet2DConditionModel.from_pretrained(sd / "unet")
    prompt = torch.load(sd / "prompt.pt", weights_only=True)
    fit = read_fit(sd)["fit"]
    if fit["size"] != config.size:
        raise UsageError(
            f"{sd}: the tiny SD was fitted at {fit['size']} px but --size is {config.size}; "
            f"pass --size {fit['size']} or fit another"
        )
    tiny_config = dataclasses.replace(
        refiner_config,
        manifold_channels=2 * vae.config.latent_channels,
        transformer_width=16,
        transformer_heads=2,
        sd_model="tiny-fitted",
        timestep=fit["timestep"],
        scaling_factor=fit["scaling_factor"],
    )
    return InfoBFR(tiny_config, vae, unet, prompt)


def clean_manifold(model, cache: CachedFaces, limit: int, warn: Callable[[str], None]) -> torch.Tensor:
    """VAE moments r of up to ``limit`` clean faces of the cache (the paper: 3000 FFHQ faces), float16 on the CPU:
    what μ_R, σ_R describe, kept for refreshing them as the Transformer moves h away from r."""
    chunks, seen = [], 0
    for shard in range(len(cache.shards)):
        gt = cache.clean_faces(shard)
        for chunk in gt[: max(0, limit - seen)].split(8):
            with torch.no_grad():
                chunks.append(model.encode_manifold(chunk.to(model.device).float() / 127.5 - 1).half().cpu())
            seen += chunk.shape[0]
        if seen >= limit:
            break
    if seen < PAPER_STATS_FACES:
        warn(f"manifold statistics from {seen} faces (the paper uses {PAPER_STATS_FACES}); add faces to --data for better ones")
    return torch.cat(chunks)


def _manifold_h(model, r_clean: torch.Tensor):
    """h = r + T(r) of the clean faces in batches (float32, no grad): the tensor the KL and the noise act on."""
    transformer = model.bottleneck.transformer
    with torch.no_grad():
        for chunk in r_clean.split(16):
            r = chunk.to(model.device).float()
            yield (transformer(r) if transformer is not None else r).float()


def set_manifold_stats(model, r_clean: torch.Tensor) -> None:
    """μ_R, σ_R of h over the clean faces (at init h == r, so this is the paper's statistic of r)."""
    from bfrboost.refiner.stats import RunningMoments

    moments = RunningMoments(model.config.stats_mode == "element")
    for h in _manifold_h(model, r_clean):
        moments.update(h)
    stats = moments.result()
    model.bottleneck.set_stats(stats.mean, stats.std)
    model.config.stats_faces = stats.faces


def normalised_h_moments(model, r_clean: torch.Tensor) -> tuple[float, float]:
    """Mean and standard deviation of (h − μ_R)/σ_R over the clean faces: ≈ (0, 1) while the statistics fit h."""
    mean, std = model.bottleneck.stats_mean.float(), model.bottleneck.noise_std().float()
    total = total_sq = count = 0.0
    for h in _manifold_h(model, r_clean):
        u = ((h - mean) / std).double()
        total, total_sq, count = total + u.sum().item(), total_sq + u.square().sum().item(), count + u.numel()
    m = total / count
    return m, math.sqrt(max(0.0, total_sq / count - m * m))


def copy_stats(model, source: Path) -> None:
    """Reuse μ_R, σ_R of a refiner folder written by `bfrboost refiner stats`."""
    from bfrboost import weights
    from bfrboost.refiner.model import CONFIG_NAME, WEIGHTS_NAME, InfoBFRConfig

    other = InfoBFRConfig.from_json(source / CONFIG_NAME)
    if other.stats_faces <= 0:
        raise UsageError(
            f"{source}: --stats-from has no statistics either; run `bfrboost refiner stats --faces HQ_DIR --refiner {source}`"
        )
    state = weights.load_state_dict(source / WEIGHTS_NAME)
    model.config.stats_mode = other.stats_mode
    model.bottleneck.stats_mode = other.stats_mode
    model.bottleneck.set_stats(state["bottleneck.stats_mean"], state["bottleneck.stats_std"])
    model.config.stats_faces = other.stats_faces


# ---- the run -------------------------------------------------------------------------------------


def _silent(message: str) -> None:
    """Where only the main process speaks."""


@dataclasses.dataclass
class _Live:
    """What a run carries from step to step: the model (and its distributed wrapper), loss, optimizer, data, position."""

    accelerator: Any
    model: Any
    ddp_model: Any
    loss_fn: Any
    optimizer: Any
    scheduler: Any
    train_set: CachedFaces
    val_set: CachedFaces
    identity: ArcFace | None = None
    ema: dict[str, torch.Tensor] | None = None
    step: int = 0
    position: int = 0


class Trainer:
    """One training run; :meth:`run` returns the refiner folder inside RUN_DIR."""

    def __init__(
        self,
        config: TrainConfig,
        warn: Callable[[str], None] = print,
        progress: Callable[[int, int, dict], None] | None = None,
        arcface: ArcFace | None = None,
    ) -> None:
        """``arcface``: the identity network of validation's ``ids``; default: the cached ArcFace when present."""
        self.config = config
        self.warn = warn
        self.progress = progress
        self.arcface = arcface
        self.r_clean: torch.Tensor | None = None  # VAE moments of the clean statistics faces
        self.lambdas: list[float] = []  # mean λ of the last two validations
        self.lambda_warned = False

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
            raise UsageError(
                f"{cache}: no cache there; pass --data HQ_DIR to build it (or --cache a folder built by `bfrboost train cache`)"
            )
        if accelerator.is_main_process:
            degrade_size = config.degrade_size or (config.size if config.tiny else None)
            cache_config = CacheConfig(
                bases=config.bases,
                size=config.size,
                repeats=config.repeats,
                seed=config.seed,
                val_count=config.val_count,
                moments=config.moments,
                degrade_size=degrade_size,
                degrade=tiny_degradation(config.size) if config.tiny else DegradeConfig(),
            )
            build_training_cache(
                config.data, cache, cache_config, tiny=config.tiny, sd_model=config.sd_model, device=accelerator.device
            )
        accelerator.wait_for_everyone()
        return cache

    def run(self) -> Path:
        config, run = self.config, self.config.out
        accelerator = self._accelerator()
        loaded = resume_point(
            run,
            config.to_dict(),
            set(config.allow_changes),
            (run / LOG_NAME, run / VAL_LOG_NAME),
            self.warn if accelerator.is_main_process else _silent,
        )
        run.mkdir(parents=True, exist_ok=True)
        self._refuse_unbuilt_cache(accelerator)
        if config.tiny and accelerator.is_main_process:
            write_tiny_sd(config, run, self.warn)
        accelerator.wait_for_everyone()
        with torch.random.fork_rng(devices=[]):  # the trainables' random init (LoRA A, Transformer) follows --seed alone
            torch.manual_seed(config.seed)
            model = make_model(config, run).to(accelerator.device)  # before the cache: cached moments need the tiny VAE
        cache_dir = self._cache(accelerator)
        train_set, val_set = self._datasets(cache_dir)
        self.r_clean = self._manifold_statistics(model, train_set, loaded is not None, accelerator)
        live = self._prepare(model, accelerator, train_set, val_set)
        if loaded is not None:
            self._resume(live, loaded, cache_dir)
        if config.resume and accelerator.is_main_process:  # from a checkpoint, or again from step 0 (-1: no line kept)
            truncate_log(run / LOG_NAME, live.step if loaded is not None else -1)
            truncate_log(run / VAL_LOG_NAME, live.step if loaded is not None else -1)
        if config.ema > 0 and live.ema is None:
            live.ema = {n: p.detach().clone().float() for n, p in model.named_parameters() if p.requires_grad}
        live.ddp_model, live.optimizer = accelerator.prepare(model, live.optimizer)
        live.identity = self._identity(accelerator)
        try:
            if live.step == 0:
                self._validate(model, live.loss_fn, val_set, 0, run, live.identity, accelerator)
            while live.step < config.steps:
                record = self._train_step(live)
                self._after_step(live, record)
        except torch.OutOfMemoryError:
            raise UsageError(
                f"out of GPU memory at --batch-size {config.batch_size}, {config.size} px; pass --grad-checkpoint, "
                "or a smaller --batch-size with --accumulate N to keep the effective batch"
            ) from None
        self.model = model
        return self._save_result(model, live.ema, run, accelerator)

    def _refuse_unbuilt_cache(self, accelerator) -> None:
        """Several processes cannot wait for a cache to be built (hours on FFHQ, beyond the process group's timeout)."""
        config = self.config
        missing = config.cache or config.out / "cache"
        if accelerator.num_processes > 1 and config.data is not None and not (missing / "cache.json").is_file():
            raise UsageError(
                f"{missing}: no cache yet, and {accelerator.num_processes} processes cannot wait for one to be "
                f"built; run `bfrboost train cache --data {config.data} --base {','.join(config.bases)} "
                f"--size {config.size} --repeats {config.repeats} --val-count {config.val_count} -o CACHE_DIR` first, "
                "then launch with --cache CACHE_DIR"
            )

    def _datasets(self, cache_dir: Path) -> tuple[CachedFaces, CachedFaces]:
        train_set, val_set = CachedFaces(cache_dir, "train"), CachedFaces(cache_dir, "val")
        if len(train_set) == 0:
            raise InputError(f"{cache_dir}: the cache has no training entries; add faces to --data")
        if train_set.config.size != self.config.size:
            raise UsageError(
                f"{cache_dir}: cache faces are {train_set.config.size} px but --size is {self.config.size}; "
                f"rebuild the cache or pass --size {train_set.config.size}"
            )
        return train_set, val_set

    def _manifold_statistics(self, model, train_set: CachedFaces, resumed: bool, accelerator) -> torch.Tensor | None:
        """μ_R, σ_R: copied (--stats-from), computed from the clean faces, or kept from the checkpoint; the clean moments."""
        config = self.config
        if config.stats_from is not None:
            copy_stats(model, config.stats_from)  # first: a --stats-from without statistics is refused before any work
        r_clean = None
        if config.stats_from is None or config.stats_every:
            note = self.warn if accelerator.is_main_process else _silent
            r_clean = clean_manifold(model, train_set, config.stats_faces, note)
        if config.stats_from is None and not resumed:  # a resumed run keeps the statistics of its checkpoint
            set_manifold_stats(model, r_clean)
        return r_clean

    def _prepare(self, model, accelerator, train_set: CachedFaces, val_set: CachedFaces) -> _Live:
        """Loss networks, precision, optimizer and schedule of a run starting at step 0."""
        config, device = self.config, accelerator.device
        with torch.random.fork_rng(devices=[]):  # --tiny's random loss nets: the same on every (resumed) run
            torch.manual_seed(config.seed)
            loss_fn = InfoBFRLoss(
                build_vgg19(pretrained=not config.tiny),
                build_lpips(config.lpips_net, pretrained=not config.tiny),
                LossWeights(beta=model.config.beta if model.config.mib else 0.0),
            ).to(device)
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
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, config.warmup, config.steps, config.schedule)
        )
        return _Live(accelerator, model, model, loss_fn, optimizer, scheduler, train_set, val_set)

    def _resume(self, live: _Live, loaded, cache_dir: Path) -> None:
        state, live.ema = apply_checkpoint(loaded, live.model, live.optimizer, live.scheduler)
        if state.get("cache") not in (None, live.train_set.manifest["config"]):
            source = loaded.folder / "state.json"
            raise UsageError(
                f"{cache_dir}: not the cache this run was trained on (settings differ from {source}); "
                "resume with the same --cache"
            )
        live.step, live.position = state["step"], state["position"]

    def _identity(self, accelerator) -> ArcFace | None:
        identity = self.arcface
        if identity is None and accelerator.is_main_process:
            identity = validation_arcface(accelerator.device, self.warn)
        return identity.to(accelerator.device) if identity is not None else None

    def _train_step(self, live: _Live) -> dict[str, Any]:
        """One optimizer step over ``accumulate`` micro-batches; the step's log record (averaged over processes)."""
        config, accelerator = self.config, live.accelerator
        started = time.perf_counter()
        sums = dict.fromkeys((*TERMS, "lambda_mean"), 0.0)
        for micro in range(config.accumulate):
            values = self._micro_step(live, micro)
            for key, value in zip(sums, values):
                sums[key] += value / config.accumulate
        grad_norm = accelerator.clip_grad_norm_(live.model.trainable_parameters(), config.grad_clip)
        lr = live.optimizer.param_groups[0]["lr"]
        live.optimizer.step()
        live.scheduler.step()
        live.optimizer.zero_grad(set_to_none=True)
        if live.ema is not None:
            with torch.no_grad():
                for n, p in live.model.named_parameters():
                    if n in live.ema:
                        live.ema[n].mul_(config.ema).add_(p.detach().float(), alpha=1 - config.ema)
        live.step += 1
        if accelerator.num_processes > 1:
            values = accelerator.reduce(torch.tensor([sums[k] for k in sums], device=accelerator.device), reduction="mean")
            sums = dict(zip(sums, values.tolist()))
        return {
            "step": live.step,
            **{k: float(v) for k, v in sums.items()},
            "lr": lr,
            "grad_norm": float(grad_norm),
            "seconds": time.perf_counter() - started,
        }

    def _micro_step(self, live: _Live, micro: int) -> list[float]:
        """Forward and backward of this process's share of one micro-batch; the logged values (loss terms, mean λ)."""
        config, accelerator, device = self.config, live.accelerator, live.accelerator.device
        rank, world, step, train_set = accelerator.process_index, accelerator.num_processes, live.step, live.train_set
        indices, live.position = batch_indices(len(train_set), config.batch_size * world, config.seed, live.position)
        mine = indices[rank * config.batch_size : (rank + 1) * config.batch_size]
        generator = torch.Generator(device).manual_seed(step_seed(config.seed, step, micro, rank))
        batch = train_set.batch(mine)
        flips = flip_mask(len(mine), torch.Generator().manual_seed(step_seed(config.seed, step, micro, rank) ^ 1))
        gt = apply_flips(batch["gt"], flips).to(device)
        sync = accelerator.no_sync(live.ddp_model) if micro < config.accumulate - 1 and world > 1 else nullcontext()
        with sync, accelerator.autocast():
            if train_set.has_moments:
                r = torch.where(flips.view(-1, 1, 1, 1), batch["moments_flip"], batch["moments"]).to(device)
                x_hat, aux = live.ddp_model(r, generator, manifold=True)
            else:
                x_hat, aux = live.ddp_model(apply_flips(batch["base"], flips).to(device), generator)
            terms = live.loss_fn(x_hat, gt, aux.info_loss)
            accelerator.backward(terms["loss"] / config.accumulate)
        # One device→host copy per micro-step for every logged value (not one sync each).
        return torch.stack([terms[k].detach().float() for k in TERMS] + [aux.lam.detach().mean().float()]).tolist()

    def _after_step(self, live: _Live, record: dict[str, Any]) -> None:
        """Log, progress, validation, statistics refresh and checkpoint due after a step."""
        config, run, accelerator, step = self.config, self.config.out, live.accelerator, live.step
        if accelerator.is_main_process:
            _append_line(run / LOG_NAME, record)
        if self.progress is not None:
            self.progress(step, config.steps, record)
        if step % config.val_every == 0 or step == config.steps:
            self._validate(live.model, live.loss_fn, live.val_set, step, run, live.identity, accelerator)
        if config.stats_every and step % config.stats_every == 0 and self.r_clean is not None:
            set_manifold_stats(live.model, self.r_clean)  # h drifts from r as the Transformer trains: the KL and ε follow it
        if step % config.checkpoint_every == 0 or step == config.steps:
            if accelerator.is_main_process:
                save_checkpoint(
                    run,
                    step,
                    live.position,
                    live.model,
                    live.optimizer,
                    live.scheduler,
                    live.ema,
                    config,
                    live.train_set.manifest["config"],
                )
                plot_curves(run / LOG_NAME, run / CURVES_NAME)
            accelerator.wait_for_everyone()

    def _validate(
        self, model, loss_fn, val_set: CachedFaces, step: int, run: Path, identity, accelerator
    ) -> dict[str, float] | None:
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
                values = {
                    **{k: terms[k].item() * n for k in TERMS},
                    "lambda_mean": aux.lam.mean().item() * n,
                    "psnr": psnr((x_hat + 1) / 2, (gt + 1) / 2).sum().item(),
                    "psnr_base": psnr((base + 1) / 2, (gt + 1) / 2).sum().item(),
                    "lpips_base": loss_fn.lpips(base, gt).float().sum().item(),
                }
                if identity is not None:  # float32 whatever the autocast: a cosine near 1 needs the precision
                    with torch.autocast(model.device.type, enabled=False):
                        values["ids"] = identity.similarity((x_hat.float() + 1) / 2, (gt.float() + 1) / 2).sum().item()
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                if not grid:
                    grid = [batch.get("lq", batch["base"]), batch["base"], x_hat.float().cpu(), batch["gt"]]
        record = {"step": step, **{k: v / len(val_set) for k, v in sums.items()}}
        if self.r_clean is not None and model.config.mib:
            record["h_mean"], record["h_std"] = normalised_h_moments(model, self.r_clean)
        model.train()
        _append_line(run / VAL_LOG_NAME, record)
        if model.config.mib:
            self._check_lambda(record["lambda_mean"], model.config.beta)
        from bfrboost.io.write import write_image

        write_image(run / "val" / f"step-{step:08d}.png", image_grid(grid), overwrite=True)
        return record

    def _check_lambda(self, lam: float, beta: float) -> None:
        """One line when mean λ stayed outside (LAMBDA_LOW, LAMBDA_HIGH) at two validations in a row."""
        self.lambdas = [*self.lambdas, lam][-2:]
        if len(self.lambdas) < 2 or self.lambda_warned:
            return
        if max(self.lambdas) < LAMBDA_LOW:
            first, second = self.lambdas
            self.warn(
                f"mean λ {first:.3f}, {second:.3f} < {LAMBDA_LOW} at two validations: the bottleneck replaces "
                f"the face by noise (the output no longer depends on the base face); lower --beta (now {beta:g}), "
                "e.g. with `bfrboost train pilot`"
            )
        elif min(self.lambdas) > LAMBDA_HIGH:
            first, second = self.lambdas
            self.warn(
                f"mean λ {first:.3f}, {second:.3f} > {LAMBDA_HIGH} at two validations: the bottleneck keeps "
                f"everything (nothing is cleaned); raise --beta (now {beta:g}), e.g. with `bfrboost train pilot`"
            )
        else:
            return
        self.lambda_warned = True

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


def build_training_cache(
    data: Path,
    out: Path,
    cache_config: CacheConfig,
    tiny: bool = False,
    sd_model: Path | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
    overwrite: bool = False,
    workers: int | None = None,
):
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
    return build_cache(data, out, cache_config, restorers, sizes.pop(), encode, progress, overwrite, workers)


def _frozen_vae(tiny: bool, run: Path, sd_model: Path | None):
    from diffusers import AutoencoderKL

    from bfrboost.refiner.model import load_diffusers_module, resolve_sd_dir

    if tiny:
        folder = run / TINY_SD_DIR / "vae"
        if not folder.is_dir():
            raise UsageError(
                f"{folder}: cached moments of a tiny run need its tiny SD; build the cache from `bfrboost train --tiny` itself"
            )
        return AutoencoderKL.from_pretrained(folder)
    return load_diffusers_module(AutoencoderKL, resolve_sd_dir(sd_model) / "vae")


def train(
    config: TrainConfig, warn: Callable[[str], None] = print, progress: Callable[[int, int, dict], None] | None = None
) -> Path:
    """Train a refiner as ``config`` says; returns RUN_DIR/refiner (config.json + refiner.safetensors)."""
    return Trainer(config, warn, progress).run()
