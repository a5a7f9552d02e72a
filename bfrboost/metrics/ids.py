"""IDS: identity similarity, the cosine between ArcFace embeddings of a restored face and its
reference (1 = same embedding). Higher is better. Aligned 512 crops in, whole crop resized to 112 as
:mod:`bfrboost.identity` documents."""

from __future__ import annotations

import numpy as np
import torch

from bfrboost.identity import ArcFace


@torch.inference_mode()
def identity_similarity(model: ArcFace, restored: np.ndarray, reference: np.ndarray) -> float:
    """Cosine similarity of the two faces' embeddings (RGB uint8 crops, any size each)."""
    device = next(model.parameters()).device

    def tensor(rgb: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float().div(255.0).to(device)

    return float((model.embed(tensor(restored)) * model.embed(tensor(reference))).sum().item())
