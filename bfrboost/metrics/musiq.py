"""MUSIQ (Ke et al. 2021, KonIQ-10k model) through pyiqa — the maintained PyTorch port.

pyiqa is licensed PolyForm Noncommercial 1.0.0, so it is never a core dependency: it comes with the
optional extra ``bfrboost[eval-nc]`` (non-commercial). Without it the metric is skipped with one
line saying so. Its checkpoint comes through the weights manager (card ``musiq``) and is loaded
with weights-only unpickling forced. Higher is better.
"""

from __future__ import annotations

import numpy as np
import torch

from bfrboost.metrics._common import MetricUnavailable, metric_weights, weights_only_torch_load

MUSIQ_FILE = "musiq_koniq_ckpt-e95806b9.pth"
NOT_INSTALLED = (
    "musiq: skipped, it needs pyiqa, which is non-commercial (PolyForm Noncommercial 1.0.0); "
    "install it with `pip install 'bfrboost[eval-nc]'` if that licence fits your use"
)


def load_musiq(device: str | torch.device = "cpu") -> torch.nn.Module:
    """pyiqa's MUSIQ-KonIQ with the verified cached checkpoint; :class:`MetricUnavailable` without pyiqa."""
    try:
        import pyiqa
    except ImportError:
        raise MetricUnavailable(NOT_INSTALLED) from None
    path = metric_weights(MUSIQ_FILE, "MUSIQ")
    with weights_only_torch_load():
        return pyiqa.create_metric("musiq", device=torch.device(device), pretrained_model_path=str(path))


@torch.inference_mode()
def musiq_score(net: torch.nn.Module, rgb: np.ndarray) -> float:
    """MUSIQ of one RGB uint8 image (any size: MUSIQ is multi-scale by design)."""
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float().div(255.0)
    return float(net(x).item())
