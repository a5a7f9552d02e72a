"""A tiny training run on the real aligned test faces (run once per module), then resume, results, errors."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image
from typer.testing import CliRunner

from bfrboost import weights
from bfrboost.cli import app
from bfrboost.io.read import read_face
from bfrboost.nets.arcface import ARCFACE_FILE, random_arcface
from bfrboost.refiner.lora import is_lora_key
from bfrboost.refiner.model import InfoBFRConfig
from bfrboost.train.cache import CachedFaces
from bfrboost.train.degrade import degrade, file_seed, tiny_degradation
from bfrboost.train.loop import TrainConfig, Trainer, validation_arcface
from tests.train.conftest import SIZE, VAL_COUNT

runner = CliRunner()
STEPS = 30
TINY = [
    "--tiny",
    "--base",
    "none",
    "--steps",
    str(STEPS),
    "--batch-size",
    "2",
    "--lr",
    "3e-2",
    "--warmup",
    "1",
    "--size",
    str(SIZE),
    "--val-count",
    "2",
    "--repeats",
    "2",
    "--checkpoint-every",
    "15",
    "--val-every",
    "15",
    "--device",
    "cpu",
]
LEARN_STEPS = 200


def tiny_args(run) -> list[str]:
    """The CLI flags of a short CPU-scale run over the session's fitted tiny SD."""
    return [*TINY, "--tiny-sd", str(run[2].config.tiny_sd)]


def tiny_config(tiny_sd: Path, out: Path, **kw) -> TrainConfig:
    """A short CPU-scale run on the session's fitted tiny SD (base none, CPU); ``kw`` overrides any setting."""
    settings = dict(bases=["none"], tiny=True, tiny_sd=tiny_sd, size=SIZE, batch_size=2, lr=3e-2, warmup=1, device="cpu")
    return TrainConfig(out=out, **(settings | kw))


@pytest.fixture(scope="module")
def run(testdata, tiny_sd, tmp_path_factory):
    """Mechanics: a short run on the six aligned/ faces over the fitted tiny SD (resume, checkpoints, results)."""
    out = tmp_path_factory.mktemp("train") / "run"
    config = tiny_config(
        tiny_sd, out, data=testdata / "aligned", steps=STEPS, val_count=2, repeats=2, checkpoint_every=15, val_every=15
    )
    warnings = []
    trainer = Trainer(config, warn=warnings.append, arcface=random_arcface(0))
    result = trainer.run()
    return out, result, trainer, warnings


@pytest.fixture(scope="module")
def learned(faces_dir, tiny_sd, tmp_path_factory):
    """Learning: the default objective (β, statistics refresh) on 80 faces of faces/aligned, validated on its 16 others."""
    out = tmp_path_factory.mktemp("learn") / "run"
    config = TrainConfig(
        out=out,
        data=faces_dir,
        bases=["none"],
        tiny=True,
        tiny_sd=tiny_sd,
        size=SIZE,
        steps=LEARN_STEPS,
        batch_size=8,
        val_count=VAL_COUNT,
        repeats=2,
        checkpoint_every=LEARN_STEPS,
        val_every=LEARN_STEPS // 4,
        stats_every=10,
        schedule="cosine",
        device="cpu",
    )
    warnings = []
    trainer = Trainer(config, warn=warnings.append)
    trainer.run()
    return out, trainer, warnings


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_refiner_learns_to_restore_faces_it_never_saw(learned):
    out, trainer, warnings = learned
    val = read(out / "val.jsonl")
    assert set(val[0]) >= {"psnr", "psnr_base", "lpips", "lpips_base", "lambda_mean", "info", "h_mean", "h_std"}
    start, end = val[0], val[-1]
    # measured (seed 0, one thread): 22.61 → 23.30 dB, LPIPS 0.0084 → 0.0075; the base output 22.82 dB, 0.0097
    assert end["psnr"] > start["psnr"] + 0.3, (start, end)
    assert end["psnr"] > end["psnr_base"] + 0.2, end  # closer to the truth than the base output, not only than itself
    assert end["lpips"] < end["lpips_base"] - 0.001, end
    assert 0.05 < end["lambda_mean"] < 0.98, end
    assert not [w for w in warnings if "mean λ" in w]
    assert trainer.model.config.beta == InfoBFRConfig().beta  # the default objective
    # the tiny SD never saw these faces: they are the run's validation split, left out of its fitting set
    fitted_on = json.loads((out / "sd-tiny" / "fit.json").read_text())["faces"]
    assert fitted_on == 96 - VAL_COUNT
    # Statistics follow h, so normalised h stays standard normal (checked here, not in a test of its own: with xdist
    # another worker would build this 100 s run again). One thread, seeded init: the run is deterministic. Measured
    # (refreshed every 10 steps, validated just before a refresh): |h_mean| ≤ 0.21 and h_std 1.00–1.04 at every
    # validation (without the refresh h drifts: issue 15 saw L_info rise 4.6 → 26.6 in 8 steps).
    for record in val:
        assert abs(record["h_mean"]) < 0.3 and 0.95 < record["h_std"] < 1.1, record


