"""`bfrboost train` and `bfrboost train cache`: train the InfoBFR refiner (one or many GPUs via accelerate)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from bfrboost.cli import app
from bfrboost.cli.common import err, fail, interruptible
from bfrboost.errors import BfrboostError, UsageError

train_app = typer.Typer(help="Train the InfoBFR refiner on HQ faces (`bfrboost train --help`), or precompute its cache (`train cache`).")
app.add_typer(train_app, name="train")


def _bases(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError("--base needs at least one base model name, e.g. gfpgan or gfpgan,codeformer")
    return names


def _progress(label: str) -> Progress:
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=Console(stderr=True), disable=not sys.stderr.isatty())


@train_app.callback(invoke_without_command=True)
def train_command(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="RUN_DIR: cache, checkpoints, logs, curves, val grids and the refiner/ result.")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Folder of HQ aligned 512 faces (FFHQ-512, or `bfrboost restore --save-faces`).")] = None,
    base: Annotated[str, typer.Option("--base", help="Base model(s) whose outputs are refined, comma-separated (mixed in the cache).")] = "gfpgan",
    cache: Annotated[Path | None, typer.Option("--cache", help="A cache from `bfrboost train cache` (default RUN_DIR/cache, built on first use).")] = None,
    steps: Annotated[int, typer.Option("--steps", help="Optimizer steps.")] = 10000,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Faces per step and process (the paper: 1).")] = 1,
    accumulate: Annotated[int, typer.Option("--accumulate", help="Gradient accumulation micro-batches per step.")] = 1,
    lr: Annotated[float, typer.Option("--lr", help="AdamW learning rate.")] = 5e-5,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay (not on biases, norms, λ head).")] = 1e-2,
    warmup: Annotated[int, typer.Option("--warmup", help="Linear warmup steps.")] = 100,
    schedule: Annotated[str, typer.Option("--schedule", help="constant or cosine after warmup.")] = "constant",
    grad_clip: Annotated[float, typer.Option("--grad-clip", help="Gradient norm clip.")] = 1.0,
    ema: Annotated[float, typer.Option("--ema", help="EMA decay of the trainable weights, e.g. 0.999 (0 = off).")] = 0.0,
    grad_checkpoint: Annotated[bool, typer.Option("--grad-checkpoint", help="Gradient checkpointing in the UNet and VAE decoder (less memory).")] = False,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="Steps between checkpoints.")] = 1000,
    keep_last: Annotated[int, typer.Option("--keep-last", help="Checkpoints kept.")] = 3,
    val_every: Annotated[int, typer.Option("--val-every", help="Steps between validations.")] = 1000,
    val_count: Annotated[int, typer.Option("--val-count", help="Faces of the fixed validation split (when the cache is built).")] = 16,
    repeats: Annotated[int, typer.Option("--repeats", help="Degradations per face (when the cache is built).")] = 4,
    moments: Annotated[bool, typer.Option("--moments", help="Cache the VAE moments too (fp16): training skips the VAE encoder.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split, the data order, flips and noise.")] = 0,
    size: Annotated[int, typer.Option("--size", help="Training face size (512; --tiny: 64).")] = 0,
    rank: Annotated[int, typer.Option("--rank", help="LoRA rank (the paper: 4; 2 and 8 studied).")] = 4,
    timestep: Annotated[int, typer.Option("--timestep", help="The single UNet step t on the 1000-step schedule (higher: more generative, lower: closer to the input).")] = 499,
    beta: Annotated[float | None, typer.Option("--beta", help="Weight of the information loss (default 20, the paper's Table III).")] = None,
    lpips_net: Annotated[str, typer.Option("--lpips-net", help="LPIPS network: alex or vgg.")] = "alex",
    sd_model: Annotated[Path | None, typer.Option("--sd-model", help="Local SD 2.1-base diffusers folder instead of the weights cache.")] = None,
    stats_from: Annotated[Path | None, typer.Option("--stats-from", help="Reuse μ_R, σ_R of a refiner folder from `bfrboost refiner stats`.")] = None,
    stats_faces: Annotated[int, typer.Option("--stats-faces", help="Faces for the manifold statistics when computed here (the paper: 3000).")] = 3000,
    per_channel_stats: Annotated[bool, typer.Option("--per-channel-stats", help="μ_R, σ_R per channel instead of per element.")] = False,
    tiny: Annotated[bool, typer.Option("--tiny", help="Tiny random SD and random loss networks (tests, demos; no downloads).")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue RUN_DIR from its latest checkpoint, exactly.")] = False,
    allow_changes: Annotated[str, typer.Option("--allow-changes", metavar="KEY[,KEY]",
                                               help="Settings --resume may change (e.g. lr,batch_size).")] = "",
    device: Annotated[str, typer.Option("--device", help="auto (CUDA when present) or cpu.")] = "auto",
    precision: Annotated[str, typer.Option("--precision", help="auto (bf16 autocast on CUDA, float32 on CPU), no, bf16 or fp16.")] = "auto",
) -> None:
    """Train the InfoBFR refiner: MSE + VGG19 perceptual + LPIPS + β·L_info on cached base outputs.

    Multi-GPU / multi-node: `accelerate launch [--multi_gpu --num_machines … --machine_rank …] -m bfrboost train …`.
    """
    if ctx.invoked_subcommand is not None:
        return
    from bfrboost.train.loop import TrainConfig, train

    if out is None:
        raise fail(UsageError("missing --out RUN_DIR (where checkpoints, logs and the trained refiner go)"))
    try:
        config = TrainConfig(out=out, data=data, bases=_bases(base), cache=cache, steps=steps, batch_size=batch_size, accumulate=accumulate,
                             lr=lr, weight_decay=weight_decay, warmup=warmup, schedule=schedule, grad_clip=grad_clip, ema=ema,
                             grad_checkpoint=grad_checkpoint, checkpoint_every=checkpoint_every, keep_last=keep_last, val_every=val_every,
                             seed=seed, tiny=tiny, size=size or (64 if tiny else 512), rank=rank, timestep=timestep, beta=beta, lpips_net=lpips_net,
                             sd_model=sd_model, stats_from=stats_from, stats_faces=stats_faces, per_channel_stats=per_channel_stats,
                             repeats=repeats, val_count=val_count, moments=moments, resume=resume, device=device,
                             precision=precision,
                             allow_changes=[k.strip().replace("-", "_") for k in allow_changes.split(",") if k.strip()])
        resume = f"re-run with --resume to continue from the last checkpoint in {out}/checkpoints"
        with interruptible(total=steps, noun="step", resume=resume) as done, _progress("train") as progress:
            task = progress.add_task("train", total=steps, info="")

            def report(step: int, total: int, record: dict) -> None:
                done.finished = step
                progress.update(task, completed=step, info=f"loss {record['loss']:.4f} λ {record['lambda_mean']:.3f}")

            result = train(config, warn=lambda m: err(m), progress=report)
    except BfrboostError as exc:
        raise fail(exc) from None
    if os.environ.get("RANK", "0") == "0":  # one line per run, not per process
        sys.stdout.write(f"{result}: trained refiner written (logs, curves.png and checkpoints in {out})\n")


@train_app.command("cache")
def cache_command(
    data: Annotated[Path, typer.Option("--data", help="Folder of HQ aligned 512 faces.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Cache folder.")],
    base: Annotated[str, typer.Option("--base", help="Base model(s), comma-separated; every degraded face goes through each.")] = "gfpgan",
    repeats: Annotated[int, typer.Option("--repeats", help="Degradations per face (K).")] = 4,
    size: Annotated[int, typer.Option("--size", help="Training face size the outputs are stored at.")] = 512,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split and the degradations.")] = 0,
    val_count: Annotated[int, typer.Option("--val-count", help="Faces held out for validation.")] = 16,
    shard_faces: Annotated[int, typer.Option("--shard-faces", help="Faces per shard file.")] = 256,
    moments: Annotated[bool, typer.Option("--moments", help="Also store the SD VAE moments of the base outputs (fp16).")] = False,
    sd_model: Annotated[Path | None, typer.Option("--sd-model", help="Local SD 2.1-base diffusers folder (for --moments).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Rebuild an existing cache.")] = False,
) -> None:
    """Degrade each HQ face K times, run the frozen base(s) once and store the outputs in sharded safetensors."""
    import torch

    from bfrboost.train.cache import CacheConfig
    from bfrboost.train.data import list_hq_faces
    from bfrboost.train.loop import build_training_cache

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        config = CacheConfig(bases=_bases(base), size=size, repeats=repeats, seed=seed, val_count=val_count, shard_faces=shard_faces, moments=moments)
        total = len(list_hq_faces(data))
        with interruptible(total=total, noun="face", resume="re-run the same command (a cache counts only once its cache.json is written)") as done, _progress("cache") as progress:
            task = progress.add_task("cache", total=total, info="")

            def advance(faces: int) -> None:
                done.finished += faces
                progress.advance(task, faces)

            manifest = build_training_cache(data, out, config, sd_model=sd_model, device=device, progress=advance, overwrite=overwrite)
    except BfrboostError as exc:
        raise fail(exc) from None
    entries = {split: sum(s["entries"] for s in shards) for split, shards in manifest["shards"].items()}
    sys.stdout.write(f"{out}: cache of {total} faces × {repeats} degradations × {len(config.bases)} base(s): "
                     f"{entries['train']} train and {entries['val']} val entries\n")
