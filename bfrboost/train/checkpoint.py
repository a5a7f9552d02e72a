"""Training checkpoints of ``bfrboost train``: written whole or not at all, read back safely.

A checkpoint is the folder ``RUN_DIR/checkpoints/step-NNNNNNNN/`` (trainable weights, EMA, optimizer,
scheduler, RNG states and ``state.json`` with the step, the data position and the run configuration).
It is written into a hidden temp folder beside it and renamed into place when complete
(:func:`bfrboost.safety.atomic_dir`), so a kill or a full disk during a save leaves the previous
checkpoint as the resume point and at most a recognisable ``.partial`` folder, removed by the next run.

Reading is a security boundary like every checkpoint: safetensors or ``torch.load(weights_only=True)``.
A damaged checkpoint (cut short, overwritten, refused) is skipped for the one before it, with one line.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bfrboost.errors import BfrboostError, OutputError, UsageError, WeightsError
from bfrboost.safety import atomic_dir, clean_stale_temps, describe_write_error, one_line, write_bytes

FOLDER = "checkpoints"
STATE = "state.json"

#: Run settings that change the numbers a resumed run computes: ``--resume`` refuses a change of any
#: of them unless ``--allow-changes`` names it (``steps`` too when the schedule is cosine: it sets the decay).
EXACT_KEYS = (
    "bases",
    "batch_size",
    "accumulate",
    "lr",
    "weight_decay",
    "warmup",
    "schedule",
    "grad_clip",
    "ema",
    "seed",
    "size",
    "rank",
    "timestep",
    "beta",
    "lpips_net",
    "tiny",
    "per_channel_stats",
    "precision",
    "grad_checkpoint",
    "sd_model",
)


class DamagedCheckpoint(BfrboostError):
    """A checkpoint folder that cannot be resumed from (the message names the file and why)."""


@dataclass
class Loaded:
    """Everything read from a checkpoint, before any of it is applied to the model."""

    folder: Path
    state: dict[str, Any]
    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]
    ema: dict[str, torch.Tensor] | None


def checkpoints(run: Path) -> list[Path]:
    """Checkpoints that were completed (renamed into place with their ``state.json``), oldest first."""
    folder = Path(run) / FOLDER
    return sorted(p for p in folder.glob("step-*") if (p / STATE).is_file()) if folder.is_dir() else []


def clean_stale(run: Path) -> None:
    """Remove temp files and folders that a killed run left in ``checkpoints/`` (and inside its step folders)."""
    folder = Path(run) / FOLDER
    clean_stale_temps(folder)
    for step in folder.glob("step-*") if folder.is_dir() else ():
        clean_stale_temps(step)


def save_checkpoint(
    run: Path,
    step: int,
    position: int,
    model,
    optimizer,
    scheduler,
    ema: dict[str, torch.Tensor] | None,
    config: Any,
    cache_config: dict[str, Any] | None = None,
) -> Path:
    """Write ``checkpoints/step-NNNNNNNN/`` whole or not at all, then drop all but the last ``config.keep_last``.

    A failed write (full disk, quota, permissions) is one :class:`OutputError` line; the earlier
    checkpoints are untouched and stay the resume point."""
    from safetensors.torch import save_file

    folder = Path(run) / FOLDER / f"step-{step:08d}"
    if folder.exists():  # a damaged one that --resume skipped: this run writes its replacement
        shutil.rmtree(folder)
    np_state = np.random.get_state()
    state = {
        "step": step,
        "position": position,
        "stats_faces": model.config.stats_faces,
        "stats_mode": model.config.stats_mode,
        "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python_rng": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "config": config.to_dict(),
        "cache": cache_config,
    }
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    try:
        with atomic_dir(folder) as temp:
            save_file(model.trainable_state_dict(), str(temp / "trainable.safetensors"))
            if ema is not None:
                save_file({k: v.detach().cpu().contiguous() for k, v in ema.items()}, str(temp / "ema.safetensors"))
            torch.save(optimizer.state_dict(), temp / "optimizer.pt")
            torch.save(scheduler.state_dict(), temp / "scheduler.pt")
            torch.save(rng, temp / "rng.pt")
            (temp / STATE).write_text(json.dumps(state) + "\n")
    except OutputError as exc:
        raise OutputError(f"{exc} ({_kept(run, step)})") from None
    except Exception as exc:  # noqa: BLE001 - safetensors (SafetensorError) and torch.save (RuntimeError) wrap OSErrors
        raise OutputError(f"{_write_failure(folder, exc)} ({_kept(run, step)})") from None
    for old in checkpoints(run)[: -config.keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def _kept(run: Path, step: int) -> str:
    earlier = [p for p in checkpoints(run) if p.name < f"step-{step:08d}"]
    if earlier:
        return f"the checkpoint {earlier[-1].name} is kept; re-run with --resume to continue from it"
    return "no checkpoint yet; re-run with --resume to start again from step 0"


def _write_failure(folder: Path, exc: BaseException) -> str:
    """One line for a failed checkpoint write, whatever library raised it."""
    import errno

    text = str(exc)
    inner = exc if isinstance(exc, OSError) else getattr(exc, "__cause__", None) or getattr(exc, "__context__", None)
    if isinstance(inner, OSError) and inner.errno is not None:
        return describe_write_error(folder, inner)
    codes = {
        "os error 28": errno.ENOSPC,
        "No space left": errno.ENOSPC,
        "os error 122": errno.EDQUOT,
        "Disk quota": errno.EDQUOT,
        "os error 13": errno.EACCES,
        "Permission denied": errno.EACCES,
    }
    code = next((value for key, value in codes.items() if key in text), None)
    if code is not None:
        return describe_write_error(folder, OSError(code, text))
    return f"{one_line(folder)}: cannot write the checkpoint ({one_line(text.splitlines()[0] if text else type(exc).__name__)})"


def read_checkpoint(folder: Path) -> Loaded:
    """Read every file of a checkpoint without applying any of it; :class:`DamagedCheckpoint` if one is unusable."""
    from bfrboost.weights import torch_load_safely

    folder = Path(folder)
    try:
        state = json.loads((folder / STATE).read_text())
        if not isinstance(state, dict) or not {"step", "position", "config"} <= state.keys():
            raise ValueError("state.json lacks step, position or config")
    except (OSError, ValueError) as exc:
        raise DamagedCheckpoint(f"{one_line(folder / STATE)}: damaged ({one_line(exc)})") from None
    trainable = _safetensors(folder / "trainable.safetensors")
    ema = _safetensors(folder / "ema.safetensors") if (folder / "ema.safetensors").is_file() else None
    loaded = {}
    for name in ("optimizer.pt", "scheduler.pt", "rng.pt"):
        try:
            loaded[name] = torch_load_safely(folder / name)
        except WeightsError as exc:
            raise DamagedCheckpoint(str(exc)) from None
        if not isinstance(loaded[name], dict):
            what = type(loaded[name]).__name__
            raise DamagedCheckpoint(f"{one_line(folder / name)}: damaged (holds a {what}, not a state dict)")
    return Loaded(folder, state, trainable, loaded["optimizer.pt"], loaded["scheduler.pt"], loaded["rng.pt"], ema)


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        reason = "missing" if not path.is_file() else f"cut short or not a safetensors file: {one_line(str(exc).splitlines()[0])}"
        raise DamagedCheckpoint(f"{one_line(path)}: damaged ({reason})") from None


def latest_usable(run: Path, warn: Callable[[str], None]) -> Loaded | None:
    """The newest checkpoint that reads back whole; each damaged newer one is skipped with one line.

    ``None`` when there is none at all; :class:`DamagedCheckpoint` when every one is damaged."""
    found = checkpoints(run)
    problems = []
    for folder in reversed(found):
        try:
            loaded = read_checkpoint(folder)
        except DamagedCheckpoint as exc:
            problems.append(str(exc))
            continue
        for problem in problems:
            warn(f"{problem}; skipped, resuming from {folder.name} instead")
        return loaded
    if problems:
        raise DamagedCheckpoint(
            f"{problems[0]}; no usable checkpoint in {one_line(Path(run) / FOLDER)}: remove that folder "
            "and re-run with --resume to start again from step 0, or choose another --out"
        )
    return None


def check_changes(stored: Mapping[str, Any], current: Mapping[str, Any], allowed: set[str], source: Path) -> None:
    """Refuse settings that differ from the checkpoint's run and would break exact resumption, unless allowed."""
    keys = [*EXACT_KEYS, *(["steps"] if current.get("schedule") == "cosine" else [])]
    changed = [k for k in keys if k in stored and stored[k] != current.get(k) and k not in allowed]
    if changed:
        details = ", ".join(f"--{k.replace('_', '-')} {stored[k]} → {current.get(k)}" for k in changed)
        raise UsageError(
            f"{one_line(source)}: --resume with other settings than the run ({details}) would not continue it "
            f"exactly; pass the run's values, or --allow-changes {','.join(changed)} to accept the change"
        )


