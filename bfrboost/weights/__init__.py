"""Weights: model cards, cache, download with resume, verification, offline mode, safe loading.

Import it as ``from bfrboost import weights`` and call ``weights.ensure(...)``,
``weights.load_state_dict(...)``; the parts live in ``catalog`` (model cards, cache folder, bookkeeping),
``cache`` (verified paths, import), ``fetch`` (downloads), ``checkpoints`` (the safe loader: a security
boundary, the only place a checkpoint is unpickled) and ``import_check`` (what an import must hold before
its hash is pinned).

Upstream projects download without checks and users get silently truncated files, so here every
file is size- and SHA-256-checked before use; hashes a card does not know are pinned on the first
download (trust on first use) in ``weights.lock.json`` inside the cache.
"""

from bfrboost.weights.cache import ensure, import_file, sd21_dir, status, verify
from bfrboost.weights.catalog import (
    LOCK_FILE,
    VERIFY_CACHE,
    Card,
    WeightFile,
    cards,
    cards_dir,
    home,
    is_offline,
    manifest,
    resolve,
)
from bfrboost.weights.checkpoints import (
    CheckpointMismatch,
    DamagedFile,
    check_state_dict,
    load_checkpoint,
    load_into,
    load_state_dict,
    torch_load_safely,
)
from bfrboost.weights.fetch import download

__all__ = [
    "LOCK_FILE",
    "VERIFY_CACHE",
    "Card",
    "CheckpointMismatch",
    "DamagedFile",
    "WeightFile",
    "cards",
    "cards_dir",
    "check_state_dict",
    "download",
    "ensure",
    "home",
    "import_file",
    "is_offline",
    "load_checkpoint",
    "load_into",
    "load_state_dict",
    "manifest",
    "resolve",
    "sd21_dir",
    "status",
    "torch_load_safely",
    "verify",
]
