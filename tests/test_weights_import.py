"""`weights import` for cards without a SHA-256 (pinned on first use): only a safe checkpoint of the card's
architecture is pinned, and the pinned hash is named; a pickle, a folder or a missing path is one line."""

from __future__ import annotations

import hashlib

import torch
from typer.testing import CliRunner

from bfrboost import weights
from bfrboost.cli import app

runner = CliRunner()
RRDB = "rrdb_iter_100000.pth"


def rrdb_state(drop: int = 0) -> dict[str, torch.Tensor]:
    """The key names and shapes of PGDiff's RRDB (zeros, half precision: only names and shapes matter here)."""
    from bfrboost.nets import rrdb

    with torch.device("meta"):
        net = rrdb.TimeRRDB(rrdb.RRDB_CONFIG)
    return {k: torch.zeros(v.shape, dtype=torch.float16) for k, v in list(net.state_dict().items())[drop:]}


def test_an_unhashed_card_pins_only_a_checkpoint_of_its_architecture(tmp_path):
    cache = weights.home()
    wrong = tmp_path / "wrong" / RRDB
    wrong.parent.mkdir()
    torch.save({"params": rrdb_state(drop=3)}, wrong)
    result = runner.invoke(app, ["weights", "import", str(wrong)])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"bfrboost: {wrong}: not the pgdiff checkpoint {RRDB} (3 missing key(s), e.g. ")
    assert result.stderr.endswith(f"; not imported; get {RRDB} from {weights.manifest()[RRDB].url}\n")
    assert not (cache / RRDB).exists() and not weights.manifest()[RRDB].pinned

    good = tmp_path / RRDB
    torch.save({"params": rrdb_state()}, good)
    imported = runner.invoke(app, ["weights", "import", str(good)])
    assert imported.exit_code == 0, imported.output
    digest = hashlib.sha256(good.read_bytes()).hexdigest()
    assert imported.stdout == f"{cache / RRDB}\n"
    assert imported.stderr == (
        f"{RRDB}: pinned SHA-256 {digest} in {cache / weights.LOCK_FILE} (its card lists no hash); "
        "later downloads and imports must match it\n"
    )
    assert weights.manifest()[RRDB].sha256 == digest and weights.verify("pgdiff") == []


def test_a_pickle_that_would_run_code_is_refused_in_one_line(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this ran code",))

    hostile = tmp_path / RRDB
    torch.save({"params": Payload()}, hostile)
    result = runner.invoke(app, ["weights", "import", str(hostile)])
    assert result.exit_code == 1 and "this ran code" not in result.output
    assert result.stderr == (
        f"bfrboost: {hostile}: refused: this checkpoint needs code execution to load (it references print); "
        "only tensor-only .pth or .safetensors files are accepted; not imported\n"
    )
    assert not (weights.home() / RRDB).exists() and not weights.manifest()[RRDB].pinned


def test_a_folder_or_a_missing_path_says_what_to_give(tmp_path):
    folder = tmp_path / "dir.pth"
    folder.mkdir()
    result = runner.invoke(app, ["weights", "import", str(folder), str(tmp_path / "gone.pth")])
    assert result.exit_code == 1
    assert result.stderr == (
        f"bfrboost: {folder}: is a folder, not a checkpoint file; give the downloaded file itself "
        f"(e.g. {folder}/NAME.pth)\n"
        f"bfrboost: {tmp_path / 'gone.pth'}: no such file or folder; give the path of a downloaded checkpoint\n"
    )
