"""Weights manager: cards, download/resume/verify against a loopback HTTP server, offline mode, safe loading."""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from bfrboost import weights
from bfrboost.cli import app
from bfrboost.errors import UsageError, WeightsError

REPO = Path(__file__).resolve().parents[1]
PAYLOAD = bytes(range(256)) * 400 + b"tail"  # 102404 known bytes
SHA = hashlib.sha256(PAYLOAD).hexdigest()


# ---- loopback server -----------------------------------------------------------------------------


@dataclass
class Server:
    base: str
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    cut_once: set[str] = field(default_factory=set)  # paths whose first response stops halfway

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"


@pytest.fixture
def server():
    state = Server(base="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            name = self.path.lstrip("/")
            state.requests.append((name, self.headers.get("Range")))
            data = state.files.get(name)
            if data is None:
                self.send_error(404)
                return
            start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-")) if self.headers.get("Range") else 0
            if start >= len(data) and start:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            body = data[start:]
            if name in state.cut_once:  # promise the whole body, send half, hang up
                state.cut_once.discard(name)
                body = body[: len(body) // 2]
                self.close_connection = True
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


def write_card(folder: Path, name: str, entries: list[dict], commercial_use: bool = True) -> None:
    lines = [
        f'name = "{name}"', f'display_name = "{name.upper()}"', 'license = "Test-1.0"',
        f"commercial_use = {'true' if commercial_use else 'false'}", 'homepage = "https://example.org/toy"',
    ]
    for entry in entries:
        lines.append("[[weights]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in entry.items()]
    (folder / f"{name}.toml").write_text("\n".join(lines) + "\n")


@pytest.fixture
def card_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cards"
    folder.mkdir()
    monkeypatch.setattr(weights.catalog, "cards_dir", lambda: folder)
    return folder


def toy(server: Server, card_dir: Path, **entry) -> weights.WeightFile:
    """One-file card 'toy' served by the loopback server; ``entry`` overrides size/sha256."""
    server.files["toy.pth"] = PAYLOAD
    write_card(card_dir, "toy", [{"file": "toy.pth", "url": server.url("toy.pth"), "size": len(PAYLOAD), "sha256": SHA} | entry])
    return weights.manifest()["toy.pth"]


# ---- real model cards ----------------------------------------------------------------------------


def test_real_cards_parse_and_every_entry_has_a_url():
    all_cards = weights.cards()
    assert weights.cards_dir() == REPO / "backbones"
    assert {"retinaface", "parsenet", "realesrgan", "sd21"} <= all_cards.keys()
    for card in all_cards.values():
        assert card.weights, card.name
        for entry in card.weights:
            assert entry.url.startswith("https://"), entry.file
    files = weights.manifest()
    assert files["detection_Resnet50_Final.pth"].sha256 == "6d1de9c2944f2ccddca5f5e010ea5ae64a39845a86311af6fdf30841b0a5a16d"
    assert files["RealESRGAN_x4plus.pth"].size == 67040989
    assert [e.file for e in all_cards["sd21"].weights] == [
        "sd21/vae/config.json", "sd21/vae/diffusion_pytorch_model.safetensors", "sd21/unet/config.json",
        "sd21/unet/diffusion_pytorch_model.safetensors", "sd21/scheduler/scheduler_config.json",
    ]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"file": "../evil.pth", "url": "https://x/y"}, "must be a relative path inside the cache"),
        ({"file": "a.pth", "url": "https://x/y", "sha256": "ABC"}, "'sha256' must be 64 lowercase hex digits"),
        ({"file": "a.pth", "url": "https://x/y", "sha": "0" * 64}, "unknown [[weights]] key(s) sha"),
        ({"file": "a.pth", "url": "ftp://x/y"}, "'url' must be an http(s) URL"),
    ],
)
def test_bad_cards_are_refused_with_one_line(card_dir, entry, message):
    write_card(card_dir, "bad", [entry])
    with pytest.raises(WeightsError) as err:
        weights.cards()
    assert str(err.value).startswith(f"{card_dir / 'bad.toml'}: ")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_card_name_must_match_file_and_files_are_unique(card_dir):
    write_card(card_dir, "one", [{"file": "a.pth", "url": "https://x/a"}])
    (card_dir / "two.toml").write_text((card_dir / "one.toml").read_text().replace('name = "one"', 'name = "two"'))
    with pytest.raises(WeightsError, match="file 'a.pth' is already listed by card 'one'"):
        weights.cards()
    (card_dir / "two.toml").write_text((card_dir / "one.toml").read_text())
    with pytest.raises(WeightsError, match="name 'one' must equal the file name 'two'"):
        weights.cards()


