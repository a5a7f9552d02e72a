"""LPIPS, VGG variant (lpips 0.1.4, BSD-2-Clause), the variant VQFR and CodeFormer report.

lpips builds its backbone from torchvision and would download ``vgg16-397923af.pth`` unverified at
first use; here the backbone is built empty and filled from the weights manager's verified copy
(torchvision's ``features.N`` keys mapped onto lpips' ``sliceK.N``). The linear calibration heads
ship in the lpips wheel. Lower is better; identical images give exactly 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bfrboost import weights as weight_cache
from bfrboost.errors import WeightsError
from bfrboost.metrics._common import metric_weights

VGG16_FILE = "vgg16-397923af.pth"


def load_lpips(device: str | torch.device = "cpu", weights: Path | None = None) -> torch.nn.Module:
    """lpips.LPIPS(net="vgg", version="0.1") with its VGG16 backbone from the verified cache."""
    import lpips

    net = lpips.LPIPS(net="vgg", version="0.1", pnet_rand=True, verbose=False)
    path = Path(weights) if weights is not None else metric_weights(VGG16_FILE, "LPIPS")
    state = weight_cache.load_state_dict(path)
    backbone = net.net.state_dict()
    # lpips' sliceK keeps torchvision's module index N: "slice2.5.weight" is "features.5.weight"
    mapped = {key: state.get("features." + key.split(".", 1)[1]) for key in backbone}
    missing = [key for key, value in mapped.items() if value is None or value.shape != backbone[key].shape]
    if missing:
        source = "features." + missing[0].split(".", 1)[1]
        raise WeightsError(f"{path}: not a torchvision VGG16 checkpoint ({len(missing)} backbone tensor(s) missing or misshapen, e.g. {source!r}); run `bfrboost weights download lpips`")
    net.net.load_state_dict(mapped, strict=True)
    return net.to(device).eval().requires_grad_(False)


def _to_tensor(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div(127.5).sub(1.0).to(device)


@torch.inference_mode()
def lpips_distance(net: torch.nn.Module, restored: np.ndarray, reference: np.ndarray) -> float:
    """LPIPS between two RGB uint8 images of the same size."""
    if restored.shape != reference.shape:
        raise ValueError(f"images differ in size: {restored.shape} vs {reference.shape}")
    device = next(net.parameters()).device
    return float(net(_to_tensor(restored, device), _to_tensor(reference, device)).item())