def test_a_collapsing_beta_warns_once_naming_the_flag(faces_dir, tiny_sd, tmp_path):
    config = TrainConfig(
        out=tmp_path / "run",
        data=faces_dir,
        bases=["none"],
        tiny=True,
        tiny_sd=tiny_sd,
        size=SIZE,
        steps=30,
        batch_size=4,
        lr=0.1,
        val_count=VAL_COUNT,
        repeats=1,
        checkpoint_every=30,
        val_every=10,
        beta=100.0,
        device="cpu",
    )
    warnings = []
    Trainer(config, warn=warnings.append).run()
    lam = [r["lambda_mean"] for r in read(tmp_path / "run" / "val.jsonl")]
    first = next(i for i in range(1, len(lam)) if lam[i - 1] < 0.05 and lam[i] < 0.05)
    said = [w for w in warnings if "mean λ" in w]
    assert said == [
        f"mean λ {lam[first - 1]:.3f}, {lam[first]:.3f} < 0.05 at two validations: the bottleneck replaces the face "
        "by noise (the output no longer depends on the base face); lower --beta (now 100), "
        "e.g. with `bfrboost train pilot`"
    ]


def test_mechanics_run_logs_and_validates(run):
    out, _, _, warnings = run
    log = read(out / "log.jsonl")
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))
    assert set(log[0]) >= {"step", "loss", "mse", "perceptual", "lpips", "info", "lr", "lambda_mean", "grad_norm"}
    val = read(out / "val.jsonl")
    assert [r["step"] for r in val] == [0, 15, 30]
    assert set(val[0]) >= {"psnr", "psnr_base", "lpips", "lpips_base", "lambda_mean", "info", "ids"}
    assert warnings[0] == "manifold statistics from 4 faces (the paper uses 3000); add faces to --data for better ones"
    with Image.open(out / "val" / "step-00000030.png") as grid:
        assert grid.size == (4 * SIZE, 4 * SIZE)  # input | base | refined | GT; rows: 2 val faces × 2 degradations
    with Image.open(out / "curves.png") as curves:
        assert curves.size[0] > 300


def test_a_tiny_cache_holds_each_face_degraded_at_the_training_size_by_the_cpu_scale_ranges(run, testdata):
    out = run[0]
    name = json.loads((out / "cache" / "cache.json").read_text())["val_faces"][0]
    for k in range(2):  # --repeats 2: entries k of the first validation face
        low = degrade(read_face(testdata / "aligned" / name, SIZE), file_seed(0, f"{name}#{k}"), tiny_degradation(SIZE))
        # base none: the degraded face at the base's 512 px input size, resized back to the training size (bicubic)
        low = torch.from_numpy(low).permute(2, 0, 1)[None].float() / 255
        up = torch.nn.functional.interpolate(low, size=(512, 512), mode="bicubic", antialias=True, align_corners=False)
        down = torch.nn.functional.interpolate(up.clamp(0, 1), (SIZE, SIZE), mode="bicubic", antialias=True, align_corners=False)
        expected = (down.clamp(0, 1) * 255).round().to(torch.uint8)[0]
        assert torch.equal(CachedFaces(out / "cache", "val").entry(k)["base"], expected), k
    assert tiny_degradation(SIZE).blur_sigma == (0.1, 0.625) and tiny_degradation(SIZE).scale == (1.0, 1.0)


