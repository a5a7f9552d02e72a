"""`bfrboost refiner`: manifold statistics, size/FLOP report, tiny test refiners."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress

from bfrboost.cli import app
from bfrboost.cli import options as opt
from bfrboost.cli.common import fail as _refiner_fail
from bfrboost.cli.common import interruptible, writes_files
from bfrboost.errors import BfrboostError, UsageError
from bfrboost.options import RefinerToolOptions, TrainConfig

R = opt.defaults(RefinerToolOptions)

refiner_app = typer.Typer(no_args_is_help=True, help="InfoBFR refiner: statistics, info, tiny test refiners.")
app.add_typer(refiner_app, name="refiner")


@refiner_app.command("stats")
def refiner_stats(
    faces: Annotated[
        Path, typer.Option("--faces", help="Folder of high-quality aligned 512 faces (searched recursively, sorted).")
    ],
    refiner: Annotated[Path, typer.Option("--refiner", help="Refiner folder whose statistics are replaced.")],
    count: opt.option(int, RefinerToolOptions, "count", "-n", "--count") = R.count,
    per_element: opt.option(bool, RefinerToolOptions, "per_element", "--per-element/--per-channel") = R.per_element,
    batch_size: opt.option(int, RefinerToolOptions, "batch_size") = R.batch_size,
    size: opt.option(int, RefinerToolOptions, "size") = R.size,
    sd_model: Annotated[
        Path | None, typer.Option("--sd-model", help="Local SD 2.1 diffusers folder (vae/) instead of the weights cache.")
    ] = None,
    device: opt.option(str, RefinerToolOptions, "device") = R.device,
) -> None:
    """Compute μ_R, σ_R of the VAE manifold over clean faces and store them in the refiner."""
    import torch

    from bfrboost.refiner import compute_manifold_stats, list_faces, refiner_vae, save_stats

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    with interruptible(resume="re-run the same command (the refiner is unchanged until the statistics are stored)"):
        try:
            paths = list_faces(faces, count)
            vae = refiner_vae(refiner, sd_model)
            with Progress(console=Console(stderr=True), transient=True) as progress:
                task = progress.add_task("manifold statistics", total=len(paths))
                stats = compute_manifold_stats(
                    vae, paths, per_element, batch_size, size, device, lambda n: progress.advance(task, n)
                )
            save_stats(refiner, stats)
        except BfrboostError as exc:
            raise _refiner_fail(exc) from None
    mode = "element" if per_element else "channel"
    sys.stdout.write(
        f"{refiner}: per-{mode} statistics of r over {stats.faces} faces stored "
        f"(mean |μ| {stats.mean.abs().mean():.4f}, mean σ {stats.std.mean():.4f})\n"
    )


@refiner_app.command("info")
def refiner_info(
    rank: opt.option(int, TrainConfig, "rank", help="LoRA rank (the paper studies 2, 4, 8).") = opt.TRAIN.rank,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    flops: opt.option(bool, RefinerToolOptions, "flops", "--flops/--no-flops") = R.flops,
) -> None:
    """Trainable parameters and FLOPs of the real SD 2.1-base refiner (built without weights)."""
    from bfrboost.refiner import describe_sd21

    info = describe_sd21(rank, flops=flops)
    if as_json:
        sys.stdout.write(json.dumps(info, indent=1) + "\n")
        return
    p = info["parameters"]
    lines = [
        f"InfoBFR on SD 2.1-base, LoRA rank {rank} (alpha = rank) on attention, feed-forward, ResNet and sampler layers",
        f"trainable  {p['trainable'] / 1e6:8.3f} M params  {info['trainable_mb_fp32']:7.2f} MB fp32",
        f"  LoRA     {p['lora'] / 1e6:8.3f} M params  {info['lora_mb_fp32']:7.2f} MB fp32",
        f"  Transformer + λ head {(p['transformer'] + p['lambda_head']) / 1e6:.3f} M params",
        f"frozen     UNet {p['frozen_unet'] / 1e6:.1f} M, VAE {p['frozen_vae'] / 1e6:.1f} M params",
    ]
    sizes = ", ".join(f"rank {r}: {describe_sd21(r, flops=False)['trainable_mb_fp32']:.2f} MB" for r in (2, 4, 8))
    lines.append(f"trainable fp32 size by rank (paper: 8 / 16.4 / 32 MB): {sizes}")
    if flops:
        lines.append(f"GFLOPs per {info['face_size']}² face (LoRA fused):")
        lines += [f"  {stage:<12} {value / 1e9:10.1f}" for stage, value in info["flops_per_face"].items()]
    sys.stdout.write("\n".join(lines) + "\n")


@refiner_app.command("init")
@writes_files
def refiner_init(
    tiny: Annotated[
        Path | None,
        typer.Option("--tiny", help="Write a tiny random self-contained refiner (own vae/ and unet/) here, for tests and demos."),
    ] = None,
    sd21: Annotated[
        Path | None,
        typer.Option(
            "--sd21", help="Write an untrained SD 2.1-base refiner here (for `refiner stats`, then `train --stats-from`)."
        ),
    ] = None,
    rank: opt.option(int, TrainConfig, "rank", help="LoRA rank of an --sd21 refiner.") = opt.TRAIN.rank,
    sd_model: Annotated[
        Path | None,
        typer.Option(
            "--sd-model", help="Local SD 2.1 diffusers folder (with text_encoder/, tokenizer/) instead of the weights cache."
        ),
    ] = None,
    seed: opt.option(
        int, TrainConfig, "seed", help="Random seed of the tiny weights (or of the --sd21 trainable init)."
    ) = opt.TRAIN.seed,
) -> None:
    """Create a refiner folder: a tiny random one (statistics computed here) or an untrained SD 2.1 one."""
    import torch

    from bfrboost.refiner import InfoBFR, InfoBFRConfig, init_tiny

    if (tiny is None) == (sd21 is None):
        raise _refiner_fail(UsageError("give exactly one of --tiny DIR or --sd21 DIR"))
    target = tiny or sd21
    if (target / "config.json").exists():
        raise _refiner_fail(UsageError(f"{target}: already holds a refiner; choose an empty folder"))
    try:
        if tiny is not None:
            init_tiny(tiny, seed)
            sys.stdout.write(f"{tiny}: tiny random refiner written (seed {seed})\n")
            return
        torch.manual_seed(seed)
        InfoBFR.create(InfoBFRConfig(rank=rank), sd_model=sd_model).save_pretrained(sd21)
    except BfrboostError as exc:
        raise _refiner_fail(exc) from None
    sys.stdout.write(
        f"{sd21}: untrained refiner written (rank {rank}); next: `bfrboost refiner stats --faces HQ_DIR --refiner {sd21}`\n"
    )
