"""Typer options made from :mod:`bfrboost.options`: each flag's help and bounds come from the options
field it fills, and each command's default is that field's default (``DETECT.min_face`` …), so a
default or a bound is written once, in ``bfrboost/options.py``."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from pathlib import Path
from types import SimpleNamespace, UnionType
from typing import Annotated, Any, get_args, get_type_hints

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

AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object per image on stdout (JSON lines).")]
Recursive = Annotated[bool, typer.Option("--recursive", "-r", help="Look into sub-folders of folder inputs.")]
#: How the commands spell these fields, unlike the dataclass: short flags, a list given by repeating the flag, a
#: choice; and the switches that are no field. :func:`parameters` uses them wherever a command lists the name.
SPELLED: dict[str, Any] = dict(
    outdir=option(Path, OutputOptions, "outdir", "-o", "--outdir"),
    upscale=option(float, PasteOptions, "upscale", "-s", "--upscale"),
    refine=option(bool | None, RestoreOptions, "refine", "--refine/--no-refine", show_default=False),
    person=(option(list[Path] | None, DetectOptions, "person", show_default=False), None),
    knobs=(option(list[str] | None, RestoreOptions, "knobs"), None),
    providers=option(str | None, RestoreOptions, "providers"),
    preset=(option(Preset, VideoOptions, "preset"), Preset(VIDEO.preset)),
    smooth=option(bool, VideoOptions, "smooth", "--smooth/--no-smooth"),
    as_json=(AsJson, False),
    recursive=(Recursive, False),
)


def runtime_options(runtime: str, providers: str | None, threads: int | None) -> dict[str, Any]:
    """``RestoreOptions`` fields of ``--runtime/--providers/--threads``; ``--threads`` also sets torch's threads."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    names = tuple(p.strip().lower() for p in providers.split(",") if p.strip()) if providers else None
    return {"runtime": runtime, "providers": names, "threads": threads}


def _cli_kind(hint: Any) -> Any:
    """The type a flag reads for a field typed ``hint``: a field that takes a name or a path reads a path."""
    args = get_args(hint) if isinstance(hint, UnionType) else ()
    if Path in args:
        return Path | None if type(None) in args else Path
    return hint


def field_parameters(cls: type, **special: tuple[Any, Any]) -> list[inspect.Parameter]:
    """One keyword parameter per flagged field of ``cls``, in field order: its type, :func:`option` and
    default, so a command's signature is generated, not retyped. ``special[name] = (annotation, default)``
    replaces a field's parameter where the command spells it differently (a list given comma-separated)."""
    names = [name for name, f in cls.__dataclass_fields__.items() if name in special or f.metadata.get("flag")]
    return _parameters(names, (cls,), special)


def parameters(names: str, *classes: type, **special: Any) -> list[inspect.Parameter]:
    """The keyword parameters ``names`` (space-separated, in ``--help`` order), each made from the field of that
    name of the first of ``classes`` that has it; ``special[name]`` (an annotation, or ``(annotation, default)``)
    and :data:`SPELLED` replace a field's parameter where the command spells it differently, or add one that is
    no field (``--json``); an annotation alone defaults to the default of the field its option names."""
    return _parameters(names.split(), classes, SPELLED | special)


def _parameters(names: Sequence[str], classes: Sequence[type], special: Mapping[str, Any]) -> list[inspect.Parameter]:
    params = []
    for name in names:
        owner = next((cls for cls in classes if name in cls.__dataclass_fields__), None)
        if name in special:
            given = special[name]
            annotation, default = given if isinstance(given, tuple) else (given, default_of(*given.__metadata__[0].options_field))
        elif owner is not None:
            annotation, default = option(_cli_kind(get_type_hints(owner)[name]), owner, name), default_of(owner, name)
        else:
            raise TypeError(f"{name} is no field of {', '.join(c.__name__ for c in classes)}")
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default))
    return params


def with_parameters(extra: Sequence[inspect.Parameter]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command (whose last parameter is ``**params``) the ``extra`` parameters after its own: Typer reads
    them from the signature, so options shared by several commands, or generated, are declared once. A direct
    call gets the defaults of the options it leaves out, as from the command line."""

    def wrap(command: Callable[..., None]) -> Callable[..., None]:
        own = inspect.signature(command, eval_str=True)
        kept = [p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        signature = own.replace(parameters=[*kept, *extra])
        hints = get_type_hints(command, include_extras=True)

        @functools.wraps(command)
        def call(*args: Any, **kwargs: Any) -> None:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return command(*bound.args, **bound.kwargs)

        call.__signature__ = signature  # type: ignore[attr-defined]
        call.__annotations__ = {p.name: hints[p.name] for p in kept if p.name in hints} | {p.name: p.annotation for p in extra}
        return call

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
