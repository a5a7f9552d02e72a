"""Typer options made from :mod:`bfrboost.options`: each flag's help and bounds come from the options
field it fills, and each command's default is that field's default (``DETECT.min_face`` …), so a
default or a bound is written once, in ``bfrboost/options.py``."""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, get_type_hints

import typer

from bfrboost.errors import UsageError
from bfrboost.options import (
    X264_PRESETS,
    DetectOptions,
    GuidanceOptions,
    OutputOptions,
    PasteOptions,
    RestoreOptions,
    RunnerOptions,
    TrainConfig,
    VideoOptions,
    default_of,
)


def defaults(cls: type) -> SimpleNamespace:
    """Every field default of an options class, by name (``PASTE.upscale``)."""
    return SimpleNamespace(**{name: default_of(cls, name) for name in cls.__dataclass_fields__})


DETECT, RESTORE, PASTE = defaults(DetectOptions), defaults(RestoreOptions), defaults(PasteOptions)
OUTPUT, VIDEO, GUIDANCE, TRAIN = defaults(OutputOptions), defaults(VideoOptions), defaults(GuidanceOptions), defaults(TrainConfig)
RUNNER = defaults(RunnerOptions)


def option(kind: Any, cls: type, name: str, *flags: str, **overrides: Any) -> Any:
    """``Annotated[kind, typer.Option(...)]`` for field ``name`` of ``cls``: its flag, help and bounds."""
    md = cls.__dataclass_fields__[name].metadata
    settings: dict[str, Any] = {"help": md["help"]}
    low = md["min"] if md["min"] is not None else md["above"]
    if low is not None:
        settings["min"] = low
    if md["max"] is not None:
        settings["max"] = md["max"]
    settings.update(overrides)
    info = typer.Option(*(flags or (md["flag"],)), **settings)
    info.options_field = (cls, name)  # type: ignore[attr-defined]  # tests/test_options.py checks the default against it
    return Annotated[kind, info]


Preset = Enum("Preset", {name: name for name in X264_PRESETS if name != "placebo"}, type=str)  # type: ignore[misc]

Refine = option(bool | None, RestoreOptions, "refine", "--refine/--no-refine", show_default=False)
Refiner = option(Path | None, RestoreOptions, "refiner")
RefinerStrength = option(float, RestoreOptions, "refiner_strength")
SdModel = option(Path | None, RestoreOptions, "sd_model")
Compile = option(bool, RestoreOptions, "compile")
Base = option(str, RestoreOptions, "base")
Weights = option(Path | None, RestoreOptions, "weights")
Fidelity = option(float | None, RestoreOptions, "fidelity")
Knob = option(list[str] | None, RestoreOptions, "knobs")
BatchSize = option(int | None, RestoreOptions, "batch_size")
Device = option(str, RestoreOptions, "device")
Runtime = option(str, RestoreOptions, "runtime")
Providers = option(str | None, RestoreOptions, "providers")
Threads = option(int | None, RestoreOptions, "threads")


