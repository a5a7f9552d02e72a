"""The boost table: every base restorer with and without the InfoBFR refiner, on the same faces.

:func:`run_boost` restores each aligned low-quality face with ``Restorer(base, aligned=True)`` and
with ``Restorer(base, refiner=DIR, aligned=True)``, scores both with the same metrics and writes,
into one output folder (every file through :mod:`bfrboost.safety`):

- ``boost.md``, ``boost.csv``, ``boost.json``: per base and metric the value without and with the
  refiner, the difference (with − without) and which is better by the metric's direction (the
  layout of the InfoBFR paper's Table I);
- ``boost.png``: one bar chart per metric, bases side by side, without vs with;
- ``index.html`` and ``faces/``: input | base | base + refiner (| reference) for the first faces.
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bfrboost.errors import InputError, UsageError
from bfrboost.evaluation.evaluator import Evaluator, MetricModels
from bfrboost.evaluation.folders import list_images, read_reference, read_rgb, reference_index, stats_for
from bfrboost.io.write import write_image
from bfrboost.metrics import METRICS, MetricValue, parse_metrics
from bfrboost.metrics.inception import DEFAULT_SIZE
from bfrboost.options import EvalOptions, default_of
from bfrboost.safety import InputGuard, one_line, write_bytes

VARIANTS = ("without", "with")
DECIMALS = {"fid": 2, "kid": 4, "niqe": 3, "musiq": 2, "lpips": 4, "psnr": 2, "ssim": 4, "ids": 4}
OUTPUT_FILES = ("boost.md", "boost.csv", "boost.json", "boost.png", "index.html")
PAIRED = ("psnr", "ssim", "lpips")  # measured against the ground truth
NO_REFERENCE = ("niqe", "musiq")  # measured on the output alone: invented texture can fool them


def format_value(metric: str, value: float | None) -> str:
    """The one rounding the Markdown and CSV tables share (JSON keeps full precision)."""
    if value is None:
        return "—"
    if value == float("inf"):
        return "inf"
    return f"{value:.{DECIMALS[metric]}f}"


def better_of(metric: str, without: float | None, with_: float | None) -> str:
    """``"with"``, ``"without"`` or ``"tie"`` by the metric's direction; ``""`` when a value is missing."""
    if without is None or with_ is None:
        return ""
    if without == with_:
        return "tie"
    higher = METRICS[metric].higher_is_better
    return "with" if (with_ > without) == higher else "without"


def verdict(rows: Sequence[BoostRow], metrics: Sequence[str]) -> str:
    """``"with"`` / ``"without"`` when every row of ``metrics`` with a verdict agrees, ``"mixed"`` when they
    differ, ``""`` when none has one."""
    said = {r.better for r in rows if r.metric in metrics and r.better in VARIANTS}
    return said.pop() if len(said) == 1 else ("mixed" if said else "")


@dataclass
class BoostRow:
    base: str
    metric: str
    without: float | None
    with_: float | None
    disagrees: bool = False  # paired and no-reference metrics of this base say opposite things are better

    @property
    def difference(self) -> float | None:
        if self.without is None or self.with_ is None or not np.isfinite(self.without) or not np.isfinite(self.with_):
            return None
        return self.with_ - self.without

    @property
    def better(self) -> str:
        return better_of(self.metric, self.without, self.with_)

    def as_dict(self) -> dict[str, Any]:
        def plain(v: float | None) -> float | str | None:
            return v if v is None or np.isfinite(v) else str(v)

        return {
            "base": self.base, "metric": self.metric,
            "direction": "higher" if METRICS[self.metric].higher_is_better else "lower",
            "without": plain(self.without), "with": plain(self.with_), "difference": self.difference, "better": self.better,
            "disagrees": self.disagrees,
        }


