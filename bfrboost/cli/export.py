"""`bfrboost export onnx`: a base model as an ONNX graph (:func:`bfrboost.onnx.export.export_onnx`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from bfrboost.cli import app
from bfrboost.cli import options as opt
from bfrboost.cli.common import err, fail, writes_files
from bfrboost.errors import BfrboostError
from bfrboost.options import ExportOptions, default_of

OPSET = default_of(ExportOptions, "opset")

if TYPE_CHECKING:
    import numpy as np

export_app = typer.Typer(no_args_is_help=True, help="Export base models for other runtimes.")
app.add_typer(export_app, name="export")


@export_app.command("onnx")
@writes_files
def export_onnx_command(
    base: Annotated[str, typer.Option("--base", help="Base model: gfpgan, gfpgan-1.3, restoreformer, codeformer, gpen, vqfr.")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="ONNX file to write (default: BASE.onnx).")] = None,
    opset: opt.option(int, ExportOptions, "opset") = OPSET,
    fp16: Annotated[bool, typer.Option("--fp16", help="float16 weights and activations (float32 in/out); for GPUs.")] = False,
    weights: Annotated[Path | None, typer.Option("--weights", help="Checkpoint to export instead of the cached one.")] = None,
    check_image: Annotated[Path | None, typer.Option("--check-image", help="Aligned face for the parity check.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
) -> None:
    """Write BASE as an ONNX graph (RGB [0, 1] in and out, fidelity as an input) and print its parity with PyTorch."""
    from bfrboost.onnx.export import export_onnx

    try:
        face = _read_face(check_image) if check_image is not None else None
        report = export_onnx(base, output or Path(f"{base}.onnx"), weights=weights, opset=opset, fp16=fp16,
                             check_face=face, overwrite=overwrite)
    except BfrboostError as exc:
        raise fail(exc) from None
    typer.echo(report.summary())
    if report.precision == "fp32" and report.max_abs_diff > 1e-4:
        err(f"warning: the graph differs from PyTorch by {report.max_abs_diff:.2e} (more than 1e-4)")


def _read_face(path: Path) -> np.ndarray:
    """The check face as RGB uint8 (read through the project's safe image reader)."""
    from bfrboost.io.read import read_image

    return read_image(path).rgb
