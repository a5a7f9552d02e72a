"""`bfrboost colorize | inpaint | old-photo`: PGDiff partial guidance on whole photos or aligned crops.

Each command is the ``pgdiff`` face restorer (:mod:`bfrboost.restorers.guided`) with one task; outputs, ``--json``,
progress, errors and exit codes are ``restore``'s (``OUTDIR/restored_imgs/…``).
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
from bfrboost.cli.restore import write_results
from bfrboost.errors import BfrboostError, UsageError
from bfrboost.options import DetectOptions, GuidanceOptions, OutputOptions, PasteOptions, RestoreOptions

G, O = opt.GUIDANCE, opt.OUTPUT


class ExtChoice(str, Enum):
    """Output formats of the guided commands: images only (they take no videos)."""

    auto = "auto"
    png = "png"
    jpg = "jpg"
    webp = "webp"


Inputs = Annotated[list[str], typer.Argument(help="Image files, folders or globs.", show_default=False)]
Outdir = opt.option(Path, OutputOptions, "outdir", "-o", "--outdir",
                    help="Output folder (restored_imgs/, and with --save-faces cropped_faces/, restored_faces/).")
Steps = opt.Steps
Scale = opt.option(float | None, GuidanceOptions, "scale", "--guidance-scale",
                   help="pgdiff: guidance scale s (default: the task's, see docs/guided.md).", show_default=False)
# `--scale` was this option's name in a release: kept, hidden, so old scripts keep working.
ScaleAlias = Annotated[float | None, typer.Option("--scale", min=0.0, hidden=True)]
Method = opt.option(str, GuidanceOptions, "method")
Tiny = opt.option(bool, GuidanceOptions, "tiny",
                  help="Demo: small random networks, no download (pgdiff: a 64 px prior; codeformer: random weights). "
                       "Results are noise, not restorations.")
OnePassWeights = Annotated[
    Path | None, typer.Option("--weights", help="codeformer: checkpoint of the task network (default: the cached official one).")
]
#: PGDiff's options and their defaults: given with --method codeformer they are a usage error.
PGDIFF_DEFAULTS = {"--steps": 1000, "--guidance-scale": None, "--seed": 1234, "--repeats": 1, "--repeat-from": 0.7,
                   "--prior": None, "--batch-size": None}
Seed = opt.Seed
Repeats = opt.Repeats
RepeatFrom = opt.RepeatFrom
Prior = Annotated[Path | None, typer.Option("--prior", help="Diffusion prior checkpoint in the official IDDPM FFHQ-512 format (default: DifFace's).")]
ColorRef = Annotated[list[Path] | None, typer.Option("--color-ref", help="Photo(s) whose colour statistics the result aims for (default: PGDiff's CelebA-HQ average). Repeatable.")]
Upscale = opt.Upscale
Aligned = opt.Aligned
CenterFace = opt.OnlyCenterFace
MinFace = opt.MinFace
Detector = opt.Detector
Paste = opt.Paste
Device = opt.Device
Batch = opt.option(int | None, GuidanceOptions, "batch_size")
SaveFaces = opt.SaveFaces
SaveCmp = opt.SaveCmp
Suffix = opt.Suffix
Ext = Annotated[ExtChoice, typer.Option("--ext", help="Output format; auto keeps the input's.")]
Quality = opt.Quality
MaxPixels = opt.MaxPixels
Json = opt.AsJson
Overwrite = opt.Overwrite
Recursive = opt.Recursive


def _scale(guidance_scale: float | None, scale: float | None) -> float | None:
    if guidance_scale is not None and scale is not None and guidance_scale != scale:
        raise fail(UsageError("--scale is the old name of --guidance-scale; give one of them"))
    return guidance_scale if guidance_scale is not None else scale


def _pgdiff_only(method: str, device: str, task: str, given: dict[str, Any]) -> None:
    """Options of the guided sampler given with the one-pass method: one usage line naming them."""
    from bfrboost.pipeline import resolve_device
    from bfrboost.restorers.guided import resolve_method

    try:
        chosen = resolve_method(GuidanceOptions(task=task, method=method), resolve_device(device))
    except BfrboostError as exc:
        raise fail(exc) from None
    used = [name for name, value in given.items() if value != PGDIFF_DEFAULTS.get(name) and value not in (None, (), [])]
    if chosen == "codeformer" and used:
        raise fail(UsageError(
            f"{', '.join(used)} set PGDiff's guided sampling: use them with --method pgdiff (the method here is codeformer)"
        ))


def _sampling(scale: float | None, steps: int, seed: int, repeats: int, repeat_from: float) -> dict[str, Any]:
    return dict(scale=scale, steps=steps, seed=seed, repeats=repeats, repeat_from=repeat_from)


def _run(task: str, inputs: list[str], output: dict[str, Any], options: dict[str, Any], **guided: Any) -> None:
    """The ``pgdiff`` restorer for ``task``, every input written like `restore` does; a mask file or
    folder (``--mask``, ``--scratch-mask DIR``) becomes the runner's per-input targets."""
    from bfrboost.guidance.masks import mask_targets
    from bfrboost.pipeline import Restorer

    start = time.perf_counter()
    recursive, as_json, ext = output.pop("recursive"), output.pop("as_json"), output.pop("ext")
    masks, scratches = guided.pop("masks", None), guided.pop("scratches", None)
    if masks is not None and guided.get("mask_color") is not None:
        raise fail(UsageError("give either --mask FILE|DIR or --mask-color, not both"))
    mask_option = "--mask"
    if scratches is not None and str(scratches) != "auto":
        masks, scratches, mask_option = Path(scratches), None, "--scratch-mask"
    photo = guided.pop("photo")
    restore = {k: v for k in ("weights", "fidelity", "knobs") if (v := guided.pop(k, None)) is not None}
    try:
        parts = dict(
            detect=DetectOptions(**{k: photo.pop(k) for k in ("aligned", "only_center_face", "min_face", "detector")}),
            paste=PasteOptions(upscale=photo.pop("upscale"), paste=photo.pop("paste")),
            restore=RestoreOptions(base="pgdiff", device=photo.pop("device"), **restore),
            guidance=GuidanceOptions(task=task, scratches=scratches, **photo, **guided, **options),
        )
        targets = mask_targets(masks, option=mask_option)  # also names each input in its one-line errors
        output_options = OutputOptions(ext=ext.value, **output)
    except BfrboostError as exc:
        raise fail(exc) from None
    write_results(lambda: Restorer.from_options(**parts), inputs, output_options, recursive=recursive, as_json=as_json,
                  start=start, targets=targets)


