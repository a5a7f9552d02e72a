"""Refined vs base on faces a CPU-scale (`--tiny`) run never saw, on two sets, with the training's own metrics.

Set 1 is the run's validation split (its ``val.jsonl``, first and last record). Set 2 is a folder the run and
its tiny SD never used (default: the shared ``aligned/`` faces, another source than ``faces/aligned``),
degraded as the run's cache degrades (its ``cache.json``: ranges and size) but with other seeds. The base is ``none``,
as in the tests and as the cache stores it (the degraded face enlarged to the base's 512 px input, resized back);
LPIPS is the run's random-weight net (seeded as training seeds it).

    python bench/tiny_learning.py RUN_DIR [--faces ../shared/testdata/aligned] [--repeats 4]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from bfrboost.backbones.registry import get_spec
from bfrboost.io.read import read_face
from bfrboost.refiner.model import InfoBFR
from bfrboost.train.cache import CacheConfig, resize01, to_uint8
from bfrboost.train.data import list_hq_faces
from bfrboost.train.degrade import degrade, file_seed
from bfrboost.train.losses import build_lpips, build_vgg19


def second_set(folder: Path, cache: CacheConfig, repeats: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(degraded, truth) in [-1, 1]: every face of ``folder`` degraded ``repeats`` times as ``cache`` degrades."""
    lq, gt, size = [], [], cache.size
    for path in list_hq_faces(folder):
        hq = read_face(path, cache.degrade_size or size)
        clean = torch.from_numpy(hq.copy()).permute(2, 0, 1)[None].float() / 255
        for k in range(repeats):
            low = degrade(hq, file_seed(seed, f"{path.name}#bench{k}"), cache.degrade)
            low01 = torch.from_numpy(low).permute(2, 0, 1)[None].float() / 255
            # base none, as the cache runs it: the degraded face at the base's input size, resized to the training size
            lq.append(to_uint8(resize01(resize01(low01, get_spec("none").input_size), size)).float() / 255)
            gt.append(resize01(clean, size))
    return torch.cat(lq) * 2 - 1, torch.cat(gt) * 2 - 1


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of images in [-1, 1], clamped like the validation's."""
    mse = ((a.clamp(-1, 1) - b) / 2).square().mean((1, 2, 3)).clamp_min(1e-10)
    return 10 * torch.log10(1 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--faces", type=Path, default=Path(__file__).resolve().parents[1] / "../shared/testdata/aligned")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    val = [json.loads(line) for line in (args.run / "val.jsonl").read_text().splitlines()]
    model = InfoBFR.from_pretrained(args.run / "refiner", device="cpu").eval()
    cache = CacheConfig.from_dict(json.loads((args.run / "cache" / "cache.json").read_text())["config"])
    with torch.random.fork_rng(devices=[]):  # the loss nets of the run: VGG19 then LPIPS from the run's seed
        torch.manual_seed(0)
        build_vgg19(pretrained=False)
        lpips = build_lpips("alex", pretrained=False).eval()
    lq, gt = second_set(args.faces.resolve(), cache, args.repeats, args.seed)
    with torch.no_grad():
        refined, aux = model(lq)
        rows = {
            "psnr": psnr(refined, gt).mean().item(),
            "psnr_base": psnr(lq, gt).mean().item(),
            "wins": int((psnr(refined, gt) > psnr(lq, gt)).sum()),
            "lpips": lpips(refined.clamp(-1, 1), gt).mean().item(),
            "lpips_base": lpips(lq, gt).mean().item(),
            "lambda_mean": aux.lam.mean().item(),
        }
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("| set | step | PSNR refined | PSNR base | refined above base (images) | LPIPS refined | LPIPS base | mean λ |")
    print("|---|---|---|---|---|---|---|---|")
    for record in (val[0], val[-1]):
        print(f"| held-out split ({args.run.name}) | {record['step']} | {record['psnr']:.2f} | {record['psnr_base']:.2f} | – | "
              f"{record['lpips']:.4f} | {record['lpips_base']:.4f} | {record['lambda_mean']:.3f} |")
    name = f"{args.faces.name}/ × {args.repeats} (never seen)"
    print(f"| {name} | {val[-1]['step']} | {rows['psnr']:.2f} | {rows['psnr_base']:.2f} | {rows['wins']} of {len(gt)} | "
          f"{rows['lpips']:.4f} | {rows['lpips_base']:.4f} | {rows['lambda_mean']:.3f} |")


if __name__ == "__main__":
    main()
