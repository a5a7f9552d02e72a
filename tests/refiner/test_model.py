from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from safetensors.torch import load_file, save_file

from bfrboost.errors import UsageError, WeightsError
from bfrboost.refiner import InfoBFR, InfoBFRConfig, load_refiner
from bfrboost.refiner.lora import has_lora
from bfrboost.refiner.model import load_diffusers_module
from tests.refiner.conftest import make_sd_folder, randomize_trainables, write_tiny_text_encoder


def test_shapes_through_every_stage(tiny, faces):
    r = tiny.encode_manifold(faces)
    assert r.shape == (2, 8, 8, 8)
    out = tiny.bottleneck(r)
    latent = tiny.to_latent(out.z, noise=torch.zeros(2, 4, 8, 8))
    torch.testing.assert_close(latent, out.z[:, :4] * 0.18215)  # posterior sample with zero noise = mean, SD scale
    x0 = tiny.denoise(latent)
    assert x0.shape == (2, 4, 8, 8)
    assert tiny.decode(x0).shape == (2, 3, 64, 64)
    x_hat, aux = tiny(faces)
    assert x_hat.shape == faces.shape
    assert aux.r.shape == aux.z.shape == aux.lam.shape == (2, 8, 8, 8)
    assert aux.info_loss.shape == ()


def test_lora_wraps_the_standard_one_step_targets_and_not_time_emb_proj(tiny):
    wrapped = {name.removesuffix(".base_layer") for name, _ in tiny.unet.named_modules() if name.endswith(".base_layer")}
    for suffix in ("attn1.to_q", "attn2.to_k", "attn2.to_out.0", "proj_in", "proj_out", "ff.net.2", "ff.net.0.proj",
                   "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv"):
        assert any(n.endswith(suffix) for n in wrapped), suffix
    assert "conv_out" in wrapped
    assert not any(n.endswith("time_emb_proj") for n in wrapped)  # constant input at a fixed t
    assert not {"conv_in", "time_embedding.linear_1", "time_embedding.linear_2"} & wrapped


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_at_init_lora_is_a_noop_and_x0_follows_the_scheduler(tiny_dir, prediction_type):
    config = dataclasses.replace(InfoBFRConfig.from_json(tiny_dir / "config.json"), prediction_type=prediction_type)
    plain = UNet2DConditionModel.from_pretrained(tiny_dir / "unet").eval()
    vae = AutoencoderKL.from_pretrained(tiny_dir / "vae")
    prompt = torch.randn(1, 4, 16, generator=torch.Generator().manual_seed(3))
    model = InfoBFR(config, vae, UNet2DConditionModel.from_pretrained(tiny_dir / "unet"), prompt).eval()
    latent = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got = model.denoise(latent)
        pred = plain(latent, 499, encoder_hidden_states=prompt.expand(2, -1, -1)).sample
    scheduler = DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type=prediction_type, clip_sample=False
    )
    want = scheduler.step(pred, 499, latent).pred_original_sample
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_fused_and_unfused_lora_agree(tiny, faces):
    with torch.no_grad():
        before, _ = tiny(faces)
        randomize_trainables(tiny)
        unfused, _ = tiny(faces)
        tiny.fuse_lora()
        fused, _ = tiny(faces)
    assert not has_lora(tiny.unet)
    assert (unfused - before).abs().max() > 1e-2  # the LoRA does change the output
    torch.testing.assert_close(fused, unfused, atol=1e-4, rtol=0)


def test_only_trainable_parts_get_gradients(tiny, faces):
    randomize_trainables(tiny)
    tiny.train()
    x_hat, aux = tiny(faces)
    (((x_hat - faces) ** 2).mean() + 1e-3 * aux.info_loss).backward()
    trainable = {n for n, p in tiny.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("bottleneck.") or ".lora_" in n for n in trainable)
    assert any(n.startswith("bottleneck.transformer.") for n in trainable) and any(".lora_B." in n for n in trainable)
    for name, p in tiny.named_parameters():
        if name in trainable:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    assert tiny.parameter_counts()["trainable"] == sum(p.numel() for p in tiny.trainable_parameters())


