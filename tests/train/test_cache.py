from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKL

from bfrboost.errors import InputError, UsageError
from bfrboost.io.read import read_face
from bfrboost.refiner.model import TINY_VAE_CONFIG, vae_moments
from bfrboost.train.cache import CacheConfig, CachedFaces, build_cache, resize01, to_uint8
from bfrboost.train.data import batch_indices, list_hq_faces, split_faces
from bfrboost.train.degrade import degrade, file_seed


def darken(x01: torch.Tensor) -> torch.Tensor:
    """A stand-in 'base restorer' that is easy to recompute."""
    return x01 * 0.5


def test_cache_round_trips(testdata, tmp_path):
    data = testdata / "aligned"
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(TINY_VAE_CONFIG).eval()
    encode = lambda x: vae_moments(vae, x)  # noqa: E731
    config = CacheConfig(bases=["none", "dark"], size=32, repeats=2, seed=3, val_count=2, shard_faces=3, moments=True)
    manifest = build_cache(data, tmp_path, config, [lambda x: x, darken], base_input_size=128, encode_moments=encode)
    train_faces, val_faces = split_faces(list_hq_faces(data), 2, 3)
    assert manifest["val_faces"] == [p.name for p in val_faces]
    assert [s["file"] for s in manifest["shards"]["train"]] == ["train-00000.safetensors", "train-00001.safetensors"]  # 4 faces, 3 per shard

    cached = CachedFaces(tmp_path, "train")
    assert len(cached) == 4 * 2 * 2 and cached.config.bases == ["none", "dark"] and cached.has_moments
    # entry 0: first face, degradation 0, base "none"; entry 2: same degradation through "dark"
    face = train_faces[0]
    hq = read_face(face, 128)
    lq01 = torch.from_numpy(degrade(hq, file_seed(3, f"{face.name}#0"), config.degrade)).permute(2, 0, 1)[None].float() / 255
    gt = to_uint8(resize01(torch.from_numpy(hq).permute(2, 0, 1)[None].float() / 255, 32))[0]
    batch = cached.batch([0, 2])
    torch.testing.assert_close(batch["gt"][0], gt.float() / 127.5 - 1)
    torch.testing.assert_close(batch["base"][0], to_uint8(resize01(lq01, 32))[0].float() / 127.5 - 1)
    torch.testing.assert_close(batch["base"][1], to_uint8(resize01(darken(lq01), 32))[0].float() / 127.5 - 1)
    assert batch["base_id"].tolist() == [0, 1]
    with torch.no_grad():
        want = encode(batch["base"][:1]).half().float()
        want_flip = encode(batch["base"][:1].flip(-1)).half().float()
    torch.testing.assert_close(batch["moments"][:1], want, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(batch["moments_flip"][:1], want_flip, atol=2e-3, rtol=2e-3)
    val = CachedFaces(tmp_path, "val").batch([0])
    assert set(val) >= {"gt", "base", "lq"}

    with pytest.raises(UsageError, match="already holds a cache"):
        build_cache(data, tmp_path, config, [lambda x: x, darken], base_input_size=128, encode_moments=encode)
    (tmp_path / "cache.json").write_text(json.dumps({"version": 99}))
    with pytest.raises(InputError, match="cache version 99 is not 1; rebuild the cache"):
        CachedFaces(tmp_path)


def test_split_and_order_are_fixed_by_the_seed(testdata):
    faces = list_hq_faces(testdata / "aligned")
    assert split_faces(faces, 2, 0) == split_faces(faces, 2, 0) != split_faces(faces, 2, 1)
    first, position = batch_indices(10, 4, seed=0, position=0)
    again, _ = batch_indices(10, 4, seed=0, position=0)
    assert first == again and position == 4
    epoch = [batch_indices(10, 1, 0, p)[0][0] for p in range(10)]
    assert sorted(epoch) == list(range(10))  # one epoch visits every sample once
    assert batch_indices(10, 3, 0, 8)[0] == epoch[8:] + [batch_indices(10, 1, 0, 10)[0][0]]  # runs on into epoch 2


def test_an_empty_data_folder_is_one_line(tmp_path):
    with pytest.raises(InputError, match=r"no images found; --data needs aligned 512 faces"):
        list_hq_faces(tmp_path)


def test_train_cache_command(testdata, tmp_path):
    from typer.testing import CliRunner

    from bfrboost.cli import app

    result = CliRunner().invoke(app, ["train", "cache", "--data", str(testdata / "aligned"), "-o", str(tmp_path / "c"), "--base", "none",
                                      "--size", "32", "--repeats", "1", "--val-count", "2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{tmp_path / 'c'}: cache of 6 faces × 1 degradations × 1 base(s): 4 train and 2 val entries\n"
    assert len(CachedFaces(tmp_path / "c", "train")) == 4
    again = CliRunner().invoke(app, ["train", "cache", "--data", str(testdata / "aligned"), "-o", str(tmp_path / "c"), "--base", "none"])
    assert again.exit_code == 2 and "already holds a cache (cache.json); pass --overwrite" in again.stderr
    unknown = CliRunner().invoke(app, ["train", "cache", "--data", str(testdata / "aligned"), "-o", str(tmp_path / "d"), "--base", "nosuch"])
    assert unknown.exit_code != 0 and unknown.stderr.count("\n") == 1
