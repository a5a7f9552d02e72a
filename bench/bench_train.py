"""Training cost: tiny-config steps/s and peak memory on the CPU; SD 2.1 activation memory per sample on
the meta device (batch 1/4, with and without gradient checkpointing; no weights needed); steps/s and
peak GPU memory of the real config when CUDA is present (random weights, bf16 autocast).

    python bench/bench_train.py [--steps N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from bfrboost.refiner import InfoBFR, InfoBFRConfig
from bfrboost.refiner.model import SD21_BASE_SCHEDULER_CONFIG, SD21_BASE_UNET_CONFIG, SD21_BASE_VAE_CONFIG, SD21_PROMPT_SHAPE
from bfrboost.safety import write_bytes
from bfrboost.train.loop import TrainConfig, Trainer
from bfrboost.train.losses import InfoBFRLoss, LossWeights, build_lpips, build_vgg19

REPO = Path(__file__).resolve().parents[1]
FACES = REPO.parent / "shared" / "testdata" / "aligned"


def bench_tiny(steps: int) -> dict:
    """`bfrboost train --tiny` on the aligned test faces (64 px, batch 2), one thread per process."""
    tmp = Path(tempfile.mkdtemp())
    try:
        times: list[float] = []
        config = TrainConfig(
            out=tmp / "run",
            data=FACES,
            bases=["none"],
            tiny=True,
            size=64,
            steps=steps,
            batch_size=2,
            lr=3e-2,
            warmup=1,
            val_count=2,
            repeats=2,
            checkpoint_every=steps,
            val_every=steps,
            device="cpu",
        )
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        Trainer(config, warn=lambda m: None, progress=lambda s, t, r: times.append(r["seconds"])).run()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        timed = times[2:]  # first steps warm up allocators
        row = {
            "config": "tiny",
            "device": "cpu",
            "threads": torch.get_num_threads(),
            "batch": 2,
            "size": 64,
            "steps_per_s": len(timed) / sum(timed),
            "peak_rss_mib": peak / 1024,
            "rss_growth_mib": (peak - before) / 1024,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"tiny  cpu  batch 2 @64px  {row['steps_per_s']:.2f} steps/s  peak RSS {row['peak_rss_mib']:.0f} MiB", flush=True)
    return row


class SavedBytes(torch.autograd.graph.saved_tensors_hooks):
    """Counts the bytes autograd keeps for backward (activations; parameters excluded, each tensor once)."""

    def __init__(self, params: set[int]) -> None:
        self.total, self.seen, self.keep = 0, set(), []

        def pack(t: torch.Tensor):
            if id(t) not in params and id(t) not in self.seen:
                self.seen.add(id(t))
                self.keep.append(t)  # keep ids unique while counting
                self.total += t.numel() * t.element_size()
            return t

        super().__init__(pack, lambda t: t)


def activation_memory(batch: int, checkpointing: bool, dtype: torch.dtype = torch.bfloat16) -> dict:
    """Bytes saved for backward by one training forward (refiner + VGG19 + LPIPS loss) of the real
    SD 2.1-base config at 512², counted on the meta device in ``dtype`` (what bf16 autocast stores)."""
    model = InfoBFR.sd21_on_meta(InfoBFRConfig(stats_faces=1))
    with torch.device("meta"):
        loss_fn = InfoBFRLoss(build_vgg19(pretrained=False), build_lpips("alex", pretrained=False), LossWeights())
    model.vae.to(dtype)
    model.unet.to(dtype)  # the bottleneck stays float32, as in training
    loss_fn.to("meta").to(dtype)  # lpips builds its scaling buffers on the CPU whatever the device context
    if checkpointing:
        model.unet.enable_gradient_checkpointing()
        model.vae.enable_gradient_checkpointing()
    model.train()
    params = {id(p) for p in [*model.parameters(), *loss_fn.parameters()]}
    x = torch.empty(batch, 3, 512, 512, device="meta", dtype=dtype)
    saved = SavedBytes(params)
    with saved:
        x_hat, aux = model(x)
        loss_fn(x_hat, x, aux.info_loss)
    row = {
        "config": "sd21-base",
        "device": "meta",
        "dtype": str(dtype).removeprefix("torch."),
        "batch": batch,
        "grad_checkpoint": checkpointing,
        "activation_gib": saved.total / 2**30,
        "activation_gib_per_sample": saved.total / 2**30 / batch,
    }
    print(
        f"sd21  meta batch {batch} grad_checkpoint={checkpointing!s:<5} activations {row['activation_gib']:.2f} GiB "
        f"({row['activation_gib_per_sample']:.2f} GiB/sample, {row['dtype']})",
        flush=True,
    )
    return row


def bench_cuda(batch: int = 4, steps: int = 10, checkpointing: bool = True) -> dict:
    """Real SD 2.1-base config with random weights: bf16 autocast, frozen parts bf16, AdamW on the trainables."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    config = InfoBFRConfig(stats_faces=1).with_scheduler(SD21_BASE_SCHEDULER_CONFIG)
    model = InfoBFR(
        config,
        AutoencoderKL.from_config(SD21_BASE_VAE_CONFIG),
        UNet2DConditionModel.from_config(SD21_BASE_UNET_CONFIG),
        torch.randn(SD21_PROMPT_SHAPE),
    ).to(device)
    loss_fn = InfoBFRLoss(build_vgg19(pretrained=False), build_lpips("alex", pretrained=False), LossWeights()).to(device)
    model.vae.to(torch.bfloat16)
    model.unet.to(torch.bfloat16)
    loss_fn.to(torch.bfloat16)
    for p in model.trainable_parameters():
        p.data = p.data.float()
    if checkpointing:
        model.unet.enable_gradient_checkpointing()
        model.vae.enable_gradient_checkpointing()
    model.train()
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=5e-5)
    x = torch.rand(batch, 3, 512, 512, device=device) * 2 - 1
    generator = torch.Generator(device).manual_seed(0)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            x_hat, aux = model(x, generator)
            terms = loss_fn(x_hat, x, aux.info_loss)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    row = {
        "config": "sd21-base",
        "device": torch.cuda.get_device_name(),
        "dtype": "bf16",
        "batch": batch,
        "grad_checkpoint": checkpointing,
        "steps_per_s": 1 / seconds,
        "samples_per_s": batch / seconds,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
    }
    print(
        f"sd21  {row['device']} batch {batch} bf16 grad_checkpoint={checkpointing} {row['samples_per_s']:.2f} samples/s "
        f"peak {row['peak_gib']:.1f} GiB",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="tiny training steps to time")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [bench_tiny(args.steps)]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for checkpointing in (False, True):
        for batch in (1, 4):
            rows.append(activation_memory(batch, checkpointing))
    if torch.cuda.is_available():
        for checkpointing in (True, False):
            rows.append(bench_cuda(4, checkpointing=checkpointing))
    if args.json:
        write_bytes(args.json, (json.dumps(rows, indent=1) + "\n").encode(), overwrite=True)


if __name__ == "__main__":
    main()
