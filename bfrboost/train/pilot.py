"""`bfrboost train pilot`: a short sweep over β (and optionally the timestep and the learning rate) that
says which value to train with.

The paper's equations, and so the scale of its β, are lost (design/method.md); a wrong β wastes a week
of GPU time before a collapsed λ shows. The pilot runs K steps per value on the same cache (and, at CPU
scale, the same fitted tiny SD), validates each run on the held-out faces and ranks the values: runs whose
mean λ stayed healthy (inside (0.05, 0.98): the output still depends on the base face, and noise still
replaces something) first, by validation PSNR of the refined output, then LPIPS; the others after them.
After the first three steps it prints the measured time per step and what the sweep will cost, so on a
GPU with SD 2.1 the user knows the price up front.

Writes OUT/pilot.json, OUT/pilot.md (a table) and OUT/pilot.png (PSNR refined vs base, and mean λ, per value).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from bfrboost.errors import UsageError
from bfrboost.plots import figure_png, pyplot
from bfrboost.safety import write_bytes
from bfrboost.train.loop import LAMBDA_LOW, TINY_SD_DIR, VAL_LOG_NAME, TrainConfig, Trainer

HEALTHY_HIGH = 0.98  # above it the bottleneck cleans (almost) nothing
TIMING_STEPS = 3


def healthy(lambda_mean: float) -> bool:
    return LAMBDA_LOW < lambda_mean < HEALTHY_HIGH


def rank_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Healthy λ first, then higher validation PSNR, then lower LPIPS."""
    return sorted(rows, key=lambda r: (not healthy(r["lambda_mean"]), -r["psnr"], r["lpips"]))


def _label(row: dict[str, Any]) -> str:
    return ", ".join(f"{k} {row[k]:g}" for k in ("beta", "timestep", "lr"))


