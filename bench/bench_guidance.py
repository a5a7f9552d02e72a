"""Seconds per face of every PGDiff task: the tiny prior on the CPU, and the released prior on CUDA.

Every task runs through :class:`bfrboost.guidance.PGDiff` on real aligned crops from
``../shared/testdata`` (random crops when it is absent) with random weights of the official
architectures (no downloads): the prior, ArcFace IR-SE50 for the reference task, PGDiff's RRDB
restorer for old photos. Identity guidance back-propagates through ArcFace at every step, so that
task costs more; the others only take gradients of cheap pixel losses at x̂₀.

    python bench/bench_guidance.py                 # tiny prior (64 px), CPU, 20 steps, 1 thread
    python bench/bench_guidance.py --real          # + the released 512 px prior on CUDA when present

On the CPU the released prior is not timed by default: one 512 px UNet pass takes about 20 s on this
2-core machine, i.e. ~5.5 h per face at PGDiff's default 1000 steps (``--real --cpu-real`` times 2 steps).
The CUDA rows report peak allocator memory.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bfrboost.guidance import PGDiff
from bfrboost.nets import rrdb as rrdb_module
from bfrboost.nets.arcface import random_arcface
from bfrboost.nets.iddpm import IDDPMUNet, UNetConfig
from bfrboost.options import GuidanceOptions

TESTDATA = Path(__file__).resolve().parents[1].parent / "shared" / "testdata"
TINY = UNetConfig(image_size=64, channel_mult=(1, 1, 2), num_res_blocks=(1, 1, 1), attention_resolutions=(16,), num_head_channels=32)
TINY_RRDB = rrdb_module.RRDBConfig(mid_channels=8, num_blocks=1, growth_channels=4)


def crops(device: torch.device) -> dict[str, torch.Tensor]:
    def read(rel: str) -> torch.Tensor:
        path = TESTDATA / rel
        if not path.is_file():
            return torch.rand(1, 3, 512, 512)
        from PIL import Image

        array = np.asarray(Image.open(path).convert("RGB").resize((512, 512)), dtype=np.float32) / 255
        return torch.from_numpy(array).permute(2, 0, 1)[None]

    mask_path = TESTDATA / "masked" / "masks" / "00059.png"
    mask = read("masked/masks/00059.png")[:, :1].gt(0.5).float() if mask_path.is_file() else torch.zeros(1, 1, 512, 512)
    return {
        "gray": read("gray/Einstein01.png").to(device), "masked": read("masked/00059.png").to(device), "mask": mask.to(device),
        "old": read("old_photo/0_7.jpg").to(device), "lq": read("reference/lq/00010.png").to(device), "ref": read("reference/ref/00010.png").to(device),
    }


def bench(label: str, prior: IDDPMUNet, device: torch.device, steps: int, rrdb_config: rrdb_module.RRDBConfig | None) -> None:
    torch.manual_seed(0)
    data = crops(device)
    arcface = random_arcface(0).to(device)
    rrdb = rrdb_module.build(None, rrdb_config).to(device)
    model = PGDiff(prior.to(device), arcface=arcface)
    with_rrdb = PGDiff(prior, rrdb=rrdb)
    options = GuidanceOptions(steps=steps)
    reference = model.embed(data["ref"])
    runs = {
        "restore (guide target)": lambda: model("restore", data["lq"], options, targets=data["lq"]),
        "restore + reference": lambda: model("restore", data["lq"], options, targets=data["lq"], reference=reference),
        "colorize": lambda: model("colorize", data["gray"], options),
        "inpaint": lambda: model("inpaint", data["masked"], options, masks=data["mask"]),
        "old-photo (RRDB guide)": lambda: with_rrdb("old-photo", data["old"], options),
    }
    print(f"\n{label}: {steps} steps, device {device}, torch threads {torch.get_num_threads()}")
    print("| task | s/face | s/step | peak MB |\n|---|---|---|---|")
    for name, run in runs.items():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        peak = f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f}" if device.type == "cuda" else "-"
        print(f"| {name} | {seconds:.2f} | {seconds / steps:.4f} | {peak} |")
        sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="steps of the tiny-prior runs")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (two spin against each other on a loaded 2-core CPU)")
    parser.add_argument("--real", action="store_true", help="also the released 512 px prior on CUDA (100 steps)")
    parser.add_argument("--real-steps", type=int, default=100)
    parser.add_argument("--cpu-real", action="store_true", help="time the released prior on the CPU too (2 steps)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bench("tiny prior (64 px, random weights)", IDDPMUNet(TINY).eval().requires_grad_(False), torch.device("cpu"), args.steps, TINY_RRDB)
    if args.real and torch.cuda.is_available():
        prior = IDDPMUNet(UNetConfig()).eval().requires_grad_(False)
        bench("released prior (512 px, random weights)", prior, torch.device("cuda"), args.real_steps, None)
    elif args.real and args.cpu_real:
        prior = IDDPMUNet(UNetConfig()).eval().requires_grad_(False)
        bench("released prior (512 px, random weights)", prior, torch.device("cpu"), 2, None)
    elif args.real:
        print("\nreleased prior: no CUDA device here, skipped (pass --cpu-real to time 2 steps on the CPU)")


if __name__ == "__main__":
    main()
