from __future__ import annotations

import json
import re

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
    assert [s["file"] for s in manifest["shards"]["train"]] == [
        "train-00000.safetensors",
        "train-00001.safetensors",
    ]  # 4 faces, 3 per shard

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
    with pytest.raises(InputError, match="cache version 99 is not 2; rebuild the cache"):
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

    result = CliRunner().invoke(
        app,
        [
            "train",
            "cache",
            "--data",
            str(testdata / "aligned"),
            "-o",
            str(tmp_path / "c"),
            "--base",
            "none",
            "--size",
            "32",
            "--repeats",
            "1",
            "--val-count",
            "2",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    first, second = result.stdout.splitlines()
    assert first == f"{tmp_path / 'c'}: cache of 6 faces × 1 degradations × 1 base(s): 4 train and 2 val entries"
    assert re.fullmatch(
        rf"{tmp_path / 'c'}: built 6 faces in [0-9.]+ s \([0-9.]+ s per face\); [0-9.]+ GB, [0-9.]+ GB per 1000 faces", second
    )
    assert len(CachedFaces(tmp_path / "c", "train")) == 4
    again = CliRunner().invoke(
        app, ["train", "cache", "--data", str(testdata / "aligned"), "-o", str(tmp_path / "c"), "--base", "none"]
    )
    assert again.exit_code == 2 and "already holds a cache (cache.json); pass --overwrite" in again.stderr
    unknown = CliRunner().invoke(
        app, ["train", "cache", "--data", str(testdata / "aligned"), "-o", str(tmp_path / "d"), "--base", "nosuch"]
    )
    assert unknown.exit_code != 0 and unknown.stderr.count("\n") == 1


def test_a_killed_build_resumes_and_equals_an_uninterrupted_one(testdata, tmp_path):
    data = testdata / "aligned"
    config = CacheConfig(bases=["none"], size=32, repeats=2, seed=1, val_count=2, shard_faces=1, degrade_size=64)
    whole = build_cache(data, tmp_path / "whole", config, [lambda x: x], base_input_size=64, workers=2)
    assert whole["build"]["faces_built"] == 6 and whole["build"]["bytes"] > 0

    class Killed(Exception):
        pass

    def kill_after_two(faces: int, seen=[]):  # noqa: B006 - counts calls of this one build
        seen.append(faces)
        if len(seen) == 2:
            raise Killed

    with pytest.raises(Killed):
        build_cache(data, tmp_path / "resumed", config, [lambda x: x], base_input_size=64, progress=kill_after_two)
    assert not (tmp_path / "resumed" / "cache.json").exists() and len(list((tmp_path / "resumed").glob("*.safetensors"))) == 2
    again = build_cache(data, tmp_path / "resumed", config, [lambda x: x], base_input_size=64)
    assert again["build"]["faces_built"] == 4  # the two finished shards were kept
    files = sorted(p.name for p in (tmp_path / "whole").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "resumed").iterdir())
    for name in files:
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes(), name
    other = CacheConfig(bases=["none"], size=32, repeats=1, seed=1, val_count=2, shard_faces=1, degrade_size=64)
    (tmp_path / "resumed" / "cache.json").unlink()
    with pytest.raises(UsageError, match="holds an unfinished cache of other settings"):
        build_cache(data, tmp_path / "resumed", other, [lambda x: x], base_input_size=64)


def test_images_are_stored_compressed_and_lossless(testdata, tmp_path):
    config = CacheConfig(bases=["none"], size=64, repeats=1, seed=0, val_count=2, shard_faces=8)
    build_cache(testdata / "aligned", tmp_path, config, [lambda x: x], base_input_size=64)
    cached = CachedFaces(tmp_path, "train")
    gt = to_uint8(
        resize01(
            torch.from_numpy(read_face(split_faces(list_hq_faces(testdata / "aligned"), 2, 0)[0][0], 64))
            .permute(2, 0, 1)[None]
            .float()
            / 255,
            64,
        )
    )[0]
    assert torch.equal(cached.clean_faces(0)[0], gt)  # PNG: bit-exact
    raw = sum(t.numel() for t in (cached.clean_faces(0),)) * 2  # gt + one base per face, uint8
    assert (tmp_path / "train-00000.safetensors").stat().st_size < 0.8 * raw