# ---- download, resume, verification ---------------------------------------------------------------


def test_full_download_verifies_and_renames(server, card_dir, _isolated_cache):
    toy(server, card_dir)
    path = weights.ensure("toy.pth", offline=False, progress=False)
    assert path == _isolated_cache / "toy.pth"
    assert path.read_bytes() == PAYLOAD
    assert not (_isolated_cache / "toy.pth.part").exists()
    assert server.requests == [("toy.pth", None)]
    assert weights.verify() == []
    assert weights.ensure("toy.pth", offline=False) == path  # cached: no second request
    assert len(server.requests) == 1


def test_interrupted_download_resumes_with_range(server, card_dir, _isolated_cache):
    toy(server, card_dir)
    server.cut_once.add("toy.pth")
    path = weights.download("toy.pth", progress=False)
    assert path.read_bytes() == PAYLOAD
    half = len(PAYLOAD) // 2
    assert server.requests == [("toy.pth", None), ("toy.pth", f"bytes={half}-")]


def test_part_left_by_an_earlier_run_is_resumed(server, card_dir, _isolated_cache):
    toy(server, card_dir)
    (_isolated_cache / "toy.pth.part").write_bytes(PAYLOAD[:1000])
    assert weights.download("toy.pth", progress=False).read_bytes() == PAYLOAD
    assert server.requests == [("toy.pth", "bytes=1000-")]


@pytest.mark.parametrize("part", [PAYLOAD, PAYLOAD + b"stale"], ids=["complete", "longer-than-remote"])
def test_part_of_unknown_size_is_finished_or_restarted_after_416(server, card_dir, _isolated_cache, part):
    server.files["free.bin"] = PAYLOAD
    write_card(card_dir, "toy", [{"file": "free.bin", "url": server.url("free.bin")}])
    (_isolated_cache / "free.bin.part").write_bytes(part)
    assert weights.download("free.bin", progress=False).read_bytes() == PAYLOAD
    restarted = [("free.bin", None)] if part != PAYLOAD else []
    assert server.requests == [("free.bin", f"bytes={len(part)}-"), *restarted]


def test_file_placed_by_hand_is_pinned_on_first_use(card_dir, _isolated_cache):
    write_card(card_dir, "toy", [{"file": "free.bin", "url": "https://example.org/free.bin"}])
    (_isolated_cache / "free.bin").write_bytes(PAYLOAD)
    assert weights.ensure("free.bin") == _isolated_cache / "free.bin"  # offline, and no hash to check yet
    assert weights.manifest()["free.bin"].sha256 == SHA


def test_hash_mismatch_removes_the_download(server, card_dir, _isolated_cache):
    toy(server, card_dir, sha256="0" * 64)
    with pytest.raises(WeightsError) as err:
        weights.ensure("toy.pth", offline=False, progress=False)
    assert str(err.value) == (
        f"toy.pth: SHA-256 {SHA} does not match the expected {'0' * 64} (from {server.url('toy.pth')}); "
        "removed the download, try again"
    )
    assert list(_isolated_cache.glob("toy.pth*")) == []


def test_size_mismatch_removes_the_download(server, card_dir, _isolated_cache):
    toy(server, card_dir, size=len(PAYLOAD) + 7)
    with pytest.raises(WeightsError) as err:
        weights.download("toy.pth", progress=False)
    assert str(err.value).startswith(f"toy.pth: downloaded {len(PAYLOAD)} bytes but the card expects {len(PAYLOAD) + 7} ")
    assert list(_isolated_cache.glob("toy.pth*")) == []