def pilot(base: TrainConfig, betas: Sequence[float], timesteps: Sequence[int] | None = None, lrs: Sequence[float] | None = None,
          note: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``base.steps`` steps for every (β, timestep, lr) under ``base.out``; returns the ranked table and the pick."""
    if not betas:
        raise UsageError("train pilot: give at least one --betas value")
    out = base.out
    combos = list(itertools.product(betas, timesteps or [base.timestep], lrs or [base.lr]))
    cache, tiny_sd = base.cache or out / "cache", base.tiny_sd
    rows, started = [], time.perf_counter()
    for index, (beta, timestep, lr) in enumerate(combos):
        name = f"beta-{beta:g}_t-{timestep}_lr-{lr:g}"
        config = dataclasses.replace(base, out=out / name, cache=cache, beta=beta, timestep=timestep, lr=lr, tiny_sd=tiny_sd)
        row = run_short(config, _announcer(len(combos), base.steps, note) if index == 0 else None)
        if base.tiny and tiny_sd is None:
            tiny_sd = out / name / TINY_SD_DIR  # fitted once, by the first run
        rows.append(row)
        note(f"{_label(row)}: mean λ {row['lambda_mean']:.3f}, PSNR {row['psnr']:.2f} dB (base {row['psnr_base']:.2f}), "
             f"LPIPS {row['lpips']:.4f} (base {row['lpips_base']:.4f}), {row['seconds']:.0f} s")
    ranked = rank_rows(rows)
    result = {"steps": base.steps, "seconds": time.perf_counter() - started, "ranked": ranked, "recommended": ranked[0],
              "recommended_healthy": healthy(ranked[0]["lambda_mean"])}
    write_bytes(out / "pilot.json", (json.dumps(result, indent=1) + "\n").encode(), overwrite=True)
    write_bytes(out / "pilot.md", pilot_markdown(result).encode(), overwrite=True)
    write_bytes(out / "pilot.png", pilot_png(rows), overwrite=True)
    return result


def run_short(config: TrainConfig, progress: Callable[[int, int, dict], None] | None = None) -> dict[str, Any]:
    """One short run (validated once, at its end) → its settings, last validation, parameter counts and λ warnings."""
    config = dataclasses.replace(config, val_every=config.steps, checkpoint_every=config.steps, keep_last=1, resume=False)
    warnings: list[str] = []
    started = time.perf_counter()
    trainer = Trainer(config, warn=warnings.append, progress=progress)
    trainer.run()
    last = json.loads((config.out / VAL_LOG_NAME).read_text().splitlines()[-1])
    return {"beta": trainer.model.config.beta, "timestep": config.timestep, "lr": config.lr, "run": config.out.name,
            "seconds": time.perf_counter() - started, "trainable": trainer.model.parameter_counts()["trainable"],
            **{k: last[k] for k in ("lambda_mean", "psnr", "psnr_base", "lpips", "lpips_base", "info")},
            "warnings": [w for w in warnings if "mean λ" in w]}


ABLATIONS = {"full": {}, "no Transformer": {"no_transformer": True}, "no MIB": {"no_mib": True}, "no LoRA": {"no_lora": True}}


def ablate(base: TrainConfig, note: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """The paper's Table III at this scale: the full refiner and each part left out, same data, steps and seed.
    Writes OUT/ablation.json and OUT/ablation.md."""
    rows, cache, tiny_sd = [], base.cache or base.out / "cache", base.tiny_sd
    for name, switches in ABLATIONS.items():
        folder = base.out / name.replace(" ", "-").lower()
        row = {"variant": name, **run_short(dataclasses.replace(base, out=folder, cache=cache, tiny_sd=tiny_sd, **switches))}
        if base.tiny and tiny_sd is None:
            tiny_sd = folder / TINY_SD_DIR
        rows.append(row)
        note(f"{name}: {row['trainable']} trainable, PSNR {row['psnr']:.2f} dB (base {row['psnr_base']:.2f}), "
             f"LPIPS {row['lpips']:.4f}, mean λ {row['lambda_mean']:.3f}")
    lines = ["| variant | trainable parameters | mean λ | PSNR refined | PSNR base | LPIPS refined | LPIPS base |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['trainable']:,} | {r['lambda_mean']:.3f} | {r['psnr']:.2f} | {r['psnr_base']:.2f} | "
              f"{r['lpips']:.4f} | {r['lpips_base']:.4f} |" for r in rows]
    write_bytes(base.out / "ablation.json", (json.dumps(rows, indent=1) + "\n").encode(), overwrite=True)
    write_bytes(base.out / "ablation.md", ("\n".join(lines) + "\n").encode(), overwrite=True)
    return rows


def _announcer(values: int, steps: int, note: Callable[[str], None]) -> Callable[[int, int, dict], None]:
    """A progress callback that prints the measured cost once, after ``TIMING_STEPS`` steps of the first value."""
    times: list[float] = []

    def progress(step: int, total: int, record: dict) -> None:
        times.append(record["seconds"])
        if len(times) == TIMING_STEPS:
            per_step = sorted(times)[len(times) // 2]
            note(f"pilot: {per_step:.2f} s per step (median of the first {TIMING_STEPS}) → ≈ {per_step * steps / 60:.1f} min "
                 f"per value, ≈ {per_step * steps * values / 60:.1f} min for {values} values (plus validation)")

    return progress


def pilot_markdown(result: dict[str, Any]) -> str:
    lines = [f"# Pilot: {len(result['ranked'])} values × {result['steps']} steps ({result['seconds'] / 60:.1f} min)", "",
             "| rank | β | timestep | lr | mean λ | PSNR refined | PSNR base | LPIPS refined | LPIPS base | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for rank, r in enumerate(result["ranked"], 1):
        lam = r["lambda_mean"]
        verdict = "healthy" if healthy(lam) else ("λ collapsed: noise only" if lam <= LAMBDA_LOW else "λ ≈ 1: cleans nothing")
        lines.append(f"| {rank} | {r['beta']:g} | {r['timestep']} | {r['lr']:g} | {lam:.3f} | {r['psnr']:.2f} | "
                     f"{r['psnr_base']:.2f} | {r['lpips']:.4f} | {r['lpips_base']:.4f} | {verdict} |")
    pick = result["recommended"]
    lines += ["", f"Recommended: `--beta {pick['beta']:g} --timestep {pick['timestep']} --lr {pick['lr']:g}`"
              + ("" if result["recommended_healthy"] else " (no value kept λ healthy: widen the sweep)"), ""]
    return "\n".join(lines)


def pilot_png(rows: list[dict[str, Any]]) -> bytes:
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(10, 4), dpi=100)
    labels = [_label(r) for r in rows]
    x = range(len(rows))
    left.plot(x, [r["psnr"] for r in rows], "o-", label="refined")
    left.plot(x, [r["psnr_base"] for r in rows], "s--", label="base")
    left.set_ylabel("validation PSNR (dB)")
    left.legend()
    right.plot(x, [r["lambda_mean"] for r in rows], "o-")
    right.axhspan(LAMBDA_LOW, HEALTHY_HIGH, color="green", alpha=0.1, label="healthy")
    right.set_ylim(0, 1)
    right.set_ylabel("mean λ")
    right.legend()
    for ax in (left, right):
        ax.set_xticks(list(x), labels, rotation=30, ha="right", fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return figure_png(fig)
