"""`bfrboost colorize | inpaint | old-photo`: PGDiff partial guidance on whole photos or aligned crops.

Each command is the ``pgdiff`` face restorer (:mod:`bfrboost.restorers.guided`) with one task; outputs, ``--json``,
progress, errors and exit codes are ``restore``'s (``OUTDIR/restored_imgs/…``).
"""

from __future__ import annotations

import inspect
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


class ExtChoice(str, Enum):
    """Output formats of the guided commands: images only (they take no videos)."""

    auto = "auto"
    png = "png"
    jpg = "jpg"
    webp = "webp"


G, OUT = opt.GUIDANCE, opt.OUTPUT
Inputs = Annotated[list[str], typer.Argument(help="Image files, folders or globs.", show_default=False)]
Outdir = opt.option(
    Path, OutputOptions, "outdir", "-o", "--outdir",
    help="Output folder (restored_imgs/, and with --save-faces cropped_faces/, restored_faces/).",
)
Scale = opt.option(
    float | None, GuidanceOptions, "scale", "--guidance-scale",
    help="pgdiff: guidance scale s (default: the task's, see docs/guided.md).", show_default=False,
)
# `--scale` was this option's name in a release: kept, hidden, so old scripts keep working.
ScaleAlias = opt.option(float | None, GuidanceOptions, "scale", "--scale", hidden=True)
Method = opt.option(str, GuidanceOptions, "method")
Tiny = opt.option(
    bool, GuidanceOptions, "tiny",
    help="Demo: small random networks, no download (pgdiff: a 64 px prior; codeformer: random weights). "
    "Results are noise, not restorations.",
)
OnePassWeights = opt.option(
    Path | None, RestoreOptions, "weights", help="codeformer: checkpoint of the task network (default: the cached official one)."
)
ColorRef = opt.option(
    list[Path] | None, GuidanceOptions, "color_refs",
    help="Photo(s) whose colour statistics the result aims for (default: PGDiff's CelebA-HQ average). Repeatable.",
)
Prior = opt.option(Path | None, GuidanceOptions, "prior")
Batch = opt.option(int | None, GuidanceOptions, "batch_size")
Ext = opt.option(ExtChoice, OutputOptions, "ext", help="Output format; auto keeps the input's.")
#: The guided sampler's flags → their ``GuidanceOptions`` field: given with --method codeformer they are a usage error.
PGDIFF_FLAGS = {"--steps": "steps", "--guidance-scale": "scale", "--seed": "seed", "--repeats": "repeats",
                "--repeat-from": "repeat_from", "--prior": "prior", "--batch-size": "batch_size"}
_OUTPUT = ("suffix", "quality", "overwrite", "save_faces", "save_cmp", "max_pixels")


def _shared(
    steps: opt.Steps = G.steps, scale: Scale = G.scale, old_scale: ScaleAlias = None, seed: opt.Seed = G.seed,
    repeats: opt.Repeats = G.repeats, repeat_from: opt.RepeatFrom = G.repeat_from, prior: Prior = G.prior,
    upscale: opt.Upscale = opt.PASTE.upscale, aligned: opt.Aligned = opt.DETECT.aligned,
    only_center_face: opt.OnlyCenterFace = opt.DETECT.only_center_face, min_face: opt.MinFace = opt.DETECT.min_face,
    detector: opt.Detector = opt.DETECT.detector, paste: opt.Paste = opt.PASTE.paste, device: opt.Device = opt.RESTORE.device,
    batch_size: Batch = G.batch_size, save_faces: opt.SaveFaces = OUT.save_faces, save_cmp: opt.SaveCmp = OUT.save_cmp,
    suffix: opt.Suffix = OUT.suffix, ext: Ext = ExtChoice(OUT.ext), quality: opt.Quality = OUT.quality,
    max_pixels: opt.MaxPixels = OUT.max_pixels, as_json: opt.AsJson = False, overwrite: opt.Overwrite = OUT.overwrite,
    recursive: opt.Recursive = False, tiny: Tiny = G.tiny,
) -> None:
    """The options every guided command takes after its own (sampler, photo, output); never called."""


SHARED = list(inspect.signature(_shared, eval_str=True).parameters.values())


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
    defaults = {flag: getattr(G, name) for flag, name in PGDIFF_FLAGS.items()}
    used = [name for name, value in given.items() if value != defaults.get(name) and value not in (None, (), [])]
    if chosen == "codeformer" and used:
        raise fail(UsageError(
            f"{', '.join(used)} set PGDiff's guided sampling: use them with --method pgdiff (the method here is codeformer)"
        ))