def test_unknown_hash_is_pinned_on_first_download(server, card_dir, _isolated_cache):
    server.files["free.bin"] = PAYLOAD
    write_card(card_dir, "toy", [{"file": "sub/free.bin", "url": server.url("free.bin")}])
    assert weights.manifest()["sub/free.bin"].sha256 is None
    weights.ensure("sub/free.bin", offline=False, progress=False)
    lock = json.loads((_isolated_cache / weights.LOCK_FILE).read_text())
    assert lock["pinned"]["sub/free.bin"]["sha256"] == SHA
    entry = weights.manifest()["sub/free.bin"]
    assert (entry.sha256, entry.size, entry.pinned) == (SHA, len(PAYLOAD), True)
    # The pin now protects later downloads: the server's file changed, so the new copy is refused.
    (_isolated_cache / "sub/free.bin").unlink()
    server.files["free.bin"] = PAYLOAD[::-1]
    with pytest.raises(WeightsError, match="does not match the expected " + SHA):
        weights.ensure("sub/free.bin", offline=False, progress=False)
    rows = json.loads(CliRunner().invoke(app, ["weights", "list", "--json"]).stdout)
    assert [(r["file"], r["hash_source"], r["cached"]) for r in rows] == [("sub/free.bin", "pinned on first download", False)]


def test_offline_mode_never_opens_a_socket(server, card_dir, _isolated_cache, monkeypatch):
    entry = toy(server, card_dir)

    def no_socket(*args, **kwargs):
        raise AssertionError("a socket was opened in offline mode")

    monkeypatch.setattr(socket, "socket", no_socket)
    with pytest.raises(WeightsError) as err:
        weights.ensure("toy.pth")  # offline from BFRBOOST_OFFLINE=1 (conftest)
    assert str(err.value) == (
        f"toy.pth: not in the cache and offline mode is on; download {entry.url} and put it at "
        f"{_isolated_cache / 'toy.pth'} (or run `bfrboost weights import FILE`)"
    )
    monkeypatch.delenv("BFRBOOST_OFFLINE")
    result = CliRunner().invoke(app, ["weights", "download", "toy", "--offline"])
    assert result.exit_code == 1
    assert result.stderr == f"bfrboost: {err.value}\n"
    assert server.requests == []


def test_damaged_cached_file_is_redownloaded_online_and_refused_offline(server, card_dir, _isolated_cache):
    toy(server, card_dir)
    bad = bytearray(PAYLOAD)
    bad[5] ^= 1
    (_isolated_cache / "toy.pth").write_bytes(bytes(bad))
    with pytest.raises(WeightsError, match="does not match the expected .*; offline mode is on: replace it"):
        weights.ensure("toy.pth")
    assert weights.ensure("toy.pth", offline=False, progress=False).read_bytes() == PAYLOAD


def test_verification_is_cached_by_size_and_mtime(server, card_dir, _isolated_cache, monkeypatch):
    toy(server, card_dir)
    weights.download("toy.pth", progress=False)
    hashed = []
    real = weights.catalog.sha256_of
    monkeypatch.setattr(weights.catalog, "sha256_of", lambda p: hashed.append(p) or real(p))
    assert weights.verify("toy") == []
    assert hashed == []  # the download's hash was remembered
    path = _isolated_cache / "toy.pth"
    path.write_bytes(PAYLOAD[::-1])  # same size, new mtime: must be re-hashed
    assert weights.verify("toy") == [
        f"{path}: SHA-256 {hashlib.sha256(PAYLOAD[::-1]).hexdigest()} does not match the expected {SHA}"
    ]
    assert hashed == [path]


def test_licence_is_printed_on_the_first_download_of_a_noncommercial_card(server, card_dir, capsys):
    server.files.update({"a.pth": b"a", "b.pth": b"b"})
    entries = [{"file": f, "url": server.url(f)} for f in ("a.pth", "b.pth")]
    write_card(card_dir, "nc", entries, commercial_use=False)
    weights.download("a.pth", progress=False)
    assert (
        capsys.readouterr().err == "NC (nc) is licensed under Test-1.0: NOT for commercial use; terms: https://example.org/toy\n"
    )
    weights.download("b.pth", progress=False)
    assert capsys.readouterr().err == ""


def test_sd21_dir_is_the_diffusers_folder(server, card_dir, _isolated_cache):
    names = ["vae/config.json", "unet/config.json", "scheduler/scheduler_config.json"]
    server.files.update({n: b"{}" for n in names})
    write_card(card_dir, "sd21", [{"file": f"sd21/{n}", "url": server.url(n)} for n in names])
    assert weights.sd21_dir(offline=False, progress=False) == _isolated_cache / "sd21"
    assert (_isolated_cache / "sd21/unet/config.json").read_bytes() == b"{}"


# ---- import ----------------------------------------------------------------------------------------