def _photo(upscale: float, aligned: bool, only_center_face: bool, min_face: int, detector: str, paste: str, device: str, batch_size: int | None, prior: Path | None) -> dict[str, Any]:
    return dict(photo=dict(
        upscale=upscale, aligned=aligned, only_center_face=only_center_face, min_face=min_face,
        detector=detector, paste=paste, device=device, batch_size=batch_size, prior=prior,
    ))


def _files(outdir: Path, suffix: str | None, ext: ExtChoice, quality: int, overwrite: bool, save_faces: bool, save_cmp: bool, max_pixels: int | None, as_json: bool, recursive: bool) -> dict[str, Any]:
    return dict(
        outdir=outdir, suffix=suffix, ext=ext, quality=quality, overwrite=overwrite, save_faces=save_faces,
        save_cmp=save_cmp, max_pixels=max_pixels, as_json=as_json, recursive=recursive,
    )


@app.command()
def colorize(
    inputs: Inputs,
    outdir: Outdir = O.outdir,
    lightness_weight: opt.option(float, GuidanceOptions, "lightness_weight") = G.lightness_weight,
    color_weight: opt.option(float, GuidanceOptions, "color_weight") = G.color_weight,
    color_ref: ColorRef = None,
    method: Method = G.method,
    force: opt.option(bool, GuidanceOptions, "force",
                      help="Colourise inputs that are already in colour (refused by default: their colours would be replaced).",
                      ) = G.force,
    weights: OnePassWeights = None,
    steps: Steps = G.steps, scale: Scale = G.scale, old_scale: ScaleAlias = None, seed: Seed = G.seed,
    repeats: Repeats = G.repeats,
    repeat_from: RepeatFrom = G.repeat_from, prior: Prior = G.prior, upscale: Upscale = opt.PASTE.upscale,
    aligned: Aligned = opt.DETECT.aligned, only_center_face: CenterFace = opt.DETECT.only_center_face,
    min_face: MinFace = opt.DETECT.min_face, detector: Detector = opt.DETECT.detector,
    paste: Paste = opt.PASTE.paste, device: Device = opt.RESTORE.device, batch_size: Batch = G.batch_size,
    save_faces: SaveFaces = O.save_faces, save_cmp: SaveCmp = O.save_cmp, suffix: Suffix = O.suffix, ext: Ext = ExtChoice(O.ext),
    quality: Quality = O.quality, max_pixels: MaxPixels = O.max_pixels, as_json: Json = False, overwrite: Overwrite = O.overwrite,
    recursive: Recursive = False, tiny: Tiny = G.tiny,
) -> None:
    """Colourise gray or faded faces (the output keeps the input's lightness and is not forced back to gray)."""
    scale = _scale(scale, old_scale)
    _pgdiff_only(method, device, "colorize", {
        "--steps": steps, "--guidance-scale": scale, "--seed": seed, "--repeats": repeats, "--repeat-from": repeat_from,
        "--prior": prior, "--batch-size": batch_size, "--color-ref": color_ref,
    })
    _run(
        "colorize", inputs,
        _files(outdir, suffix, ext, quality, overwrite, save_faces, save_cmp, max_pixels, as_json, recursive),
        dict(_sampling(scale, steps, seed, repeats, repeat_from), lightness_weight=lightness_weight, color_weight=color_weight,
             method=method, force=force, tiny=tiny),
        color_refs=tuple(color_ref or ()), weights=weights,
        **_photo(upscale, aligned, only_center_face, min_face, detector, paste, device, batch_size, prior),
    )