def _run(
    task: str, inputs: list[str], outdir: Path, shared: dict[str, Any], options: dict[str, Any],
    one_pass: dict[str, Any] | None = None, **guided: Any,
) -> None:
    """The ``pgdiff`` restorer for ``task``, every input written like `restore` does; a mask file or
    folder (``--mask``, ``--scratch-mask DIR``) becomes the runner's per-input targets. ``one_pass``:
    the task has a one-pass method, and these flags (beside the sampler's) belong to PGDiff only."""
    from bfrboost.guidance.masks import mask_targets
    from bfrboost.pipeline import Restorer

    start = time.perf_counter()
    rest = dict(shared)
    rest["scale"] = _scale(rest.pop("scale"), rest.pop("old_scale"))
    if one_pass is not None:
        _pgdiff_only(options["method"], rest["device"], task, {f: rest[n] for f, n in PGDIFF_FLAGS.items()} | one_pass)
    recursive, as_json, ext = rest.pop("recursive"), rest.pop("as_json"), rest.pop("ext")
    output = {k: rest.pop(k) for k in _OUTPUT}
    masks, scratches = guided.pop("masks", None), guided.pop("scratches", None)
    if masks is not None and guided.get("mask_color") is not None:
        raise fail(UsageError("give either --mask FILE|DIR or --mask-color, not both"))
    mask_option = "--mask"
    if scratches is not None and str(scratches) != "auto":
        masks, scratches, mask_option = Path(scratches), None, "--scratch-mask"
    restore = {k: v for k in ("weights", "fidelity", "knobs") if (v := guided.pop(k, None)) is not None}
    try:
        parts = dict(
            detect=DetectOptions(**{k: rest.pop(k) for k in ("aligned", "only_center_face", "min_face", "detector")}),
            paste=PasteOptions(upscale=rest.pop("upscale"), paste=rest.pop("paste")),
            restore=RestoreOptions(base="pgdiff", device=rest.pop("device"), **restore),
            guidance=GuidanceOptions(task=task, scratches=scratches, **rest, **guided, **options),
        )
        targets = mask_targets(masks, option=mask_option)  # also names each input in its one-line errors
        output_options = OutputOptions(outdir=outdir, ext=ext.value, **output)
    except BfrboostError as exc:
        raise fail(exc) from None
    write_results(lambda: Restorer.from_options(**parts), inputs, output_options, recursive=recursive, as_json=as_json,
                  start=start, targets=targets)


@app.command()
@opt.with_parameters(SHARED)
def colorize(
    inputs: Inputs,
    outdir: Outdir = OUT.outdir,
    lightness_weight: opt.option(float, GuidanceOptions, "lightness_weight") = G.lightness_weight,
    color_weight: opt.option(float, GuidanceOptions, "color_weight") = G.color_weight,
    color_ref: ColorRef = None,
    method: Method = G.method,
    force: opt.option(bool, GuidanceOptions, "force",
                      help="Colourise inputs that are already in colour (refused by default: their colours would be replaced).",
                      ) = G.force,
    weights: OnePassWeights = None,
    **shared: Any,
) -> None:
    """Colourise gray or faded faces (the output keeps the input's lightness and is not forced back to gray)."""
    options = dict(lightness_weight=lightness_weight, color_weight=color_weight, method=method, force=force)
    _run("colorize", inputs, outdir, shared, options, one_pass={"--color-ref": color_ref}, color_refs=tuple(color_ref or ()),
         weights=weights)


@app.command()
@opt.with_parameters(SHARED)
def inpaint(
    inputs: Inputs,
    outdir: Outdir = OUT.outdir,
    mask: Annotated[Path | None, typer.Option(
        "--mask",
        help="Mask image (white = fill) for every input, or a folder of masks named like the inputs; photo-sized (photo "
             "coordinates) or 512×512 (crop coordinates).",
    )] = None,
    mask_color: opt.option(str | None, GuidanceOptions, "mask_color") = G.mask_color,
    unmasked_weight: opt.option(float, GuidanceOptions, "unmasked_weight") = G.unmasked_weight,
    method: Method = G.method,
    keep_known: opt.option(
        bool | None, GuidanceOptions, "keep_known", "--keep-known/--no-keep-known", show_default=False,
        help="Put the unmasked pixels back unchanged (default: as the method's upstream code, on for codeformer, "
        "off for pgdiff).",
    ) = G.keep_known,
    weights: OnePassWeights = None,
    **shared: Any,
) -> None:
    """Fill masked regions of faces (drawn masks, or regions painted white)."""
    if mask is None and mask_color is None:
        _err("inpaint needs --mask FILE|DIR or --mask-color white")
        raise typer.Exit(2)
    options = dict(unmasked_weight=unmasked_weight, method=method, keep_known=keep_known)
    _run("inpaint", inputs, outdir, shared, options, one_pass={}, masks=mask, mask_color=mask_color, weights=weights)


@app.command("old-photo")
@opt.with_parameters(SHARED)
def old_photo(
    inputs: Inputs,
    outdir: Outdir = OUT.outdir,
    scratch_mask: opt.option(
        str | None, GuidanceOptions, "scratches", "--scratch-mask",
        help="Scratch mask (white = scratch) file or folder of masks named like the inputs, or auto (thin-bright-line "
             "detector on each face).",
    ) = G.scratches,
    guide: opt.option(str, GuidanceOptions, "guide") = G.guide,
    weights: opt.option(Path | None, RestoreOptions, "weights", help="Checkpoint of the guide.") = opt.RESTORE.weights,
    fidelity: opt.option(
        float | None, RestoreOptions, "fidelity", help="Fidelity of the guide (CodeFormer w, VQFR fidelity_ratio).",
    ) = opt.RESTORE.fidelity,
    knob: opt.option(list[str] | None, RestoreOptions, "knobs", help="Guide knob NAME=VALUE; repeatable.") = None,
    op_lightness_weight: opt.option(float, GuidanceOptions, "op_lightness_weight") = G.op_lightness_weight,
    op_color_weight: opt.option(float, GuidanceOptions, "op_color_weight") = G.op_color_weight,
    color_ref: ColorRef = None,
    **shared: Any,
) -> None:
    """Restore old photos in one guided pass: restoration, colourisation and inpainting of scratches."""
    try:
        knobs = opt.parse_knobs(knob or [])
    except BfrboostError as exc:
        raise fail(exc) from None
    options = dict(op_lightness_weight=op_lightness_weight, op_color_weight=op_color_weight, method="pgdiff")
    _run("old-photo", inputs, outdir, shared, options, guide=guide, weights=weights, fidelity=fidelity, knobs=knobs,
         scratches=scratch_mask, color_refs=tuple(color_ref or ()))
