"""`bfrboost colorize | inpaint | old-photo`: guided tasks on whole photos or aligned crops.

Each command is :class:`bfrboost.guidance.GuidedRestorer` with one task; outputs, ``--json``,
progress, errors and exit codes are ``restore``'s (``OUTDIR/restored_imgs/…``). ``colorize`` and
``inpaint`` run CodeFormer's one-pass networks (``--method codeformer``, seconds per face) or
PGDiff's guided sampling (``--method pgdiff``); ``auto`` picks CodeFormer on a CPU, PGDiff on a GPU.
"""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from bfrboost.cli import app
from bfrboost.cli import options as opt
from bfrboost.cli.common import err as _err
from bfrboost.cli.common import fail
from bfrboost.cli.restore import _parse_knobs, write_results
from bfrboost.errors import BfrboostError, UsageError


class ImageExt(str, Enum):
    """Output formats of the guided commands: images only (they take no videos)."""

    auto = "auto"
    png = "png"
    jpg = "jpg"
    webp = "webp"


class Method(str, Enum):
    auto = "auto"
    codeformer = "codeformer"
    pgdiff = "pgdiff"


Inputs = Annotated[list[str], typer.Argument(help="Image files, folders or globs.", show_default=False)]
Outdir = Annotated[
    Path,
    typer.Option("-o", "--outdir", help="Output folder (restored_imgs/, and with --save-faces cropped_faces/, restored_faces/)."),
]
MethodOpt = Annotated[
    Method,
    typer.Option(
        "--method",
        help="codeformer (one pass, seconds per face), pgdiff (guided diffusion) or auto: codeformer on a CPU, pgdiff on a GPU.",
    ),
]
Steps = Annotated[
    int, typer.Option("--steps", min=1, max=1000, help="pgdiff: denoising steps, respaced from 1000 (PGDiff recommends >= 100).")
]
GuidanceScale = Annotated[
    float | None,
    typer.Option(
        "--guidance-scale",
        min=0.0,
        help="pgdiff: guidance scale s (default: the task's, see docs/guided.md).",
        show_default=False,
    ),
]
# `--scale` was this option's name in a release: kept, hidden, so old scripts keep working.
ScaleAlias = Annotated[float | None, typer.Option("--scale", min=0.0, hidden=True)]
Seed = Annotated[
    int, typer.Option("--seed", min=0, help="pgdiff: seed of the diffusion noise (every face starts from the same noise).")
]
Repeats = Annotated[
    int, typer.Option("--repeats", min=1, help="pgdiff: gradient steps N per timestep for t in (--repeat-from·T, T].")
]
RepeatFrom = Annotated[
    float,
    typer.Option(
        "--repeat-from", min=0.0, max=1.0, help="pgdiff: start of the multiple-gradient-step window, as a fraction of T."
    ),
]
Prior = Annotated[
    Path | None,
    typer.Option(
        "--prior", help="pgdiff: diffusion prior checkpoint in the official IDDPM FFHQ-512 format (default: DifFace's)."
    ),
]
Tiny = Annotated[
    bool,
    typer.Option(
        "--tiny",
        help="Demo: small random networks, no download (pgdiff: a 64 px prior; codeformer: random weights). "
        "Results are noise, not restorations.",
    ),
]
ColorRef = Annotated[
    list[Path] | None,
    typer.Option(
        "--color-ref",
        help="pgdiff: photo(s) whose colour statistics the result aims for (default: PGDiff's CelebA-HQ average). Repeatable.",
    ),
]
OnePassWeights = Annotated[
    Path | None, typer.Option("--weights", help="codeformer: checkpoint of the task network (default: the cached official one).")
]
Upscale = Annotated[float, typer.Option("-s", "--upscale", help="Upscale factor of the whole image.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
Batch = Annotated[
    int | None, typer.Option("--batch-size", min=1, help="pgdiff: faces sampled together (default 1 on CPU, 4 on CUDA).")
]
SaveFaces = Annotated[bool, typer.Option("--save-faces", help="Also write cropped_faces/ and restored_faces/.")]
SaveCmp = Annotated[bool, typer.Option("--save-cmp", help="Also write cmp/: each crop beside its result.")]
Suffix = Annotated[str | None, typer.Option("--suffix", help="Suffix added to output names (NAME_SUFFIX.ext).")]
Ext = Annotated[ImageExt, typer.Option("--ext", help="Output image format; auto keeps the input's.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs (default: keep them and skip).")]
Recursive = Annotated[bool, typer.Option("--recursive", "-r", help="Look into sub-folders of folder inputs.")]

#: PGDiff's options and their defaults: given with --method codeformer they are a usage error.
PGDIFF_DEFAULTS = {
    "--steps": 1000,
    "--guidance-scale": None,
    "--seed": 1234,
    "--repeats": 1,
    "--repeat-from": 0.7,
    "--prior": None,
    "--batch-size": None,
}


def _scale(guidance_scale: float | None, scale: float | None) -> float | None:
    if guidance_scale is not None and scale is not None and guidance_scale != scale:
        raise fail(UsageError("--scale is the old name of --guidance-scale; give one of them"))
    return guidance_scale if guidance_scale is not None else scale


def resolve_method(method: Method, device: str) -> str:
    """``auto``: CodeFormer's one pass on a CPU (PGDiff takes hours per face there), PGDiff on a GPU."""
    if method != Method.auto:
        return method.value
    from bfrboost.pipeline import resolve_device

    return "codeformer" if resolve_device(device).type == "cpu" else "pgdiff"


def _pgdiff_only(method: str, given: dict[str, Any]) -> None:
    """Options of the guided sampler given with the one-pass method: one usage line naming them."""
    used = [name for name, value in given.items() if value != PGDIFF_DEFAULTS.get(name) and value not in (None, (), [])]
    if method == "codeformer" and used:
        raise fail(
            UsageError(
                f"{', '.join(used)} set PGDiff's guided sampling: use them with --method pgdiff (the method here is codeformer)"
            )
        )


def _run(task: str, inputs: list[str], output: dict[str, Any], options: dict[str, Any], **guided: Any) -> None:
    """Build the GuidedRestorer for ``task`` and write every input like `restore` does."""
    from bfrboost.guidance import GuidanceOptions, GuidedRestorer
    from bfrboost.runners.files import OutputOptions

    start = time.perf_counter()
    recursive = output.pop("recursive")
    as_json = output.pop("as_json")
    ext = output.pop("ext")
    write_results(
        lambda: GuidedRestorer(task, options=GuidanceOptions(**options), **guided),
        inputs,
        OutputOptions(ext=ext.value, **output),
        recursive=recursive,
        as_json=as_json,
        start=start,
    )


def _photo(
    upscale: float,
    aligned: bool,
    only_center_face: bool,
    min_face: int,
    detector: str,
    paste: str,
    device: str,
    batch_size: int | None,
    prior: Path | None,
    tiny: bool,
) -> dict[str, Any]:
    return dict(
        upscale=upscale,
        aligned=aligned,
        only_center_face=only_center_face,
        min_face=min_face,
        detector=detector,
        paste=paste,
        device=device,
        guided_batch=batch_size,
        prior=prior,
        tiny=tiny,
    )


def _files(
    outdir: Path,
    suffix: str | None,
    ext: ImageExt,
    quality: int,
    overwrite: bool,
    save_faces: bool,
    save_cmp: bool,
    max_pixels: int | None,
    as_json: bool,
    recursive: bool,
) -> dict[str, Any]:
    return dict(
        outdir=outdir,
        suffix=suffix,
        ext=ext,
        quality=quality,
        overwrite=overwrite,
        save_faces=save_faces,
        save_cmp=save_cmp,
        max_pixels=max_pixels,
        as_json=as_json,
        recursive=recursive,
    )


@app.command()
def colorize(
    inputs: Inputs,
    outdir: Outdir = Path("results"),
    method: MethodOpt = Method.auto,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Colourise inputs that are already in colour (refused by default: their colours would be replaced)."
        ),
    ] = False,
    weights: OnePassWeights = None,
    lightness_weight: Annotated[
        float, typer.Option("--lightness-weight", min=0.0, help="pgdiff: weight of the lightness property (gray of the input).")
    ] = 1.0,
    color_weight: Annotated[
        float, typer.Option("--color-weight", min=0.0, help="pgdiff: weight of the colour-statistics property.")
    ] = 0.05,
    color_ref: ColorRef = None,
    steps: Steps = 1000,
    guidance_scale: GuidanceScale = None,
    scale: ScaleAlias = None,
    seed: Seed = 1234,
    repeats: Repeats = 1,
    repeat_from: RepeatFrom = 0.7,
    prior: Prior = None,
    tiny: Tiny = False,
    upscale: Upscale = 2.0,
    aligned: opt.Aligned = False,
    only_center_face: opt.OnlyCenterFace = False,
    min_face: opt.MinFace = 0,
    detector: opt.Detector = "auto",
    paste: opt.Paste = "residual",
    device: Device = "auto",
    batch_size: Batch = None,
    save_faces: SaveFaces = False,
    save_cmp: SaveCmp = False,
    suffix: Suffix = None,
    ext: Ext = ImageExt.auto,
    quality: opt.Quality = 95,
    max_pixels: opt.MaxPixels = None,
    as_json: opt.AsJson = False,
    overwrite: Overwrite = False,
    recursive: Recursive = False,
) -> None:
    """Colourise gray or faded faces (the output keeps the input's lightness and is not forced back to gray)."""
    chosen = resolve_method(method, device)
    s = _scale(guidance_scale, scale)
    _pgdiff_only(
        chosen,
        {
            "--steps": steps,
            "--guidance-scale": s,
            "--seed": seed,
            "--repeats": repeats,
            "--repeat-from": repeat_from,
            "--prior": prior,
            "--batch-size": batch_size,
            "--color-ref": color_ref,
            "--lightness-weight": None if lightness_weight == 1.0 else lightness_weight,
            "--color-weight": None if color_weight == 0.05 else color_weight,
        },
    )
    _run(
        "colorize",
        inputs,
        _files(outdir, suffix, ext, quality, overwrite, save_faces, save_cmp, max_pixels, as_json, recursive),
        dict(
            scale=s,
            steps=steps,
            seed=seed,
            repeats=repeats,
            repeat_from=repeat_from,
            lightness_weight=lightness_weight,
            color_weight=color_weight,
        ),
        method=chosen,
        force=force,
        weights=weights,
        color_refs=color_ref or (),
        **_photo(upscale, aligned, only_center_face, min_face, detector, paste, device, batch_size, prior, tiny),
    )


