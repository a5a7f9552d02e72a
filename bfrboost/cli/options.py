"""Typer option declarations shared by commands that take the same restoration settings
(`restore`, `restore-dataset`): one place for each flag's name, bounds and help."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Refine = Annotated[bool | None, typer.Option("--refine/--no-refine", help="Run the InfoBFR refiner after the base model (default: when --refiner is given).", show_default=False)]
RefinerStrength = Annotated[float, typer.Option("--refiner-strength", min=0.0, max=1.0, help="Blend: 0 = base output, 1 = fully refined.")]
BgUpsampler = Annotated[str, typer.Option("--bg-upsampler", help="Background upsampler: none (Lanczos resize) or realesrgan (Real-ESRGAN x2/x4plus).")]
Aligned = Annotated[bool, typer.Option("--aligned", help="Inputs are aligned 512×512 face crops: skip detection.")]
OnlyCenterFace = Annotated[bool, typer.Option("--only-center-face", help="Restore only the face nearest the image centre.")]
MinFace = Annotated[int, typer.Option("--min-face", min=0, help="Ignore faces whose box is smaller than PX pixels.")]
Paste = Annotated[str, typer.Option("--paste", help="Paste-back: residual (adds restored − crop to the photo, keeps detail finer than the 512 crop) or direct (replaces pixels, like facexlib).")]
ColorMatch = Annotated[bool, typer.Option("--color-match", help="Match each restored face's colour statistics to the original face.")]
Detector = Annotated[str, typer.Option("--detector", help="Face detector: auto, dlib, retinaface_resnet50, retinaface_mobile0.25.")]
Fidelity = Annotated[float | None, typer.Option("--fidelity", help="Fidelity of the base: CodeFormer w, VQFR fidelity_ratio, in [0, 1].")]
Knob = Annotated[list[str] | None, typer.Option("--knob", help="Base-model knob NAME=VALUE (e.g. steps=50, seed=0); repeatable.")]
BatchSize = Annotated[int | None, typer.Option("--batch-size", min=1, help="Faces per base-model batch (default by device).")]
Quality = Annotated[int, typer.Option("--quality", min=1, max=100, help="JPEG/WebP quality.")]
MaxPixels = Annotated[int | None, typer.Option("--max-pixels", min=1, help="Refuse images larger than this many pixels (decompression-bomb guard).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object per image on stdout (JSON lines).")]
FaceIndex = Annotated[int | None, typer.Option(
    "--face-index", min=0, show_default=False,
    help="Restore only the N-th face counted left to right (0 = leftmost), after --min-face.")]
Largest = Annotated[bool, typer.Option("--largest", help="Restore only the face with the largest box.")]
Person = Annotated[list[Path] | None, typer.Option(
    "--person", show_default=False,
    help="Restore only the person in this reference photo (its largest face); repeatable, one person per photo.")]
PersonModel = Annotated[str, typer.Option(
    "--person-model", help="Identity model for --person: dlib (no download) or arcface (bfrboost weights download arcface).")]
PersonThreshold = Annotated[float | None, typer.Option(
    "--person-threshold", min=-1.0, max=1.0, show_default=False,
    help="Cosine similarity a face needs to match --person (default: dlib 0.91, arcface 0.40; see docs/faces.md).")]
Blend = Annotated[float, typer.Option(
    "--blend", min=0.0, max=1.0, help="Mix of restored and original face: 1 = restored, 0 = original.")]
