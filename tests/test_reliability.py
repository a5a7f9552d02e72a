"""Issue 8: no input overwritten, all-or-none outputs, one JSON object per input, actionable one-line
messages, stdin limits, closed/broken stdout. The signal tests (real subprocesses) are in test_signals.py."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from bfrboost.cli import app

runner = CliRunner()


def run(*args: str, input: bytes | None = None):
    return runner.invoke(app, ["restore", *map(str, args)], input=input, catch_exceptions=False)


def lines(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def messages(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("bfrboost: ")]


@pytest.fixture
def photo(tmp_path: Path, testdata: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(testdata / "whole" / "04.jpg", folder / "04.jpg")
    return folder / "04.jpg"


# ---- 1. the input guard covers every file a run writes -------------------------------------------


def test_an_input_among_the_face_crops_is_never_overwritten(photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    crop = out / "cropped_faces" / "04_00.png"
    crop.parent.mkdir(parents=True)
    Image.new("RGB", (64, 64), "red").save(crop)
    before = crop.read_bytes()
    result = run(photo, crop, "-o", out, "--base", "none", "-s", "1", "--save-faces", "--overwrite", "--json")
    assert crop.read_bytes() == before
    first = lines(result)[0]
    assert "would overwrite the input" in first["error"] and str(crop) in first["error"]
    assert first["output"] is None and first["files"] == []
    assert not (out / "restored_imgs" / "04.jpg").exists()  # all or none: nothing of 04.jpg was written
    assert result.exit_code == 1


# ---- 3. no "failed but wrote" ------------------------------------------------------------------


def test_a_taken_crop_name_fails_the_input_before_anything_is_written(photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    crop = out / "cropped_faces" / "04_00.png"
    crop.parent.mkdir(parents=True)
    crop.write_bytes(b"an earlier crop")
    result = run(photo, "-o", out, "--base", "none", "-s", "1", "--save-faces", "--json")
    assert result.exit_code == 1
    (line,) = lines(result)
    assert line["output"] is None and line["files"] == []
    assert line["error"] == f"{crop}: already exists; pass --overwrite to replace it"
    assert not (out / "restored_imgs").exists() and crop.read_bytes() == b"an earlier crop"
    assert not (out / "restored_faces").exists()


def test_two_inputs_with_the_same_stem_cannot_share_face_files(tmp_path: Path, testdata: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(testdata / "whole" / "04.jpg", tmp_path / "a" / "04.jpg")
    Image.open(testdata / "whole" / "04.jpg").save(tmp_path / "b" / "04.png")
    out = tmp_path / "out"
    result = run(
        tmp_path / "a" / "04.jpg", tmp_path / "b" / "04.png", "-o", out, "--base", "none", "-s", "1", "--save-faces", "--json"
    )
    first, second = lines(result)
    assert first["error"] is None and second["output"] is None and second["files"] == []
    assert "face files" in second["error"] and str(tmp_path / "a" / "04.jpg") in second["error"]
    assert not (out / "restored_imgs" / "04.png").exists()
    assert result.exit_code == 1


def test_json_lists_every_file_written(photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run(photo, "-o", out, "--base", "none", "-s", "1", "--save-faces", "--save-cmp", "--json")
    assert result.exit_code == 0, result.stderr
    (line,) = lines(result)
    written = sorted(str(p) for p in out.rglob("*") if p.is_file())
    assert sorted(line["files"]) == written and len(written) == 4
    assert line["files"][0] == line["output"] == str(out / "restored_imgs" / "04.jpg")


# ---- 4. stdin honours --max-pixels ----------------------------------------------------------------


def test_stdin_honours_max_pixels(testdata: Path) -> None:
    data = (testdata / "whole" / "04.jpg").read_bytes()  # 225×225 = 50625 pixels
    refused = run("-", "--base", "none", "-s", "1", "--max-pixels", "1000", input=data)
    assert refused.exit_code == 1 and refused.stdout_bytes == b""
    assert "<stdin>: image is 225x225" in refused.stderr and "pass --max-pixels 50625" in refused.stderr
    allowed = run("-", "--base", "none", "-s", "1", "--max-pixels", "50625", input=data)
    assert allowed.exit_code == 0 and allowed.stdout_bytes.startswith(b"\x89PNG")


# ---- 5. one JSON object per input ----------------------------------------------------------------


def test_json_has_one_object_per_input_including_collection_failures(photo: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "dangling.jpg").symlink_to(bad / "gone.jpg")
    (bad / "folder.jpg").mkdir()
    os.mkfifo(bad / "pipe.png")
    (bad / "empty.png").write_bytes(b"")
    inputs = [photo, bad / "missing.jpg", bad / "dangling.jpg", bad / "folder.jpg", bad / "pipe.png", bad / "empty.png"]
    result = run(*inputs, "-o", tmp_path / "out", "--base", "none", "-s", "1", "--json")
    assert result.exit_code == 1
    objects = lines(result)
    assert sorted(o["input"] for o in objects) == sorted(map(str, inputs))
    by_input = {o["input"]: o for o in objects}
    assert by_input[str(photo)]["error"] is None
    expected = {
        "missing.jpg": f"{bad / 'missing.jpg'}: no such file or folder; check the path",
        "dangling.jpg": f"{bad / 'dangling.jpg'}: broken symbolic link (its target {bad / 'gone.jpg'} does not exist); fix or remove the link",
        "folder.jpg": f"{bad / 'folder.jpg'}: folder has no images",
        "pipe.png": f"{bad / 'pipe.png'}: is a named pipe (FIFO), not a regular file; save the image to a file, or pipe it in with '-'",
        "empty.png": f"{bad / 'empty.png'}: empty file (0 bytes); re-export or re-download it",
    }
    for name, error in expected.items():
        obj = by_input[str(bad / name)]
        assert obj["error"] == error
        assert obj["output"] is None and obj["files"] == [] and obj["skipped"] is None
        assert set(obj) == set(by_input[str(photo)])


def test_special_files_inside_folders_are_reported(tmp_path: Path) -> None:
    from bfrboost.io.inputs import collect_inputs

    folder = tmp_path / "photos"
    folder.mkdir()
    os.mkfifo(folder / "pipe.jpg")
    (folder / "link.png").symlink_to(folder / "nowhere.png")
    paths, problems = collect_inputs([str(folder)])
    assert paths == []
    assert [p.input for p in problems] == [str(folder / "link.png"), str(folder / "pipe.jpg")]
    assert "named pipe (FIFO)" in problems[1] and "broken symbolic link" in problems[0]


def test_skipped_input_says_why_and_keeps_the_existing_output(photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run(photo, "-o", out, "--base", "none", "-s", "1").exit_code == 0
    result = run(photo, "-o", out, "--base", "none", "-s", "1", "--json")
    assert result.exit_code == 0
    (line,) = lines(result)
    target = out / "restored_imgs" / "04.jpg"
    assert line["skipped"] == f"{target}: already exists; pass --overwrite to replace it"
    assert line["output"] == str(target) and line["files"] == [] and line["error"] is None


def test_failed_decode_has_no_output(tmp_path: Path, photo: Path) -> None:
    cut = photo.parent / "cut.jpg"
    cut.write_bytes(photo.read_bytes()[:2000])
    result = run(cut, "-o", tmp_path / "out", "--base", "none", "-s", "1", "--json")
    (line,) = lines(result)
    assert line["output"] is None and line["files"] == []
    assert line["error"] == f"{cut}: truncated image data (the file is cut short); re-download or re-export it"


# ---- 6. messages: one line, what to do, no repeated path --------------------------------------------


def test_control_characters_in_names_are_escaped(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "bad\nname\x1b.png").write_bytes(b"")
    result = run(folder, "-o", tmp_path / "out", "--base", "none", "--json")
    assert result.exit_code == 1
    (line,) = messages(result)[:1]
    assert "bad\\nname\\x1b.png: empty file (0 bytes)" in line
    assert "\x1b" not in result.stderr
    summary = [line for line in result.stderr.splitlines() if line.startswith("  ")]
    assert summary == [f"  {folder}/bad\\nname\\x1b.png: empty file (0 bytes); re-export or re-download it"]


def test_summary_names_each_input_once(photo: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.jpg"
    result = run(photo.parent / "gone.png", missing, photo, "-o", tmp_path / "out", "--base", "none", "-s", "1")
    failed = result.stderr.split("failed:\n", 1)[1].splitlines()
    assert failed == [
        f"  {photo.parent / 'gone.png'}: no such file or folder; check the path",
        f"  {missing}: no such file or folder; check the path",
    ]


def test_no_space_left_says_free_space(photo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import bfrboost.io.write as images

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(images, "_save", full)
    out = tmp_path / "out"
    result = run(photo, "-o", out, "--base", "none", "-s", "1", "--json")
    (line,) = lines(result)
    target = out / "restored_imgs" / "04.jpg"
    assert (
        line["error"] == f"{target}: no space left on the device holding {target.parent}; free space there or choose another -o"
    )
    assert [p for p in out.rglob("*") if p.is_file()] == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads everything")
def test_unreadable_file_says_check_permissions(photo: Path, tmp_path: Path) -> None:
    photo.chmod(0)
    try:
        result = run(photo, "-o", tmp_path / "out", "--base", "none", "-s", "1", "--json")
    finally:
        photo.chmod(0o644)
    (line,) = lines(result)
    assert line["error"] == f"{photo}: permission denied; make it readable (chmod u+r) or copy it somewhere you can read"


# ---- 5. stdout closed, reader gone ---------------------------------------------------------------


def test_reader_of_stdout_gone_exits_quietly(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture) -> None:
    """`bfrboost weights list --json | head -0`: EPIPE on stdout ends the command quietly, 141 like SIGPIPE."""
    import io
    import sys

    from bfrboost.cli import main

    read_end, write_end = os.pipe()
    os.close(read_end)
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.FileIO(write_end, "w"), write_through=True))
    monkeypatch.setattr(sys, "argv", ["bfrboost", "weights", "list", "--json"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 141
    assert capfd.readouterr().err == ""


def test_stdin_or_stdout_on_a_terminal_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """`bfrboost restore -` typed without a pipe would wait forever, or print PNG bytes on the terminal."""
    import sys

    import typer

    from bfrboost.cli.restore import restore

    class Terminal:
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal())
    with pytest.raises(typer.Exit) as info:
        restore(["-"], base="none")
    assert info.value.exit_code == 2
    assert capsys.readouterr().err == (
        "bfrboost: '-' reads the image from stdin, which is a terminal; "
        "pipe an image in: bfrboost restore - < photo.jpg > restored.png\n"
    )
    monkeypatch.setattr(sys, "stdin", io.BytesIO(b""))
    monkeypatch.setattr(sys, "stdout", Terminal())
    with pytest.raises(typer.Exit) as info:
        restore(["-"], base="none")
    assert info.value.exit_code == 2
    assert capsys.readouterr().err == (
        "bfrboost: '-' writes the restored image to stdout, which is a terminal; "
        "redirect it: bfrboost restore - < photo.jpg > restored.png\n"
    )
