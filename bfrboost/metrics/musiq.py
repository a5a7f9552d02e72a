"""MUSIQ (Ke et al. 2021, KonIQ-10k model) through pyiqa — the only maintained PyTorch port.

pyiqa is licensed PolyForm Noncommercial 1.0.0, so it is never a core dependency: it comes with the
optional extra ``bfrboost[eval-nc]`` (non-commercial). Without it the metric is skipped with one
line saying so. pyiqa fetches its MUSIQ checkpoint itself at first use. Higher is better.
"""

from __future__ import annotations

import numpy as np
import torch

from bfrboost.metrics._common import MetricUnavailable

NOT_INSTALLED = (
    "musiq: skipped, it needs pyiqa, which is non-commercial (PolyForm Noncommercial 1.0.0); "
    "install it with `pip install 'bfrboost[eval-nc]'` if that licence fits your use"
)


def load_musiq(device: str | torch.device = "cpu") -> torch.nn.Module:
    try:
        import pyiqa
    except ImportError:
        raise MetricUnavailable(NOT_INSTALLED) from None
    return pyiqa.create_metric("musiq", device=torch.device(device), as_loss=False)


@torch.inference_mode()
def musiq_score(net: torch.nn.Module, rgb: np.ndarray) -> float:
    device = next(net.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float().div(255.0).to(device)
    return float(net(x).item())
