"""Refiner speed: seconds per 512² face and FLOPs per face, tiny and real SD 2.1-base configs.

CPU: the tiny refiner (batch 1) and, with ``--real``, the real SD 2.1-base refiner with random weights
(batch 1, built once, one warm-up, one timed run: it is ~4.4 TFLOPs per face). CUDA, when available:
the real config at batch 1/8/16, fp32 and bf16 autocast, eager and ``torch.compile``, with achieved
TFLOP/s. The paper reports ~0.07 s per face on an RTX 4090.

    python bench/bench_refiner.py [--real] [--cuda-only] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from bfrboost.refiner import InfoBFR, InfoBFRConfig, init_tiny, load_refiner
from bfrboost.refiner.model import (
    SD21_BASE_SCHEDULER_CONFIG,
    SD21_BASE_UNET_CONFIG,
    SD21_BASE_VAE_CONFIG,
    SD21_PROMPT_SHAPE,
)
from bfrboost.safety import write_bytes

SIZE = 512


def real_random_refiner(device: torch.device) -> InfoBFR:
    """The SD 2.1-base refiner with random weights (no download), LoRA fused as for inference."""
    torch.manual_seed(0)
    config = InfoBFRConfig(stats_mode="channel", stats_faces=1).with_scheduler(
        SD21_BASE_SCHEDULER_CONFIG
    )  # timing only: placeholder μ=0, σ=1
    vae = AutoencoderKL.from_config(SD21_BASE_VAE_CONFIG)
    unet = UNet2DConditionModel.from_config(SD21_BASE_UNET_CONFIG)
    model = InfoBFR(config, vae, unet, torch.randn(SD21_PROMPT_SHAPE))
    model.fuse_lora()
    return model.to(device).eval()


def time_refine(model: InfoBFR, batch: int, runs: int, warmup: int = 1) -> float:
    """Seconds per face (best of ``runs`` after ``warmup`` calls)."""
    x = torch.rand(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        model.refine(x)
    sync()
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        model.refine(x)
        sync()
        best = min(best, time.perf_counter() - start)
    return best / batch


def flops_per_face(model: InfoBFR) -> int:
    return model.flops_per_stage(SIZE)["total"]


def _row(config: str, device: str, batch: int, dtype: str, compiled: bool, sec: float, flops: int) -> dict:
    """One result row, printed as it is made so a long run shows progress."""
    row = {
        "config": config,
        "device": device,
        "batch": batch,
        "dtype": dtype,
        "compiled": compiled,
        "s_per_face": sec,
        "gflops_per_face": flops / 1e9,
        "tflops_per_s": flops / sec / 1e12,
    }
    print(_fmt(row), flush=True)
    return row


def bench_cpu(real: bool) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        init_tiny(Path(tmp), seed=0)
        tiny = load_refiner(tmp, "cpu")
        rows.append(_row("tiny", "cpu", 1, "fp32", False, time_refine(tiny, batch=1, runs=3), flops_per_face(tiny)))
    if real:
        flops = flops_per_face(InfoBFR.sd21_on_meta())
        model = real_random_refiner(torch.device("cpu"))
        rows.append(_row("sd21-base", "cpu", 1, "fp32", False, time_refine(model, batch=1, runs=1), flops))
    return rows


def bench_cuda(batches: tuple[int, ...] = (1, 8, 16)) -> list[dict]:
    rows = []
    device = torch.device("cuda")
    flops = flops_per_face(InfoBFR.sd21_on_meta())
    model = real_random_refiner(device).to(memory_format=torch.channels_last)
    for compiled in (False, True):
        if compiled:
            model.compile_stages()
        for dtype_name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            model.autocast_dtype = dtype
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = dtype is None
            for batch in batches:
                torch.cuda.reset_peak_memory_stats()
                sec = time_refine(model, batch, runs=5, warmup=3 if compiled else 1)
                dtype_label = dtype_name + ("+tf32" if dtype is None else "")
                row = _row("sd21-base", torch.cuda.get_device_name(), batch, dtype_label, compiled, sec, flops)
                row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
                rows.append(row)
    return rows


def _fmt(row: dict) -> str:
    return (
        f"{row['config']:<10} {row['device']:<24} batch {row['batch']:>2} {row['dtype']:<9} compiled={row['compiled']!s:<5} "
        f"{row['s_per_face']:9.4f} s/face  {row['gflops_per_face']:8.1f} GFLOP/face  {row['tflops_per_s']:7.3f} TFLOP/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", action="store_true", help="also time the real SD 2.1-base config on the CPU (minutes)")
    parser.add_argument("--cuda-only", action="store_true", help="skip the CPU runs")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    rows = [] if args.cuda_only else bench_cpu(args.real)
    if torch.cuda.is_available():
        rows += bench_cuda()
    if args.json:
        write_bytes(args.json, (json.dumps(rows, indent=1) + "\n").encode(), overwrite=True)


if __name__ == "__main__":
    main()
