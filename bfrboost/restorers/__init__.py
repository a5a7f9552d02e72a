"""Face restorers behind one small protocol (:class:`~bfrboost.restorers.protocol.FaceRestorer`), and the
registry that picks one for ``RestoreOptions.base``: a registered base model (+ the InfoBFR refiner)
by default, or an entry of :data:`FACE_RESTORERS` (``pgdiff``: PGDiff guidance)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from bfrboost.options import GuidanceOptions, RestoreOptions
from bfrboost.restorers.protocol import FaceRestorer


def _pgdiff(restore: RestoreOptions, guidance: GuidanceOptions | None, device: torch.device, **parts: Any) -> FaceRestorer:
    from bfrboost.restorers.guided import GuidedFaceRestorer, OnePassFaceRestorer, resolve_method

    guidance = guidance or GuidanceOptions()
    if resolve_method(guidance, device) == "codeformer":
        return OnePassFaceRestorer(restore, guidance, device)
    return GuidedFaceRestorer(restore, guidance, device, align_reference=parts.get("align_reference"))


#: Face restorers that are not a plain base model, by the ``--base`` name that selects them.
FACE_RESTORERS: dict[str, Callable[..., FaceRestorer]] = {"pgdiff": _pgdiff}


def build_face_restorer(restore: RestoreOptions, device: torch.device, guidance: GuidanceOptions | None = None,
                        **parts: Any) -> FaceRestorer:
    """The face restorer ``restore.base`` names; ``parts`` are what some entries use (``align_reference``)."""
    entry = FACE_RESTORERS.get(restore.base)
    if entry is not None:
        return entry(restore, guidance, device, **parts)
    from bfrboost.restorers.base import BaseRestorer

    return BaseRestorer(restore, device)