def test_save_then_load_gives_identical_outputs(tiny, tiny_dir, faces, tmp_path):
    randomize_trainables(tiny, seed=5)
    tiny.bottleneck.set_stats(torch.linspace(-1, 1, 8).view(8, 1, 1), torch.linspace(0.5, 2, 8).view(8, 1, 1))
    with torch.no_grad():
        want, _ = tiny(faces)
    tiny.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "refiner.safetensors"}  # no VAE/UNet copy
    assert not any(k.startswith(("vae.", "unet.")) for k in load_file(tmp_path / "refiner.safetensors"))
    # not self-contained: the frozen VAE/UNet come from the SD folder (here the tiny refiner's own)
    loaded = InfoBFR.from_pretrained(tmp_path, sd_model=tiny_dir, fuse_lora=False)
    with torch.no_grad():
        got, _ = loaded(faces)
    assert torch.equal(got, want)
    fused = load_refiner(tmp_path, sd_model=tiny_dir)
    torch.testing.assert_close(fused.refine((faces + 1) / 2), ((want + 1) / 2).clamp(0, 1), atol=1e-4, rtol=0)


def test_refine_maps_unit_range_to_unit_range_deterministically(tiny_dir, faces):
    refiner = load_refiner(tiny_dir)
    x01 = (faces + 1) / 2
    y = refiner.refine(x01)
    assert y.shape == x01.shape and y.dtype == torch.float32
    assert y.min() >= 0 and y.max() <= 1
    assert torch.equal(refiner.refine(x01), y)  # seeded inference noise: same face, same output
    with pytest.raises(
        UsageError, match=r"^refiner input must be \(B, 3, H, W\) with H, W multiples of 8, got \(2, 3, 60, 64\)$"
    ):
        refiner.refine(x01[..., :60, :])


def test_a_refiner_runs_at_the_face_size_it_was_trained_at(tiny_dir, faces):
    refiner = load_refiner(tiny_dir)
    x01 = (faces + 1) / 2  # 64 px
    at_64 = refiner.refine(x01)
    big = torch.nn.functional.interpolate(x01, size=(128, 128), mode="bicubic", align_corners=False).clamp(0, 1)
    refiner.config.face_size = 64  # what a run trained at 64 px writes in config.json
    out = refiner.refine(big)
    # resized to 64 px, refined there, enlarged back: close to the 64 px result enlarged (not a 128 px run)
    expected = torch.nn.functional.interpolate(at_64, size=(128, 128), mode="bicubic", align_corners=False).clamp(0, 1)
    assert out.shape == big.shape
    assert (out - expected).abs().mean() < 0.005  # measured 5e-4
    refiner.config.face_size = None
    assert (refiner.refine(big) - expected).abs().mean() > 0.05  # measured 0.13: it ran at 128 px


def test_saving_a_fused_refiner_is_refused(tiny_dir, tmp_path):
    with pytest.raises(UsageError, match="LoRA is fused into the UNet; load it with fuse_lora=False"):
        load_refiner(tiny_dir).save_pretrained(tmp_path)


def test_missing_refiner_and_missing_sd_model_are_one_line_errors(tiny, tmp_path):
    with pytest.raises(
        WeightsError, match=rf"^{tmp_path}: not a bfrboost refiner \(needs config.json and refiner.safetensors\); "
    ):
        InfoBFR.from_pretrained(tmp_path)
    tiny.save_pretrained(tmp_path)
    with pytest.raises(WeightsError) as err:  # SD 2.1 is not in the (empty, offline) weights cache
        InfoBFR.from_pretrained(tmp_path)
    assert "\n" not in str(err.value) and "offline" in str(err.value)


def test_prediction_type_must_match_the_sd_model(tiny, tiny_dir, tmp_path):
    tiny.save_pretrained(tmp_path / "refiner")
    sd = tmp_path / "sd"
    shutil.copytree(tiny_dir / "vae", sd / "vae")
    shutil.copytree(tiny_dir / "unet", sd / "unet")
    (sd / "scheduler").mkdir()
    (sd / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": "v_prediction"}))
    with pytest.raises(UsageError, match=rf"^{sd}: SD model predicts 'v_prediction' but the refiner was trained on 'epsilon'"):
        InfoBFR.from_pretrained(tmp_path / "refiner", sd_model=sd)


def test_config_errors_name_the_file(tiny, tmp_path):
    tiny.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"colour": 1}))
    with pytest.raises(WeightsError, match=rf"^{tmp_path / 'config.json'}: unknown refiner config field 'colour'"):
        InfoBFR.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config | {"timestep": 1000}))
    with pytest.raises(UsageError, match=r"^refiner config: timestep must be in \[0, 1000\), got 1000$"):
        InfoBFR.from_pretrained(tmp_path)


