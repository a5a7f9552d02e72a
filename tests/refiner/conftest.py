"""A tiny random self-contained refiner, written once per session and loaded fresh by each test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bfrboost.refiner import InfoBFR, init_tiny


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tiny_refiner")
    init_tiny(directory, seed=0)
    return directory


@pytest.fixture
def tiny(tiny_dir) -> InfoBFR:
    """Unfused, eval mode."""
    return InfoBFR.from_pretrained(tiny_dir, fuse_lora=False)


@pytest.fixture
def faces() -> torch.Tensor:
    """Two seeded 64×64 'images' in [-1, 1] (smooth, so the VAE sees structure, not only noise)."""
    g = torch.Generator().manual_seed(0)
    low = torch.rand(2, 3, 8, 8, generator=g)
    return torch.nn.functional.interpolate(low, size=64, mode="bilinear", align_corners=False) * 2 - 1


def randomize_trainables(model: InfoBFR, seed: int = 1, scale: float = 0.05) -> None:
    """Give LoRA B, the λ head and the Transformer non-trivial values (they start at no-op values)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def make_sd_folder(tiny_dir: Path, sd: Path, scheduler: dict | None = None):
    """A diffusers-style SD folder from the tiny refiner's vae/ and unet/, plus a tiny CLIP text encoder
    and tokenizer (vocabulary: BOS, EOS, "!" as padding). Returns the text encoder."""
    import json
    import shutil


    shutil.copytree(tiny_dir / "vae", sd / "vae")
    shutil.copytree(tiny_dir / "unet", sd / "unet")
    (sd / "scheduler").mkdir()
    (sd / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler or {}))
    return write_tiny_text_encoder(sd)


def write_tiny_text_encoder(sd: Path):
    """A tiny CLIP tokenizer (vocabulary: BOS, EOS, "!" as padding) and text encoder in SD's folder layout.
    Returns the text encoder."""
    import json

    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    (sd / "tokenizer").mkdir(parents=True)
    (sd / "tokenizer" / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}))
    (sd / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        str(sd / "tokenizer" / "vocab.json"), str(sd / "tokenizer" / "merges.txt"), model_max_length=5, pad_token="!"
    )
    tokenizer.save_pretrained(str(sd / "tokenizer"))
    torch.manual_seed(0)
    text_config = CLIPTextConfig(
        vocab_size=3,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=5,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    encoder = CLIPTextModel(text_config).eval()
    encoder.save_pretrained(str(sd / "text_encoder"))
    return encoder
