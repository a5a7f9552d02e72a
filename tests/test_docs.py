"""The documentation: the CLI reference matches the app, the site builds in strict mode, the README stays short."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REGENERATE = "python docs/gen_cli_reference.py"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_cli_reference", REPO / "docs" / "gen_cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_matches_the_app():
    checked_in = (REPO / "docs" / "cli-reference.md").read_text(encoding="utf-8")
    assert _generator().render() == checked_in, (
        f"docs/cli-reference.md is out of date with the CLI's options; regenerate it: {REGENERATE}"
    )


def test_cli_reference_lists_every_command_and_option_of_restore():
    from typer.main import get_command

    from bfrboost.cli import app

    page = _generator().render()
    root = get_command(app)
    ctx = root.make_context("bfrboost", [], resilient_parsing=True)
    for name in root.list_commands(ctx):
        assert f"## `bfrboost {name}`" in page
    restore = root.get_command(ctx, "restore")
    section = page.split("## `bfrboost restore`", 1)[1].split("\n## ", 1)[0]
    for param in restore.params:
        assert f"`{param.opts[-1]}" in section or f" {param.opts[-1]}" in section, param.opts


def test_docs_site_builds_in_strict_mode(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra is missing: pip install -e '.[docs]'")
    pytest.importorskip("mkdocs_include_markdown_plugin", reason="the docs extra is missing: pip install -e '.[docs]'")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed (make docs):\n{result.stderr[-3000:]}"
    index = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert 'src="before_after.jpg"' in index and 'href="cli-reference/"' in index
    assert (tmp_path / "site" / "changelog" / "index.html").is_file()


def test_readme_fits_on_a_few_screens():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move the detail into docs/ (at most 250)"
