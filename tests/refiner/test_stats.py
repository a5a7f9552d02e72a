from __future__ import annotations

import pytest
import torch

from bfrboost.errors import InputError
from bfrboost.refiner import (
    InfoBFR,
    compute_manifold_stats,
    list_faces,
    refiner_vae,
    save_stats,
)
from bfrboost.refiner.stats import RunningMoments, load_face


@pytest.mark.parametrize("per_element", [False, True])
def test_running_moments_match_a_one_shot_computation(per_element):
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, 8, 4, 4, generator=g) * 5 + 100 for n in (3, 1, 2)]
    moments = RunningMoments(per_element)
    for batch in batches:
        moments.update(batch)
    stats = moments.result()
    data = torch.cat(batches).double()
    dims = (0,) if per_element else (0, 2, 3)
    want_mean = data.mean(dims, keepdim=not per_element)
    want_std = data.std(dims, correction=0, keepdim=not per_element)
    if per_element:
        assert stats.mean.shape == (8, 4, 4)
    else:
        want_mean, want_std = want_mean[0], want_std[0]
        assert stats.mean.shape == (8, 1, 1)
    torch.testing.assert_close(stats.mean.double(), want_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(stats.std.double(), want_std, rtol=1e-5, atol=1e-6)
    assert stats.faces == 6


def test_stats_on_real_aligned_faces_are_stored_and_reloaded(testdata, tiny_dir, tmp_path):
    import shutil

    refiner_dir = tmp_path / "refiner"
    shutil.copytree(tiny_dir, refiner_dir)
    paths = list_faces(testdata / "aligned", limit=3)
    assert len(paths) == 3 and paths == sorted(paths)
    vae = refiner_vae(refiner_dir)
    stats = compute_manifold_stats(vae, paths, batch_size=2, size=64)
    # independent: the VAE moments of all three faces at once
    batch = torch.stack([load_face(p, 64) for p in paths])
    with torch.no_grad():
        r = vae.encode(batch).latent_dist.parameters.double()
    torch.testing.assert_close(stats.mean.double(), r.mean((0, 2, 3))[:, None, None], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(stats.std.double(), r.std((0, 2, 3), correction=0)[:, None, None], rtol=1e-4, atol=1e-5)
    save_stats(refiner_dir, stats)
    reloaded = InfoBFR.from_pretrained(refiner_dir)
    assert reloaded.config.stats_faces == 3 and reloaded.config.stats_mode == "channel"
    assert torch.equal(reloaded.bottleneck.stats_mean, stats.mean)
    assert torch.equal(reloaded.bottleneck.stats_std, stats.std)


def test_per_element_stats_switch_the_refiner_mode(testdata, tiny_dir, tmp_path):
    import shutil

    shutil.copytree(tiny_dir, tmp_path / "r")
    stats = compute_manifold_stats(refiner_vae(tmp_path / "r"), list_faces(testdata / "aligned", 2), per_element=True, size=64)
    assert stats.mean.shape == (8, 8, 8)
    save_stats(tmp_path / "r", stats)
    reloaded = InfoBFR.from_pretrained(tmp_path / "r")
    assert reloaded.config.stats_mode == "element"
    assert torch.equal(reloaded.bottleneck.stats_std, stats.std)
    assert reloaded.refine(torch.rand(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_face_folder_errors(tmp_path):
    with pytest.raises(InputError, match=rf"^{tmp_path / 'nope'}: not a folder of aligned faces$"):
        list_faces(tmp_path / "nope")
    with pytest.raises(InputError, match=rf"^{tmp_path}: no images \("):
        list_faces(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=rf"^{tmp_path / 'broken.png'}: not an image \(unrecognised file format\)"):
        load_face(tmp_path / "broken.png", 64)  # the one photo reader: same messages, EXIF and bomb guard as `restore`
