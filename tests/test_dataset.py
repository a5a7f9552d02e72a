"""`restore-dataset` on Ray Data (local, 2 CPUs): same images as `restore`, relative paths, manifest, resume."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bfrboost.cli import app

ray = pytest.importorskip("ray", reason="Ray Data is the optional extra: pip install -e '.[cluster]' (make test installs it)")
pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow comes with ray[data]")


@pytest.fixture(scope="module")
def local_ray():
    from bfrboost.runners.dataset.cluster import keeping_signal_handlers

    with keeping_signal_handlers():  # ray.init installs its own SIGTERM handler in the driver
        ray.init(num_cpus=2, include_dashboard=False)
    yield
    with keeping_signal_handlers():
        ray.shutdown()


@pytest.fixture
def source(testdata: Path, tmp_path: Path) -> Path:
    """whole/ spread over two sub-folders (links, not copies) with an undecodable file among them."""
    photos = sorted((testdata / "whole").iterdir())
    root = tmp_path / "src"
    for index, photo in enumerate(photos):
        folder = root / ("one" if index % 2 else "two/deeper")
        folder.mkdir(parents=True, exist_ok=True)
        os.symlink(photo, folder / photo.name)
    (root / "one" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    return root


def test_dataset_matches_cli_keeps_paths_lists_failures_and_resumes(local_ray, source: Path, testdata: Path, tmp_path: Path) -> None:
    from bfrboost.runners.dataset.cluster import restore_dataset

    cli = CliRunner().invoke(app, ["restore", str(testdata / "whole"), "-o", str(tmp_path / "cli"), "--base", "none"], catch_exceptions=False)
    assert cli.exit_code == 0, cli.stderr
    dst = tmp_path / "dst"
    reports = restore_dataset(str(source), str(dst), base="none")
    solvay_report = next(r for r in reports if r.input.endswith("Solvay_conference_1927.png"))
    assert len(solvay_report.faces) >= 25 and solvay_report.done

    rels = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file() or p.is_symlink())
    assert [r.extra["rel"] for r in reports] == rels
    written = sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file() and p.name != "manifest.parquet")
    assert written == [rel for rel in rels if not rel.endswith("broken.png")]
    for rel in written:
        assert (dst / rel).read_bytes() == (tmp_path / "cli" / "restored_imgs" / Path(rel).name).read_bytes(), rel

    manifest = {row["rel"]: row for row in pq.read_table(dst / "manifest.parquet").to_pylist()}
    assert sorted(manifest) == rels
    bad = manifest["one/broken.png"]
    assert bad["output"] is None and bad["error"].startswith(f"{source / 'one' / 'broken.png'}: damaged image data (unreadable PNG header)")
    solvay = manifest["one/Solvay_conference_1927.png"]
    assert solvay["error"] is None and len(json.loads(solvay["faces"])) >= 25 and solvay["width"] > 0
    assert set(json.loads(solvay["seconds"])) >= {"decode", "detect", "align", "base", "paste", "encode"}

    stamps = {rel: (dst / rel).stat().st_mtime_ns for rel in written}
    again = CliRunner().invoke(app, ["restore-dataset", str(source), str(dst), "--base", "none", "--json"], catch_exceptions=False)
    assert again.exit_code == 1  # the broken file still fails
    lines = [json.loads(line) for line in again.stdout.splitlines()]
    assert [bool(line["skipped"]) for line in lines] == [not rel.endswith("broken.png") for rel in rels]
    assert {rel: (dst / rel).stat().st_mtime_ns for rel in written} == stamps
    kept = {row["rel"]: row for row in pq.read_table(dst / "manifest.parquet").to_pylist()}
    assert kept["one/Solvay_conference_1927.png"] == solvay  # the earlier run's row is kept
    assert "1 failed" in again.stderr and "one/broken.png: damaged image data" in again.stderr


def test_list_file_entries_keep_their_relative_paths(tmp_path: Path) -> None:
    from bfrboost.runners.dataset.stages import Item, list_items, output_location

    listing = tmp_path / "photos.txt"
    listing.write_text("# scans\nfamily/a.jpg\n\n/abs/where/b.png\ns3://bucket/x/c.tif\n")
    assert list_items(str(listing)) == [
        Item(str(tmp_path / "family" / "a.jpg"), "family/a.jpg"),
        Item("/abs/where/b.png", "b.png"),
        Item("s3://bucket/x/c.tif", "c.tif"),
    ]
    assert output_location("s3://out/run1/", "family/a.gif") == "s3://out/run1/family/a.png"
    assert output_location(str(tmp_path), "family/a.jpg", ext="webp") == str(tmp_path / "family" / "a.webp")


def test_uri_paths_list_read_write_through_pyarrow(tmp_path: Path, monkeypatch) -> None:
    """The object-storage code path, with pyarrow's local filesystem standing in for s3://."""
    from pyarrow import fs

    from bfrboost.reports import FileReport
    from bfrboost.runners.dataset import stages as dataset

    local = fs.LocalFileSystem()
    monkeypatch.setattr(dataset, "filesystem", lambda uri: (local, str(tmp_path) + uri.split("://", 1)[1][len("bucket"):]))
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "sub" / "a.jpg").write_bytes(b"jpeg bytes")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    items = dataset.list_items("s3://bucket/in")
    assert items == [dataset.Item("s3://bucket/in/sub/a.jpg", "sub/a.jpg")]
    assert dataset.read_bytes(items[0].source) == b"jpeg bytes"
    target = dataset.output_location("s3://bucket/out", "sub/a.jpg")
    assert not dataset.exists(target)
    dataset.write_remote(target, b"restored")
    assert dataset.exists(target) and (tmp_path / "out" / "sub" / "a.jpg").read_bytes() == b"restored"
    assert [p.name for p in (tmp_path / "out" / "sub").iterdir()] == ["a.jpg"]  # the temp key was moved, not left
    dataset.write_manifest("s3://bucket/out", [dataset.manifest_row(FileReport(input=items[0].source, output=target), "sub/a.jpg")])
    assert [row["rel"] for row in dataset.read_manifest("s3://bucket/out")] == ["sub/a.jpg"]
