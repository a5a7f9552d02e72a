"""collect_inputs: files, folders, globs, recursion, duplicates and the problems reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from bfrboost.io.inputs import collect_inputs


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """photos/ with images, a non-image, hidden files, a sub-folder; empty/ and nested/ (images only deeper)."""
    for name in [
        "photos/b.PNG", "photos/a.jpg", "photos/notes.txt", "photos/.hidden.jpg", "photos/.x.png.1a2b.tmp",
        "photos/sub/c.webp", "photos/sub/deeper/d.tiff", "photos/.git/e.png",
        "nested/inner/f.jpeg",
    ]:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not decoded here")
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_folders_sorted_and_filtered_by_extension(tree: Path) -> None:
    assert collect_inputs(["photos"]) == ([Path("photos/a.jpg"), Path("photos/b.PNG")], [])
    paths, problems = collect_inputs(["photos"], recursive=True)
    assert paths == [Path(p) for p in ["photos/a.jpg", "photos/b.PNG", "photos/sub/c.webp", "photos/sub/deeper/d.tiff"]]
    assert problems == []


def test_explicit_files_are_kept_whatever_their_extension(tree: Path) -> None:
    """Naming a file is a request: reading it will say if it is no image."""
    assert collect_inputs(["photos/notes.txt", "photos/sub/c.webp"]) == (
        [Path("photos/notes.txt"), Path("photos/sub/c.webp")], []
    )


def test_globs(tree: Path) -> None:
    assert collect_inputs(["photos/*.jpg"]) == ([Path("photos/a.jpg")], [])
    assert collect_inputs(["photos/*"])[0] == [Path("photos/a.jpg"), Path("photos/b.PNG")]  # no txt, no folders
    assert collect_inputs(["photos/**/*.webp"])[0] == [Path("photos/sub/c.webp")]
    assert collect_inputs([str(tree / "photos" / "sub" / "*" / "*.tiff")])[0] == [tree / "photos/sub/deeper/d.tiff"]


def test_problems_are_reported_and_the_rest_kept(tree: Path) -> None:
    paths, problems = collect_inputs(["missing.jpg", "empty", "photos/a.jpg", "nested", "*.gif", "photos/sub/deeper"])
    assert paths == [Path("photos/a.jpg"), Path("photos/sub/deeper/d.tiff")]
    assert problems == [
        "missing.jpg: no such file or folder; check the path",
        "empty: folder has no images",
        "nested: folder has no images (pass --recursive to look in subfolders)",
        "*.gif: pattern matches no images; check the pattern (quote it so the shell does not expand it)",
    ]
    assert collect_inputs(["nested"], recursive=True) == ([Path("nested/inner/f.jpeg")], [])


def test_duplicates_are_dropped_keeping_the_first(tree: Path) -> None:
    paths, problems = collect_inputs(["photos/b.PNG", "photos", "photos/*.jpg", str(tree / "photos" / "a.jpg"), "./photos/b.PNG"])
    assert paths == [Path("photos/b.PNG"), Path("photos/a.jpg")]
    assert problems == []


def test_an_unreadable_subfolder_is_reported_not_skipped(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    real_scandir = os.scandir

    def scandir(path="."):
        if str(path).endswith("deeper"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    paths, problems = collect_inputs(["photos"], recursive=True)
    assert paths == [Path("photos/a.jpg"), Path("photos/b.PNG"), Path("photos/sub/c.webp")]
    assert problems == ["photos/sub/deeper: cannot read folder (Permission denied); check its permissions"]
    assert problems[0].input == "photos/sub/deeper"