def test_import_accepts_the_right_file_and_refuses_others(server, card_dir, _isolated_cache, tmp_path):
    toy(server, card_dir)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    good = downloads / "toy.pth"
    good.write_bytes(PAYLOAD)
    assert weights.import_file(good) == _isolated_cache / "toy.pth"
    assert weights.verify("toy") == []
    (_isolated_cache / "toy.pth").unlink()

    wrong = tmp_path / "toy.pth"
    wrong.write_bytes(PAYLOAD[::-1])
    with pytest.raises(WeightsError) as err:
        weights.import_file(wrong)
    assert str(err.value).startswith(f"{wrong}: SHA-256 ")
    assert "does not match toy.pth" in str(err.value) and "not imported" in str(err.value)
    assert list(_isolated_cache.iterdir()) == [_isolated_cache / weights.VERIFY_CACHE]

    stranger = tmp_path / "other.pth"
    stranger.write_bytes(PAYLOAD)
    result = CliRunner().invoke(app, ["weights", "import", str(stranger)])
    assert result.exit_code == 1
    assert (
        result.stderr
        == f"bfrboost: {stranger}: no model card lists a file named 'other.pth'; "
        "see `bfrboost weights list` for the expected names\n"
    )


def test_import_tells_same_named_files_apart_by_folder(card_dir, _isolated_cache, tmp_path):
    write_card(card_dir, "sd21", [{"file": f"sd21/{d}/config.json", "url": f"https://x/{d}"} for d in ("vae", "unet")])
    src = tmp_path / "snapshot" / "unet" / "config.json"
    src.parent.mkdir(parents=True)
    src.write_text('{"unet": 1}')
    assert weights.import_file(src) == _isolated_cache / "sd21/unet/config.json"
    assert weights.manifest()["sd21/unet/config.json"].pinned
    loose = tmp_path / "config.json"
    loose.write_text("{}")
    with pytest.raises(WeightsError, match="ambiguous, could be sd21/vae/config.json, sd21/unet/config.json"):
        weights.import_file(loose)


# ---- CLI -------------------------------------------------------------------------------------------


def test_cli_verify_exit_codes_and_path(server, card_dir, _isolated_cache):
    toy(server, card_dir)
    runner = CliRunner()
    result = runner.invoke(app, ["weights", "verify", "toy"])
    assert (result.exit_code, result.stderr) == (
        1,
        f"bfrboost: {_isolated_cache / 'toy.pth'}: missing; run `bfrboost weights download toy.pth`\n",
    )
    weights.download("toy.pth", progress=False)
    result = runner.invoke(app, ["weights", "verify"])
    assert (result.exit_code, result.stdout) == (0, "1 file(s) match their model cards\n")
    (_isolated_cache / "toy.pth").write_bytes(PAYLOAD[:-1])
    result = runner.invoke(app, ["weights", "verify"])
    assert result.exit_code == 1
    assert result.stderr == f"bfrboost: {_isolated_cache / 'toy.pth'}: {len(PAYLOAD) - 1} bytes, expected {len(PAYLOAD)}\n"
    result = runner.invoke(app, ["weights", "path", "toy.pth"])
    assert (result.exit_code, result.stdout) == (0, f"{_isolated_cache / 'toy.pth'}\n")


def test_cli_unknown_name_is_a_usage_error(server, card_dir):
    toy(server, card_dir)
    for command in (["download"], ["verify"], ["path"]):
        result = CliRunner().invoke(app, ["weights", *command, "nope"])
        assert result.exit_code == 2
        assert result.stderr == "bfrboost: unknown weights name 'nope'; known names: all, toy, toy.pth\n"
    with pytest.raises(UsageError):
        weights.resolve("nope")


def test_cli_list_table(server, card_dir, _isolated_cache):
    toy(server, card_dir)
    server.files["free.bin"] = b"x"
    write_card(card_dir, "nc", [{"file": "free.bin", "url": server.url("free.bin")}], commercial_use=False)
    weights.download("toy.pth", progress=False)
    result = CliRunner().invoke(app, ["weights", "list"])
    assert result.exit_code == 0
    lines = {
        line.split("│")[2].strip(): [c.strip() for c in line.split("│")[1:-1]]
        for line in result.stdout.splitlines()
        if "│" in line
    }
    assert lines["toy.pth"] == ["toy", "toy.pth", "0.1 MB", "yes", "ok", "Test-1.0", "card"]
    assert lines["free.bin"] == [
        "nc",
        "free.bin",
        "?",
        "no",
        "missing",
        "Test-1.0 (non-commercial)",
        "unknown: pinned on first download",
    ]


