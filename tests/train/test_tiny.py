"""The tiny SD fit of the CPU-scale configuration: short fits (e.g. `bfrboost train tiny-sd --unet-steps 10`) work."""

from __future__ import annotations

import torch

from bfrboost.train import tiny


def test_a_fit_of_a_few_steps_writes_a_complete_tiny_sd(tmp_path):
    # a one-cycle schedule of ≤ 10 steps used to divide by zero (its 10 % warm-up was shorter than one step)
    faces = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    report = tiny.fit_tiny_sd(faces, tmp_path / "sd", tiny.TinyFit(size=32, vae_steps=0, unet_steps=10))
    assert tiny.is_tiny_sd(tmp_path / "sd")
    assert tiny.read_fit(tmp_path / "sd") == report and report["fit"]["vae_steps"] == 0 and report["faces"] == 8
