"""bfrboost/options.py holds the one copy of every default and bound: the CLI, the web app and the Restorer agree with it."""

from __future__ import annotations

import dataclasses
from enum import Enum
from pathlib import Path

import pytest
from typer.main import get_command

from bfrboost import options as o
from bfrboost.cli import app
from bfrboost.errors import UsageError

RESTORING = (o.DetectOptions, o.RestoreOptions, o.PasteOptions, o.OutputOptions)
COMMANDS = {
    "restore": (*RESTORING, o.VideoOptions, o.GuidanceOptions),
    "restore-dataset": RESTORING,
    "colorize": (*RESTORING, o.GuidanceOptions),
    "inpaint": (*RESTORING, o.GuidanceOptions),
    "old-photo": (*RESTORING, o.GuidanceOptions),
    "train": (o.TrainConfig,),
}
ALIASES = {"compile_refiner": "compile", "clip_start": "start", "knob": "knobs", "guidance_scale": "scale", "base": "bases"}


def _commands() -> dict:
    root = get_command(app)
    return {name: root.commands[name] for name in COMMANDS}


def _plain(value: object) -> object:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        return ",".join(value)
    if isinstance(value, (dict, tuple)) and not value:
        return None  # --knob, --reference: none given
    return value


def _field(classes: tuple[type, ...], name: str) -> dataclasses.Field | None:
    for cls in classes:
        for key in (name, ALIASES.get(name)):
            if key in cls.__dataclass_fields__:
                return cls.__dataclass_fields__[key]
    return None


def test_every_command_option_takes_its_default_and_bounds_from_the_options_objects() -> None:
    checked = 0
    for command, classes in COMMANDS.items():
        for param in _commands()[command].params:
            field = _field(classes, param.name) if param.param_type_name == "option" else None
            if field is None or not field.metadata:
                continue
            default = o.default_of(next(c for c in classes if field.name in c.__dataclass_fields__), field.name)
            assert _plain(param.default) == _plain(default), f"{command} {param.opts}: default {param.default!r} != {default!r}"
            low = field.metadata["min"] if field.metadata["min"] is not None else field.metadata["above"]
            bounds = (getattr(param, "min", None), getattr(param, "max", None))
            assert bounds == (low, field.metadata["max"]), f"{command} {param.opts}: bounds {bounds}"
            checked += 1
    assert checked >= 120  # every restoring, guided and training flag, not a handful


def test_upscale_has_one_bound_everywhere() -> None:
    from bfrboost.pipeline import Restorer
    from bfrboost.ui.engine import Settings

    for command in ("restore", "restore-dataset", "colorize"):
        (upscale,) = [p for p in _commands()[command].params if p.name == "upscale"]
        assert (upscale.min, upscale.max) == (1.0, 4.0)
    for make in (lambda: o.PasteOptions(upscale=4.5), lambda: Settings(upscale=4.5).restorer_kwargs("cpu"),
                 lambda: Restorer("none", upscale=4.5, device="cpu")):
        with pytest.raises(UsageError, match=r"^--upscale must be in \[1, 4\], got 4.5$"):
            make()


def test_validation_names_the_flag_once() -> None:
    with pytest.raises(UsageError, match=r"^--crf must be in \[0, 51\] \(lower = better, 18 ≈ visually lossless\), got 52$"):
        o.VideoOptions(crf=52)
    with pytest.raises(UsageError, match=r"^unknown paste mode 'blend'; use one of: residual, direct$"):
        o.PasteOptions(paste="blend")
    with pytest.raises(UsageError, match=r"^--duration must be > 0, got 0$"):
        o.VideoOptions(duration=0)
    with pytest.raises(UsageError, match=r"^--steps must be >= 1, got 0$"):
        o.TrainConfig(out=Path("run"), steps=0)
    assert o.TrainConfig(out="run", tiny=True).size == 64 and o.TrainConfig(out="run").size == o.TRAIN_SIZE


def test_restorer_settings_go_to_the_object_holding_the_field() -> None:
    detect, restore, paste = o.restorer_options("codeformer", min_face=32, upscale=1, device="cpu")
    assert (detect.min_face, restore.base, restore.device, paste.upscale) == (32, "codeformer", "cpu", 1)
    assert paste.paste == o.default_of(o.PasteOptions, "paste")
    with pytest.raises(TypeError, match="unexpected restorer setting 'scale'"):
        o.restorer_options(scale=2)
    _, _, paste = o.restorer_options(paste="direct")  # a field named like its object: still the field
    assert paste.paste == "direct"
