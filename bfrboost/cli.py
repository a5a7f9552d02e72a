"""Thin Typer layer: parse options, loop, report progress and exit codes. Logic lives in the library.

Sections are owned by different people while the foundation is built: edit only your section.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress

from bfrboost.errors import BfrboostError, UsageError

if TYPE_CHECKING:
    from bfrboost.pipeline import FileReport

app = typer.Typer(add_completion=False, no_args_is_help=True, help="bfrboost: restore faces, then boost them with the InfoBFR refiner.")

# ---- restore (pipeline owner) ----------------------------------------------------------------

class ExtChoice(str, Enum):
    auto = "auto"
    png = "png"
    jpg = "jpg"
    webp = "webp"


def _err(message: str) -> None:
    """One line on stderr; the only way errors reach the user."""
    sys.stderr.write(f"bfrboost: {message}\n")


def _parse_knobs(knob: list[str]) -> dict[str, Any]:
    knobs: dict[str, Any] = {}
    for item in knob:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--knob expects NAME=VALUE, got '{item}'")
        try:
            knobs[name] = json.loads(value)
        except json.JSONDecodeError:
            knobs[name] = value
    return knobs


def _summary(reports: list[FileReport], problems: list[str], seconds: float) -> str:
    done = [r for r in reports if r.error is None and r.skipped is None]
    failed = [r for r in reports if r.error is not None]
    skipped = [r for r in reports if r.skipped is not None]
    stages: dict[str, float] = {}
    for report in reports:
        for stage, secs in report.seconds.items():
            stages[stage] = stages.get(stage, 0.0) + secs
    lines = [
        (
            f"{len(done)} image(s) restored, {sum(len(r.faces) for r in done)} face(s), "
            f"{len(failed) + len(problems)} failed, {len(skipped)} skipped, {seconds:.2f} s"
        )
    ]
    if stages:
        lines.append("seconds per stage: " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))
    if failed or problems:
        lines.append("failed:")
        lines += [f"  {r.input}: {r.error}" for r in failed] + [f"  {p}" for p in problems]
    return "\n".join(lines)


@app.command()
def restore(
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders or globs; '-' reads one image from stdin and writes the result to stdout.", show_default=False)],
    outdir: Annotated[Path, typer.Option("-o", "--outdir", help="Output folder (restored_imgs/, cropped_faces/, restored_faces/, cmp/).")] = Path("results"),
    base: Annotated[str, typer.Option("--base", help="Base restorer: auto, none, gfpgan, gfpgan-1.3, restoreformer, codeformer, gpen, vqfr, difface.")] = "auto",
    refine: Annotated[bool | None, typer.Option("--refine/--no-refine", help="Run the InfoBFR refiner after the base model (default: when --refiner is given).", show_default=False)] = None,
    refiner: Annotated[Path | None, typer.Option("--refiner", help="Trained InfoBFR refiner folder (save_pretrained layout).")] = None,
    refiner_strength: Annotated[float, typer.Option("--refiner-strength", min=0.0, max=1.0, help="Blend: 0 = base output, 1 = fully refined.")] = 1.0,
    sd_model: Annotated[Path | None, typer.Option("--sd-model", help="Local Stable Diffusion 2.1 diffusers folder (vae/, unet/) instead of the weights cache.")] = None,
    compile_refiner: Annotated[bool, typer.Option("--compile", help="torch.compile the refiner (worth it on CUDA for long batches; slow first batch).")] = False,
    upscale: Annotated[float, typer.Option("-s", "--upscale", help="Upscale factor of the whole image.")] = 2.0,
    bg_upsampler: Annotated[str, typer.Option("--bg-upsampler", help="Background upsampler: none (Lanczos resize) or realesrgan (Real-ESRGAN x2/x4plus).")] = "none",
    bg_tile: Annotated[int, typer.Option("--bg-tile", min=0, help="Real-ESRGAN tile size in pixels (0 = whole image at once).")] = 400,
    aligned: Annotated[bool, typer.Option("--aligned", help="Inputs are aligned 512×512 face crops: skip detection.")] = False,
    only_center_face: Annotated[bool, typer.Option("--only-center-face", help="Restore only the face nearest the image centre.")] = False,
    min_face: Annotated[int, typer.Option("--min-face", min=0, help="Ignore faces whose box is smaller than PX pixels.")] = 0,
    paste: Annotated[str, typer.Option("--paste", help="Paste-back: residual (adds restored − crop to the photo, keeps detail finer than the 512 crop) or direct (replaces pixels, like facexlib).")] = "residual",
    color_match: Annotated[bool, typer.Option("--color-match", help="Match each restored face's colour statistics to the original face.")] = False,
    detector: Annotated[str, typer.Option("--detector", help="Face detector: auto, dlib, retinaface_resnet50, retinaface_mobile0.25.")] = "auto",
    weights: Annotated[Path | None, typer.Option("--weights", help="Custom checkpoint for the base model (.pth tensors only, or .safetensors).")] = None,
    fidelity: Annotated[float | None, typer.Option("--fidelity", help="Fidelity of the base: CodeFormer w, VQFR fidelity_ratio, in [0, 1].")] = None,
    knob: Annotated[list[str] | None, typer.Option("--knob", help="Base-model knob NAME=VALUE (e.g. steps=50, seed=0); repeatable.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Faces per base-model batch (default by device).")] = None,
    save_faces: Annotated[bool, typer.Option("--save-faces", help="Also write cropped_faces/ and restored_faces/.")] = False,
    save_cmp: Annotated[bool, typer.Option("--save-cmp", help="Also write cmp/: each crop beside its restored face.")] = False,
    draw_boxes: Annotated[bool, typer.Option("--draw-boxes", help="Draw face boxes and landmarks on the output.")] = False,
    suffix: Annotated[str | None, typer.Option("--suffix", help="Suffix added to output names (NAME_SUFFIX.ext).")] = None,
    ext: Annotated[ExtChoice, typer.Option("--ext", help="Output format; auto keeps the input's.")] = ExtChoice.auto,
    quality: Annotated[int, typer.Option("--quality", min=1, max=100, help="JPEG/WebP quality.")] = 95,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    max_pixels: Annotated[int | None, typer.Option("--max-pixels", min=1, help="Refuse images larger than this many pixels (decompression-bomb guard).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per image on stdout (JSON lines).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs (default: keep them and skip).")] = False,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Look into sub-folders of folder inputs.")] = False,
) -> None:
    """Restore every face in INPUT images and paste them back."""
    from bfrboost.io.images import collect_inputs
    from bfrboost.pipeline import OutputOptions, Restorer

    start = time.perf_counter()
    stdin_mode = inputs == ["-"]
    try:
        if "-" in inputs and not stdin_mode:
            raise UsageError("'-' (stdin) cannot be mixed with other inputs")
        if stdin_mode and as_json:
            raise UsageError("--json prints to stdout, which '-' already uses for the image; drop one of them")
        knobs = _parse_knobs(knob or [])
        paths, problems = ([], []) if stdin_mode else collect_inputs(inputs, recursive=recursive)
        for problem in problems:
            _err(problem)
        if not stdin_mode and not paths:
            _err("no input images found")
            raise typer.Exit(1)
        restorer = Restorer(
            base, refine=refine, refiner=refiner, refiner_strength=refiner_strength, sd_model=sd_model, compile=compile_refiner,
            device=device, detector=detector, upscale=upscale, aligned=aligned,
            only_center_face=only_center_face, min_face=min_face, weights=weights,
            batch_size=batch_size, knobs=knobs, fidelity=fidelity, paste=paste, color_match=color_match, bg_upsampler=bg_upsampler, bg_tile=bg_tile,
        )
    except UsageError as exc:
        _err(str(exc))
        raise typer.Exit(2) from None
    except BfrboostError as exc:
        _err(str(exc))
        raise typer.Exit(1) from None
    for note in restorer.notes:
        _err(f"note: {note}")

    if stdin_mode:
        fmt = "png" if ext is ExtChoice.auto else ext.value
        try:
            data, _ = restorer.restore_bytes(sys.stdin.buffer.read(), fmt=fmt, quality=quality)
        except BfrboostError as exc:
            _err(str(exc))
            raise typer.Exit(1) from None
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return

    options = OutputOptions(
        outdir=outdir, suffix=suffix, ext=ext.value, quality=quality, overwrite=overwrite,
        save_faces=save_faces, save_cmp=save_cmp, draw_boxes=draw_boxes, max_pixels=max_pixels,
    )
    reports: list[FileReport] = []
    console = Console(stderr=True)
    with Progress(console=console, disable=not console.is_terminal, transient=True) as progress:
        task = progress.add_task("restoring", total=len(paths))
        for report in restorer.restore_files(paths, options):
            reports.append(report)
            if report.error:
                _err(f"{report.input}: {report.error}" if report.input not in report.error else report.error)
            elif report.skipped:
                _err(f"skipped {report.input}: {report.skipped}")
            if as_json:
                sys.stdout.write(json.dumps(report.to_json()) + "\n")
                sys.stdout.flush()
            faces = sum(len(r.faces) for r in reports)
            progress.update(task, advance=1, description=f"restoring ({faces} faces)")
    sys.stderr.write(_summary(reports, problems, time.perf_counter() - start) + "\n")
    if problems or any(r.error for r in reports):
        raise typer.Exit(1)


# ---- weights (weights owner) ------------------------------------------------------------------
weights_app = typer.Typer(no_args_is_help=True, help="List, download, verify and import model weights.")
app.add_typer(weights_app, name="weights")

if TYPE_CHECKING:
    from bfrboost.weights import WeightFile

_WEIGHTS_NAME_HELP = "Card name (e.g. gfpgan), file name (e.g. GFPGANv1.4.pth) or 'all'."


def _weights_files(name: str) -> list[WeightFile]:
    """Files meant by NAME; an unknown name is a usage error (exit 2) with the known names."""
    from bfrboost import weights

    try:
        return weights.resolve(name)
    except BfrboostError as exc:  # UsageError: unknown name; WeightsError: a broken model card
        _err(str(exc))
        raise typer.Exit(2 if isinstance(exc, UsageError) else 1) from None


def _hash_source(entry: WeightFile) -> str:
    if entry.sha256 is None:
        return "unknown: pinned on first download"
    return "pinned on first download" if entry.pinned else "card"


@weights_app.command("list")
def weights_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array instead of a table.")] = False,
) -> None:
    """Every file of every model card: size, cached?, verified?, licence, where its hash comes from."""
    from rich.table import Table

    from bfrboost import weights

    try:
        entries = list(weights.manifest().values())
        rows = [
            {
                "card": e.card, "file": e.file, "size": e.size, "cached": e.path.exists(),
                "verified": weights.status(e), "license": e.license, "commercial_use": e.commercial_use,
                "sha256": e.sha256, "hash_source": _hash_source(e), "path": str(e.path), "url": e.url,
            }
            for e in entries
        ]
    except BfrboostError as exc:
        _err(str(exc))
        raise typer.Exit(1) from None
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
        return
    table = Table("card", "file", "size", "cached", "verified", "licence", "hash", title=f"weights cache: {weights.home()}")
    for row in rows:
        size = f"{row['size'] / 1e6:.1f} MB" if row["size"] else "?"
        licence = row["license"] + ("" if row["commercial_use"] else " (non-commercial)")
        table.add_row(row["card"], row["file"], size, "yes" if row["cached"] else "no", row["verified"], licence, row["hash_source"])
    Console(width=None if sys.stdout.isatty() else 200).print(table)


@weights_app.command("download")
def weights_download(
    names: Annotated[list[str], typer.Argument(help=_WEIGHTS_NAME_HELP, show_default=False)],
    offline: Annotated[bool, typer.Option("--offline", help="Only check the cache; never open a connection (also BFRBOOST_OFFLINE=1).")] = False,
) -> None:
    """Download (or, offline, check) weights; prints each verified path."""
    from bfrboost import weights

    entries = [e for name in names for e in _weights_files(name)]
    _print_each(entries, lambda entry: weights.ensure(entry.file, offline=True if offline else None))


def _print_each(items: list[Any], action: Callable[[Any], Path]) -> None:
    """Run ``action`` on every item, print each resulting path, one line per failure, exit 1 if any."""
    failed = False
    for item in items:
        try:
            sys.stdout.write(f"{action(item)}\n")
        except BfrboostError as exc:
            _err(str(exc))
            failed = True
    if failed:
        raise typer.Exit(1)


@weights_app.command("verify")
def weights_verify(
    name: Annotated[str | None, typer.Argument(help=_WEIGHTS_NAME_HELP + " Default: every cached file.", show_default=False)] = None,
) -> None:
    """Check size and SHA-256 of cached files; exit 1 with one line per problem."""
    from bfrboost import weights

    entries = _weights_files(name) if name is not None else None
    try:
        problems = weights.verify(name)
        checked = len(entries) if entries is not None else sum(e.path.exists() for e in weights.manifest().values())
    except BfrboostError as exc:
        problems = [str(exc)]
    for problem in problems:
        _err(problem)
    if problems:
        raise typer.Exit(1)
    sys.stdout.write(f"{checked} file(s) match their model cards\n")


@weights_app.command("path")
def weights_path(name: Annotated[str, typer.Argument(help=_WEIGHTS_NAME_HELP, show_default=False)]) -> None:
    """Print where each file of NAME lives in the cache (whether or not it is there yet)."""
    for entry in _weights_files(name):
        sys.stdout.write(f"{entry.path}\n")


@weights_app.command("import")
def weights_import(
    files: Annotated[list[Path], typer.Argument(help="Checkpoints downloaded by hand; matched to a card by name, size and SHA-256.", show_default=False)],
) -> None:
    """Copy manually downloaded files into the cache after checking them."""
    from bfrboost import weights

    _print_each(files, weights.import_file)

# ---- refiner (refiner owner) ------------------------------------------------------------------
refiner_app = typer.Typer(no_args_is_help=True, help="InfoBFR refiner: statistics, info, tiny test refiners.")
app.add_typer(refiner_app, name="refiner")


def _refiner_fail(exc: BfrboostError) -> typer.Exit:
    """One line on stderr; exit 2 for usage errors, 1 otherwise."""
    _err(str(exc))
    return typer.Exit(2 if isinstance(exc, UsageError) else 1)


@refiner_app.command("stats")
def refiner_stats(
    faces: Annotated[Path, typer.Option("--faces", help="Folder of high-quality aligned 512 faces (searched recursively, sorted).")],
    refiner: Annotated[Path, typer.Option("--refiner", help="Refiner folder whose statistics are replaced.")],
    count: Annotated[int, typer.Option("-n", "--count", min=1, help="Use at most this many faces (the paper: 3000 FFHQ faces).")] = 3000,
    per_element: Annotated[bool, typer.Option("--per-element", help="One μ, σ per element of r instead of per channel.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Faces per VAE batch.")] = 4,
    size: Annotated[int, typer.Option("--size", min=8, help="Faces are resized to SIZE×SIZE (the refiner's input size).")] = 512,
    sd_model: Annotated[Path | None, typer.Option("--sd-model", help="Local SD 2.1 diffusers folder (vae/) instead of the weights cache.")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto.")] = "auto",
) -> None:
    """Compute μ_R, σ_R of the VAE manifold over clean faces and store them in the refiner."""
    import torch

    from bfrboost.refiner import (
        compute_manifold_stats,
        list_faces,
        refiner_vae,
        save_stats,
    )

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        paths = list_faces(faces, count)
        vae = refiner_vae(refiner, sd_model)
        with Progress(console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task("manifold statistics", total=len(paths))
            stats = compute_manifold_stats(vae, paths, per_element, batch_size, size, device, lambda n: progress.advance(task, n))
        save_stats(refiner, stats)
    except BfrboostError as exc:
        raise _refiner_fail(exc) from None
    mode = "element" if per_element else "channel"
    sys.stdout.write(f"{refiner}: per-{mode} statistics of r over {stats.faces} faces stored "
                     f"(mean |μ| {stats.mean.abs().mean():.4f}, mean σ {stats.std.mean():.4f})\n")


@refiner_app.command("info")
def refiner_info(
    rank: Annotated[int, typer.Option("--rank", min=1, help="LoRA rank (the paper studies 2, 4, 8).")] = 4,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    flops: Annotated[bool, typer.Option("--flops/--no-flops", help="Also count FLOPs per face and stage.")] = True,
) -> None:
    """Trainable parameters and FLOPs of the real SD 2.1-base refiner (built without weights)."""
    from bfrboost.refiner import describe_sd21

    info = describe_sd21(rank, flops=flops)
    if as_json:
        sys.stdout.write(json.dumps(info, indent=1) + "\n")
        return
    p = info["parameters"]
    lines = [
        f"InfoBFR on SD 2.1-base, LoRA rank {rank} (alpha = rank) on every UNet block Linear/Conv2d",
        f"trainable  {p['trainable'] / 1e6:8.3f} M params  {info['trainable_mb_fp32']:7.2f} MB fp32",
        f"  LoRA     {p['lora'] / 1e6:8.3f} M params  {info['lora_mb_fp32']:7.2f} MB fp32",
        f"  Transformer + λ head {(p['transformer'] + p['lambda_head']) / 1e6:.3f} M params",
        f"frozen     UNet {p['frozen_unet'] / 1e6:.1f} M, VAE {p['frozen_vae'] / 1e6:.1f} M params",
    ]
    if flops:
        lines.append(f"GFLOPs per {info['face_size']}² face (LoRA fused):")
        lines += [f"  {stage:<12} {value / 1e9:10.1f}" for stage, value in info["flops_per_face"].items()]
    sys.stdout.write("\n".join(lines) + "\n")


@refiner_app.command("init")
def refiner_init(
    tiny: Annotated[Path, typer.Option("--tiny", help="Write a tiny random self-contained refiner (own vae/ and unet/) here, for tests and demos.")],
    seed: Annotated[int, typer.Option("--seed", help="Random seed of the tiny weights.")] = 0,
) -> None:
    """Create a tiny random refiner for tests and demos (training real ones is not in bfrboost yet)."""
    from bfrboost.refiner import init_tiny

    if (tiny / "config.json").exists():
        raise _refiner_fail(UsageError(f"{tiny}: already holds a refiner; choose an empty folder"))
    init_tiny(tiny, seed)
    sys.stdout.write(f"{tiny}: tiny random refiner written (seed {seed})\n")


def main() -> None:
    # spandrel's architectures still call torch.jit.script at import: not the user's concern
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    app()
