"""`bfrboost train` and `bfrboost train cache`: train the InfoBFR refiner (one or many GPUs via accelerate)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from bfrboost.cli import app
from bfrboost.cli import options as opt
from bfrboost.cli.common import err, fail, interruptible
from bfrboost.errors import BfrboostError, UsageError
from bfrboost.options import TINY_SIZE, TRAIN_SIZE, CacheOptions, PilotOptions, TinySdOptions, TrainConfig

T = opt.TRAIN
T_BASES = ",".join(T.bases)  # the default --base, spelled as the option takes it
C, TINY, P = opt.defaults(CacheOptions), opt.defaults(TinySdOptions), opt.defaults(PilotOptions)


def Bases(help: str) -> Any:  # noqa: N802  (an option type, named like one)
    """``--base`` of TrainConfig's ``bases``, comma-separated, with this command's help."""
    return opt.option(str, TrainConfig, "bases", help=help)

train_app = typer.Typer(
    help="Train the InfoBFR refiner on HQ faces (`bfrboost train --help`), or precompute its cache (`train cache`)."
)
app.add_typer(train_app, name="train")


def _bases(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError("--base needs at least one base model name, e.g. gfpgan or gfpgan,codeformer")
    return names


def _progress(label: str) -> Progress:
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not sys.stderr.isatty(),
    )


@train_app.callback(invoke_without_command=True)
@opt.with_parameters(
    opt.field_parameters(
        TrainConfig,
        out=(opt.option(Path | None, TrainConfig, "out", "--out", "-o"), T.out),
        bases=(Bases(TrainConfig.__dataclass_fields__["bases"].metadata["help"]), T_BASES),
        allow_changes=(opt.option(str, TrainConfig, "allow_changes", metavar="KEY[,KEY]"), ""),
    )
)
def train_command(
    ctx: typer.Context,
    **settings: Any,
) -> None:
    """Train the InfoBFR refiner: MSE + VGG19 perceptual + LPIPS + β·L_info on cached base outputs.

    Multi-GPU / multi-node: `accelerate launch [--multi_gpu --num_machines … --machine_rank …] -m bfrboost train …`.
    """
    if ctx.invoked_subcommand is not None:
        return
    from bfrboost.train.loop import train

    out, steps = settings["out"], settings["steps"]
    try:
        allowed = [key.strip().replace("-", "_") for key in settings["allow_changes"].split(",") if key.strip()]
        config = TrainConfig(**settings | {"allow_changes": allowed, "bases": _bases(settings["bases"])})
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
    base: Bases("Base model(s), comma-separated; every degraded face goes through each.") = T_BASES,
    repeats: opt.option(int, TrainConfig, "repeats", help="Degradations per face (K).") = T.repeats,
    size: opt.option(int, CacheOptions, "size") = C.size,
    seed: opt.option(int, TrainConfig, "seed", help="Seed of the split and the degradations.") = T.seed,
    val_count: opt.option(int, TrainConfig, "val_count", help="Faces held out for validation.") = T.val_count,
    shard_faces: opt.option(int, CacheOptions, "shard_faces") = C.shard_faces,
    moments: opt.option(
        bool, TrainConfig, "moments", help="Also store the SD VAE moments of the base outputs (fp16)."
    ) = T.moments,
    sd_model: opt.option(Path | None, TrainConfig, "sd_model", help="Local SD 2.1-base diffusers folder (for --moments).") = None,
    device: opt.option(str, CacheOptions, "device") = C.device,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Rebuild an existing cache.")] = False,
    workers: opt.option(int, CacheOptions, "workers") = C.workers,
    degrade_size: opt.option(int, CacheOptions, "degrade_size") = C.degrade_size,
) -> None:
    """Degrade each HQ face K times, run the frozen base(s) once and store the outputs in sharded safetensors."""
    params = dict(locals())  # the options by name: the cache's settings take the ones they have
    import torch

    from bfrboost.train.cache import CacheConfig
    from bfrboost.train.data import list_hq_faces
    from bfrboost.train.loop import build_training_cache

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        config = CacheConfig(**opt.pick(CacheConfig, params, bases=_bases(base), degrade_size=degrade_size or None))
        total = len(list_hq_faces(data))
        resume = "re-run the same command: finished shards are kept and the build continues"
        with interruptible(total=total, noun="face", resume=resume) as done, _progress("cache") as progress:
            task = progress.add_task("cache", total=total, info="")

            def advance(faces: int) -> None:
                done.finished += faces
                progress.advance(task, faces)

            manifest = build_training_cache(
                data,
                out,
                config,
                sd_model=sd_model,
                device=device,
                progress=advance,
                overwrite=overwrite,
                workers=workers or None,
            )
    except BfrboostError as exc:
        raise fail(exc) from None
    entries = {split: sum(s["entries"] for s in shards) for split, shards in manifest["shards"].items()}
    sys.stdout.write(
        f"{out}: cache of {total} faces × {repeats} degradations × {len(config.bases)} base(s): "
        f"{entries['train']} train and {entries['val']} val entries\n"
    )
    build = manifest["build"]
    per_face = build["seconds"] / max(1, build["faces_built"])
    sys.stdout.write(
        f"{out}: built {build['faces_built']} faces in {build['seconds']:.1f} s ({per_face:.2f} s per face); "
        f"{build['bytes'] / 1e9:.3f} GB, {build['bytes'] / 1e9 / total * 1000:.2f} GB per 1000 faces\n"
    )


@train_app.command("tiny-sd")
def tiny_sd_command(
    data: Annotated[Path, typer.Option("--data", help="Folder of aligned faces to fit on (never the faces you evaluate on).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New folder for the tiny SD (vae/, unet/, prompt.pt, fit.json).")],
    size: opt.option(int, TinySdOptions, "size") = TINY.size,
    val_count: opt.option(
        int, TrainConfig, "val_count", help="Leave out the validation split a run with this --val-count and --seed uses."
    ) = T.val_count,
    seed: opt.option(int, TrainConfig, "seed", help="Seed of the fit and of the split it leaves out.") = T.seed,
    vae_steps: opt.option(int, TinySdOptions, "vae_steps") = TINY.vae_steps,
    unet_steps: opt.option(int, TinySdOptions, "unet_steps") = TINY.unet_steps,
) -> None:
    """Fit the tiny SD of the CPU-scale configuration (minutes on a CPU, seeded) on the training split of --data."""
    from bfrboost.io.read import read_face
    from bfrboost.train.data import list_hq_faces, split_faces
    from bfrboost.train.tiny import TinyFit, fit_tiny_sd

    try:
        import torch

        train_faces, _ = split_faces(list_hq_faces(data), val_count, seed)
        faces = torch.stack([torch.from_numpy(read_face(p, size)).permute(2, 0, 1) for p in train_faces])
        with _progress("tiny-sd") as progress:
            task = progress.add_task("fit", total=vae_steps + unet_steps, info="")
            report = fit_tiny_sd(
                faces,
                out,
                TinyFit(size=size, seed=seed, vae_steps=vae_steps, unet_steps=unet_steps),
                progress=lambda stage, step, total: progress.update(task, advance=1, info=stage),
            )
    except BfrboostError as exc:
        raise fail(exc) from None
    sys.stdout.write(
        f"{out}: tiny SD fitted on {report['faces']} faces in {report['seconds']:.0f} s; "
        f"VAE encode→decode {report['psnr_fit_faces']:.2f} dB on them\n"
    )


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated numbers, e.g. 0.001,0.01,0.1; got {text!r}") from None


@train_app.command("pilot")
def pilot_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the runs, pilot.json, pilot.md and pilot.png.")],
    data: opt.option(Path | None, TrainConfig, "data", help="HQ aligned faces (a cache is built once in OUT/cache).") = None,
    cache: opt.option(
        Path | None, TrainConfig, "cache",
        help="A cache from `bfrboost train cache` (use a subset of FFHQ: K steps need few faces).",
    ) = None,
    base: Bases("Base model(s), comma-separated.") = T_BASES,
    betas: opt.option(str, PilotOptions, "betas") = P.betas,
    timesteps: Annotated[
        str, typer.Option("--timesteps", help="Timesteps to try as well, comma-separated (default: --timestep only).")
    ] = "",
    lrs: Annotated[
        str, typer.Option("--lrs", help="Learning rates to try as well, comma-separated (default: the --lr of train).")
    ] = "",
    steps: opt.option(int, PilotOptions, "steps") = P.steps,
    batch_size: opt.option(int, PilotOptions, "batch_size") = P.batch_size,
    timestep: opt.option(int, TrainConfig, "timestep", help="The timestep when --timesteps is not given.") = T.timestep,
    ablations: Annotated[
        bool,
        typer.Option(
            "--ablations",
            help="Instead of a sweep: the paper's Table III (full, no Transformer, no MIB, no LoRA) at --betas' first value.",
        ),
    ] = False,
    val_count: opt.option(int, TrainConfig, "val_count", help="Held-out validation faces.") = T.val_count,
    repeats: opt.option(int, PilotOptions, "repeats") = P.repeats,
    size: opt.option(int, PilotOptions, "size") = P.size,
    tiny: opt.option(
        bool, TrainConfig, "tiny", help="The CPU-scale configuration (tiny SD fitted once, shared by every value)."
    ) = T.tiny,
    tiny_sd: opt.option(Path | None, TrainConfig, "tiny_sd", help="--tiny: a tiny SD from `bfrboost train tiny-sd`.") = None,
    sd_model: opt.option(Path | None, TrainConfig, "sd_model", help="Local SD 2.1-base diffusers folder.") = None,
    stats_from: opt.option(
        Path | None, TrainConfig, "stats_from", help="μ_R, σ_R of a refiner folder from `bfrboost refiner stats`."
    ) = None,
    seed: opt.option(int, TrainConfig, "seed", help="Seed of every run.") = T.seed,
    device: opt.option(str, TrainConfig, "device", help="auto or cpu.") = T.device,
) -> None:
    """A short sweep over β (and optionally timestep, lr) that ranks the values and recommends one; --ablations: Table III."""
    params = dict(locals())  # the options by name: each run's TrainConfig takes the ones it has
    from bfrboost.train.pilot import ablate, pilot

    try:
        beta_values = _floats(betas, "--betas")
        config = TrainConfig(
            **opt.pick(
                TrainConfig,
                params,
                bases=_bases(base),
                size=size or (TINY_SIZE if tiny else TRAIN_SIZE),
                beta=beta_values[0] if beta_values else None,
            )
        )
        if ablations:
            ablate(config, note=err)
            sys.stdout.write(f"{out / 'ablation.md'}: ablation table written\n")
            return
        swept_t = [int(v) for v in _floats(timesteps, "--timesteps")] or None
        result = pilot(config, beta_values, swept_t, _floats(lrs, "--lrs") or None, note=err)
    except BfrboostError as exc:
        raise fail(exc) from None
    pick = result["recommended"]
    sys.stdout.write(
        f"{out / 'pilot.md'}: recommended --beta {pick['beta']:g} --timestep {pick['timestep']} --lr {pick['lr']:g} "
        f"(mean λ {pick['lambda_mean']:.3f}, PSNR {pick['psnr']:.2f} dB vs base {pick['psnr_base']:.2f}); "
        f"{len(result['ranked'])} values in {result['seconds'] / 60:.1f} min\n"
    )
