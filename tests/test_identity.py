"""ArcFace IR-SE50: official key layout, loading through the weights manager, embeddings, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bfrboost import weights
from bfrboost.errors import WeightsError
from bfrboost.nets.arcface import ARCFACE_FILE, ArcFace, load_arcface, random_arcface


@pytest.fixture(scope="module")
def official():
    """facexlib's own IR-SE50 (it builds on the CPU; only its init helper forces CUDA), with random
    weights and BatchNorm statistics: an official-format state dict and an independent forward."""
    from facexlib.recognition.arcface_arch import Backbone

    torch.manual_seed(1)
    net = Backbone(num_layers=50, drop_ratio=0.6, mode="ir_se").eval()
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                tensor.normal_(0, 0.1)
    return net


@pytest.fixture(scope="module")
def faces(testdata) -> torch.Tensor:
    paths = sorted((testdata / "aligned").iterdir())[:2]
    arrays = [np.asarray(Image.open(p).convert("RGB").resize((128, 128), Image.BICUBIC)) for p in paths]
    return (torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0).contiguous()


def test_official_checkpoint_loads_strictly_and_matches_facexlib(official, faces, _isolated_cache, monkeypatch):
    torch.save(official.state_dict(), _isolated_cache / ARCFACE_FILE)
    # random weights cannot match the card's SHA-256: skip only that check, loading stays real
    monkeypatch.setattr(weights, "ensure", lambda file, **_: weights.home() / file)
    model = load_arcface()
    ours = model.state_dict()
    for key, value in official.state_dict().items():
        assert torch.equal(ours[f"net.{key}"], value), key
    with torch.no_grad():
        expected = official(F.interpolate(faces, size=(112, 112), mode="bilinear", antialias=True) * 2 - 1)
        got = model.embed(faces)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_pre_041_checkpoint_without_batch_counters_loads(official, tmp_path):
    state = {k: v for k, v in official.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    model = load_arcface(weights=tmp_path / "old.pth")
    assert torch.equal(model.net.output_layer[3].weight, official.output_layer[3].weight)


def test_other_checkpoint_is_refused_in_one_line(tmp_path):
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "resnet.pth")
    with pytest.raises(WeightsError) as err:
        load_arcface(weights=tmp_path / "resnet.pth")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'resnet.pth'}: not an ArcFace IR-SE50 checkpoint (")
    assert message.endswith("run `bfrboost weights download arcface`")


def test_missing_weights_offline_say_where_to_get_them():
    with pytest.raises(WeightsError) as err:
        load_arcface()
    assert str(err.value).startswith(f"{ARCFACE_FILE}: not in the cache and offline mode is on; download https://github.com/xinntao/facexlib/")


def test_card_is_listed():
    entry = weights.manifest()[ARCFACE_FILE]
    assert entry.card == "arcface" and entry.sha256 == "a035c768259b98ab1ce0e646312f48b9e1e218197a0f80ac6765e88f8b6ddf28"


@pytest.fixture(scope="module")
def arcface() -> ArcFace:
    return random_arcface(0)


def test_embeddings_are_unit_norm_deterministic_and_batch_independent(arcface, faces):
    with torch.no_grad():
        both = arcface.embed(faces)
        alone = arcface.embed(faces[1:])
    assert both.shape == (2, 512)
    torch.testing.assert_close(both.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(both[1:], alone, rtol=1e-4, atol=1e-5)
    assert (
        random_arcface(0)
        .state_dict()["net.body.0.res_layer.1.weight"]
        .equal(arcface.state_dict()["net.body.0.res_layer.1.weight"])
    )
    with torch.no_grad():
        assert torch.allclose(arcface.similarity(faces, faces), torch.ones(2), atol=1e-5)
        assert arcface.similarity(faces[:1], faces[1:]).item() < 0.999


def test_train_mode_is_refused_so_batchnorm_never_updates(arcface, faces):
    arcface.train()
    assert not arcface.training and not arcface.net.training
    before = arcface.net.input_layer[1].running_mean.clone()
    with torch.no_grad():
        arcface.embed(faces)
    assert torch.equal(before, arcface.net.input_layer[1].running_mean)


def test_gradient_reaches_the_input_not_the_weights(arcface, faces):
    x = faces.clone().requires_grad_(True)
    target = arcface.embed(faces.flip(0)).detach()
    loss = F.mse_loss(arcface.embed(x), target, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    assert grad.shape == x.shape and grad.abs().sum() > 0 and torch.isfinite(grad).all()
    assert all(not p.requires_grad for p in arcface.parameters())
    # a small step against the gradient lowers the loss: the gradient is the real one
    with torch.no_grad():
        stepped = F.mse_loss(arcface.embed(x - 1e-3 * grad / grad.abs().max()), target, reduction="sum")
    assert stepped < loss


def test_center_crop_uses_the_psp_box(faces):
    centre = random_arcface(0, crop="center")
    box = faces[:, :, 18:112, 16:110]  # 35:223 / 32:220 of 256, scaled to 128
    with torch.no_grad():
        expected = F.normalize(centre.net(F.interpolate(box, size=(112, 112), mode="bilinear", antialias=True) * 2 - 1), dim=1)
        torch.testing.assert_close(centre.embed(faces), expected)
    with pytest.raises(ValueError):
        ArcFace(centre.net, crop="middle")  # type: ignore[arg-type]
