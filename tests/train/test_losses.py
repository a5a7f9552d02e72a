from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from bfrboost.errors import WeightsError
from bfrboost.metrics.perceptual import build_lpips, load_lpips_trunk
from bfrboost.train.losses import (
    InfoBFRLoss,
    LossWeights,
    VGG19Features,
    build_vgg19,
    load_vgg19_state,
)


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    return x, (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1)


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    return build_vgg19(pretrained=False), build_lpips("alex", pretrained=False)


def test_vgg19_loads_a_torchvision_checkpoint_by_its_key_names():
    torch.manual_seed(1)
    reference = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"])  # torchvision's vgg19().features
    state = {f"features.{k}": v for k, v in reference.state_dict().items()}  # names as in vgg19-dcbb9e9d.pth
    state["classifier.6.bias"] = torch.zeros(1000)  # the classifier is ignored
    net = VGG19Features()
    load_vgg19_state(net, state, "vgg19.pth")
    assert torch.equal(net.features[28].weight, reference[28].weight)
    del state["features.28.weight"]
    with pytest.raises(WeightsError, match=r"^vgg19.pth: not a torchvision VGG19 checkpoint \(1 missing"):
        load_vgg19_state(VGG19Features(), state, "vgg19.pth")


def test_perceptual_term_equals_a_direct_computation(nets, images):
    vgg, lpips_net = nets
    x_hat, x = images
    loss = InfoBFRLoss(vgg, lpips_net, LossWeights())
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def features(img):
        h, out = ((img + 1) / 2 - mean) / std, []
        for i in range(30):
            h = vgg.features[i](h)
            if i in (1, 6, 11, 20, 29):  # relu1_1, relu2_1, relu3_1, relu4_1, relu5_1
                out.append(h)
        return out

    want = sum(w * (a - b).abs().mean() for w, a, b in zip((1 / 32, 1 / 16, 1 / 8, 1 / 4, 1), features(x_hat), features(x)))
    torch.testing.assert_close(loss.perceptual(x_hat, x), want)


def test_lpips_term_equals_the_lpips_formula(nets, images):
    _, model = nets
    x_hat, x = images
    scale = lambda t: (t - model.scaling_layer.shift) / model.scaling_layer.scale  # noqa: E731
    fa, fb = model.net(scale(x_hat)), model.net(scale(x))
    total = 0
    for k, (a, b) in enumerate(zip(fa, fb)):
        a = a / torch.sqrt((a**2).sum(1, keepdim=True) + 1e-10)
        b = b / torch.sqrt((b**2).sum(1, keepdim=True) + 1e-10)
        weight = getattr(model, f"lin{k}").model[-1].weight  # 1×1 conv, no bias
        total = total + F.conv2d((a - b) ** 2, weight).mean((2, 3))
    torch.testing.assert_close(model(x_hat, x).flatten(), total.flatten())
    assert model(x, x).abs().max() < 1e-6


def test_lpips_trunk_loads_torchvision_alexnet_keys():
    model = build_lpips("alex", pretrained=False)
    torch.manual_seed(2)
    alex = torchvision.models.alexnet(weights=None).state_dict()
    load_lpips_trunk(model, alex, "alexnet.pth")
    assert torch.equal(getattr(model.net.slice5, '10').weight, alex["features.10.weight"])
    with pytest.raises(WeightsError, match="alexnet.pth: not a torchvision AlexNet checkpoint, the LPIPS trunk"):
        load_lpips_trunk(model, {k: v for k, v in alex.items() if k != "features.3.weight"}, "alexnet.pth")


def test_total_is_the_weighted_sum_of_logged_terms(nets, images):
    vgg, lpips_net = nets
    x_hat, x = images
    info = torch.tensor(0.7)
    terms = InfoBFRLoss(vgg, lpips_net, LossWeights(mse=1.0, perceptual=1.0, lpips=1.0, beta=20.0))(x_hat, x, info)
    assert set(terms) == {"loss", "mse", "perceptual", "lpips", "info"}
    torch.testing.assert_close(terms["mse"], ((x_hat - x) ** 2).mean())
    torch.testing.assert_close(terms["lpips"], lpips_net(x_hat, x).mean())
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["perceptual"] + terms["lpips"] + 20.0 * info)


def test_pretrained_loss_nets_need_their_weights(nets):
    with pytest.raises(WeightsError, match="vgg19-dcbb9e9d.pth"):
        build_vgg19(pretrained=True)  # offline in tests, nothing cached