@app.command()
def inpaint(
    inputs: Inputs,
    outdir: Outdir = O.outdir,
    mask: Annotated[Path | None, typer.Option(
        "--mask",
        help="Mask image (white = fill) for every input, or a folder of masks named like the inputs; photo-sized (photo "
             "coordinates) or 512×512 (crop coordinates).",
    )] = None,
    mask_color: Annotated[str | None, typer.Option(
        "--mask-color",
        help="Fill the regions painted in this colour instead: white or black.",
    )] = None,
    unmasked_weight: opt.option(float, GuidanceOptions, "unmasked_weight") = G.unmasked_weight,
    method: Method = G.method,
    keep_known: Annotated[bool | None, typer.Option(
        "--keep-known/--no-keep-known", show_default=False,
        help="Put the unmasked pixels back unchanged (default: as the method's upstream code, on for codeformer, "
             "off for pgdiff).",
    )] = G.keep_known,
    weights: OnePassWeights = None,
    steps: Steps = G.steps, scale: Scale = G.scale, old_scale: ScaleAlias = None, seed: Seed = G.seed,
    repeats: Repeats = G.repeats,
    repeat_from: RepeatFrom = G.repeat_from, prior: Prior = G.prior, upscale: Upscale = opt.PASTE.upscale,
    aligned: Aligned = opt.DETECT.aligned, only_center_face: CenterFace = opt.DETECT.only_center_face,
    min_face: MinFace = opt.DETECT.min_face, detector: Detector = opt.DETECT.detector,
    paste: Paste = opt.PASTE.paste, device: Device = opt.RESTORE.device, batch_size: Batch = G.batch_size,
    save_faces: SaveFaces = O.save_faces, save_cmp: SaveCmp = O.save_cmp, suffix: Suffix = O.suffix, ext: Ext = ExtChoice(O.ext),
    quality: Quality = O.quality, max_pixels: MaxPixels = O.max_pixels, as_json: Json = False, overwrite: Overwrite = O.overwrite,
    recursive: Recursive = False, tiny: Tiny = G.tiny,
) -> None:
    """Fill masked regions of faces (drawn masks, or regions painted white)."""
    if mask is None and mask_color is None:
        _err("inpaint needs --mask FILE|DIR or --mask-color white")
        raise typer.Exit(2)
    scale = _scale(scale, old_scale)
    _pgdiff_only(method, device, "inpaint", {
        "--steps": steps, "--guidance-scale": scale, "--seed": seed, "--repeats": repeats, "--repeat-from": repeat_from,
        "--prior": prior, "--batch-size": batch_size,
    })
    _run(
        "inpaint", inputs,
        _files(outdir, suffix, ext, quality, overwrite, save_faces, save_cmp, max_pixels, as_json, recursive),
        dict(_sampling(scale, steps, seed, repeats, repeat_from), unmasked_weight=unmasked_weight, method=method,
             keep_known=keep_known, tiny=tiny),
        masks=mask, mask_color=mask_color, weights=weights,
        **_photo(upscale, aligned, only_center_face, min_face, detector, paste, device, batch_size, prior),
    )