def test_validation_ids_is_the_arcface_cosine_of_refined_and_ground_truth(run):
    out, _, trainer, _ = run
    val = CachedFaces(out / "cache", "val")
    batch = val.batch(range(len(val)))
    arcface = random_arcface(0)
    model = trainer.model.eval()
    try:
        with torch.no_grad():
            x_hat, _ = model(batch["base"])  # the step-30 weights (no EMA): those of the last validation
            refined = arcface.net(arcface.preprocess((x_hat + 1) / 2))
            truth = arcface.net(arcface.preprocess((batch["gt"] + 1) / 2))
    finally:
        model.train()
    expected = torch.nn.functional.cosine_similarity(refined, truth, dim=1).mean().item()
    assert read(out / "val.jsonl")[-1]["ids"] == pytest.approx(expected, abs=1e-5)


def test_validation_uses_the_cached_arcface_or_says_once_why_not(monkeypatch):
    notes = []
    assert validation_arcface("cpu", notes.append) is None
    assert notes == [
        "validation without identity cosine (ids): the ArcFace weights are not in the cache; "
        "run `bfrboost weights download arcface` to add it"
    ]
    path = weights.manifest()[ARCFACE_FILE].path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"present")
    loaded = random_arcface(1)
    monkeypatch.setattr("bfrboost.nets.arcface.load_arcface", lambda device: loaded)  # loading itself: tests/test_identity.py
    assert validation_arcface("cpu", notes.append) is loaded and len(notes) == 1


def test_frozen_weights_are_unchanged_and_only_trainables_moved(run):
    out, _, trainer, _ = run
    model = trainer.model
    vae = AutoencoderKL.from_pretrained(out / "sd-tiny" / "vae")
    for key, tensor in vae.state_dict().items():
        assert torch.equal(model.vae.state_dict()[key], tensor), key
    unet = UNet2DConditionModel.from_pretrained(out / "sd-tiny" / "unet").state_dict()
    for key, tensor in model.unet.state_dict().items():
        if not is_lora_key(key):
            assert torch.equal(tensor, unet[key.replace(".base_layer", "")]), key
    lora_b = [p for n, p in model.unet.named_parameters() if ".lora_B." in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # LoRA B starts at zero; training moved it


def test_the_result_is_a_refiner_that_restore_loads(run, testdata):
    from bfrboost.pipeline import Restorer

    _, result, _, _ = run
    assert {"config.json", "refiner.safetensors", "vae", "unet"} <= {p.name for p in result.iterdir()}
    config = json.loads((result / "config.json").read_text())
    assert config["stats_faces"] == 4 and config["beta"] == InfoBFRConfig().beta
    assert config["face_size"] == SIZE  # restore runs the refiner at the size it was trained at, not at 512 px
    restorer = Restorer(base="none", refiner=result, aligned=True, device="cpu")
    with Image.open(testdata / "aligned" / "0143.png") as image:
        face = np.asarray(image.convert("RGB"))
    restored = restorer.restore(face)
    assert restored.image.shape == face.shape and not np.array_equal(restored.image, face)


def test_resume_from_a_mid_run_checkpoint_gives_exactly_the_next_losses(run, tmp_path):
    out, _, _, _ = run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "checkpoints" / "step-00000030")
    shutil.rmtree(copy / "refiner")
    result = runner.invoke(app, ["train", "--out", str(copy), "--resume", *tiny_args(run)])
    assert result.exit_code == 0, result.output
    assert read(copy / "log.jsonl") == [
        {**r, "seconds": r2["seconds"]} for r, r2 in zip(read(out / "log.jsonl"), read(copy / "log.jsonl"))
    ]
    first, again = read(out / "log.jsonl")[15:], read(copy / "log.jsonl")[15:]
    assert [r["loss"] for r in again] == [r["loss"] for r in first]  # bit for bit, from step 16 on
    assert [r["step"] for r in read(copy / "val.jsonl")] == [0, 15, 30]


def test_checkpoints_keep_every_state(run):
    out, _, _, _ = run
    folder = out / "checkpoints" / "step-00000015"
    assert {p.name for p in folder.iterdir()} == {"trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json"}
    state = json.loads((folder / "state.json").read_text())
    assert state["step"] == 15 and state["position"] == 30 and "numpy_rng" in state and "python_rng" in state


