"""`bfrboost colorize | inpaint | old-photo`: PGDiff partial guidance on whole photos or aligned crops.

Each command is :class:`bfrboost.guidance.GuidedRestorer` with one task; outputs, ``--json``,
progress, errors and exit codes are ``restore``'s (``OUTDIR/restored_imgs/…``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from bfrboost.cli import app
from bfrboost.cli import options as opt
from bfrboost.cli.common import err as _err
from bfrboost.cli.common import fail
from bfrboost.cli.restore import ExtChoice, _parse_knobs, write_results
from bfrboost.errors import BfrboostError

Inputs = Annotated[list[str], typer.Argument(help="Image files, folders or globs.", show_default=False)]
Outdir = Annotated[Path, typer.Option("-o", "--outdir", help="Output folder (restored_imgs/, and with --save-faces cropped_faces/, restored_faces/).")]
Steps = Annotated[int, typer.Option("--steps", min=1, max=1000, help="Denoising steps, respaced from 1000 (PGDiff recommends >= 100).")]
Scale = Annotated[float | None, typer.Option("--scale", min=0.0, help="Guidance scale s (default: the task's, see the README table).", show_default=False)]
Seed = Annotated[int, typer.Option("--seed", min=0, help="Seed of the diffusion noise (every face starts from the same noise).")]
Repeats = Annotated[int, typer.Option("--repeats", min=1, help="Gradient steps N per timestep for t in (--repeat-from·T, T].")]
RepeatFrom = Annotated[float, typer.Option("--repeat-from", min=0.0, max=1.0, help="Start of the multiple-gradient-step window, as a fraction of T.")]
Prior = Annotated[Path | None, typer.Option("--prior", help="Diffusion prior checkpoint in the official IDDPM FFHQ-512 format (default: DifFace's).")]
ColorRef = Annotated[list[Path] | None, typer.Option("--color-ref", help="Photo(s) whose colour statistics the result aims for (default: PGDiff's CelebA-HQ average). Repeatable.")]
Upscale = Annotated[float, typer.Option("-s", "--upscale", help="Upscale factor of the whole image.")]
Aligned = opt.Aligned
CenterFace = opt.OnlyCenterFace
MinFace = opt.MinFace
Detector = opt.Detector
Paste = Annotated[str, typer.Option("--paste", help="Paste-back: residual or direct.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
Batch = Annotated[int | None, typer.Option("--batch-size", min=1, help="Faces sampled together (default 1 on CPU, 4 on CUDA).")]
SaveFaces = Annotated[bool, typer.Option("--save-faces", help="Also write cropped_faces/ and restored_faces/.")]
SaveCmp = Annotated[bool, typer.Option("--save-cmp", help="Also write cmp/: each crop beside its result.")]
Suffix = Annotated[str | None, typer.Option("--suffix", help="Suffix added to output names (NAME_SUFFIX.ext).")]
Ext = Annotated[ExtChoice, typer.Option("--ext", help="Output format; auto keeps the input's.")]
Quality = opt.Quality
MaxPixels = opt.MaxPixels
Json = opt.AsJson
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs (default: keep them and skip).")]
Recursive = Annotated[bool, typer.Option("--recursive", "-r", help="Look into sub-folders of folder inputs.")]


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
        inputs, OutputOptions(ext=ext.value, **output), recursive=recursive, as_json=as_json, start=start,
    )


def _photo(upscale: float, aligned: bool, only_center_face: bool, min_face: int, detector: str, paste: str, device: str, batch_size: int | None, prior: Path | None) -> dict[str, Any]:
    return dict(
        upscale=upscale, aligned=aligned, only_center_face=only_center_face, min_face=min_face,
        detector=detector, paste=paste, device=device, guided_batch=batch_size, prior=prior,
    )


def _files(outdir: Path, suffix: str | None, ext: ExtChoice, quality: int, overwrite: bool, save_faces: bool, save_cmp: bool, max_pixels: int | None, as_json: bool, recursive: bool) -> dict[str, Any]:
    return dict(
        outdir=outdir, suffix=suffix, ext=ext, quality=quality, overwrite=overwrite, save_faces=save_faces,
        save_cmp=save_cmp, max_pixels=max_pixels, as_json=as_json, recursive=recursive,
    )


@app.command()
def colorize(
    inputs: Inputs,
    outdir: Outdir = Path("results"),
    lightness_weight: Annotated[float, typer.Option("--lightness-weight", min=0.0, help="Weight of the lightness property (gray of the input).")] = 1.0,
    color_weight: Annotated[float, typer.Option("--color-weight", min=0.0, help="Weight of the colour-statistics property.")] = 0.05,
    color_ref: ColorRef = None,
    steps: Steps = 1000, scale: Scale = None, seed: Seed = 1234, repeats: Repeats = 1, repeat_from: RepeatFrom = 0.7, prior: Prior = None,
    upscale: Upscale = 2.0, aligned: Aligned = False, only_center_face: CenterFace = False, min_face: MinFace = 0,
    detector: Detector = "auto", paste: Paste = "residual", device: Device = "auto", batch_size: Batch = None,
    save_faces: SaveFaces = False, save_cmp: SaveCmp = False, suffix: Suffix = None, ext: Ext = ExtChoice.auto,
    quality: Quality = 95, max_pixels: MaxPixels = None, as_json: Json = False, overwrite: Overwrite = False, recursive: Recursive = False,
) -> None:
    """Colourise gray or faded faces (the output keeps the input's lightness and is not forced back to gray)."""
    _run(
        "colorize", inputs,
        _files(outdir, suffix, ext, quality, overwrite, save_faces, save_cmp, max_pixels, as_json, recursive),
        dict(scale=scale, steps=steps, seed=seed, repeats=repeats, repeat_from=repeat_from, lightness_weight=lightness_weight, color_weight=color_weight),
        color_refs=color_ref or (), **_photo(upscale, aligned, only_center_face, min_face, detector, paste, device, batch_size, prior),
    )


@app.command()
def inpaint(
    inputs: Inputs,
    outdir: Outdir = Path("results"),
    mask: Annotated[Path | None, typer.Option("--mask", help="Mask image (white = fill) for every input, or a folder of masks named like the inputs; photo-sized (photo coordinates) or 512×512 (crop coordinates).")] = None,
    mask_color: Annotated[str | None, typer.Option("--mask-color", help="Fill the regions painted in this colour instead: white or black.")] = None,
    unmasked_weight: Annotated[float, typer.Option("--unmasked-weight", min=0.0, help="Weight of the unmasked-region property.")] = 1.0,
    steps: Steps = 1000, scale: Scale = None, seed: Seed = 1234, repeats: Repeats = 1, repeat_from: RepeatFrom = 0.7, prior: Prior = None,
    upscale: Upscale = 2.0, aligned: Aligned = False, only_center_face: CenterFace = False, min_face: MinFace = 0,
    detector: Detector = "auto", paste: Paste = "residual", device: Device = "auto", batch_size: Batch = None,
    save_faces: SaveFaces = False, save_cmp: SaveCmp = False, suffix: Suffix = None, ext: Ext = ExtChoice.auto,
    quality: Quality = 95, max_pixels: MaxPixels = None, as_json: Json = False, overwrite: Overwrite = False, recursive: Recursive = False,
) -> None:
    """Fill masked regions of faces (drawn masks, or regions painted white)."""
    if mask is None and mask_color is None:
        _err("inpaint needs --mask FILE|DIR or --mask-color white")
        raise typer.Exit(2)
    _run(
        "inpaint", inputs,
        _files(outdir, suffix, ext, quality, overwrite, save_faces, save_cmp, max_pixels, as_json, recursive),
        dict(scale=scale, steps=steps, seed=seed, repeats=repeats, repeat_from=repeat_from, unmasked_weight=unmasked_weight),
        masks=mask, mask_color=mask_color, **_photo(upscale, aligned, only_center_face, min_face, detector, paste, device, batch_size, prior),
    )


@app.command("old-photo")
def old_photo(
    inputs: Inputs,
    outdir: Outdir = Path("results"),
    scratch_mask: Annotated[str | None, typer.Option("--scratch-mask", help="Scratch mask (white = scratch) file or folder of masks named like the inputs, or auto (thin-bright-line detector on each face).")] = None,
    guide: Annotated[str, typer.Option("--guide", help="Smooth-semantics restorer: rrdb (PGDiff's own) or a base name (gfpgan, codeformer, …).")] = "rrdb",
    weights: Annotated[Path | None, typer.Option("--weights", help="Checkpoint of the guide.")] = None,
    fidelity: Annotated[float | None, typer.Option("--fidelity", help="Fidelity of the guide (CodeFormer w, VQFR fidelity_ratio).")] = None,
    knob: Annotated[list[str] | None, typer.Option("--knob", help="Guide knob NAME=VALUE; repeatable.")] = None,
    op_lightness_weight: Annotated[float, typer.Option("--lightness-weight", min=0.0, help="Weight of the restorer-lightness property.")] = 1.0,
    op_color_weight: Annotated[float, typer.Option("--color-weight", min=0.0, help="Weight of the colour-statistics property.")] = 0.5,
    color_ref: ColorRef = None,
    steps: Steps = 1000, scale: Scale = None, seed: Seed = 1234, repeats: Repeats = 1, repeat_from: RepeatFrom = 0.7, prior: Prior = None,
    upscale: Upscale = 2.0, aligned: Aligned = False, only_center_face: CenterFace = False, min_face: MinFace = 0,
    detector: Detector = "auto", paste: Paste = "residual", device: Device = "auto", batch_size: Batch = None,
    save_faces: SaveFaces = False, save_cmp: SaveCmp = False, suffix: Suffix = None, ext: Ext = ExtChoice.auto,
    quality: Quality = 95, max_pixels: MaxPixels = None, as_json: Json = False, overwrite: Overwrite = False, recursive: Recursive = False,
) -> None:
    """Restore old photos in one guided pass: restoration, colourisation and inpainting of scratches."""
    try:
        knobs = _parse_knobs(knob or [])
    except BfrboostError as exc:
        raise fail(exc) from None
    _run(
        "old-photo", inputs,
        _files(outdir, suffix, ext, quality, overwrite, save_faces, save_cmp, max_pixels, as_json, recursive),
        dict(scale=scale, steps=steps, seed=seed, repeats=repeats, repeat_from=repeat_from, op_lightness_weight=op_lightness_weight, op_color_weight=op_color_weight),
        guide=guide, weights=weights, fidelity=fidelity, knobs=knobs, scratches=scratch_mask, color_refs=color_ref or (),
        **_photo(upscale, aligned, only_center_face, min_face, detector, paste, device, batch_size, prior),
    )
