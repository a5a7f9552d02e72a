"""Training loss: MSE + VGG19 perceptual + LPIPS + β·L_info, every term returned for the log.

- Perceptual: Σ wᵢ·mean|φᵢ(x̂) − φᵢ(x)| over VGG19 relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 with
  w = 1/32, 1/16, 1/8, 1/4, 1, on ImageNet-normalised inputs (torchvision's VGG19 definition; weights
  ``vgg19/vgg19-dcbb9e9d.pth`` of the ``vgg19`` card).
- LPIPS: :func:`bfrboost.metrics.perceptual.build_lpips`, the loader evaluation uses too (AlexNet
  trunk by default here). Tests build both networks with random weights under the official key names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from bfrboost import weights
from bfrboost.errors import WeightsError
from bfrboost.metrics.perceptual import build_lpips as build_lpips  # re-exported: part of the training-loss API

VGG19_FILE = "vgg19/vgg19-dcbb9e9d.pth"
VGG_LAYERS = {"relu1_1": 1, "relu2_1": 6, "relu3_1": 11, "relu4_1": 20, "relu5_1": 29}  # torchvision vgg19().features
PERCEPTUAL_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
        raise WeightsError(
            f"{source}: not a torchvision VGG19 checkpoint ({len(missing)} missing, e.g. {missing[:1]}); "
            "run `bfrboost weights download vgg19`"
        )
    net.load_state_dict(features, strict=True)


def build_vgg19(pretrained: bool = True) -> VGG19Features:
    """Frozen VGG19 feature extractor; ``pretrained=False`` keeps torchvision's random init (tests, --tiny)."""
    net = VGG19Features()
    if pretrained:
        path = weights.ensure(VGG19_FILE)
        load_vgg19_state(net, weights.load_state_dict(path), str(path))
    return net.eval().requires_grad_(False)


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
        terms["loss"] = (
            w.mse * terms["mse"] + w.perceptual * terms["perceptual"] + w.lpips * terms["lpips"] + w.beta * terms["info"]
        )
        return terms