@dataclass
class BoostReport:
    bases: list[str]
    metrics: list[str]
    faces: int
    pairs: int
    results: dict[str, dict[str, dict[str, MetricValue]]]  # base → variant → metric → value
    problems: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def rows(self) -> list[BoostRow]:
        rows = [self._row(base, m) for base in self.bases for m in self.metrics]
        conflicts = self.disagreements()
        for row in rows:
            row.disagrees = row.base in conflicts and row.metric in (*PAIRED, *NO_REFERENCE)
        return rows

    def _row(self, base: str, metric: str) -> BoostRow:
        return BoostRow(base, metric, self.results[base]["without"][metric].value, self.results[base]["with"][metric].value)

    def disagreements(self) -> dict[str, tuple[str, str]]:
        """Bases whose paired metrics (PSNR/SSIM/LPIPS) and no-reference metrics (NIQE/MUSIQ) each agree on a
        different "better": base → (paired verdict, no-reference verdict). A refiner that paints texture can
        win NIQE while moving away from the truth; these rows need a look at the faces."""
        out = {}
        for base in self.bases:
            rows = [self._row(base, m) for m in self.metrics]
            paired, blind = verdict(rows, PAIRED), verdict(rows, NO_REFERENCE)
            if paired in VARIANTS and blind in VARIANTS and paired != blind:
                out[base] = (paired, blind)
        return out

    def skipped(self) -> list[str]:
        """One line per metric that has no value, with its reason (deduplicated across bases)."""
        reasons = {
            v.skipped for base in self.results.values() for variant in base.values() for v in variant.values() if v.skipped
        }
        return sorted(reasons)

    def as_dict(self) -> dict[str, Any]:
        return {
            "bases": self.bases,
            "metrics": self.metrics,
            "faces": self.faces,
            "pairs": self.pairs,
            "rows": [row.as_dict() for row in self.rows],
            "details": {
                base: {variant: {m: v.as_dict() for m, v in values.items()} for variant, values in variants.items()}
                for base, variants in self.results.items()
            },
            "skipped": self.skipped(),
            "problems": self.problems,
        }


# ---- writing the comparison --------------------------------------------------------------------


def _arrow(metric: str) -> str:
    return "↑" if METRICS[metric].higher_is_better else "↓"


def markdown_table(report: BoostReport) -> str:
    lines = [
        f"# Boost table: {report.faces} faces" + (f", {report.pairs} with references" if report.pairs else ""),
        "",
        "Each base restorer without and with the InfoBFR refiner on the same aligned faces. Δ = with − without; "
        "**bold** marks the better value by the metric's direction (↓ lower is better, ↑ higher is better).",
        "",
        "| base | metric | without | with refiner | Δ | better | check |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for row in report.rows:
        without, with_ = format_value(row.metric, row.without), format_value(row.metric, row.with_)
        if row.better == "with":
            with_ = f"**{with_}**"
        elif row.better == "without":
            without = f"**{without}**"
        diff = "—" if row.difference is None else f"{row.difference:+.{DECIMALS[row.metric]}f}"
        label = {"with": "with refiner", "without": "base alone", "tie": "tie", "": "—"}[row.better]
        check = "⚠ paired vs no-reference disagree" if row.disagrees else ""
        name = f"{METRICS[row.metric].label} {_arrow(row.metric)}"
        lines.append(f"| {row.base} | {name} | {without} | {with_} | {diff} | {label} | {check} |")
    names = {"with": "with refiner", "without": "base alone"}
    for base, (paired, blind) in report.disagreements().items():
        lines.append(f"\n- ⚠ {base}: the paired metrics (PSNR/SSIM/LPIPS) say {names[paired]} is better, "
                     f"the no-reference metrics (NIQE/MUSIQ) say {names[blind]}: texture the truth does not have can win "
                     "NIQE/MUSIQ; look at the faces.")
    for reason in report.skipped():
        lines.append(f"\n- {reason}")
    return "\n".join(lines) + "\n"


def csv_table(report: BoostReport) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["base", "metric", "direction", "without", "with", "difference", "better", "disagrees"])
    for row in report.rows:
        d = row.as_dict()
        diff = "" if row.difference is None else f"{row.difference:.{DECIMALS[row.metric]}f}"
        writer.writerow(
            [
                row.base,
                row.metric,
                d["direction"],
                format_value(row.metric, row.without),
                format_value(row.metric, row.with_),
                diff,
                row.better,
                "yes" if row.disagrees else "",
            ]
        )
    return buffer.getvalue()


def bar_chart_png(report: BoostReport) -> bytes:
    """One panel per metric with values: bases on the x axis, base alone vs with the refiner."""
    from bfrboost.plots import figure_png, pyplot

    shown = [
        m for m in report.metrics if any(r.without is not None and np.isfinite(r.without) for r in report.rows if r.metric == m)
    ]
    panels = max(len(shown), 1)
    cols = min(panels, 4)
    fig, axes = pyplot().subplots(
        (panels + cols - 1) // cols, cols, figsize=(3.6 * cols, 3.0 * ((panels + cols - 1) // cols)), squeeze=False
    )
    x = np.arange(len(report.bases))
    for ax, metric in zip(axes.flat, shown):
        rows = [r for r in report.rows if r.metric == metric]
        values = {v: [getattr(r, "with_" if v == "with" else "without") or 0.0 for r in rows] for v in VARIANTS}
        ax.bar(x - 0.2, values["without"], 0.4, label="base", color="#8da0cb")
        ax.bar(x + 0.2, values["with"], 0.4, label="+ refiner", color="#fc8d62")
        for i, row in enumerate(rows):
            if row.better == "with":
                ax.annotate("✓", (i + 0.2, values["with"][i]), ha="center", va="bottom", fontsize=9)
        ax.set_xticks(x, report.bases, rotation=30 if len(report.bases) > 3 else 0)
        ax.set_title(
            f"{METRICS[metric].label} ({'higher' if METRICS[metric].higher_is_better else 'lower'} is better)", fontsize=10
        )
    for ax in list(axes.flat)[len(shown) :]:
        ax.axis("off")
    if not shown:
        axes.flat[0].text(0.5, 0.5, "no metric values", ha="center", va="center")
    axes.flat[0].legend(fontsize=8)
    return figure_png(fig, dpi=110)


