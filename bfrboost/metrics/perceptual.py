"""LPIPS (lpips 0.1.4, BSD-2-Clause): the one loader that evaluation and training share.

lpips builds its trunk from torchvision and would download it unverified at first use; here the
network is built empty (``pnet_rand``) and filled from verified files: the trunk from the ``lpips``
card (torchvision's ``features.N`` keys mapped onto lpips' ``net.sliceK.N``), the linear calibration
heads from the files the lpips wheel ships, checked against their SHA-256. Evaluation uses the VGG
variant that VQFR and CodeFormer report; training defaults to AlexNet. The network is frozen (no
parameter gradients) but differentiable in its inputs, so it serves as a loss. Lower is better;
identical images give exactly 0.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

import bfrboost.weights
from bfrboost.errors import UsageError, WeightsError
from bfrboost.metrics._common import metric_weights

LPIPS_TRUNKS = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
VGG16_FILE = LPIPS_TRUNKS["vgg"]
_TRUNK_NAMES = {"alex": "AlexNet", "vgg": "VGG16"}
# SHA-256 of the linear heads shipped in the lpips 0.1.4 wheel (lpips/weights/v0.1/NET.pth)
LPIPS_HEADS_SHA256 = {
    "alex": "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
    "vgg": "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
}


def load_lpips_trunk(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """torchvision ``features.N.*`` → lpips ``net.sliceK.N.*`` (the package keeps torchvision's indices)."""
    expected = {k: v for k, v in model.state_dict().items() if k.startswith("net.")}
    mapped = {key: state.get("features." + key.split(".", 2)[2]) for key in expected}
    bad = [key for key, value in mapped.items() if value is None or value.shape != expected[key].shape]
    if bad:
        trunk = _TRUNK_NAMES.get(getattr(model, "pnet_type", ""), "AlexNet/VGG16")
        raise WeightsError(
            f"{source}: not a torchvision {trunk} checkpoint, the LPIPS trunk ({len(bad)} tensor(s) missing or misshapen, "
            f"e.g. {'features.' + bad[0].split('.', 2)[2]!r}); run `bfrboost weights download lpips`"
        )
    model.load_state_dict(mapped, strict=False)


def build_lpips(net: str = "alex", pretrained: bool = True, trunk: Path | None = None) -> nn.Module:
    """The lpips package's LPIPS (input in [-1, 1]), frozen, in eval mode.

    ``pretrained``: trunk from ``trunk`` (default: the cached card file) and the wheel's heads;
    otherwise random trunk and heads (tests, ``--tiny``).
    """
    import lpips

    if net not in LPIPS_TRUNKS:
        raise UsageError(f"LPIPS network must be one of {sorted(LPIPS_TRUNKS)}, got {net!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchvision's "pretrained" deprecation inside lpips
        model = lpips.LPIPS(pretrained=False, net=net, version="0.1", pnet_rand=True, verbose=False)
    if pretrained:
        heads = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
        model.load_state_dict(bfrboost.weights.load_state_dict(heads, expected_sha256=LPIPS_HEADS_SHA256[net]), strict=False)
        path = Path(trunk) if trunk is not None else metric_weights(LPIPS_TRUNKS[net], "LPIPS")
        load_lpips_trunk(model, bfrboost.weights.load_state_dict(path), str(path))
    else:
        for module in model.modules():  # lpips leaves random heads at torch's default init; make them positive as trained ones
            if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.bias is None:
                module.weight.data.abs_()
    return model.eval().requires_grad_(False)


def load_lpips(device: str | torch.device = "cpu", weights: Path | None = None) -> nn.Module:
    """The evaluation metric: LPIPS VGG, version 0.1, with its VGG16 trunk from the verified cache."""
    return build_lpips("vgg", trunk=weights).to(device)


def _to_tensor(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div(127.5).sub(1.0).to(device)


@torch.inference_mode()
def lpips_distance(net: torch.nn.Module, restored: np.ndarray, reference: np.ndarray) -> float:
    """LPIPS between two RGB uint8 images of the same size."""
    if restored.shape != reference.shape:
        raise ValueError(f"images differ in size: {restored.shape} vs {reference.shape}")
    device = next(net.parameters()).device
    return float(net(_to_tensor(restored, device), _to_tensor(reference, device)).item())