def test_lora_rank_mismatch_is_refused(tiny, tiny_dir, tmp_path):
    tiny.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"rank": 8, "lora_alpha": 8}))
    with pytest.raises(
        WeightsError, match=r"LoRA weight .* has shape \(4, .*\), expected \(8, .*\); check the rank in config.json"
    ):
        InfoBFR.from_pretrained(tmp_path, sd_model=tiny_dir)


def test_vae_with_legacy_attention_names_loads(tiny_dir, tmp_path):
    """SD 2.1's VAE file predates diffusers 0.14: mid-block attention is query/key/value/proj_attn."""
    reference = AutoencoderKL.from_pretrained(tiny_dir / "vae")  # diffusers' own loader
    renames = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    legacy = {}
    for key, tensor in reference.state_dict().items():
        for new, old in renames.items():
            key = key.replace(new, old)
        legacy[key] = tensor[..., None, None] if ".proj_attn.weight" in key else tensor  # old 1×1 conv shape
    assert any(".query." in k for k in legacy)
    (tmp_path / "vae").mkdir()
    shutil.copy(tiny_dir / "vae" / "config.json", tmp_path / "vae" / "config.json")
    save_file(legacy, str(tmp_path / "vae" / "diffusion_pytorch_model.safetensors"))
    loaded = load_diffusers_module(AutoencoderKL, tmp_path / "vae")
    for key, tensor in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])  # built on meta, fully assigned


def test_create_computes_the_empty_prompt_once_and_reads_the_scheduler(tiny_dir, tmp_path):
    """A fresh refiner on an SD folder: prompt from its text encoder, prediction type from its scheduler."""
    sd = tmp_path / "sd"
    encoder = make_sd_folder(tiny_dir, sd, {"prediction_type": "v_prediction", "beta_end": 0.02})

    model = InfoBFR.create(InfoBFRConfig(transformer_width=16, transformer_heads=2), sd_model=sd)
    assert model.config.prediction_type == "v_prediction" and model.config.beta_end == 0.02
    with torch.no_grad():
        want = encoder(torch.tensor([[0, 1, 2, 2, 2]])).last_hidden_state  # "" = BOS, EOS, then padding
    torch.testing.assert_close(model.prompt_embeds, want)
    model.save_pretrained(tmp_path / "refiner")
    reloaded = InfoBFR.from_pretrained(tmp_path / "refiner", sd_model=sd)
    assert torch.equal(reloaded.prompt_embeds, model.prompt_embeds)


def test_a_face_refines_the_same_alone_or_in_a_batch(tiny_dir, faces):
    refiner = load_refiner(tiny_dir)
    x01 = (faces + 1) / 2
    together = refiner.refine(x01)
    torch.testing.assert_close(refiner.refine(x01[1:]), together[1:], atol=1e-5, rtol=0)


def test_a_foreign_tensor_in_the_refiner_file_is_refused(tiny, tiny_dir, tmp_path):
    tiny.save_pretrained(tmp_path)
    state = load_file(tmp_path / "refiner.safetensors") | {"vae.encoder.conv_in.weight": torch.zeros(1)}
    save_file(state, str(tmp_path / "refiner.safetensors"))
    with pytest.raises(WeightsError, match=r"unexpected tensor 'vae.encoder.conv_in.weight'; not a bfrboost refiner file$"):
        InfoBFR.from_pretrained(tmp_path, sd_model=tiny_dir)


def test_a_refiner_without_statistics_is_refused_for_training_and_inference(tiny, tiny_dir, faces, tmp_path):
    tiny.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text()) | {"stats_faces": 0}
    (tmp_path / "config.json").write_text(json.dumps(config))
    shutil.copytree(tiny_dir / "vae", tmp_path / "vae")
    shutil.copytree(tiny_dir / "unet", tmp_path / "unet")
    hint = (
        r"no manifold statistics \(stats_faces = 0\); compute them with "
        r"`bfrboost refiner stats --faces HQ_FACES_DIR --refiner REFINER_DIR` \(train computes its own\)$"
    )
    with pytest.raises(UsageError, match=f"^{tmp_path}: " + hint):
        load_refiner(tmp_path)
    model = InfoBFR.from_pretrained(tmp_path, fuse_lora=False).train()
    with pytest.raises(UsageError, match="^this refiner: " + hint):
        model(faces, generator=torch.Generator().manual_seed(0))


def test_tiny_refiners_compute_their_statistics_at_init(tiny):
    assert tiny.config.stats_faces > 0
    assert not torch.equal(tiny.bottleneck.stats_mean, torch.zeros_like(tiny.bottleneck.stats_mean))
    assert not torch.equal(tiny.bottleneck.stats_std, torch.ones_like(tiny.bottleneck.stats_std))


