"""`pip install .` (not editable) works: the wheel carries the model cards and the installed tool reads them.

The wheel is built without build isolation (hatchling comes with the dev extra) and installed with
``--no-deps`` into a fresh venv that sees this environment's packages through a path file, so torch and
the other dependencies are not downloaded again: no network, a few seconds.
"""

from __future__ import annotations

import json
import os
import re
import site
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CARDS = sorted(path.name for path in (REPO / "backbones").glob("*.toml"))

pytestmark = pytest.mark.packaging


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement string (``dlib-bin>=19.24`` → ``dlib-bin``)."""
    return re.split(r"[\s;<>=!~\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_make_demo_installs_only_declared_dependencies():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    declared = {_name(dep) for dep in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
    makefile = (REPO / "Makefile").read_text().replace("\\\n", " ")
    demo = re.search(r"^DEMO_NEEDS := (.+)$", makefile, re.MULTILINE).group(1).split()
    undeclared = {_name(name) for name in demo} - declared
    assert demo and not undeclared, f"Makefile DEMO_NEEDS names packages pyproject does not declare: {sorted(undeclared)}"


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("hatchling", reason="the wheel is built with hatchling: pip install -e '.[dev]'")
    outdir = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(outdir), str(REPO)], REPO)
    (built,) = outdir.glob("bfrboost-*.whl")
    return built


def test_the_wheel_holds_every_model_card(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert sorted(Path(name).name for name in names if name.startswith("bfrboost/_cards/") and name.endswith(".toml")) == CARDS
    assert not [name for name in names if name.startswith(("tests/", "bench/", "docs/", "weights/"))]


def test_the_installed_wheel_lists_the_weights_from_its_cards(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path).stdout.strip()
    # this environment's site-packages after the venv's own: the dependencies without a download, while
    # bfrboost comes from the wheel (the editable install's own path file is not processed from here)
    outer = [path for path in [*site.getsitepackages(), sysconfig.get_path("purelib")] if path != purelib]
    Path(purelib, "_outer_env.pth").write_text("\n".join(dict.fromkeys(outer)) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)], tmp_path)

    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(BFRBOOST_HOME=str(tmp_path / "cache"), BFRBOOST_OFFLINE="1")
    where = _run([str(python), "-c", "import bfrboost; print(bfrboost.__file__)"], tmp_path, env).stdout.strip()
    assert Path(where).is_relative_to(env_dir), f"bfrboost imported from {where}, not from the installed wheel"
    listed = json.loads(_run([str(env_dir / "bin" / "bfrboost"), "weights", "list", "--json"], tmp_path, env).stdout)
    assert {row["card"] for row in listed} == {name.removesuffix(".toml") for name in CARDS}
    gfpgan = next(row for row in listed if row["file"] == "GFPGANv1.4.pth")
    assert gfpgan["license"] == "Apache-2.0" and len(gfpgan["sha256"]) == 64 and not gfpgan["cached"]

    # and the installed tool restores a photo end to end: the demo's photo, base none, twice the size
    _run([str(python), "-m", "bfrboost.demo", "examples"], tmp_path, env)
    restore = [str(env_dir / "bin" / "bfrboost"), "restore", "examples/astronaut_degraded.jpg", "-o", "out", "--base", "none"]
    (line,) = _run([*restore, "--json"], tmp_path, env).stdout.splitlines()
    assert json.loads(line)["error"] is None and len(json.loads(line)["faces"]) == 1
    with Image.open(tmp_path / "out" / "restored_imgs" / "astronaut_degraded.jpg") as restored:
        assert restored.size == (512, 512)  # the 256×256 demo photo at the default upscale of 2
