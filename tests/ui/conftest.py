"""Web-app fixtures: the CLI's output for given options, to compare the page's result with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bfrboost.cli import app
from tests.test_background import cached  # noqa: F401  (fixture: Real-ESRGAN checkpoints with official key names)


def cli_restore(source: Path, outdir: Path, *options: str) -> tuple[Path, dict]:
    """``bfrboost restore SOURCE --json OPTIONS``: the written file and its JSON line."""
    result = CliRunner().invoke(app, ["restore", str(source), "-o", str(outdir), "--json", *options], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    line = json.loads(result.stdout.strip().splitlines()[-1])
    return Path(line["output"]), line


@pytest.fixture
def cli():
    return cli_restore