def resume_point(
    run: Path, config: Mapping[str, Any], allowed: set[str], logs: tuple[Path, ...], warn: Callable[[str], None]
) -> Loaded | None:
    """Where a run starts: ``None`` for step 0, or the checkpoint ``--resume`` continues from.

    Stale temp files go first. Without ``--resume`` a folder that already holds a run is refused; with
    it, damaged checkpoints are skipped (one line each), a run stopped before its first checkpoint
    starts again from step 0 (one line), and settings that break exact resumption are refused."""
    run = Path(run)
    unknown = sorted(set(allowed) - set(EXACT_KEYS) - {"steps"})
    if unknown:
        known = ", ".join((*EXACT_KEYS, "steps"))
        raise UsageError(f"--allow-changes: unknown setting(s) {', '.join(unknown)}; choose from {known}")
    clean_stale(run)
    started = bool(checkpoints(run)) or (run / FOLDER).is_dir() or any(log.is_file() for log in logs)
    if not config.get("resume"):
        if started:
            raise UsageError(
                f"{one_line(run)}: already holds a training run; pass --resume to continue it or choose another --out"
            )
        return None
    if not started:
        raise UsageError(f"{one_line(run)}: no checkpoint to resume from (checkpoints/step-*/state.json); start without --resume")
    loaded = latest_usable(run, warn)
    if loaded is None:
        warn(
            f"{one_line(run / FOLDER)}: no complete checkpoint (the run stopped before its first one); starting again from step 0"
        )
        return None
    check_changes(loaded.state["config"], config, allowed, loaded.folder / STATE)
    return loaded