def test_one_line_errors(tmp_path, run):
    out, _, _, _ = run
    (tmp_path / "empty").mkdir()
    empty = runner.invoke(app, ["train", "--out", str(tmp_path / "r"), "--data", str(tmp_path / "empty"), *tiny_args(run)])
    assert empty.exit_code == 1
    assert empty.stderr.endswith(
        "no images found; --data needs aligned 512 faces (FFHQ-512 layout, or `bfrboost restore --save-faces`)\n"
    )
    assert empty.stderr.count("\n") == 1
    again = runner.invoke(app, ["train", "--out", str(out), "--data", str(tmp_path / "empty"), *tiny_args(run)])
    assert again.exit_code == 2 and "already holds a training run; pass --resume to continue it" in again.stderr
    nothing = runner.invoke(app, ["train", "--out", str(tmp_path / "new"), "--resume", *tiny_args(run)])
    assert nothing.exit_code == 2 and "no checkpoint to resume from" in nothing.stderr


def test_training_from_cached_vae_moments(testdata, tiny_sd, tmp_path):
    config = tiny_config(
        tiny_sd,
        tmp_path / "run",
        data=testdata / "aligned",
        steps=3,
        val_count=2,
        repeats=1,
        checkpoint_every=3,
        val_every=3,
        moments=True,
    )
    result = Trainer(config, warn=lambda m: None).run()
    assert (result / "refiner.safetensors").is_file()
    assert json.loads((tmp_path / "run" / "cache" / "cache.json").read_text())["config"]["moments"] is True
    assert [r["step"] for r in read(tmp_path / "run" / "log.jsonl")] == [1, 2, 3]


def test_stats_from_a_refiner_without_statistics_is_refused(run, tmp_path):
    from bfrboost.refiner import init_tiny

    out, _, _, _ = run
    init_tiny(tmp_path / "r")
    config = json.loads((tmp_path / "r" / "config.json").read_text()) | {"stats_faces": 0}
    (tmp_path / "r" / "config.json").write_text(json.dumps(config))
    result = runner.invoke(
        app,
        [
            "train",
            "--out",
            str(tmp_path / "new"),
            "--cache",
            str(out / "cache"),
            "--stats-from",
            str(tmp_path / "r"),
            *tiny_args(run),
        ],
    )
    assert result.exit_code == 2
    assert result.stderr == (
        f"bfrboost: {tmp_path / 'r'}: --stats-from has no statistics either; "
        f"run `bfrboost refiner stats --faces HQ_DIR --refiner {tmp_path / 'r'}`\n"
    )


def test_bf16_autocast_keeps_trainables_float32_and_frozen_parts_bf16(run, tmp_path):
    trainer = small_run(run, tmp_path / "run", steps=2, checkpoint_every=2, val_every=2, precision="bf16")
    result = tmp_path / "run" / "refiner"
    log = read(tmp_path / "run" / "log.jsonl")
    assert len(log) == 2 and all(np.isfinite(r["loss"]) for r in log)
    assert {p.dtype for p in trainer.model.trainable_parameters()} == {torch.float32}
    frozen = [p for n, p in trainer.model.unet.named_parameters() if not is_lora_key(n)]
    assert {p.dtype for p in frozen} == {torch.bfloat16} and next(trainer.model.vae.parameters()).dtype == torch.bfloat16
    assert (result / "refiner.safetensors").is_file()


def test_out_of_memory_names_the_flags_that_help(run, tmp_path, monkeypatch):
    from bfrboost.train import losses

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    out, _, _, _ = run
    monkeypatch.setattr(losses.InfoBFRLoss, "forward", oom)
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "r"), "--cache", str(out / "cache"), *tiny_args(run)])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] + "\n" == (
        "bfrboost: out of GPU memory at --batch-size 2, 32 px; pass --grad-checkpoint, "
        "or a smaller --batch-size with --accumulate N to keep the effective batch\n"
    )


def small_run(run, out, **kw) -> Trainer:
    config = tiny_config(
        run[2].config.tiny_sd, out, cache=run[0] / "cache", **({"steps": 3, "checkpoint_every": 1, "val_every": 100} | kw)
    )
    trainer = Trainer(config, warn=lambda m: None)
    trainer.run()
    return trainer


