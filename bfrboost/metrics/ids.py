"""IDS: identity similarity, the cosine between ArcFace embeddings of a restored face and its
reference (1 = same embedding). Higher is better. Aligned 512 crops in, whole crop resized to 112 as
:mod:`bfrboost.nets.arcface` documents."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from bfrboost.nets.arcface import ArcFace


@torch.inference_mode()
def identity_similarities(model: ArcFace, restored: Sequence[np.ndarray], references: Sequence[np.ndarray]) -> list[float]:
    """Cosine similarity per pair of RGB uint8 crops (one batch each when the sizes agree)."""
    if len({img.shape for img in (*restored, *references)}) > 1:
        return [identity_similarities(model, [a], [b])[0] for a, b in zip(restored, references)]
    device = next(model.parameters()).device

    def batch(images: Sequence[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255.0).to(device)

    return model.similarity(batch(restored), batch(references)).tolist()


def identity_similarity(model: ArcFace, restored: np.ndarray, reference: np.ndarray) -> float:
    """Cosine similarity of one restored face with its reference."""
    return identity_similarities(model, [restored], [reference])[0]
