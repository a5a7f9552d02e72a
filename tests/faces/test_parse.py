from __future__ import annotations

import numpy as np
import pytest
import torch

from bfrboost.errors import WeightsError
from bfrboost.faces.parse import KEPT_LABELS, labels_to_mask, load_parser


def test_labels_to_mask_keeps_face_labels_blurs_and_clears_the_edge():
    labels = np.zeros((512, 512), np.int64)  # background
    labels[96:416, 96:416] = 1  # skin
    labels[200:260, 150:230] = 10  # a kept part inside the face
    labels[416:, :] = 16  # a dropped label (cloth) below
    mask = labels_to_mask(labels, 512)
    assert mask.shape == (512, 512) and mask.dtype == np.float32
    assert mask[256, 256] == pytest.approx(1.0, abs=1e-3)
    assert mask[30, 30] < 1e-3 and mask[500, 256] < 1e-3
    assert 0.4 < mask[256, 96] < 0.6  # the blurred outline sits on the label edge
    assert np.all(mask[:10] == 0) and np.all(mask[:, -10:] == 0)
    assert labels_to_mask(labels, 256)[128, 128] == pytest.approx(1.0, abs=1e-3)
    assert set(KEPT_LABELS).isdisjoint({0, 14, 16, 17, 18})


def test_missing_parsenet_gives_none_or_a_one_line_error(_isolated_cache):
    assert load_parser() is None
    with pytest.raises(WeightsError) as err:
        load_parser(required=True)
    assert str(err.value).startswith("parsing_parsenet.pth: not in the cache and offline mode is on; download https://")


def _random_parsenet():
    from facexlib.parsing.parsenet import ParseNet

    torch.manual_seed(0)
    return ParseNet(in_size=512, out_size=512, parsing_ch=19).eval()


def test_parsenet_with_facexlib_key_names_loads_and_gives_masks(_isolated_cache, trust_cache):
    net = _random_parsenet()
    torch.save(net.state_dict(), _isolated_cache / "parsing_parsenet.pth")
    parser = load_parser(resolution=32)  # the network is fully convolutional; 32 keeps CPU tests fast
    for key, value in net.state_dict().items():
        assert torch.equal(parser.net.state_dict()[key], value), key
    crops = [np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8) for i in range(2)]
    masks = parser.masks(crops, batch_size=1)
    with torch.inference_mode():  # independent reference: facexlib's own normalisation, argmax at 32
        x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0
        labels = net((x - 0.5) / 0.5)[0].argmax(1).numpy()
    for mask, label in zip(masks, labels):
        np.testing.assert_allclose(mask, labels_to_mask(label, 32), atol=1e-6)
    assert len(masks) == 2


def test_wrong_checkpoint_is_refused(_isolated_cache, trust_cache):
    path = _isolated_cache / "parsing_parsenet.pth"
    torch.save({"encoder.0.conv2d.weight": torch.zeros(1)}, path)
    with pytest.raises(WeightsError) as err:
        load_parser()
    assert str(err.value).startswith(f"{path}: not a ParseNet checkpoint (")
