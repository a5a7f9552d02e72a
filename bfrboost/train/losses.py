"""Training loss: MSE + VGG19 perceptual + LPIPS + β·L_info, every term returned for the log.

- Perceptual: Σ wᵢ·mean|φᵢ(x̂) − φᵢ(x)| over VGG19 relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 with
  w = 1/32, 1/16, 1/8, 1/4, 1, on ImageNet-normalised inputs (torchvision's VGG19 definition; weights
  ``vgg19/vgg19-dcbb9e9d.pth`` of the ``vgg19`` card).
- LPIPS: the ``lpips`` package's network, built without its torchvision download (``pnet_rand``); the
  trunk comes from the ``lpips`` card, the linear heads from the files the package ships (SHA-256
  checked). Tests build both with random weights under the official key names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from bfrboost import weights
from bfrboost.errors import UsageError, WeightsError

VGG19_FILE = "vgg19/vgg19-dcbb9e9d.pth"
VGG_LAYERS = {"relu1_1": 1, "relu2_1": 6, "relu3_1": 11, "relu4_1": 20, "relu5_1": 29}  # torchvision vgg19().features
PERCEPTUAL_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LPIPS_TRUNKS = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
# SHA-256 of the linear heads shipped in the lpips 0.1.4 wheel (lpips/weights/v0.1/NET.pth)
LPIPS_HEADS_SHA256 = {
    "alex": "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
    "vgg": "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
}


class VGG19Features(nn.Module):
    """torchvision's VGG19 ``features`` up to relu5_1; returns the five activations of the loss."""

    def __init__(self) -> None:
        super().__init__()
        # torchvision's VGG19 layer list ("E"), without building the 120 M-parameter classifier
        layers = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"], batch_norm=False)
        self.features = layers[: VGG_LAYERS["relu5_1"] + 1]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x in [-1, 1] → [relu1_1, …, relu5_1]."""
        x = ((x + 1) / 2 - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        out, wanted = [], set(VGG_LAYERS.values())
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in wanted:
                out.append(x)
        return out


def load_vgg19_state(net: VGG19Features, state: dict[str, torch.Tensor], source: str) -> None:
    """Strictly load the ``features.*`` tensors of a torchvision VGG19 checkpoint (classifier ignored)."""
    expected = net.state_dict()
    features = {k: v for k, v in state.items() if k in expected}
    missing = sorted(set(expected) - set(features))
    if missing or any(features[k].shape != expected[k].shape for k in expected):
        raise WeightsError(f"{source}: not a torchvision VGG19 checkpoint ({len(missing)} missing, e.g. {missing[:1]}); run `bfrboost weights download vgg19`")
    net.load_state_dict(features, strict=True)


def build_vgg19(pretrained: bool = True) -> VGG19Features:
    """Frozen VGG19 feature extractor; ``pretrained=False`` keeps torchvision's random init (tests, --tiny)."""
    net = VGG19Features()
    if pretrained:
        path = weights.ensure(VGG19_FILE)
        load_vgg19_state(net, weights.load_state_dict(path), str(path))
    return net.eval().requires_grad_(False)


def load_lpips_trunk(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """torchvision ``features.N.*`` → lpips ``net.sliceK.N.*`` (the package keeps torchvision's indices)."""
    expected = {k: v for k, v in model.state_dict().items() if k.startswith("net.")}
    mapped = {}
    for key in expected:
        _, _slice, index, param = key.split(".", 3)
        source_key = f"features.{index}.{param}"
        if source_key not in state or state[source_key].shape != expected[key].shape:
            raise WeightsError(f"{source}: not the LPIPS trunk checkpoint ({source_key} missing or of another shape); run `bfrboost weights download lpips`")
        mapped[key] = state[source_key]
    model.load_state_dict(mapped, strict=False)


def build_lpips(net: str = "alex", pretrained: bool = True) -> nn.Module:
    """The lpips package's LPIPS (input in [-1, 1]); random trunk and heads when not ``pretrained``."""
    import warnings

    import lpips

    if net not in LPIPS_TRUNKS:
        raise UsageError(f"LPIPS network must be one of {sorted(LPIPS_TRUNKS)}, got {net!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchvision's "pretrained" deprecation inside lpips
        model = lpips.LPIPS(pretrained=False, net=net, pnet_rand=True, verbose=False)
    if pretrained:
        heads = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
        model.load_state_dict(weights.load_state_dict(heads, expected_sha256=LPIPS_HEADS_SHA256[net]), strict=False)
        path = weights.ensure(LPIPS_TRUNKS[net])
        load_lpips_trunk(model, weights.load_state_dict(path), str(path))
    else:
        for module in model.modules():  # lpips leaves random heads at torch's default init; make them positive as trained ones
            if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.bias is None:
                module.weight.data.abs_()
    return model.eval().requires_grad_(False)


@dataclass
class LossWeights:
    mse: float = 1.0
    perceptual: float = 1.0
    lpips: float = 1.0
    beta: float = 20.0  # the information loss (the refiner config's β unless overridden)


class InfoBFRLoss(nn.Module):
    """``total = w_mse·MSE + w_perc·L_perc + w_lpips·LPIPS + β·L_info``; returns every term."""

    def __init__(self, vgg: VGG19Features, lpips_net: nn.Module, loss_weights: LossWeights) -> None:
        super().__init__()
        self.vgg = vgg
        self.lpips = lpips_net
        self.loss_weights = loss_weights

    def perceptual(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.vgg(x)
        return sum(w * F.l1_loss(a.float(), b.float()) for w, a, b in zip(PERCEPTUAL_WEIGHTS, self.vgg(x_hat), target))

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor, info_loss: torch.Tensor) -> dict[str, torch.Tensor]:
        """x̂, x in [-1, 1] (B, 3, H, W); ``info_loss`` the bottleneck's unweighted KL."""
        w = self.loss_weights
        terms = {
            "mse": F.mse_loss(x_hat.float(), x.float()),
            "perceptual": self.perceptual(x_hat, x),
            "lpips": self.lpips(x_hat, x).float().mean(),
            "info": info_loss.float(),
        }
        terms["loss"] = w.mse * terms["mse"] + w.perceptual * terms["perceptual"] + w.lpips * terms["lpips"] + w.beta * terms["info"]
        return terms
