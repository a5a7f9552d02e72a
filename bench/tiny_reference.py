"""How much restoration a CPU-scale run's data allows: a plain residual CNN trained on the same cached pairs.

The refiner's PSNR is bounded by its tiny VAE (≈ 28 dB) *and* by what the training pairs teach. This script
measures the second part without the first: a small residual CNN (no VAE, no bottleneck, no UNet) trained with
MSE from the base output to the ground truth on the cache's ``train`` split, validated on its ``val`` split
every ``--every`` steps. If even this direct restorer gains only a few tenths of a dB over the base output on
faces it never saw, a refiner that first loses 0.5–0.8 dB to its VAE and one-step UNet cannot end above the base.

    python bench/tiny_reference.py RUN_DIR/cache [--steps 600] [--width 32] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bfrboost.train.cache import CachedFaces


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean PSNR (dB) of images in [-1, 1], clamped like the training's validation."""
    return (10 * torch.log10(4 / (a.clamp(-1, 1) - b).square().mean((1, 2, 3)).clamp_min(1e-10))).mean().item()


def residual_cnn(width: int) -> nn.Sequential:
    """Five 3×3 convolutions whose last one starts at zero: the identity (the base output) at step 0."""
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.SiLU()]
    for _ in range(3):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.SiLU()]
    last = nn.Conv2d(width, 3, 3, padding=1)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", type=Path)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    train, val = (CachedFaces(args.cache, split) for split in ("train", "val"))
    pairs, held = train.batch(range(len(train))), val.batch(range(len(val)))
    net = residual_cnn(args.width)
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    base = psnr(held["base"], held["gt"])
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {len(train)} training pairs, {len(val)} held-out")
    print("| step | PSNR CNN (held-out) | PSNR base (held-out) | PSNR CNN (training) | PSNR base (training) |")
    print("|---|---|---|---|---|")
    for step in range(1, args.steps + 1):
        index = torch.randint(0, len(train), (args.batch_size,), generator=generator)
        x = pairs["base"][index]
        loss = F.mse_loss(x + net(x), pairs["gt"][index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % args.every == 0 or step == args.steps:
            with torch.no_grad():
                print(f"| {step} | {psnr(held['base'] + net(held['base']), held['gt']):.2f} | {base:.2f} | "
                      f"{psnr(pairs['base'] + net(pairs['base']), pairs['gt']):.2f} | {psnr(pairs['base'], pairs['gt']):.2f} |")


if __name__ == "__main__":
    main()