@app.command()
def inpaint(
    inputs: Inputs,
    outdir: Outdir = Path("results"),
    mask: Annotated[
        Path | None,
        typer.Option(
            "--mask",
            help="Mask image (any non-black pixel = fill) for every input, or a folder of masks named like the inputs; "
            "photo-sized (photo coordinates) or 512×512 (crop coordinates).",
        ),
    ] = None,
    mask_color: Annotated[
        str | None, typer.Option("--mask-color", help="Fill the regions painted in this colour instead: white or black.")
    ] = None,
    method: MethodOpt = Method.auto,
    keep_known: Annotated[
        bool | None,
        typer.Option(
            "--keep-known/--no-keep-known",
            help="Put the unmasked pixels back unchanged (default: as the method's upstream code, "
            "on for codeformer, off for pgdiff).",
            show_default=False,
        ),
    ] = None,
    weights: OnePassWeights = None,
    unmasked_weight: Annotated[
        float, typer.Option("--unmasked-weight", min=0.0, help="pgdiff: weight of the unmasked-region property.")
    ] = 1.0,
    steps: Steps = 1000,
    guidance_scale: GuidanceScale = None,
    scale: ScaleAlias = None,
    seed: Seed = 1234,
    repeats: Repeats = 1,
    repeat_from: RepeatFrom = 0.7,
    prior: Prior = None,
    tiny: Tiny = False,
    upscale: Upscale = 2.0,
    aligned: opt.Aligned = False,
    only_center_face: opt.OnlyCenterFace = False,
    min_face: opt.MinFace = 0,
    detector: opt.Detector = "auto",
    paste: opt.Paste = "residual",
    device: Device = "auto",
    batch_size: Batch = None,
    save_faces: SaveFaces = False,
    save_cmp: SaveCmp = False,
    suffix: Suffix = None,
    ext: Ext = ImageExt.auto,
    quality: opt.Quality = 95,
    max_pixels: opt.MaxPixels = None,
    as_json: opt.AsJson = False,
    overwrite: Overwrite = False,
    recursive: Recursive = False,
) -> None:
    """Fill masked regions of faces (drawn masks, or regions painted white)."""
    if mask is None and mask_color is None:
        _err("inpaint needs --mask FILE|DIR or --mask-color white")
        raise typer.Exit(2)
    chosen = resolve_method(method, device)
    s = _scale(guidance_scale, scale)
    _pgdiff_only(
        chosen,
        {
            "--steps": steps,
            "--guidance-scale": s,
            "--seed": seed,
            "--repeats": repeats,
            "--repeat-from": repeat_from,
            "--prior": prior,
            "--batch-size": batch_size,
            "--unmasked-weight": None if unmasked_weight == 1.0 else unmasked_weight,
        },
    )
    _run(
        "inpaint",
        inputs,
        _files(outdir, suffix, ext, quality, overwrite, save_faces, save_cmp, max_pixels, as_json, recursive),
        dict(scale=s, steps=steps, seed=seed, repeats=repeats, repeat_from=repeat_from, unmasked_weight=unmasked_weight),
        method=chosen,
        masks=mask,
        mask_color=mask_color,
        keep_known=keep_known,
        weights=weights,
        **_photo(upscale, aligned, only_center_face, min_face, detector, paste, device, batch_size, prior, tiny),
    )