def test_all_eight_manifold_channels_get_gradients(tiny, faces):
    tiny.train()
    r = tiny.encode_manifold(faces)
    out = tiny.bottleneck(r, generator=torch.Generator().manual_seed(0))
    z = out.z.detach().requires_grad_(True)
    x_hat = tiny.decode(tiny.denoise(tiny.to_latent(z, torch.Generator().manual_seed(1))))
    x_hat.square().mean().backward()
    per_channel = z.grad.abs().sum((0, 2, 3))
    assert per_channel.shape == (8,) and torch.all(per_channel > 0)  # the log-variance half too


def test_inference_posterior_sample_is_seeded(tiny_dir, faces):
    refiner = load_refiner(tiny_dir)
    torch.testing.assert_close(refiner.refine((faces + 1) / 2), load_refiner(tiny_dir).refine((faces + 1) / 2), atol=0, rtol=0)


def test_a_mismatching_text_encoder_is_refused(tmp_path):
    from transformers import CLIPTextModel

    from bfrboost.refiner import encode_empty_prompt

    sd = tmp_path / "sd"
    write_tiny_text_encoder(sd)
    weights_file = sd / "text_encoder" / "model.safetensors"
    state = load_file(weights_file)
    # the SD file's own key names ("text_model." prefix) load, whatever transformers' module layout is
    save_file({"text_model." + k.removeprefix("text_model."): v for k, v in state.items()}, str(weights_file))
    encoder = CLIPTextModel.from_pretrained(str(sd / "text_encoder")).eval()
    with torch.no_grad():
        torch.testing.assert_close(encode_empty_prompt(sd), encoder(torch.tensor([[0, 1, 2, 2, 2]])).last_hidden_state)
    key = next(k for k in state if k.endswith("final_layer_norm.weight"))
    del state[key]
    save_file(state, str(weights_file))
    with pytest.raises(
        WeightsError, match=r"text-encoder weights do not match .*\(1 missing, e.g. '(text_model\.)?final_layer_norm.weight'\)"
    ):
        encode_empty_prompt(sd)


def test_info_loss_is_the_kl_summed_over_the_manifold_per_image_pixel(tiny, faces):
    """L_info = Σ_manifold KL / (3·H·W): the scale of the per-pixel image losses (docs/training.md)."""
    r = tiny.encode_manifold(faces)
    h = r  # untrained Transformer: h == r
    lam = torch.full_like(r, 0.99)
    h_tilde = (h - tiny.bottleneck.stats_mean) / tiny.bottleneck.noise_std()
    kl = -torch.log(1 - lam) + ((1 - lam) ** 2 + (lam * h_tilde) ** 2) / 2 - 0.5
    _, aux = tiny(faces)
    expected = kl.sum((1, 2, 3)).mean() / (3 * faces.shape[2] * faces.shape[3])
    torch.testing.assert_close(aux.info_loss, expected, rtol=1e-4, atol=1e-6)
    assert tiny.info_per_pixel == 8 / (3 * 8 * 8)  # 8 manifold channels, VAE down-sampling 8


def test_the_manifold_has_twice_the_vae_latent_channels(faces):
    """A VAE with 8 latent channels gives a 16-channel manifold (mean + log-variance); a config that disagrees is refused."""
    from bfrboost.refiner.model import TINY_PROMPT_SHAPE, TINY_UNET_CONFIG, TINY_VAE_CONFIG

    torch.manual_seed(0)
    vae = AutoencoderKL.from_config({**TINY_VAE_CONFIG, "latent_channels": 8})
    unet = UNet2DConditionModel.from_config({**TINY_UNET_CONFIG, "in_channels": 8, "out_channels": 8})
    prompt = torch.zeros(TINY_PROMPT_SHAPE)
    config = InfoBFRConfig(transformer_width=16, transformer_heads=2, stats_mode="channel", stats_faces=1, manifold_channels=16)
    model = InfoBFR(config, vae, unet, prompt).eval()
    x_hat, aux = model(faces)
    assert aux.r.shape == aux.z.shape == (2, 16, 8, 8) and x_hat.shape == faces.shape
    assert model.info_per_pixel == 16 / (3 * 8 * 8)
    with pytest.raises(UsageError, match=r"^refiner config: manifold_channels is 8 but the VAE has 8 latent channels "
                                         r"\(mean \+ log-variance: 16\)$"):
        InfoBFR(dataclasses.replace(config, manifold_channels=8), vae, unet, prompt)