@app.command("old-photo")
def old_photo(
    inputs: Inputs,
    outdir: Outdir = O.outdir,
    scratch_mask: Annotated[str | None, typer.Option(
        "--scratch-mask",
        help="Scratch mask (white = scratch) file or folder of masks named like the inputs, or auto (thin-bright-line "
             "detector on each face).",
    )] = None,
    guide: Annotated[str, typer.Option(
        "--guide",
        help="Smooth-semantics restorer: rrdb (PGDiff's own) or a base name (gfpgan, codeformer, …).",
    )] = G.guide,
    weights: opt.option(Path | None, RestoreOptions, "weights", help="Checkpoint of the guide.") = opt.RESTORE.weights,
    fidelity: opt.option(
        float | None, RestoreOptions, "fidelity",
        help="Fidelity of the guide (CodeFormer w, VQFR fidelity_ratio).",
    ) = opt.RESTORE.fidelity,
    knob: Annotated[list[str] | None, typer.Option("--knob", help="Guide knob NAME=VALUE; repeatable.")] = None,
    op_lightness_weight: opt.option(float, GuidanceOptions, "op_lightness_weight") = G.op_lightness_weight,
    op_color_weight: opt.option(float, GuidanceOptions, "op_color_weight") = G.op_color_weight,
    color_ref: ColorRef = None,
    steps: Steps = G.steps, scale: Scale = G.scale, old_scale: ScaleAlias = None, seed: Seed = G.seed,
    repeats: Repeats = G.repeats,
    repeat_from: RepeatFrom = G.repeat_from, prior: Prior = G.prior, upscale: Upscale = opt.PASTE.upscale,
    aligned: Aligned = opt.DETECT.aligned, only_center_face: CenterFace = opt.DETECT.only_center_face,
    min_face: MinFace = opt.DETECT.min_face, detector: Detector = opt.DETECT.detector,
    paste: Paste = opt.PASTE.paste, device: Device = opt.RESTORE.device, batch_size: Batch = G.batch_size,
    save_faces: SaveFaces = O.save_faces, save_cmp: SaveCmp = O.save_cmp, suffix: Suffix = O.suffix, ext: Ext = ExtChoice(O.ext),
    quality: Quality = O.quality, max_pixels: MaxPixels = O.max_pixels, as_json: Json = False, overwrite: Overwrite = O.overwrite,
    recursive: Recursive = False, tiny: Tiny = G.tiny,
) -> None:
    """Restore old photos in one guided pass: restoration, colourisation and inpainting of scratches."""
    try:
        knobs = opt.parse_knobs(knob or [])
    except BfrboostError as exc:
        raise fail(exc) from None
    _run(
        "old-photo", inputs,
        _files(outdir, suffix, ext, quality, overwrite, save_faces, save_cmp, max_pixels, as_json, recursive),
        dict(_sampling(_scale(scale, old_scale), steps, seed, repeats, repeat_from), op_lightness_weight=op_lightness_weight,
             op_color_weight=op_color_weight, method="pgdiff", tiny=tiny),
        guide=guide, weights=weights, fidelity=fidelity, knobs=knobs, scratches=scratch_mask, color_refs=tuple(color_ref or ()),
        **_photo(upscale, aligned, only_center_face, min_face, detector, paste, device, batch_size, prior),
    )