def truncate_log(path: Path, last_step: int) -> None:
    """Keep the lines of steps up to ``last_step`` (a resumed run rewrites its log atomically); a line cut
    short by a kill is dropped."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= last_step:
            keep.append(line)
    write_bytes(path, "".join(line + "\n" for line in keep).encode(), overwrite=True)


def apply_checkpoint(loaded: Loaded, model, optimizer, scheduler) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """Put a read checkpoint into the model, optimizer, scheduler and the global RNGs; returns state.json and the EMA."""
    state = loaded.state
    model.config.stats_faces = state["stats_faces"]
    model.config.stats_mode = model.bottleneck.stats_mode = state["stats_mode"]
    model.load_trainable_state_dict(loaded.trainable, str(loaded.folder / "trainable.safetensors"))
    optimizer.load_state_dict(loaded.optimizer)
    scheduler.load_state_dict(loaded.scheduler)
    torch.set_rng_state(loaded.rng["torch"])
    if "cuda" in loaded.rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(loaded.rng["cuda"]))
    np_state = state["numpy_rng"]
    np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))
    random.setstate((state["python_rng"][0], tuple(state["python_rng"][1]), state["python_rng"][2]))
    return state, loaded.ema


def load_checkpoint(folder: Path, model, optimizer, scheduler) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """Restore weights, optimizer, scheduler and global RNG states; returns state.json and the EMA."""
    return apply_checkpoint(read_checkpoint(folder), model, optimizer, scheduler)
