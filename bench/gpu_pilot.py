"""One GPU run that sizes a real InfoBFR training and inference job (SD 2.1-base config, random weights, no downloads).

Measures, and writes as JSON:

- refiner inference: ms per face at batch 1 / 8 / 16, bf16 autocast, without and with ``torch.compile``;
- training: samples/s and peak GPU memory at batch 1 / 4 / 8, without and with gradient checkpointing,
  from images (VAE encoder in the step) and from cached moments (``--moments``: the encoder is skipped).

    python bench/gpu_pilot.py --out gpu_pilot.json            # on a CUDA machine
    python bench/gpu_pilot.py --tiny --out dry.json           # the same code on tiny random configs, CPU, in seconds

``bench/gpu_pilot.sh`` wraps it. Numbers from a random-weight model time the same kernels as trained weights.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from bfrboost.refiner import InfoBFR, InfoBFRConfig
from bfrboost.refiner.model import (
    SD21_BASE_SCHEDULER_CONFIG,
    SD21_BASE_UNET_CONFIG,
    SD21_BASE_VAE_CONFIG,
    SD21_PROMPT_SHAPE,
    TINY_PROMPT_SHAPE,
    TINY_UNET_CONFIG,
    TINY_VAE_CONFIG,
)
from bfrboost.train.losses import InfoBFRLoss, LossWeights, build_lpips, build_vgg19

SETUPS = {  # vae config, unet config, prompt shape, face size, refiner config overrides
    "sd21-base": (SD21_BASE_VAE_CONFIG, SD21_BASE_UNET_CONFIG, SD21_PROMPT_SHAPE, 512, {}),
    "tiny": (TINY_VAE_CONFIG, TINY_UNET_CONFIG, TINY_PROMPT_SHAPE, 64, {"transformer_width": 16, "transformer_heads": 2}),
}


def build(setup: str, device: torch.device, fuse: bool) -> InfoBFR:
    vae_config, unet_config, prompt_shape, _, overrides = SETUPS[setup]
    torch.manual_seed(0)
    config = InfoBFRConfig(stats_mode="channel", stats_faces=1, **overrides).with_scheduler(SD21_BASE_SCHEDULER_CONFIG)
    vae, unet = AutoencoderKL.from_config(vae_config), UNet2DConditionModel.from_config(unet_config)
    model = InfoBFR(config, vae, unet, torch.randn(prompt_shape))
    if fuse:
        model.fuse_lora()
    return model.to(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def timed(fn: Callable[[], None], device: torch.device, runs: int, warmup: int) -> float:
    """Median seconds of ``runs`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def bench_refine(setup: str, device: torch.device, batches: list[int], runs: int) -> list[dict[str, Any]]:
    model = build(setup, device, fuse=True).eval()
    size = SETUPS[setup][3]
    model.autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    rows = []
    for compiled in (False, True):
        if compiled:
            model.compile_stages()
        for batch in batches:
            x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
            reset_peak(device)
            seconds = timed(lambda x=x: model.refine(x), device, runs, warmup=3 if compiled else 1)
            dtype = "bf16" if device.type == "cuda" else "fp32"
            rows.append({"setup": setup, "batch": batch, "dtype": dtype, "compiled": compiled,
                         "ms_per_face": 1000 * seconds / batch, "peak_gib": peak_gib(device)})
            print(f"refine  {setup} batch {batch:2d} compiled={compiled!s:5} {rows[-1]['ms_per_face']:8.1f} ms/face", flush=True)
    return rows


def bench_train(setup: str, device: torch.device, batches: list[int], steps: int) -> list[dict[str, Any]]:
    model = build(setup, device, fuse=False)
    size = SETUPS[setup][3]
    loss_weights = LossWeights(beta=model.config.beta)
    loss_fn = InfoBFRLoss(build_vgg19(pretrained=False), build_lpips("alex", pretrained=False), loss_weights).to(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model.vae.to(dtype)
    model.unet.to(dtype)
    loss_fn.to(dtype)
    for p in model.trainable_parameters():
        p.data = p.data.float()
    model.train()
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=5e-5)
    rows = []
    for checkpointing in (False, True):
        for part in (model.unet, model.vae):
            part.enable_gradient_checkpointing() if checkpointing else part.disable_gradient_checkpointing()
        for moments in (False, True):
            for batch in batches:
                rows.append(_train_row(model, loss_fn, optimizer, setup, device, dtype, batch, size, checkpointing, moments,
                                       steps))
    return rows


def _train_row(model, loss_fn, optimizer, setup, device, dtype, batch, size, checkpointing, moments, steps) -> dict[str, Any]:
    generator = torch.Generator(device).manual_seed(0)
    x = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    r = model.encode_manifold(x.to(dtype)) if moments else None

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            x_hat, aux = model(r, generator, manifold=True) if moments else model(x, generator)
            terms = loss_fn(x_hat, x, aux.info_loss)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    reset_peak(device)
    try:
        seconds = timed(step, device, steps, warmup=2)
        row = {"samples_per_s": batch / seconds, "peak_gib": peak_gib(device)}
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        row = {"samples_per_s": None, "peak_gib": None, "error": "out of memory"}
    row = {"setup": setup, "batch": batch, "grad_checkpoint": checkpointing, "moments": moments, **row}
    rate = "OOM" if row["samples_per_s"] is None else f"{row['samples_per_s']:.2f} samples/s, peak {row['peak_gib'] or 0:.1f} GiB"
    print(f"train   {setup} batch {batch} grad_checkpoint={checkpointing!s:5} moments={moments!s:5} {rate}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--tiny", action="store_true", help="dry run: tiny configs on the CPU")
    parser.add_argument("--runs", type=int, default=5, help="timed refine calls per row")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per row")
    args = parser.parse_args()
    if not args.tiny and not torch.cuda.is_available():
        parser.error("no CUDA device; run with --tiny for a CPU dry run")
    device = torch.device("cpu" if args.tiny else "cuda")
    setup = "tiny" if args.tiny else "sd21-base"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "setup": setup,
        "refine": bench_refine(setup, device, [1, 8, 16] if not args.tiny else [1, 2], args.runs),
        "train": bench_train(setup, device, [1, 4, 8] if not args.tiny else [1, 2], args.steps),
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{args.out}: written", flush=True)


if __name__ == "__main__":
    main()