def html_page(report: BoostReport, faces: Sequence[str], has_reference: bool) -> str:
    """Side-by-side faces (input | each base alone and refined | reference) plus the table."""
    cols = (
        ["input"] + [f"{b} / {v}" for b in report.bases for v in ("base", "+ refiner")] + (["reference"] if has_reference else [])
    )
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for stem in faces:
        cells = [f"faces/input/{stem}.png"] + [f"faces/{b}/{v}/{stem}.png" for b in report.bases for v in VARIANTS]
        cells += [f"faces/reference/{stem}.png"] if has_reference else []
        imgs = "".join(f'<td><img src="{html.escape(c)}" loading="lazy"></td>' for c in cells)
        body.append(f"<tr><th>{html.escape(stem)}</th>{imgs}</tr>")
    rows = "".join(
        f"<tr><td>{html.escape(r.base)}</td><td>{METRICS[r.metric].label} {_arrow(r.metric)}</td>"
        f"<td class='{'b' if r.better == 'without' else ''}'>{format_value(r.metric, r.without)}</td>"
        f"<td class='{'b' if r.better == 'with' else ''}'>{format_value(r.metric, r.with_)}</td></tr>"
        for r in report.rows
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>bfrboost boost table</title>
<style>body{{font-family:sans-serif;margin:1em}} img{{width:160px;height:160px}} td,th{{padding:2px 6px;text-align:center}}
.b{{font-weight:bold;background:#e6f4ea}} table{{border-collapse:collapse}} .t td{{border-bottom:1px solid #ddd}}</style></head>
<body><h1>Boost table ({report.faces} faces)</h1>
<p><img src="boost.png" style="width:auto;height:auto;max-width:100%"></p>
<table class="t"><tr><th>base</th><th>metric</th><th>without</th><th>with refiner</th></tr>{rows}</table>
<h2>Faces</h2><table><tr><th></th>{head}</tr>{"".join(body)}</table></body></html>
"""


def write_report(report: BoostReport, out: Path, faces: Sequence[str], has_reference: bool, overwrite: bool) -> dict[str, Path]:
    """The five comparison files in ``out``; they share :func:`format_value`, so they agree."""
    payload = {
        "boost.md": markdown_table(report).encode(),
        "boost.csv": csv_table(report).encode(),
        "boost.json": (json.dumps(report.as_dict(), indent=2) + "\n").encode(),
        "boost.png": bar_chart_png(report),
        "index.html": html_page(report, faces, has_reference).encode(),
    }
    return {name: write_bytes(out / name, data, overwrite=overwrite) for name, data in payload.items()}


# ---- running -----------------------------------------------------------------------------------


def run_boost(
    bases: Sequence[str],
    refiner: Path | str,
    data: Path | str,
    out: Path | str,
    *,
    reference: Path | str | None = None,
    reference_stats: Path | str | None = None,
    metrics: str | Sequence[str] = "all",
    device: str = "auto",
    sd_model: Path | str | None = None,
    batch_size: int = default_of(EvalOptions, "boost_batch_size"),
    html_faces: int = default_of(EvalOptions, "html_faces"),
    size: int = DEFAULT_SIZE,
    overwrite: bool = False,
    models: MetricModels | None = None,
    restorer_factory: Callable[..., Any] | None = None,
    on_progress: Callable[[str, int], None] | None = None,
) -> BoostReport:
    """Restore ``data`` (aligned LQ faces) with every base, without and with ``refiner``; score; write.

    ``reference`` (same-named HQ faces) enables PSNR/SSIM/LPIPS/IDS and, without
    ``reference_stats``, serves as the FID/KID reference set. ``restorer_factory`` defaults to
    :class:`bfrboost.Restorer`.
    """
    from bfrboost.pipeline import Restorer, resolve_device

    out = Path(out)
    bases = _checked_bases(bases, refiner, out, overwrite)
    names = parse_metrics(metrics)
    torch_device = resolve_device(device)
    models = models or MetricModels(torch_device)
    Evaluator(names, models=models).check_weights()
    lq_paths = list_images(data, "low-quality aligned faces")
    index = reference_index(reference) if reference is not None else {}
    guard = InputGuard([*lq_paths, *index.values()])
    problems: list[str] = []
    stats = stats_for(reference_stats, reference, names, models, size, problems)

    faces = _read_faces(data, lq_paths, index, problems)
    shown = [stem for stem, _, _ in faces[:html_faces]]
    for stem, lq, hq in faces[:html_faces]:
        _save_face(out / "faces" / "input" / f"{stem}.png", lq, guard, overwrite)
        if hq is not None:
            _save_face(out / "faces" / "reference" / f"{stem}.png", hq, guard, overwrite)

    factory = restorer_factory or Restorer
    results: dict[str, dict[str, dict[str, MetricValue]]] = {}
    pairs = 0
    for base in bases:
        results[base] = {}
        for variant in VARIANTS:
            refine = variant == "with"
            restorer = factory(
                base, refine=refine, refiner=refiner if refine else None, aligned=True, device=str(torch_device),
                sd_model=sd_model,
            )
            evaluator = Evaluator(names, models=models, reference_stats=stats, size=size)
            label = f"{base} {'+ refiner' if refine else 'alone'}"
            for start in range(0, len(faces), batch_size):
                chunk = faces[start : start + batch_size]
                restored = [r.image for r in restorer.restore_batch([lq for _, lq, _ in chunk])]
                paired = [_paired(index, stem, hq, img, problems) for (stem, _, hq), img in zip(chunk, restored)]
                evaluator.update(restored, paired)
                for (stem, _, _), img in zip(chunk, restored):
                    if stem in shown:
                        _save_face(out / "faces" / base / variant / f"{stem}.png", img, guard, overwrite)
                if on_progress is not None:
                    on_progress(label, len(chunk))
            results[base][variant] = evaluator.results()
            pairs = max(pairs, max((v.count for m, v in results[base][variant].items() if METRICS[m].kind == "pair"), default=0))
            del restorer
    report = BoostReport(bases, names, len(faces), pairs, results, problems)
    report.files = write_report(report, out, shown, any(hq is not None for _, _, hq in faces[:html_faces]), overwrite)
    return report


def _read_faces(
    data: Path | str, lq_paths: list[Path], index: dict[str, Path], problems: list[str]
) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """(stem, LQ, HQ or None) of every readable face, held in memory: aligned crops are small."""
    faces = [(path.stem, rgb, read_reference(index, path.stem, problems)) for path, rgb in read_rgb(lq_paths, problems)]
    if not faces:
        raise InputError(f"{one_line(data)}: none of its images could be read")
    return faces


def _checked_bases(bases: Sequence[str], refiner: Path | str, out: Path, overwrite: bool) -> list[str]:
    """The base names to compare, after the checks that need no model: one line for each mistake."""
    bases = [b.strip() for b in bases if b.strip()]
    if not bases:
        raise UsageError("no base given; pass --base NAME[,NAME…] (e.g. gfpgan,codeformer)")
    if len(set(bases)) != len(bases):
        raise UsageError(f"a base is listed twice in {','.join(bases)}")
    if not Path(refiner).is_dir():
        raise UsageError(
            f"{one_line(refiner)}: no such refiner folder; "
            "train one or make a tiny test one with `bfrboost refiner init --tiny DIR`"
        )
    existing = [name for name in OUTPUT_FILES if (out / name).exists()]
    if existing and not overwrite:
        raise UsageError(f"{one_line(out / existing[0])}: already exists; pass --overwrite or choose another -o")
    return bases


def _paired(
    index: dict[str, Path], stem: str, hq: np.ndarray | None, restored: np.ndarray, problems: list[str]
) -> np.ndarray | None:
    """The reference face to pair with ``restored``, or None (noted once in ``problems``) when the sizes differ."""
    if hq is None or hq.shape == restored.shape:
        return hq
    mismatch = (
        f"{one_line(index[stem])}: {hq.shape[1]}×{hq.shape[0]} but the restored face is "
        f"{restored.shape[1]}×{restored.shape[0]}; left out of paired metrics"
    )
    if mismatch not in problems:
        problems.append(mismatch)
    return None


def _save_face(path: Path, rgb: np.ndarray, guard: InputGuard, overwrite: bool) -> None:
    guard.check(path)
    write_image(path, rgb, overwrite=overwrite)
