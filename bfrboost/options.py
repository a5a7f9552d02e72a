"""Every setting of bfrboost, once: frozen dataclasses holding the one copy of each default and bound.

The CLI's Typer options (``bfrboost.cli.options``), the web app's controls and the Ray job are made
from these classes or map onto them, so a default or a bound is changed here and nowhere else.
Each field's metadata carries its flag, help text and bounds; ``__post_init__`` validates once, with
a one-line :class:`~bfrboost.errors.UsageError` that names the flag.

A leaf module: it imports nothing heavy, so ``bfrboost --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bfrboost.errors import UsageError

X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo")
VIDEO_FORMATS = {"mp4": "mp4", "mov": "mov", "mkv": "matroska", "webm": "webm", "avi": "avi"}
"""Video extensions we can write → FFmpeg muxer (named explicitly: temp files end in ``.partial``)."""
PASTE_MODES = ("residual", "direct")
RUNTIMES = ("torch", "onnx")
BG_UPSAMPLERS = ("none", "realesrgan")
#: Default identity weight per loss, on L2-normalised ArcFace embeddings. Cosine ignores the
#: embedding's norm, so upstream's ``-cos × 1e4`` carries over unchanged; on unit vectors
#: ‖a − b‖² = 2 − 2·cos, whose gradient is twice −cos's, so the same pull needs 1e4 / 2 = 5e3 with
#: ``mse`` (upstream's raw-embedding ``mse × 25`` equals it when the raw norm is √(5e3/25) ≈ 14).
IDENTITY_WEIGHT = {"mse": 5e3, "cos": 1e4}
REF_LOSSES = tuple(IDENTITY_WEIGHT)
#: ``pgdiff``: guided sampling from the FFHQ prior; ``codeformer``: CodeFormer's one-pass task networks
#: (colorize, inpaint); ``auto``: codeformer on a CPU where it has a network for the task, else pgdiff.
GUIDED_METHODS = ("auto", "codeformer", "pgdiff")
#: Per-channel mean/std of x̂₀ in [-1, 1] that colourisation aims for: PGDiff's default "style 0",
#: the average over a CelebA-HQ subset.
CELEBA_HQ_COLOR_MEAN = (0.03202754, -0.16308397, -0.26475719)
CELEBA_HQ_COLOR_STD = (0.53549316, 0.47539538, 0.46814889)
GUIDED_TASKS = ("restore", "colorize", "inpaint", "old-photo")
DEFAULT_SCALE = {"restore": 0.1, "colorize": 0.01, "inpaint": 0.01, "old-photo": 0.002}  # guidance scale per task
TRAIN_SIZE = 512  # training face size (``--tiny``: TINY_SIZE)
TINY_SIZE = 32  # face size of the CPU-scale configuration (``--tiny``, ``train tiny-sd``)
PAPER_STATS_FACES = 3000  # faces behind the manifold statistics μ_R, σ_R in the paper


def setting(
    default: Any = None,
    help: str = "",
    *,
    flag: str | None = None,
    min: float | None = None,
    max: float | None = None,
    above: float | None = None,
    choices: Sequence[str] | None = None,
    what: str | None = None,
    hint: str = "",
    factory: Any = None,
) -> Any:
    """A dataclass field with its CLI flag, help and bounds: ``min``/``max`` inclusive, ``above`` exclusive."""
    metadata = {
        "help": help,
        "flag": flag,
        "min": min,
        "max": max,
        "above": above,
        "choices": choices,
        "what": what,
        "hint": hint,
    }
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def default_of(cls: type, name: str) -> Any:
    """The default of field ``name`` of options class ``cls`` (what the CLI and the web app show)."""
    f = cls.__dataclass_fields__[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def validate(options: Any) -> None:
    """Check every field against its bounds and choices; one line naming the flag on the first problem."""
    for f in dataclasses.fields(options):
        problem = _problem(f, getattr(options, f.name))
        if problem:
            raise UsageError(problem)


def _problem(f: dataclasses.Field, value: Any) -> str | None:
    md = f.metadata
    if value is None or not md:
        return None
    name = md["flag"] or f.name.replace("_", " ")
    if md["choices"] is not None and value not in md["choices"]:
        return f"unknown {md['what'] or f.name.replace('_', ' ')} '{value}'; use one of: {', '.join(md['choices'])}"
    lo, hi, above = md["min"], md["max"], md["above"]
    if lo is None and hi is None and above is None:
        return None
    hint = f" {md['hint']}" if md["hint"] else ""
    if isinstance(value, float) and math.isnan(value):
        return f"{name} must be a number, got {value}"
    if above is not None and value <= above:
        return f"{name} must be > {above:g}{hint}, got {value}"
    if lo is not None and hi is not None and not lo <= value <= hi:
        return f"{name} must be in [{lo:g}, {hi:g}]{hint}, got {value}"
    if lo is not None and hi is None and value < lo:
        return f"{name} must be >= {lo:g}{hint}, got {value}"
    return None


@dataclass(frozen=True)
class DetectOptions:
    """Finding faces: which detector, or none for aligned crops."""

    detector: str = setting("auto", "Face detector: auto, dlib, retinaface_resnet50, retinaface_mobile0.25.", flag="--detector")
    aligned: bool = setting(False, "Inputs are aligned 512×512 face crops: skip detection.", flag="--aligned")
    only_center_face: bool = setting(False, "Restore only the face nearest the image centre.", flag="--only-center-face")
    min_face: int = setting(0, "Ignore faces whose box is smaller than PX pixels.", flag="--min-face", min=0)
    face_index: int | None = setting(
        None, "Restore only the N-th face counted left to right (0 = leftmost), after --min-face.", flag="--face-index", min=0
    )
    largest: bool = setting(False, "Restore only the face with the largest box.", flag="--largest")
    person: tuple[str, ...] = setting(
        (), "Restore only the person in this reference photo (its largest face); repeatable, one person per photo.",
        flag="--person",
    )
    person_model: str = setting(
        "dlib", "Identity model for --person: dlib (no download) or arcface (bfrboost weights download arcface).",
        flag="--person-model", choices=("dlib", "arcface"), what="identity model",
    )
    person_threshold: float | None = setting(
        None, "Cosine similarity a face needs to match --person (default: dlib 0.91, arcface 0.40; see docs/faces.md).",
        flag="--person-threshold", min=-1.0, max=1.0,
    )

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class RestoreOptions:
    """Restoring the aligned faces: the base model (its weights and knobs), the InfoBFR refiner, the device."""

    base: str = setting(
        "auto",
        "Base restorer: auto, none, gfpgan, gfpgan-1.3, restoreformer, codeformer, gpen, vqfr, difface, "
        "or pgdiff (guided diffusion, see --guide).",
        flag="--base",
    )
    weights: str | Path | None = setting(
        None, "Custom checkpoint for the base model (.pth tensors only, or .safetensors).", flag="--weights"
    )
    fidelity: float | None = setting(
        None, "Fidelity of the base: CodeFormer w, VQFR fidelity_ratio, in [0, 1].", flag="--fidelity", min=0.0, max=1.0
    )
    knobs: Mapping[str, Any] = setting(
        help="Base-model knob NAME=VALUE (e.g. steps=50, seed=0); repeatable.", flag="--knob", factory=dict
    )
    batch_size: int | None = setting(
        None, "Faces per base-model batch (default: 8 on CUDA, 1 on a CPU, where batches are no faster on either runtime).",
        flag="--batch-size", min=1,
    )
    refine: bool | None = setting(
        None, "Run the InfoBFR refiner after the base model (default: when --refiner is given).", flag="--refine"
    )
    refiner: str | Path | None = setting(None, "Trained InfoBFR refiner folder (save_pretrained layout).", flag="--refiner")
    refiner_strength: float = setting(
        1.0, "Blend: 0 = base output, 1 = fully refined.", flag="--refiner-strength", min=0.0, max=1.0
    )
    sd_model: str | Path | None = setting(
        None, "Local Stable Diffusion 2.1 diffusers folder (vae/, unet/) instead of the weights cache.", flag="--sd-model"
    )
    compile: bool = setting(
        False, "torch.compile the refiner (worth it on CUDA for long batches; slow first batch).", flag="--compile"
    )
    device: str = setting("auto", "auto, cpu, cuda, cuda:N or mps.", flag="--device")
    runtime: str = setting(
        "torch", "Run the base model on torch or onnx (ONNX Runtime; the graph is exported into the weights cache on first use).",
        flag="--runtime", choices=RUNTIMES, what="runtime",
    )
    providers: tuple[str, ...] | None = setting(
        None, "--runtime onnx: execution providers, best first, comma-separated: cpu, cuda, tensorrt, coreml, directml, "
        "openvino (default: by --device; on a CPU openvino first where installed).", flag="--providers",
    )
    threads: int | None = setting(
        None, "CPU threads of the base model (ONNX Runtime intra-op; the CLI also sets torch's; default: one per core).",
        flag="--threads", min=1,
    )

    def __post_init__(self) -> None:
        validate(self)
        if self.refine and self.refiner is None:
            raise UsageError(
                "--refine needs a refiner folder: pass --refiner DIR "
                "(make a tiny test one with `bfrboost refiner init --tiny DIR`)"
            )


@dataclass(frozen=True)
class PasteOptions:
    """Putting faces back: the output scale, the background upsampler and how faces are blended in."""

    upscale: float = setting(
        2.0,
        "Upscale factor of the whole image or video (CodeFormer's rescaling factor: 1–4).",
        flag="--upscale",
        min=1.0,
        max=4.0,
    )
    paste: str = setting(
        "residual",
        "Paste-back: residual (adds restored − crop to the photo, keeps detail finer than the 512 crop) "
        "or direct (replaces pixels, like facexlib).",
        flag="--paste",
        choices=PASTE_MODES,
        what="paste mode",
    )
    color_match: bool = setting(False, "Match each restored face's colour statistics to the original face.", flag="--color-match")
    parse: bool = setting(True, "Blend with the face-parsing mask (off: the soft square mask only).")
    bg_upsampler: str = setting(
        "none",
        "Background upsampler: none (Lanczos resize) or realesrgan (Real-ESRGAN x2/x4plus).",
        flag="--bg-upsampler",
        choices=BG_UPSAMPLERS,
        what="background upsampler",
    )
    bg_tile: int = setting(400, "Real-ESRGAN tile size in pixels (0 = whole image at once).", flag="--bg-tile", min=0)
    face_upsample: bool = setting(
        False,
        "With -s > 1, also upsample the restored faces with the background upsampler (Real-ESRGAN) "
        "before pasting, as CodeFormer does.",
        flag="--face-upsample",
    )
    blend: float = setting(
        1.0, "Mix of restored and original face: 1 = restored, 0 = original.", flag="--blend", min=0.0, max=1.0
    )

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class OutputOptions:
    """Where and how image results are written (GFPGAN's layout: ``OUTDIR/restored_imgs/`` …)."""

    outdir: Path = setting(
        Path("results"),
        "Output folder (restored_imgs/, restored_videos/, cropped_faces/, restored_faces/, cmp/).",
        flag="--outdir",
    )
    suffix: str | None = setting(None, "Suffix added to output names (NAME_SUFFIX.ext).", flag="--suffix")
    ext: str = setting("auto", "Output format: png/jpg/webp (auto keeps the input's).", flag="--ext")
    quality: int = setting(95, "JPEG/WebP quality.", flag="--quality", min=1, max=100)
    overwrite: bool = setting(False, "Replace existing outputs (default: keep them and skip).", flag="--overwrite")
    save_faces: bool = setting(False, "Also write cropped_faces/ and restored_faces/.", flag="--save-faces")
    save_cmp: bool = setting(False, "Also write cmp/: each crop beside its restored face.", flag="--save-cmp")
    draw_boxes: bool = setting(False, "Draw face boxes and landmarks on the output.", flag="--draw-boxes")
    max_pixels: int | None = setting(
        None, "Refuse images larger than this many pixels (decompression-bomb guard).", flag="--max-pixels", min=1
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "outdir", Path(self.outdir))
        validate(self)


@dataclass(frozen=True)
class VideoOptions:
    """Where and how clips are written: ``OUTDIR/restored_videos/NAME[_SUFFIX].EXT``.

    ``crf`` / ``preset`` are x264's (mapped to NVENC's ``cq`` / ``p1``–``p7`` and VP9's ``crf`` /
    ``cpu-used``). ``start`` / ``duration`` (seconds) restore a part; timestamps then start at
    ``start`` = 0. ``smooth``: One-Euro landmark smoothing per tracked face. ``hardware``: try
    NVDEC/NVENC (``None`` = when CUDA is available); any failure to open them falls back to the CPU.
    ``detect_every``: run the detector on every N-th frame and follow the faces by optical flow in
    between (:class:`~bfrboost.faces.keyframes.KeyframeDetector`); 1 = every frame.
    """

    outdir: Path = setting(Path("results"), "Output folder (restored_videos/).", flag="--outdir")
    suffix: str | None = setting(None, "Suffix added to output names (NAME_SUFFIX.ext).", flag="--suffix")
    ext: str = setting("mp4", "Video format.", choices=tuple(VIDEO_FORMATS), what="video format")
    overwrite: bool = setting(False, "Replace existing outputs (default: keep them and skip).", flag="--overwrite")
    crf: int = setting(
        18,
        "Video quality (x264 CRF; NVENC cq): lower is better, 18 ≈ visually lossless.",
        flag="--crf",
        min=0,
        max=51,
        hint="(lower = better, 18 ≈ visually lossless)",
    )
    preset: str = setting(
        "medium",
        "Video encoder speed/size trade-off (x264 names; mapped for NVENC and VP9).",
        flag="--preset",
        choices=X264_PRESETS,
        what="preset",
    )
    start: float | None = setting(None, "Video: restore from this time on (seconds).", flag="--start", min=0.0)
    duration: float | None = setting(None, "Video: restore this many seconds.", flag="--duration", above=0.0)
    smooth: bool = setting(
        True, "Video: smooth each tracked face's landmarks over time so the crops don't jitter.", flag="--smooth"
    )
    frames_per_batch: int = setting(
        8, "Video: frames whose faces go through the base model together.", flag="--frames-per-batch", min=1
    )
    hardware: bool | None = setting(None, "Try NVDEC/NVENC (default: when CUDA is available).")
    detect_every: int = setting(
        12,
        "Video: run the face detector on every N-th frame and follow the faces by optical flow between "
        "(sooner on a scene cut or a lost face); 1 = every frame.",
        flag="--detect-every",
        min=1,
        max=60,
        hint="(1 = detect on every frame)",
    )
    max_pixels: int | None = setting(
        None, "Refuse clips whose frames have more pixels (default: the images' 200 MP limit).", min=1
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "outdir", Path(self.outdir))
        object.__setattr__(self, "ext", self.ext.lower().lstrip("."))
        validate(self)


@dataclass(frozen=True)
class GuidanceOptions:
    """PGDiff guidance (the ``pgdiff`` face restorer): the task, its guide and references, and every weight
    and scale of the guided sampler; ``None`` scale = the task's default.

    ``guide``: the smooth-semantics restorer of ``restore``/``old-photo`` (``rrdb``, PGDiff's own, or a
    base name; ``RestoreOptions.weights``/``knobs``/``fidelity`` apply to it). ``prior``: a checkpoint in
    the official IDDPM format or a built network (default: DifFace's). ``reference``: photos of the
    same person (identity guidance, ``restore`` only); ``color_refs``: photos whose colour statistics
    colourisation aims for; ``mask_color``: fill the regions painted in this colour; ``scratches="auto"``:
    detect scratches on each face (old photos).
    """

    task: str = setting("restore", "Guided task.", choices=GUIDED_TASKS, what="guided task")
    method: str = setting(
        "auto",
        "pgdiff (guided diffusion), codeformer (one pass, seconds per face; colorize/inpaint) or auto: codeformer on a CPU, "
        "pgdiff on a GPU or with --prior.",
        flag="--method",
        choices=GUIDED_METHODS,
        what="method",
    )
    keep_known: bool | None = setting(
        None, "Put the known pixels back after inpainting (default: on for codeformer, off for pgdiff).", flag="--keep-known"
    )
    force: bool = setting(False, "Colourise photos that are already in colour.", flag="--force")
    tiny: bool = setting(False, "A random 64 px demo prior (and random RRDB/ArcFace/CodeFormer): no download.", flag="--tiny")
    guide: str = setting(
        "rrdb", "Smooth-semantics restorer: rrdb (PGDiff's own) or a base name (gfpgan, codeformer, …).", flag="--guide"
    )
    prior: Any = setting(
        None, "Diffusion prior checkpoint in the official IDDPM FFHQ-512 format (default: DifFace's).", flag="--prior"
    )
    reference: Sequence[Any] = setting(
        (), "Photo(s) of the same person; guides towards their ArcFace identity.", flag="--reference"
    )
    color_refs: Sequence[Any] = setting((), "Photo(s) whose colour statistics the result aims for.", flag="--color-ref")
    mask_color: str | None = setting(
        None,
        "Fill the regions painted in this colour instead: white or black.",
        flag="--mask-color",
        choices=("white", "black"),
        what="mask colour",
    )
    scratches: str | None = setting(None, "auto: detect scratches on each face crop (old photos).")
    arcface: Any = None  # identity network for ``reference`` (default: the cached ArcFace)
    batch_size: int | None = setting(None, "Faces sampled together (default 1 on CPU, 4 on CUDA).", flag="--batch-size", min=1)

    scale: float | None = setting(None, "Guidance scale s (default: the task's).", flag="--scale", min=0.0)
    steps: int = setting(1000, "Denoising steps, respaced from 1000 (PGDiff recommends >= 100).", flag="--steps", min=1, max=1000)
    seed: int = setting(1234, "Seed of the diffusion noise (every face starts from the same noise).", flag="--seed", min=0)
    repeats: int = setting(1, "Gradient steps N per timestep for t in (--repeat-from·T, T].", flag="--repeats", min=1)
    repeat_from: float = setting(
        0.7, "Start of the multiple-gradient-step window, as a fraction of T.", flag="--repeat-from", min=0.0, max=1.0
    )
    ss_weight: float = setting(1.0, "Weight of the smooth-semantics property.", flag="--ss-weight", min=0.0)
    lightness_weight: float = setting(
        1.0, "Weight of the lightness property (gray of the input).", flag="--lightness-weight", min=0.0
    )
    color_weight: float = setting(0.05, "Weight of the colour-statistics property.", flag="--color-weight", min=0.0)
    unmasked_weight: float = setting(1.0, "Weight of the unmasked-region property.", flag="--unmasked-weight", min=0.0)
    ref_weight: float | None = setting(
        None, "Weight of the identity property (default: 5e3 with mse, 1e4 with cos).", flag="--ref-weight", min=0.0
    )
    ref_loss: str = setting(
        "mse", "Identity distance, mse or cos (−cosine).", flag="--ref-loss", choices=REF_LOSSES, what="identity loss"
    )
    op_lightness_weight: float = setting(1.0, "Weight of the restorer-lightness property.", flag="--lightness-weight", min=0.0)
    op_color_weight: float = setting(0.5, "Weight of the colour-statistics property.", flag="--color-weight", min=0.0)
    color_mean: tuple[float, float, float] = CELEBA_HQ_COLOR_MEAN
    color_std: tuple[float, float, float] = CELEBA_HQ_COLOR_STD

    def __post_init__(self) -> None:
        validate(self)

    def scale_for(self, task: str) -> float:
        return DEFAULT_SCALE[task] if self.scale is None else self.scale

    @property
    def identity_weight(self) -> float:
        """``ref_weight``, or the default of ``ref_loss`` (see :data:`IDENTITY_WEIGHT`)."""
        return IDENTITY_WEIGHT[self.ref_loss] if self.ref_weight is None else self.ref_weight


TINY_LR = 1e-2  # --tiny: hundreds of steps, not a million


@dataclass(frozen=True)
class TrainConfig:
    """Every option of ``bfrboost train`` (saved in each checkpoint's state.json)."""

    out: Path = setting(None, "RUN_DIR: cache, checkpoints, logs, curves, val grids and the refiner/ result.", flag="--out")
    data: Path | None = setting(
        None, "Folder of HQ aligned 512 faces (FFHQ-512, or `bfrboost restore --save-faces`).", flag="--data"
    )
    bases: list[str] = setting(
        help="Base model(s) whose outputs are refined, comma-separated (mixed in the cache).",
        flag="--base",
        factory=lambda: ["gfpgan"],
    )
    cache: Path | None = setting(
        None, "A cache from `bfrboost train cache` (default RUN_DIR/cache, built on first use).", flag="--cache"
    )
    steps: int = setting(10000, "Optimizer steps.", flag="--steps", min=1)
    batch_size: int = setting(1, "Faces per step and process (the paper: 1).", flag="--batch-size", min=1)
    accumulate: int = setting(1, "Gradient accumulation micro-batches per step.", flag="--accumulate", min=1)
    lr: float | None = setting(None, "AdamW learning rate (default 5e-5; --tiny: 1e-2).", flag="--lr")
    weight_decay: float = setting(1e-2, "AdamW weight decay (not on biases, norms, λ head).", flag="--weight-decay")
    warmup: int | None = setting(None, "Linear warmup steps (default 100; --tiny: 5).", flag="--warmup")
    schedule: str = setting(
        "constant", "constant or cosine after warmup.", flag="--schedule", choices=("constant", "cosine"), what="--schedule"
    )
    grad_clip: float = setting(1.0, "Gradient norm clip.", flag="--grad-clip")
    ema: float = setting(
        0.0, "EMA decay of the trainable weights, e.g. 0.999 (0 = off); the result uses the EMA weights.", flag="--ema"
    )
    grad_checkpoint: bool = setting(
        False, "Gradient checkpointing in the UNet and VAE decoder (less memory).", flag="--grad-checkpoint"
    )
    checkpoint_every: int = setting(1000, "Steps between checkpoints.", flag="--checkpoint-every", min=1)
    keep_last: int = setting(3, "Checkpoints kept.", flag="--keep-last", min=1)
    val_every: int = setting(1000, "Steps between validations.", flag="--val-every", min=1)
    seed: int = setting(0, "Seed of the split, the data order, flips and noise.", flag="--seed")
    tiny: bool = setting(
        False, "CPU-scale configuration: a tiny SD fitted to the training faces, random loss networks.", flag="--tiny"
    )
    tiny_sd: Path | None = setting(
        None, "--tiny: reuse a tiny SD from `bfrboost train tiny-sd` (else fitted on the training split).", flag="--tiny-sd"
    )
    size: int | None = setting(None, "Training face size (default 512; --tiny: 32); a multiple of 8.", flag="--size", min=1)
    rank: int = setting(4, "LoRA rank (the paper: 4; 2 and 8 studied).", flag="--rank", min=1)
    timestep: int = setting(
        499,
        "The single UNet step t on the 1000-step schedule (higher: more generative, lower: closer to the input).",
        flag="--timestep",
    )
    beta: float | None = setting(
        None, "Weight of L_info in nats per image pixel against the per-pixel image losses (default 0.01; docs/training.md; "
        "`train pilot` sweeps it).", flag="--beta"
    )
    stats_every: int = setting(
        100, "Refresh μ_R, σ_R on the Transformer output h every N steps (0: never).", flag="--stats-every", min=0
    )
    no_transformer: bool = setting(False, "Ablation: no Transformer block (h = r).", flag="--no-transformer")
    no_mib: bool = setting(False, "Ablation: no information bottleneck (z = h, no L_info).", flag="--no-mib")
    no_lora: bool = setting(False, "Ablation: no UNet LoRA (the UNet stays frozen).", flag="--no-lora")
    degrade_size: int | None = setting(
        None,
        "Cache: size faces are degraded at (default: the base's input size; --tiny: the training size).",
        flag="--degrade-size",
    )
    lpips_net: str = setting("alex", "LPIPS network: alex or vgg.", flag="--lpips-net")
    sd_model: Path | None = setting(None, "Local SD 2.1-base diffusers folder instead of the weights cache.", flag="--sd-model")
    stats_from: Path | None = setting(
        None, "Reuse μ_R, σ_R of a refiner folder from `bfrboost refiner stats`.", flag="--stats-from"
    )
    stats_faces: int = setting(
        PAPER_STATS_FACES, "Faces for the manifold statistics when computed here (the paper: 3000).", flag="--stats-faces"
    )
    per_channel_stats: bool = setting(False, "μ_R, σ_R per channel instead of per element.", flag="--per-channel-stats")
    repeats: int = setting(4, "Degradations per face (when the cache is built).", flag="--repeats")
    val_count: int = setting(16, "Faces of the fixed validation split (when the cache is built).", flag="--val-count")
    moments: bool = setting(False, "Cache the VAE moments too (fp16): training skips the VAE encoder.", flag="--moments")
    resume: bool = setting(False, "Continue RUN_DIR from its latest checkpoint, exactly.", flag="--resume")
    allow_changes: list[str] = setting(
        help="Settings --resume may change (e.g. lr,batch_size) although the run then no longer continues exactly.",
        flag="--allow-changes",
        factory=list,
    )
    device: str = setting("auto", "auto (CUDA when present) or cpu.", flag="--device")
    precision: str = setting(
        "auto",
        "auto (bf16 autocast on CUDA, fp16 where bf16 is missing, float32 on the CPU), no, bf16 or fp16.",
        flag="--precision",
        choices=("auto", "no", "bf16", "fp16"),
        what="--precision",
    )

    def __post_init__(self) -> None:
        if self.out is None:
            raise UsageError("missing --out RUN_DIR (where checkpoints, logs and the trained refiner go)")
        for name in ("out", "data", "cache", "sd_model", "stats_from", "tiny_sd"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        # the CPU-scale runs are short
        tiny_defaults = {"size": (TINY_SIZE, TRAIN_SIZE), "lr": (TINY_LR, 5e-5), "warmup": (5, 100)}
        for name, (tiny, full) in tiny_defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, tiny if self.tiny else full)
        validate(self)
        if self.size % 8:
            raise UsageError(f"--size must be a multiple of 8, got {self.size}")
        if not 0 <= self.ema < 1:
            raise UsageError(f"--ema must be a decay in [0, 1), got {self.ema}")

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class RunnerOptions:
    """How files are fed through a restorer: stage overlap on one machine, image batches on a Ray cluster."""

    workers: int = setting(
        0,
        "Overlap the stages: N threads decode and detect, N threads paste and encode, while the device restores (0 or"
        " 1: one stage at a time).",
        flag="--workers",
        min=0,
    )
    images_per_batch: int = setting(4, "Images whose faces go to a device actor together.", flag="--images-per-batch", min=1)
    gpus: int | None = setting(
        None, "Device actors, one GPU each (default: every GPU of the cluster; 0: one CPU actor).", flag="--gpus", min=0
    )

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class DegradeConfig:
    """Ranges of the paper's synthetic degradation (inclusive); every field is a `bfrboost degrade` option.

    Stored in each training cache's ``cache.json`` (so it stays a plain dataclass with these fields only)."""

    blur_sigma: tuple[float, float] = setting((0.1, 10.0), "Blur σ range LOW HIGH.", flag="--blur-sigma")  # pixels
    kernel_size: int = setting(41, "Blur kernel size (odd).", flag="--kernel-size")
    anisotropic_prob: float = setting(  # anisotropic kernel (σx, σy ∈ blur_sigma, random angle) instead of isotropic
        0.5, "Probability of an anisotropic kernel.", flag="--anisotropic-prob"
    )
    scale: tuple[float, float] = setting(  # down-sampling factor r (r < 1 enlarges)
        (0.8, 8.0), "Down-sampling factor range LOW HIGH.", flag="--scale"
    )
    noise: tuple[float, float] = setting((0.0, 20.0), "Gaussian noise σ range LOW HIGH (0..255 scale).", flag="--noise")
    jpeg_quality: tuple[int, int] = setting((60, 100), "JPEG quality range LOW HIGH.", flag="--jpeg-quality")
    skip_prob: float = setting(0.1, "Each operation is skipped with this probability.", flag="--skip-prob")
    shuffle_prob: float = setting(0.0, "Probability of a random operation order.", flag="--shuffle-prob")

    def __post_init__(self) -> None:
        for name in ("blur_sigma", "scale", "noise", "jpeg_quality"):
            low, high = getattr(self, name)
            if low > high:
                raise UsageError(f"degrade: {name} range must be LOW HIGH with LOW ≤ HIGH, got {low} {high}")
            setattr(self, name, (low, high))
        if self.blur_sigma[0] <= 0 or self.scale[0] <= 0 or self.noise[0] < 0:
            raise UsageError("degrade: blur sigma and scale must be > 0 and noise ≥ 0")
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise UsageError(f"degrade: JPEG quality must lie in [1, 100], got {self.jpeg_quality}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise UsageError(f"degrade: kernel size must be odd and positive, got {self.kernel_size}")
        for name in ("anisotropic_prob", "skip_prob", "shuffle_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise UsageError(f"degrade: {name} must lie in [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class DegradeRunOptions:
    """A `bfrboost degrade` run beyond the ranges: its seed and its parameter log."""

    seed: int = setting(0, "Run seed; each file's seed is derived from it and the file name.", flag="--seed")
    log: bool = setting(True, "Write degrade.jsonl (parameters per file) into OUT.", flag="--log")


@dataclass(frozen=True)
class CacheOptions:
    """Building a training cache (`bfrboost train cache`) beyond what the run's :class:`TrainConfig` fixes."""

    size: int = setting(TRAIN_SIZE, "Training face size the outputs are stored at.", flag="--size")
    shard_faces: int = setting(256, "Faces per shard file.", flag="--shard-faces")
    workers: int = setting(0, "Threads that load, degrade and compress faces (0: min(8, cores)).", flag="--workers")
    degrade_size: int = setting(0, "Size faces are degraded at (0: the base's input size).", flag="--degrade-size")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N.", flag="--device")

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class TinySdOptions:
    """Fitting the tiny SD of the CPU-scale configuration (`bfrboost train tiny-sd`)."""

    size: int = setting(TINY_SIZE, "Face size (the --size of the runs that use it).", flag="--size")
    vae_steps: int = setting(800, "VAE optimiser steps.", flag="--vae-steps")  # 28.4 dB at 32 px (300: 25.5 dB)
    unet_steps: int = setting(300, "UNet optimiser steps.", flag="--unet-steps")

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class PilotOptions:
    """A `bfrboost train pilot` sweep: short runs, one per value, on a small cache."""

    betas: str = setting("0.001,0.01,0.1,1,20", "β values to try, comma-separated.", flag="--betas")
    steps: int = setting(300, "Steps per value (K).", flag="--steps")
    batch_size: int = setting(4, "Faces per step.", flag="--batch-size")
    repeats: int = setting(2, "Degradations per face.", flag="--repeats")
    size: int = setting(0, f"Face size ({TRAIN_SIZE}; --tiny: {TINY_SIZE}).", flag="--size")

    def __post_init__(self) -> None:
        validate(self)


ALL_METRICS = "fid,kid,niqe,musiq,lpips,psnr,ssim,ids"


@dataclass(frozen=True)
class EvalOptions:
    """Scoring faces (`bfrboost eval`, `eval stats`, `eval boost`)."""

    metrics: str = setting(ALL_METRICS, f"Comma-separated metrics, or all: {ALL_METRICS}.", flag="--metrics")
    size: int = setting(
        512, "FID/KID: images are brought to SIZE×SIZE first (512 as BFR papers).", flag="--size", min=64
    )
    batch_size: int = setting(8, "Faces per metric batch.", flag="--batch-size", min=1)
    device: str = setting("auto", "auto, cpu, cuda, cuda:N or mps.", flag="--device")
    reference_stats: Path | None = setting(
        None, "FID/KID reference statistics from `bfrboost eval stats`.", flag="--reference-stats"
    )
    max_kid_features: int = setting(
        10000, "Features kept for KID (a seeded subset; FID uses all).", flag="--max-kid-features", min=2
    )
    boost_batch_size: int = setting(4, "Faces per restore batch.", flag="--batch-size", min=1)
    html_faces: int = setting(24, "Faces shown side by side in index.html.", flag="--html-faces", min=0)

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class RefinerToolOptions:
    """`bfrboost refiner stats | info | init`: the manifold statistics and the size report."""

    count: int = setting(
        PAPER_STATS_FACES, "Use at most this many faces (the paper: 3000 FFHQ faces).", flag="--count", min=1
    )
    per_element: bool = setting(
        True, "One μ, σ per element of r (IBA's estimator, the default) or per channel (any face size).", flag="--per-element"
    )
    batch_size: int = setting(4, "Faces per VAE batch.", flag="--batch-size", min=1)
    size: int = setting(512, "Faces are resized to SIZE×SIZE (the refiner's input size).", flag="--size", min=8)
    device: str = setting("auto", "cpu, cuda, cuda:N or auto.", flag="--device")
    flops: bool = setting(True, "Also count FLOPs per face and stage.", flag="--flops")

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class ExportOptions:
    """`bfrboost export onnx`."""

    opset: int = setting(18, "ONNX opset.", flag="--opset", min=16)

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class UiOptions:
    """`bfrboost ui`: where the web app listens and what it accepts."""

    host: str = setting("127.0.0.1", "Address to listen on; 0.0.0.0 opens the app to your whole network.", flag="--host")
    port: int | None = setting(None, "Port (default: the first free one from 7860).", flag="--port", min=1, max=65535)
    device: str = setting("auto", "auto, cpu, cuda, cuda:N or mps.", flag="--device")
    max_upload_mb: float = setting(20.0, "Largest image upload accepted, in MB.", flag="--max-upload-mb", min=0.01)
    max_video_mb: float = setting(200.0, "Largest video clip upload accepted, in MB.", flag="--max-video-mb", min=0.01)
    max_pixels: int = setting(40_000_000, "Largest image accepted, in pixels.", flag="--max-pixels", min=1)
    cache_size: int = setting(2, "Model sets kept loaded (one per settings combination).", flag="--cache-size", min=1)

    def __post_init__(self) -> None:
        validate(self)


def restorer_options(
    base: str | None = None,
    detect_options: DetectOptions | None = None,
    restore_options: RestoreOptions | None = None,
    paste_options: PasteOptions | None = None,
    **settings: Any,
) -> tuple[DetectOptions, RestoreOptions, PasteOptions]:
    """The three option objects of a :class:`~bfrboost.pipeline.Restorer`, with ``settings`` given by field
    name (``upscale=1``, ``min_face=32`` …) placed into the object that holds that field."""
    parts: dict[type, Any] = {DetectOptions: detect_options, RestoreOptions: restore_options, PasteOptions: paste_options}
    if base is not None:
        settings["base"] = base
    changes: dict[type, dict[str, Any]] = {cls: {} for cls in parts}
    for name, value in settings.items():
        owner = next((cls for cls in parts if name in cls.__dataclass_fields__), None)
        if owner is None:
            raise TypeError(f"unexpected restorer setting {name!r}")
        changes[owner][name] = value
    built = [dataclasses.replace(parts[cls] or cls(), **changes[cls]) if changes[cls] else parts[cls] or cls() for cls in parts]
    return built[0], built[1], built[2]
