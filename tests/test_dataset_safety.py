"""`restore-dataset` never writes over an input: list paths confined under DST, DST outside SRC, name
collisions planned like `restore`, a damaged manifest is one line and rebuildable, a killed job keeps its rows."""

from __future__ import annotations

import shutil
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bfrboost.cli import app
from bfrboost.runners.dataset import stages as ds

runner = CliRunner()
pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow comes with ray[data]")


def photo(testdata: Path) -> bytes:
    return (testdata / "aligned" / "0143.png").read_bytes()


@pytest.fixture
def tree(testdata: Path, tmp_path: Path) -> Path:
    """root/src/q.png, root/A/p.png, root/B/p.png, root/lists/list.txt naming them (and a missing one, a folder)."""
    for rel in ("src/q.png", "A/p.png", "B/p.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(photo(testdata))
    (tmp_path / "lists").mkdir()
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "lists" / "list.txt").write_text(
        f"../src/q.png\n{tmp_path / 'A' / 'p.png'}\n{tmp_path / 'B' / 'p.png'}\n../gone.png\n../folder.png\n"
    )
    return tmp_path


def test_list_paths_stay_under_dst_and_collisions_fail_the_second_entry(tree: Path) -> None:
    plan = ds.plan_dataset(str(tree / "lists" / "list.txt"), str(tree / "src"), overwrite=True)
    # DST = root/src: `../src/q.png` would once have been written to DST/../src/q.png, the input itself
    assert [row["error"] if row else None for row in plan.rows] == [
        f"{tree / 'src' / 'q.png'}: would overwrite the input {tree / 'lists' / '../src/q.png'}; "
        "choose a DST outside the inputs' folders",
        None,
        f"{tree / 'B' / 'p.png'}: its output {tree / 'src' / 'p.png'} is already taken by {tree / 'A' / 'p.png'}; "
        "restore it separately or give it another name",
        f"{tree / 'lists' / '../gone.png'}: no such file or folder; fix or remove line 4 of {tree / 'lists' / 'list.txt'}",
        f"{tree / 'lists' / '../folder.png'}: is a folder, not an image file; list its images one per line, "
        "or give the folder as SRC",
    ]
    assert plan.todo == [{"index": 1, "source": str(tree / "A" / "p.png"), "rel": "p.png", "output": str(tree / "src" / "p.png")}]
    elsewhere = ds.plan_dataset(str(tree / "lists" / "list.txt"), str(tree / "dst"))
    assert [item["output"] for item in elsewhere.todo] == [str(tree / "dst" / "q.png"), str(tree / "dst" / "p.png")]


@pytest.mark.parametrize("inside", ["", "out"])
def test_dst_equal_to_or_inside_src_is_refused(tree: Path, inside: str) -> None:
    dst = tree / "src" / inside if inside else tree / "src"
    result = runner.invoke(app, ["restore-dataset", str(tree / "src"), str(dst), "--base", "none", "--overwrite"])
    assert result.exit_code == 2
    where = "is SRC itself" if not inside else f"is inside SRC ({tree / 'src'})"
    assert result.stderr == (
        f"bfrboost: {dst}: the output folder {where}: outputs would replace inputs or be read as inputs by the "
        "next run; choose a DST outside SRC\n"
    )
    assert (tree / "src" / "q.png").read_bytes() == (tree / "A" / "p.png").read_bytes()


def test_a_damaged_manifest_is_one_line_and_rebuildable(tree: Path) -> None:
    dst = tree / "dst"
    dst.mkdir()
    shutil.copy(tree / "src" / "q.png", dst / "q.png")  # the output of an earlier run
    (dst / "manifest.parquet").write_bytes(b"PAR1 not really")
    result = runner.invoke(app, ["restore-dataset", str(tree / "src"), str(dst), "--base", "none"])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"bfrboost: {dst / 'manifest.parquet'}: damaged manifest (")
    assert (
        result.stderr.endswith("); pass --rebuild-manifest to rebuild it from the outputs in DST\n")
        and result.stderr.count("\n") == 1
    )
    rebuilt = runner.invoke(app, ["restore-dataset", str(tree / "src"), str(dst), "--base", "none", "--rebuild-manifest"])
    assert rebuilt.exit_code == 0, rebuilt.output
    rows = pq.read_table(dst / "manifest.parquet").to_pylist()
    assert [(r["rel"], r["output"], r["skipped"]) for r in rows] == [
        ("q.png", str(dst / "q.png"), f"{dst / 'q.png'}: already exists; pass --overwrite to replace it")
    ]


def test_a_killed_job_keeps_the_manifest_rows_of_what_it_finished(tree: Path, monkeypatch) -> None:
    from bfrboost.reports import FileReport
    from bfrboost.runners.dataset import cluster as distributed

    def stopped_after_one(ray, todo, *args):
        first = todo[0]
        Path(first["output"]).parent.mkdir(parents=True, exist_ok=True)
        Path(first["output"]).write_bytes(b"restored")
        yield {
            **ds.manifest_row(FileReport(input=first["source"], output=first["output"]), first["rel"]),
            "index": first["index"],
        }
        raise KeyboardInterrupt

    monkeypatch.setattr(distributed, "_ray", lambda: types.SimpleNamespace(is_initialized=lambda: True))
    monkeypatch.setattr(distributed, "_run", stopped_after_one)
    dst = tree / "dst"
    with pytest.raises(KeyboardInterrupt):
        distributed.restore_dataset(str(tree / "lists" / "list.txt"), str(dst))
    rows = pq.read_table(dst / "manifest.parquet").to_pylist()
    done = [r for r in rows if r["error"] is None]
    assert [(r["rel"], r["output"]) for r in done] == [("q.png", str(dst / "q.png"))]
    assert {r["input"] for r in rows if r["error"]} == {
        str(tree / "B" / "p.png"),
        str(tree / "lists" / "../gone.png"),
        str(tree / "lists" / "../folder.png"),
    }
    # the next run keeps the finished row (done by an earlier run) and does the rest
    monkeypatch.setattr(
        distributed,
        "_run",
        lambda ray, todo, *args: iter(
            [{**ds.manifest_row(FileReport(input=t["source"], output=t["output"]), t["rel"]), "index": t["index"]} for t in todo]
        ),
    )
    reports = distributed.restore_dataset(str(tree / "lists" / "list.txt"), str(dst))
    assert reports[0].skipped == f"{dst / 'q.png'}: done by an earlier run; pass --overwrite to redo it"
    assert [r.output for r in reports] == [str(dst / "q.png"), str(dst / "p.png"), None, None, None]
    assert [r["input"] for r in pq.read_table(dst / "manifest.parquet").to_pylist()] == [r.input for r in reports]
