"""Output planning for every runner: the names of an input's outputs, the claims that keep two
inputs from sharing one, and the input guard that keeps an output off every input.

GFPGAN's layout: ``OUTDIR/restored_imgs/NAME[_SUFFIX].EXT`` (+ ``cropped_faces/``, ``restored_faces/``,
``cmp/``); video clips go to ``OUTDIR/restored_videos/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bfrboost.errors import OutputError
from bfrboost.safety import InputGuard, one_line


def plan_output(
    input_path: Path | str, outdir: Path | str, subdir: str | None = "restored_imgs", suffix: str | None = None, ext: str = "png"
) -> Path:
    """GFPGAN's layout: ``OUTDIR/SUBDIR/NAME[_SUFFIX].EXT`` (no SUBDIR level when it is empty)."""
    stem = "stdin" if str(input_path) == "-" else Path(input_path).stem
    name = f"{stem}_{suffix}.{ext}" if suffix else f"{stem}.{ext}"
    return Path(outdir) / subdir / name if subdir else Path(outdir) / name
OUTPUT_SUBDIRS = ("restored_imgs", "cropped_faces", "restored_faces", "cmp")


@dataclass(frozen=True)
class OutputPlan:
    """Every file one input will produce, known before anything is written.

    ``image`` is ``OUTDIR/restored_imgs/NAME[_SUFFIX].EXT``; per face ``i`` (count known after
    detection) ``cropped_faces/STEM_ii.png``, ``restored_faces/STEM_ii[_SUFFIX].png`` and
    ``cmp/STEM_ii.png`` when asked for. ``face_key`` is what two inputs must not share (same stem
    → same face files).
    """

    image: Path
    outdir: Path
    stem: str
    suffix: str | None = None
    save_faces: bool = False
    save_cmp: bool = False

    @property
    def face_key(self) -> str | None:
        return self.stem if self.save_faces or self.save_cmp else None

    def face_files(self, index: int) -> dict[str, Path]:
        """The files of face ``index``, by kind: "cropped", "restored", "cmp"."""
        name = f"{self.stem}_{index:02d}"
        files: dict[str, Path] = {}
        if self.save_faces:
            files["cropped"] = self.outdir / "cropped_faces" / f"{name}.png"
            files["restored"] = self.outdir / "restored_faces" / f"{name}{'_' + self.suffix if self.suffix else ''}.png"
        if self.save_cmp:
            files["cmp"] = self.outdir / "cmp" / f"{name}.png"
        return files


class Claims:
    """Outputs already promised to earlier inputs of this run, and the run's input guard."""

    def __init__(self, guard: InputGuard) -> None:
        self.guard = guard
        self._images: dict[Path, Path] = {}
        self._faces: dict[str, Path] = {}

    def claim(self, path: Path, plan: OutputPlan) -> None:
        self.guard.check(plan.image)
        owner = self._images.get(plan.image)
        if owner is not None:
            raise OutputError(f"{one_line(path)}: its output {one_line(plan.image)} is already taken by {one_line(owner)}; restore it separately or with --suffix")
        key = plan.face_key
        if key is not None and key in self._faces:
            raise OutputError(
                f"{one_line(path)}: its face files ({key}_NN.png) are already taken by {one_line(self._faces[key])}; "
                "restore it separately or rename it"
            )
        self._images[plan.image] = path
        if key is not None:
            self._faces[key] = path
