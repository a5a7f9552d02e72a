"""`colorize|inpaint --method codeformer`: CodeFormer's colourisation and inpainting networks, their
official configurations and key names, and outputs equal to CodeFormer's own inference scripts
(re-implemented here from ``inference_colorization.py`` / ``inference_inpainting.py`` over
spandrel's independent CodeFormer forward) on the same random weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from spandrel_extra_arches.architectures.CodeFormer.__arch import codeformer as spandrel_arch
from typer.testing import CliRunner

from bfrboost import weights
from bfrboost.cli import app
from bfrboost.errors import UsageError, WeightsError
from bfrboost.guidance import onepass
from bfrboost.options import GuidanceOptions
from bfrboost.pipeline import Restorer
from tests.guidance.conftest import load_rgb

runner = CliRunner()


def upstream_inference(net, bgr: np.ndarray, task: str, monkeypatch) -> np.ndarray:
    """CodeFormer's inference scripts: cv2 BGR /255 → RGB → normalise 0.5/0.5 → net(w, adain) →
    (inpainting: mask = pure-white input pixels, (1 − mask)·input + mask·output) → tensor2img(min_max=(-1, 1))."""
    x = torch.from_numpy((bgr / 255.0)[..., ::-1].copy().transpose(2, 0, 1)).float()
    x = ((x - 0.5) / 0.5)[None]
    with torch.no_grad():
        if task == "colorize":
            out = net(x, weight=0)[0]  # w=0, adain=True
        else:
            monkeypatch.setattr(spandrel_arch, "adaptive_instance_normalization", lambda content, style: content)  # adain=False
            out = net(x, weight=1)[0]
            mask = (x[0].sum(0) == 3).float()[None, None]
            out = (1 - mask) * x + mask * out
    rgb = ((out[0].clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
    return (rgb * 255.0).round().astype(np.uint8)


@pytest.mark.parametrize("task, source", [("colorize", "gray/Hepburn01.png"), ("inpaint", "masked/00059.png")])
def test_outputs_equal_codeformers_own_inference_on_the_same_random_weights(task, source, testdata, monkeypatch):
    torch.manual_seed(0)
    net = onepass.build(task)
    rgb = load_rgb(testdata / source)
    mask = (rgb == 255).all(axis=2).astype(np.float32) if task == "inpaint" else None  # upstream's holes: pure white
    [ours] = onepass.OnePass(task, net)([rgb], None if mask is None else [mask])
    theirs = upstream_inference(net, rgb[..., ::-1], task, monkeypatch)
    diff = np.abs(ours.astype(int) - theirs)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.001  # float32 rounding of x/255 only
    if mask is not None:
        assert np.array_equal(ours[mask == 0], rgb[mask == 0])  # known pixels put back, as upstream


def test_task_networks_have_upstreams_configurations_and_load_strictly(tmp_path):
    with torch.device("meta"):
        color, inpaint = onepass.build("colorize"), onepass.build("inpaint")
    c, i = color.state_dict(), inpaint.state_dict()
    assert c["idx_pred_layer.1.weight"].shape == (1024, 512) and i["idx_pred_layer.1.weight"].shape == (512, 512)
    assert i["quantize.embedding.weight"].shape == (512, 256)
    assert {k.split(".")[1] for k in c if k.startswith("fuse_convs_dict.")} == {"32", "64", "128"}  # no 256 skip
    assert "position_emb" in c and "ft_layers.8.linear2.weight" in c
    path = tmp_path / "codeformer_inpainting.pth"
    torch.save(
        {"params_ema": {k: torch.zeros(1).expand(v.shape) for k, v in i.items()}}, path
    )  # official wrapper, 4-byte storage
    assert onepass.load("inpaint", path).quantize.embedding.weight.shape == (512, 256)
    with pytest.raises(WeightsError, match=r"codeformer_inpainting.pth: not CodeFormer's colorize network \(.*wrong shape"):
        onepass.load("colorize", path)
    with pytest.raises(
        UsageError, match="CodeFormer publishes networks for colorize and inpaint only; old-photo needs --method pgdiff"
    ):
        Restorer("pgdiff", guidance=GuidanceOptions(task="old-photo", method="codeformer", tiny=True))


def test_cards_are_non_commercial_and_point_at_codeformers_release():
    card = weights.cards()["codeformer"]
    files = {w.file: w for w in card.weights}
    for name in ("codeformer_colorization.pth", "codeformer_inpainting.pth"):
        assert files[name].url == f"https://github.com/sczhou/CodeFormer/releases/download/v0.1.0/{name}"
    assert card.license == "S-Lab License 1.0" and card.commercial_use is False


def test_cli_method_codeformer_on_a_whole_photo_and_an_aligned_crop(tmp_path, testdata):
    photo = testdata / "whole" / "04.jpg"
    painted = load_rgb(photo).copy()
    painted[62:69, 92:138] = 255  # a white stroke across the forehead
    src = tmp_path / "painted.png"
    from PIL import Image

    Image.fromarray(painted).save(src)
    result = runner.invoke(
        app,
        [
            "inpaint",
            str(src),
            "--method",
            "codeformer",
            "--tiny",
            "--mask-color",
            "white",
            "-s",
            "1",
            "-o",
            str(tmp_path / "out"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.stderr
    line = json.loads(result.stdout)
    assert line["output"] == str(tmp_path / "out" / "restored_imgs" / "painted.png") and len(line["faces"]) == 1
    assert line["seconds"]["base"] > 0 and "guidance" not in line["seconds"]
    after = load_rgb(Path(line["output"])).astype(int)
    assert np.abs(after[62:69, 92:138] - 255).mean() > 20  # the stroke is filled
    result = runner.invoke(
        app, ["inpaint", str(src), "--method", "codeformer", "--mask-color", "white", "--steps", "50", "-o", str(tmp_path / "x")]
    )
    assert result.exit_code == 2 and "--steps set PGDiff's guided sampling: use them with --method pgdiff" in result.stderr