# ---- safe loading ----------------------------------------------------------------------------------


class _WritesAFile:
    """A pickle payload: unpickling it calls open(marker, 'w'), i.e. runs code and creates a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned.txt"
    ckpt = tmp_path / "evil.pth"
    torch.save({"params_ema": {"w": torch.zeros(2)}, "hook": _WritesAFile(marker)}, ckpt)
    with pytest.raises(WeightsError) as err:
        weights.load_state_dict(ckpt)
    assert str(err.value) == (
        f"{ckpt}: refused: this checkpoint needs code execution to load (it references io.open); "
        "only tensor-only .pth or .safetensors files are accepted"
    )
    assert not marker.exists()
    with open(ckpt, "rb") as f:  # the payload is real: a plain unpickler would have created the file
        torch.load(f, weights_only=False).get("hook").close()
    assert marker.exists()


def test_unwrap_prefers_params_ema_and_strips_module(tmp_path):
    ema, raw = {"module.conv.weight": torch.ones(2)}, {"module.conv.weight": torch.zeros(2)}
    for wrapper, inner in [
        ({"params": raw, "params_ema": ema}, ema),
        ({"state_dict": ema}, ema),
        ({"g_ema": ema, "epoch": 3}, ema),
        (ema, ema),
    ]:
        path = tmp_path / "ckpt.pth"
        torch.save(wrapper, path)
        sd = weights.load_state_dict(path)
        assert list(sd) == ["conv.weight"]
        assert torch.equal(sd["conv.weight"], inner["module.conv.weight"])
    torch.save({"conv.weight": torch.ones(1), "step": 5}, path)
    with pytest.raises(WeightsError, match="not a state dict of tensors \\(non-tensor entries: step\\)"):
        weights.load_state_dict(path)


def test_safetensors_and_expected_hash(tmp_path):
    path = tmp_path / "model.safetensors"
    tensors = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(1, dtype=torch.int64)}
    save_file(tensors, str(path))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    sd = weights.load_state_dict(path, expected_sha256=sha)
    assert sd.keys() == tensors.keys() and all(torch.equal(sd[k], tensors[k]) for k in tensors)
    with pytest.raises(WeightsError, match=f"SHA-256 {sha} does not match the expected {'1' * 64}"):
        weights.load_state_dict(path, expected_sha256="1" * 64)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError) as info:  # not a pickle at all: damaged, not unsafe
        weights.load_state_dict(junk)
    assert str(info.value) == f"{junk}: damaged or not a checkpoint; re-download it with `bfrboost weights download NAME`"
    torch.save(tensors, junk)
    junk.write_bytes(junk.read_bytes()[:200])  # a truncated download
    with pytest.raises(WeightsError) as info:
        weights.load_state_dict(junk)
    assert str(info.value) == f"{junk}: damaged or not a checkpoint; re-download it with `bfrboost weights download NAME`"
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(WeightsError) as info:
        weights.load_state_dict(broken)
    assert str(info.value) == f"{broken}: damaged or not a checkpoint; re-download it with `bfrboost weights download NAME`"


def test_a_damaged_cached_checkpoint_names_its_card(card_dir):
    write_card(card_dir, "tiny", [{"file": "tiny.pth", "url": "https://example.org/tiny.pth"}])
    entry = weights.manifest()["tiny.pth"]
    entry.path.parent.mkdir(parents=True, exist_ok=True)
    entry.path.write_bytes(b"\x80\x02garbage")
    with pytest.raises(WeightsError) as info:
        weights.load_state_dict(entry.path)
    assert (
        str(info.value)
        == f"{entry.path}: damaged or not a checkpoint; re-download it with `bfrboost weights download {entry.card}`"
    )


def test_weights_readme_lists_every_file_with_its_licence():
    rows = {}
    for line in (REPO / "weights" / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("|") and len(cells) == 6:
            rows[cells[1]] = cells
    for entry in weights.manifest().values():
        assert entry.file in rows, f"add {entry.file} to the table in weights/README.md"
        assert rows[entry.file][0] == entry.card and rows[entry.file][3] == entry.license, entry.file