def test_grad_checkpointing_gives_the_same_losses(run, tmp_path):
    """Also: two runs in one process start from the same trainables (LoRA A and the Transformer are drawn from --seed,
    not from whatever the process drew before; the step-1 loss cannot show it, as LoRA B starts at zero)."""
    out, _, _, _ = run
    small_run(run, tmp_path / "plain")
    small_run(run, tmp_path / "ckpt", grad_checkpoint=True)
    plain, ckpt = read(tmp_path / "plain" / "log.jsonl"), read(tmp_path / "ckpt" / "log.jsonl")
    np.testing.assert_allclose([r["loss"] for r in ckpt], [r["loss"] for r in plain], rtol=1e-5)


def test_accumulation_ema_and_keep_last(run, tmp_path):
    from safetensors.torch import load_file

    out, _, _, _ = run
    small_run(run, tmp_path / "r", accumulate=2, batch_size=1, ema=0.5, keep_last=2)
    assert sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir()) == ["step-00000002", "step-00000003"]
    last = tmp_path / "r" / "checkpoints" / "step-00000003"
    assert json.loads((last / "state.json").read_text())["position"] == 6  # 3 steps × 2 micro-batches × 1 face
    ema, raw = load_file(last / "ema.safetensors"), load_file(last / "trainable.safetensors")
    result = load_file(tmp_path / "r" / "refiner" / "refiner.safetensors")
    name = "bottleneck.lambda_head.bias"
    assert torch.equal(result[name], ema[name]) and not torch.equal(ema[name], raw[name])  # the result holds the EMA weights


def torchrun_train(run, out: Path, *args: str) -> subprocess.CompletedProcess:
    """``bfrboost train --out OUT`` on the session's tiny SD, 2 steps, with ARGS, in two CPU processes (gloo) through torchrun."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={port}",
        "-m",
        "bfrboost",
        "train",
        *("--out", str(out), "--tiny", "--tiny-sd", str(run[2].config.tiny_sd), "--size", str(SIZE)),
        *("--base", "none", "--steps", "2", "--device", "cpu"),
        *args,
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_two_processes_with_torchrun(run, tmp_path):
    """The multi-GPU code path (DDP through accelerate) on two CPU processes (gloo): one log, one result."""
    out, _, _, _ = run
    every = ("--warmup", "1", "--checkpoint-every", "2", "--val-every", "2")
    done = torchrun_train(run, tmp_path / "ddp", "--cache", str(out / "cache"), "--batch-size", "1", *every)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("trained refiner written") == 1  # one line per run, not per process
    assert [r["step"] for r in read(tmp_path / "ddp" / "log.jsonl")] == [1, 2]
    state = json.loads((tmp_path / "ddp" / "checkpoints" / "step-00000002" / "state.json").read_text())
    assert state["position"] == 4  # 2 steps × batch 1 × 2 processes
    assert (tmp_path / "ddp" / "refiner" / "refiner.safetensors").is_file()


def test_two_processes_with_data_but_no_cache_are_refused_with_the_command_to_run(run, tmp_path, testdata):
    """Building an FFHQ cache takes hours, beyond the process group's timeout: several processes refuse at once."""
    done = torchrun_train(run, tmp_path / "ddp", "--data", str(testdata / "aligned"), "--val-count", "2", "--repeats", "2")
    assert done.returncode != 0
    cache = tmp_path / "ddp" / "cache"
    assert (
        f"bfrboost: {cache}: no cache yet, and 2 processes cannot wait for one to be built; run `bfrboost train cache --data "
        f"{testdata / 'aligned'} --base none --size {SIZE} --repeats 2 --val-count 2 -o CACHE_DIR` first, "
        "then launch with --cache CACHE_DIR"
    ) in done.stderr
    assert not cache.exists()


def test_resume_refuses_another_cache(run, tmp_path, testdata):
    out, _, _, _ = run
    copy = tmp_path / "run"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("refiner"))
    other = runner.invoke(
        app,
        [
            "train",
            "cache",
            "--data",
            str(testdata / "aligned"),
            "-o",
            str(tmp_path / "other"),
            "--base",
            "none",
            "--size",
            str(SIZE),
            "--repeats",
            "1",
            "--val-count",
            "2",
            "--device",
            "cpu",
        ],
    )
    assert other.exit_code == 0, other.output
    result = runner.invoke(app, ["train", "--out", str(copy), "--cache", str(tmp_path / "other"), "--resume", *tiny_args(run)])
    assert result.exit_code == 2 and "not the cache this run was trained on" in result.stderr
