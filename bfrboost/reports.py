"""The one report type every runner (image files, stdin, video, datasets) and the CLI share.

A :class:`FileReport` is what happened to one input; its :meth:`FileReport.to_json` is the ``--json``
line, and :func:`summary` the closing lines on stderr.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bfrboost.faces.types import Face
from bfrboost.safety import one_line


@dataclass
class FileReport:
    """What happened to one input: the ``--json`` line and the summary are built from it.

    ``output`` is the main output once it exists (for a skipped input: the existing file that made
    it skip), else ``None``; ``files`` lists every file this run wrote for the input (all of them or
    none, see :class:`bfrboost.safety.OutputSet`); ``error`` (failed) and ``skipped`` (nothing done,
    e.g. the output already exists) each hold one line saying why and what to do.
    """

    input: str
    output: str | None = None
    width: int | None = None
    height: int | None = None
    faces: list[Face] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    skipped: str | None = None
    files: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # runner-specific fields (frames, files written …)

    @property
    def done(self) -> bool:
        return self.error is None and self.skipped is None

    def to_json(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "output": self.output,
            "width": self.width,
            "height": self.height,
            "faces": [
                {
                    "box": [round(float(v), 2) for v in face.box],
                    "score": round(float(face.score), 4),
                    "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in face.landmarks],
                }
                for face in self.faces
            ],
            "seconds": {k: round(v, 4) for k, v in self.seconds.items()},
            "error": self.error,
            "skipped": self.skipped,
            "files": list(self.files),
            **self.extra,
        }


def summary(reports: Sequence[FileReport], seconds: float, problems: Sequence[str] = (), noun: str = "image") -> str:
    """Counts, seconds per stage and one line per failure (the input once, then why).

    ``problems``: inputs that failed before a report existed (while collecting paths)."""
    done = [r for r in reports if r.done]
    failed = [r for r in reports if r.error is not None]
    skipped = [r for r in reports if r.skipped is not None]
    stages: dict[str, float] = {}
    for report in reports:
        for stage, secs in report.seconds.items():
            stages[stage] = stages.get(stage, 0.0) + secs
    lines = [
        f"{len(done)} {noun}(s) restored, {sum(r.extra.get('face_count', len(r.faces)) for r in done)} face(s), "
        f"{len(failed) + len(problems)} failed, {len(skipped)} skipped, {seconds:.2f} s"
    ]
    if stages:
        lines.append("seconds per stage: " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))
    if failed or problems:
        lines.append("failed:")
        lines += [f"  {one_line(r.input)}: {reason(r)}" for r in failed] + [f"  {one_line(p)}" for p in problems]
    return "\n".join(lines)


def reason(report: FileReport) -> str:
    """The error (or skip reason) without a leading copy of the input's name (messages usually start
    with it), so a line that names the input first does not name it twice."""
    text = report.error or report.skipped or ""
    prefix = f"{one_line(report.input)}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def problem_report(problem: str) -> FileReport:
    """The report of an input that failed before it had one (while collecting paths): its ``--json``
    object, so every input gets exactly one. ``problem`` may be an :class:`~bfrboost.io.read.InputProblem`."""
    return FileReport(input=getattr(problem, "input", str(problem)), error=str(problem))