@app.command("old-photo")
def old_photo(
    inputs: Inputs,
    outdir: Outdir = Path("results"),
    scratch_mask: Annotated[
        str | None,
        typer.Option(
            "--scratch-mask",
            help="Scratch mask (any non-black pixel = scratch) file or folder of masks named like the inputs, "
            "or auto (thin-bright-line detector on each face).",
        ),
    ] = None,
    guide: Annotated[
        str,
        typer.Option("--guide", help="Smooth-semantics restorer: rrdb (PGDiff's own) or a base name (gfpgan, codeformer, …)."),
    ] = "rrdb",
    weights: Annotated[Path | None, typer.Option("--weights", help="Checkpoint of the guide.")] = None,
    fidelity: opt.Fidelity = None,
    knob: Annotated[list[str] | None, typer.Option("--knob", help="Guide knob NAME=VALUE; repeatable.")] = None,
    op_lightness_weight: Annotated[
        float, typer.Option("--lightness-weight", min=0.0, help="Weight of the restorer-lightness property.")
    ] = 1.0,
    op_color_weight: Annotated[
        float, typer.Option("--color-weight", min=0.0, help="Weight of the colour-statistics property.")
    ] = 0.5,
    color_ref: ColorRef = None,
    steps: Steps = 1000,
    guidance_scale: GuidanceScale = None,
    scale: ScaleAlias = None,
    seed: Seed = 1234,
    repeats: Repeats = 1,
    repeat_from: RepeatFrom = 0.7,
    prior: Prior = None,
    tiny: Tiny = False,
    upscale: Upscale = 2.0,
    aligned: opt.Aligned = False,
    only_center_face: opt.OnlyCenterFace = False,
    min_face: opt.MinFace = 0,
    detector: opt.Detector = "auto",
    paste: opt.Paste = "residual",
    device: Device = "auto",
    batch_size: Batch = None,
    save_faces: SaveFaces = False,
    save_cmp: SaveCmp = False,
    suffix: Suffix = None,
    ext: Ext = ImageExt.auto,
    quality: opt.Quality = 95,
    max_pixels: opt.MaxPixels = None,
    as_json: opt.AsJson = False,
    overwrite: Overwrite = False,
    recursive: Recursive = False,
) -> None:
    """Restore old photos in one guided pass (PGDiff): restoration, colourisation and inpainting of scratches."""
    try:
        knobs = _parse_knobs(knob or [])
    except BfrboostError as exc:
        raise fail(exc) from None
    _run(
        "old-photo",
        inputs,
        _files(outdir, suffix, ext, quality, overwrite, save_faces, save_cmp, max_pixels, as_json, recursive),
        dict(
            scale=_scale(guidance_scale, scale),
            steps=steps,
            seed=seed,
            repeats=repeats,
            repeat_from=repeat_from,
            op_lightness_weight=op_lightness_weight,
            op_color_weight=op_color_weight,
        ),
        guide=guide,
        weights=weights,
        fidelity=fidelity,
        knobs=knobs,
        scratches=scratch_mask,
        color_refs=color_ref or (),
        **_photo(upscale, aligned, only_center_face, min_face, detector, paste, device, batch_size, prior, tiny),
    )
