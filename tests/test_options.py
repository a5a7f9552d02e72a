"""bfrboost/options.py holds the one copy of every default and bound: the CLI, the web app and the Restorer agree with it."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import pytest
from typer.main import get_command
from typer.utils import get_params_from_function

from bfrboost import options as o
from bfrboost.cli import app
from bfrboost.errors import UsageError


def _walk(command, path: tuple[str, ...] = ()):
    """Every command of the app with its path (``("train", "pilot")``); groups first, then their commands."""
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _walk(sub, (*path, name))


def _commands() -> dict[str, object]:
    return {" ".join(path): command for path, command in _walk(get_command(app)) if path}


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


def _unset(value: object) -> bool:
    """A default that says "not given": off, absent or empty. It holds no number or name that could drift."""
    return value is None or value is False or (isinstance(value, (str, tuple, list)) and len(value) == 0)


def test_every_option_of_every_command_takes_its_default_and_bounds_from_an_options_field() -> None:
    """An option made by ``cli/options.py::option`` names its field: its default and bounds must be the field's.
    Any other option may only be a switch that is off, or a value that is absent, until given (``--json``,
    ``--overwrite``, ``--data DIR``), with no bounds: a literal number, name or bound has to live in options.py."""
    checked, commands = 0, _commands()
    assert {"restore", "train", "train pilot", "train tiny-sd", "eval boost", "refiner stats", "ui", "degrade"} <= set(commands)
    for name, command in commands.items():
        if command.callback is None:
            continue
        declared = get_params_from_function(command.callback.__wrapped__)
        for param in command.params:
            if param.param_type_name != "option":
                continue
            bounds = (getattr(param, "min", None), getattr(param, "max", None))
            where = f"{name} {max(param.opts, key=len)}"
            tag = getattr(declared[param.name].default, "options_field", None)
            if tag is None:
                assert param.required or (_unset(param.default) and bounds == (None, None)), (
                    f"{where}: default {param.default!r}, bounds {bounds} written in the command; make it with "
                    "cli/options.py::option from a field of bfrboost/options.py"
                )
                continue
            cls, field_name = tag
            md = cls.__dataclass_fields__[field_name].metadata
            default = o.default_of(cls, field_name)
            same = _plain(param.default) == _plain(default) or param.required
            assert same, f"{where}: default {param.default!r} != {default!r}"
            low = md["min"] if md["min"] is not None else md["above"]
            assert bounds == (low, md["max"]), f"{where}: bounds {bounds} != {(low, md['max'])}"
            checked += 1
    assert checked >= 250  # restoring, guided, training, evaluation, refiner, web app and export flags


def test_upscale_has_one_bound_everywhere() -> None:
    from bfrboost.pipeline import Restorer
    from bfrboost.ui.engine import Settings

    commands = _commands()
    for command in ("restore", "restore-dataset", "colorize"):
        (upscale,) = [p for p in commands[command].params if p.name == "upscale"]
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
    assert o.TrainConfig(out="run", tiny=True).size == 32 and o.TrainConfig(out="run").size == o.TRAIN_SIZE


def test_restorer_settings_go_to_the_object_holding_the_field() -> None:
    detect, restore, paste = o.restorer_options("codeformer", min_face=32, upscale=1, device="cpu")
    assert (detect.min_face, restore.base, restore.device, paste.upscale) == (32, "codeformer", "cpu", 1)
    assert paste.paste == o.default_of(o.PasteOptions, "paste")
    with pytest.raises(TypeError, match="unexpected restorer setting 'scale'"):
        o.restorer_options(scale=2)
    _, _, paste = o.restorer_options(paste="direct")  # a field named like its object: still the field
    assert paste.paste == "direct"
