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
from bfrboost.cli import options as opt
from bfrboost.cli.common import err, fail, interruptible
from bfrboost.errors import BfrboostError, UsageError
from bfrboost.options import TRAIN_SIZE, TrainConfig

T = opt.TRAIN
T_BASES = ",".join(T.bases)  # the default --base, spelled as the option takes it

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
    out: opt.option(Path | None, TrainConfig, "out", "--out", "-o") = T.out,
    data: opt.option(Path | None, TrainConfig, "data") = T.data,
    base: opt.option(str, TrainConfig, "bases") = T_BASES,
    cache: opt.option(Path | None, TrainConfig, "cache") = T.cache,
    steps: opt.option(int, TrainConfig, "steps") = T.steps,
    batch_size: opt.option(int, TrainConfig, "batch_size") = T.batch_size,
    accumulate: opt.option(int, TrainConfig, "accumulate") = T.accumulate,
    lr: opt.option(float, TrainConfig, "lr") = T.lr,
    weight_decay: opt.option(float, TrainConfig, "weight_decay") = T.weight_decay,
    warmup: opt.option(int, TrainConfig, "warmup") = T.warmup,
    schedule: opt.option(str, TrainConfig, "schedule") = T.schedule,
    grad_clip: opt.option(float, TrainConfig, "grad_clip") = T.grad_clip,
    ema: opt.option(float, TrainConfig, "ema") = T.ema,
    grad_checkpoint: opt.option(bool, TrainConfig, "grad_checkpoint") = T.grad_checkpoint,
    checkpoint_every: opt.option(int, TrainConfig, "checkpoint_every") = T.checkpoint_every,
    keep_last: opt.option(int, TrainConfig, "keep_last") = T.keep_last,
    val_every: opt.option(int, TrainConfig, "val_every") = T.val_every,
    val_count: opt.option(int, TrainConfig, "val_count") = T.val_count,
    repeats: opt.option(int, TrainConfig, "repeats") = T.repeats,
    moments: opt.option(bool, TrainConfig, "moments") = T.moments,
    seed: opt.option(int, TrainConfig, "seed") = T.seed,
    size: opt.option(int | None, TrainConfig, "size") = T.size,
    rank: opt.option(int, TrainConfig, "rank") = T.rank,
    timestep: opt.option(int, TrainConfig, "timestep") = T.timestep,
    beta: opt.option(float | None, TrainConfig, "beta") = T.beta,
    lpips_net: opt.option(str, TrainConfig, "lpips_net") = T.lpips_net,
    sd_model: opt.option(Path | None, TrainConfig, "sd_model") = T.sd_model,
    stats_from: opt.option(Path | None, TrainConfig, "stats_from") = T.stats_from,
    stats_faces: opt.option(int, TrainConfig, "stats_faces") = T.stats_faces,
    per_channel_stats: opt.option(bool, TrainConfig, "per_channel_stats") = T.per_channel_stats,
    tiny: opt.option(bool, TrainConfig, "tiny") = T.tiny,
    resume: opt.option(bool, TrainConfig, "resume") = T.resume,
    device: opt.option(str, TrainConfig, "device") = T.device,
    precision: opt.option(str, TrainConfig, "precision") = T.precision,
) -> None:
    """Train the InfoBFR refiner: MSE + VGG19 perceptual + LPIPS + β·L_info on cached base outputs.

    Multi-GPU / multi-node: `accelerate launch [--multi_gpu --num_machines … --machine_rank …] -m bfrboost train …`.
    """
    if ctx.invoked_subcommand is not None:
        return
    from bfrboost.train.loop import train

    settings = {name: value for name, value in ctx.params.items() if name in TrainConfig.__dataclass_fields__}
    try:
        config = TrainConfig(**settings, bases=_bases(base))
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
    base: Annotated[str, typer.Option(
        "--base",
        help="Base model(s), comma-separated; every degraded face goes through each.",
    )] = ",".join(T.bases),
    repeats: opt.option(int, TrainConfig, "repeats", help="Degradations per face (K).") = T.repeats,
    size: Annotated[int, typer.Option("--size", help="Training face size the outputs are stored at.")] = TRAIN_SIZE,
    seed: opt.option(int, TrainConfig, "seed", help="Seed of the split and the degradations.") = T.seed,
    val_count: opt.option(int, TrainConfig, "val_count", help="Faces held out for validation.") = T.val_count,
    shard_faces: Annotated[int, typer.Option("--shard-faces", help="Faces per shard file.")] = 256,
    moments: opt.option(
        bool, TrainConfig, "moments",
        help="Also store the SD VAE moments of the base outputs (fp16).",
    ) = T.moments,
    sd_model: Annotated[Path | None, typer.Option(
        "--sd-model",
        help="Local SD 2.1-base diffusers folder (for --moments).",
    )] = None,
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