def runtime_options(runtime: str, providers: str | None, threads: int | None) -> dict[str, Any]:
    """``RestoreOptions`` fields of ``--runtime/--providers/--threads``; ``--threads`` also sets torch's threads."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    names = tuple(p.strip().lower() for p in providers.split(",") if p.strip()) if providers else None
    return {"runtime": runtime, "providers": names, "threads": threads}
Upscale = option(float, PasteOptions, "upscale", "-s", "--upscale")
BgUpsampler = option(str, PasteOptions, "bg_upsampler")
BgTile = option(int, PasteOptions, "bg_tile")
FaceUpsample = option(bool, PasteOptions, "face_upsample")
Paste = option(str, PasteOptions, "paste")
ColorMatch = option(bool, PasteOptions, "color_match")
Aligned = option(bool, DetectOptions, "aligned")
OnlyCenterFace = option(bool, DetectOptions, "only_center_face")
MinFace = option(int, DetectOptions, "min_face")
Detector = option(str, DetectOptions, "detector")
FaceIndex = option(int | None, DetectOptions, "face_index", show_default=False)
Largest = option(bool, DetectOptions, "largest")
Person = option(list[Path] | None, DetectOptions, "person", show_default=False)
PersonModel = option(str, DetectOptions, "person_model")
PersonThreshold = option(float | None, DetectOptions, "person_threshold", show_default=False)
Blend = option(float, PasteOptions, "blend")
Outdir = option(Path, OutputOptions, "outdir", "-o", "--outdir")
Suffix = option(str | None, OutputOptions, "suffix")
Quality = option(int, OutputOptions, "quality")
MaxPixels = option(int | None, OutputOptions, "max_pixels")
Overwrite = option(bool, OutputOptions, "overwrite")
SaveFaces = option(bool, OutputOptions, "save_faces")
SaveCmp = option(bool, OutputOptions, "save_cmp")
DrawBoxes = option(bool, OutputOptions, "draw_boxes")
Smooth = option(bool, VideoOptions, "smooth", "--smooth/--no-smooth")
Crf = option(int, VideoOptions, "crf")
VideoPreset = option(Preset, VideoOptions, "preset")
Start = option(float | None, VideoOptions, "start")
Duration = option(float | None, VideoOptions, "duration")
FramesPerBatch = option(int, VideoOptions, "frames_per_batch")
DetectEvery = option(int, VideoOptions, "detect_every")
Steps = option(int, GuidanceOptions, "steps")
Seed = option(int, GuidanceOptions, "seed")
Repeats = option(int, GuidanceOptions, "repeats")
RepeatFrom = option(float, GuidanceOptions, "repeat_from")
Workers = option(int, RunnerOptions, "workers")
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object per image on stdout (JSON lines).")]
Recursive = Annotated[bool, typer.Option("--recursive", "-r", help="Look into sub-folders of folder inputs.")]


def field_parameters(cls: type, **special: tuple[Any, Any]) -> list[inspect.Parameter]:
    """One keyword parameter per flagged field of ``cls``, in field order: its type, :func:`option` and
    default, so a command's signature is generated, not retyped. ``special[name] = (annotation, default)``
    replaces a field's parameter where the command spells it differently (a list given comma-separated)."""
    hints = get_type_hints(cls)
    params = []
    for name, f in cls.__dataclass_fields__.items():
        if name in special:
            annotation, default = special[name]
        elif f.metadata.get("flag"):
            annotation, default = option(hints[name], cls, name), default_of(cls, name)
        else:
            continue
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default))
    return params


def with_parameters(extra: Sequence[inspect.Parameter]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command (whose last parameter is ``**params``) the ``extra`` parameters after its own: Typer reads
    them from the signature, so options shared by several commands, or generated, are declared once."""

    def wrap(command: Callable[..., None]) -> Callable[..., None]:
        own = inspect.signature(command, eval_str=True)
        kept = [p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        command.__signature__ = own.replace(parameters=[*kept, *extra])  # type: ignore[attr-defined]
        hints = get_type_hints(command, include_extras=True)
        command.__annotations__ = {p.name: hints[p.name] for p in kept if p.name in hints} | {p.name: p.annotation for p in extra}
        return command

    return wrap


def pick(target: Any, params: Mapping[str, Any], **values: Any) -> dict[str, Any]:
    """What of a command's ``params`` (by name) ``target`` takes: the fields of an options class, or the
    parameters of a library function; ``values`` over them. The command passes its options on without
    restating each name."""
    names = target.__dataclass_fields__ if dataclasses.is_dataclass(target) else inspect.signature(target).parameters
    return {name: params[name] for name in names if name in params} | values


def parse_knobs(knob: list[str]) -> dict[str, Any]:
    """``--knob NAME=VALUE`` items → a knobs mapping (values read as JSON when they parse, else strings)."""
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
