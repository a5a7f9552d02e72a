"""InfoBFR: frozen SD VAE encoder → manifold bottleneck → one LoRA-UNet step at a fixed t → VAE decoder.

Only the bottleneck (Transformer + λ head) and the UNet LoRA are trained; a refiner directory holds
just those (plus the manifold statistics and the empty-prompt embedding) in ``refiner.safetensors``
and its ``config.json``. The frozen SD 2.1-base VAE and UNet come from a diffusers folder
(``--sd-model``) or the weights cache — except for tiny test refiners, which carry their own
``vae/`` and ``unet/``. Design and every "(ours)" choice: ``design/method.md``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from safetensors.torch import save_file
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bfrboost import weights
from bfrboost.errors import UsageError, WeightsError
from bfrboost.refiner.bottleneck import BottleneckOutput, ManifoldBottleneck
from bfrboost.refiner.lora import (
    add_lora,
    fuse_lora,
    has_lora,
    is_lora_key,
    load_lora_state_dict,
    lora_state_dict,
)
from bfrboost.safety import OutputSet, atomic_dir, write_bytes

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "refiner.safetensors"
SD21_BASE_REPO = "stabilityai/stable-diffusion-2-1-base"

# From stabilityai/stable-diffusion-2-1-base: vae/config.json, unet/config.json, scheduler/scheduler_config.json.
SD21_BASE_VAE_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
SD21_BASE_UNET_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "use_linear_projection": True,
}
SD21_BASE_SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
}
SD21_PROMPT_SHAPE = (1, 77, 1024)  # OpenCLIP ViT-H, 77 tokens

# Tiny stand-ins (same block types, ×8 VAE down-sampling) for tests and offline demos.
TINY_VAE_CONFIG: dict[str, Any] = {
    "block_out_channels": [8, 8, 16, 16],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "sample_size": 64,
}
TINY_UNET_CONFIG: dict[str, Any] = {
    "attention_head_dim": 4,
    "block_out_channels": [16, 32],
    "cross_attention_dim": 16,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "in_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "out_channels": 4,
    "sample_size": 8,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "use_linear_projection": True,
}
TINY_PROMPT_SHAPE = (1, 4, 16)
TINY_STATS_FACES = 8
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
LATENT_CHOICES = ("mean", "sample")
EVAL_NOISE = ("sample", "mean")


@dataclass
class InfoBFRConfig:
    """Everything that defines a refiner; saved as ``config.json``. "(ours)" values are our choices."""

    rank: int = 4  # LoRA rank on every UNet block layer (2 / 4 / 8 studied by the paper)
    lora_alpha: float | None = None  # None → alpha = rank (scale 1)
    timestep: int = 499  # (ours) the single denoising step, on the 1000-step training schedule
    prediction_type: str = "epsilon"  # from the SD scheduler config: SD2.1-base epsilon, 768-v v_prediction
    beta_start: float = 0.00085  # the SD scheduler's training schedule, for ᾱ_t
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    num_train_timesteps: int = 1000
    latent_choice: str = (
        "sample"  # (ours) 2C-channel z → C-channel latent: posterior "sample" (every channel matters) or "mean" half
    )
    scaling_factor: float = 0.18215  # SD VAE latent scale
    stats_mode: str = "element"  # μ_R, σ_R per "element" (IBA's estimator) or per "channel"
    sigma_min: float = 0.01  # clamp of σ_R
    beta: float = 0.01  # weight of L_info (nats per image pixel) against the per-pixel image losses; docs/training.md
    lambda_init: float = 0.99  # (ours) λ at init: the bottleneck keeps ≈ all of the manifold
    manifold_channels: int = 8  # VAE mean + logvar: 2 × the VAE's latent channels (SD 2.1: 2 × 4)
    transformer_width: int = 64  # (ours) token width of the bottleneck Transformer (rank 2/4/8 → 8.3/16.4/32.6 MB trainable)
    transformer_heads: int = 4
    transformer_mlp_ratio: float = 4.0
    eval_noise: str = "sample"  # (ours) inference ε and posterior sample: "sample" (seeded) or "mean" (ε = μ_R, latent = mean)
    noise_seed: int = 0  # seed of the inference noise when no generator is given: same face → same output
    stats_faces: int = 0  # how many faces μ_R, σ_R were computed on (0 = not yet: μ=0, σ=1)
    sd_model: str = SD21_BASE_REPO  # which frozen SD the LoRA belongs to (informational)
    # ablations of the paper's Table III (every one True in the method)
    transformer: bool = True  # False: no Transformer block, h = r
    mib: bool = True  # False: no information bottleneck, z = h (no λ, no noise, L_info = 0)
    lora: bool = True  # False: the UNet stays frozen, no LoRA
    face_size: int | None = None  # the face size it was trained at: `refine` resizes faces to it and back (None: any size)

    def __post_init__(self) -> None:
        if self.lora_alpha is None:
            self.lora_alpha = float(self.rank)
        for name, value, allowed in (
            ("prediction_type", self.prediction_type, PREDICTION_TYPES),
            ("latent_choice", self.latent_choice, LATENT_CHOICES),
            ("eval_noise", self.eval_noise, EVAL_NOISE),
        ):
            if value not in allowed:
                raise UsageError(f"refiner config: {name} must be one of {allowed}, got {value!r}")
        if not 0 <= self.timestep < self.num_train_timesteps:
            raise UsageError(f"refiner config: timestep must be in [0, {self.num_train_timesteps}), got {self.timestep}")

    @classmethod
    def from_json(cls, path: Path) -> InfoBFRConfig:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise WeightsError(f"{path}: cannot read the refiner config ({exc}); re-create the refiner") from None
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise WeightsError(f"{path}: unknown refiner config field {unknown[0]!r}; upgrade bfrboost or fix the file")
        return cls(**data)

    def to_json(self, path: Path) -> None:
        write_bytes(path, self.to_bytes(), overwrite=True)

    def to_bytes(self) -> bytes:
        return (json.dumps(dataclasses.asdict(self), indent=2) + "\n").encode()

    def with_scheduler(self, scheduler_config: dict[str, Any]) -> InfoBFRConfig:
        """Copy with the prediction type and β schedule of an SD ``scheduler_config.json``."""
        keys = ("prediction_type", "beta_start", "beta_end", "beta_schedule", "num_train_timesteps")
        return dataclasses.replace(self, **{k: scheduler_config[k] for k in keys if k in scheduler_config})


@dataclass
class RefinerAux:
    """Side outputs of one forward pass, for the training losses and for inspection."""

    r: torch.Tensor  # VAE moments (B, 2 × latent channels, h, w)
    z: torch.Tensor  # bottleneck output, same shape
    lam: torch.Tensor  # λ, same shape
    info_loss: torch.Tensor  # scalar L_info (unweighted): the KL summed over the manifold, in nats per image pixel (3·H·W)


def vae_moments(vae: AutoencoderKL, x: torch.Tensor) -> torch.Tensor:
    """r: the VAE moments after quant_conv (mean and log-variance, 4 + 4 channels for SD), before sampling."""
    return vae.encode(x).latent_dist.parameters.float()


def alpha_bar(config: InfoBFRConfig) -> float:
    """ᾱ_t of the SD training schedule at the refiner's fixed timestep (computed by diffusers)."""
    scheduler = DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule=config.beta_schedule,
    )
    return float(scheduler.alphas_cumprod[config.timestep])


def one_step_x0(
    unet: UNet2DConditionModel,
    latent: torch.Tensor,
    timestep: int,
    prompt_embeds: torch.Tensor,
    alpha_bar_t: float,
    prediction_type: str,
) -> torch.Tensor:
    """x0 read from one UNet call on ``latent`` at ``timestep`` (ᾱ_t = ``alpha_bar_t``), by the prediction type's formula.

    The refiner's denoising step, and what the CPU-scale UNet is fitted with (:mod:`bfrboost.train.tiny`).
    """
    t = torch.full((latent.shape[0],), timestep, device=latent.device, dtype=torch.long)
    cond = prompt_embeds.expand(latent.shape[0], -1, -1).to(latent.dtype)
    pred = unet(latent, t, encoder_hidden_states=cond).sample
    a, s = math.sqrt(alpha_bar_t), math.sqrt(1.0 - alpha_bar_t)
    if prediction_type == "epsilon":
        return (latent - s * pred) / a
    if prediction_type == "v_prediction":
        return a * latent - s * pred
    return pred


class InfoBFR(nn.Module):
    """The refiner. ``forward`` (training and inference) maps images in [-1, 1] to images in [-1, 1]."""

    def __init__(
        self, config: InfoBFRConfig, vae: AutoencoderKL, unet: UNet2DConditionModel, prompt_embeds: torch.Tensor
    ) -> None:
        super().__init__()
        if config.manifold_channels != 2 * vae.config.latent_channels:
            raise UsageError(
                f"refiner config: manifold_channels is {config.manifold_channels} but the VAE has "
                f"{vae.config.latent_channels} latent channels (mean + log-variance: {2 * vae.config.latent_channels})"
            )
        self.config = config
        self.vae = vae.requires_grad_(False).eval()
        self.unet = unet.requires_grad_(False).eval()
        if config.lora:
            add_lora(self.unet, config.rank, config.lora_alpha)
        device = next(self.unet.parameters()).device
        # L_info per image pixel = mean KL per manifold element × elements / pixels = × C / (3·f²), f the VAE's down-sampling
        down = 2 ** (len(vae.config.block_out_channels) - 1)
        self.info_per_pixel = config.manifold_channels / (3 * down * down)
        self.bottleneck = ManifoldBottleneck(
            channels=config.manifold_channels,
            width=config.transformer_width,
            heads=config.transformer_heads,
            mlp_ratio=config.transformer_mlp_ratio,
            lambda_init=config.lambda_init,
            sigma_min=config.sigma_min,
            stats_mode=config.stats_mode,
            transformer=config.transformer,
            mib=config.mib,
        ).to(device)
        self.register_buffer("prompt_embeds", prompt_embeds.detach().to(device))
        self.alpha_bar_t = alpha_bar(config)
        self.autocast_dtype: torch.dtype | None = None  # set by load_refiner on CUDA

    # ---- stages (forward composes them; flops_per_stage measures them one by one) ----------

    @property
    def device(self) -> torch.device:
        return self.prompt_embeds.device

    def encode_manifold(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # frozen encoder on data: nothing upstream needs gradients
            return vae_moments(self.vae, x)

    def to_latent(
        self, z: torch.Tensor, generator: torch.Generator | None = None, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """2C-channel z → scaled C-channel SD latent (SD: 8 → 4), as the VAE's own posterior would.

        With ``latent_choice="sample"`` (default) both halves of z reach the UNet, so the log-variance
        channels get gradients too; ``noise`` (standard normal, 4 channels) is drawn with ``generator``
        when not given.
        """
        mean, logvar = z.chunk(2, dim=1)
        if self.config.latent_choice == "sample":
            if noise is None:
                noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            mean = mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * noise  # clamp as diffusers' posterior
        return mean * self.config.scaling_factor

    def denoise(self, latent: torch.Tensor) -> torch.Tensor:
        """One UNet step at the fixed t, read as x0 with the scheduler formula for the prediction type."""
        config = self.config
        return one_step_x0(self.unet, latent, config.timestep, self.prompt_embeds, self.alpha_bar_t, config.prediction_type)

    def inference_noise(self, like: torch.Tensor, stream: int = 0) -> torch.Tensor:
        """Standard-normal noise for inference (``stream`` 0: the bottleneck's ε, 1: the posterior
        sample): seeded and shared by all faces, so a face's result depends neither on the call nor
        on the other faces in its batch."""
        if self.config.eval_noise == "mean":
            return torch.zeros_like(like)
        generator = torch.Generator(like.device).manual_seed(self.config.noise_seed + stream)
        return torch.randn((1, *like.shape[1:]), generator=generator, device=like.device, dtype=like.dtype).expand_as(like)

    def require_stats(self, where: str = "this refiner") -> None:
        """Refuse to train or refine without μ_R, σ_R: the placeholder (μ=0, σ=1) is not a face manifold."""
        if self.config.stats_faces <= 0:
            raise UsageError(
                f"{where}: no manifold statistics (stats_faces = 0); compute them with "
                "`bfrboost refiner stats --faces HQ_FACES_DIR --refiner REFINER_DIR` (train computes its own)"
            )

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent / self.config.scaling_factor).sample

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None, *, manifold: bool = False
    ) -> tuple[torch.Tensor, RefinerAux]:
        """x: (B, 3, H, W) in [-1, 1], H and W multiples of 8 → (refined x̂ in ≈[-1, 1], aux).

        Training draws all noise from ``generator``; inference without one uses the seeded noise.
        ``manifold=True``: x already is the VAE moments r (training from cached moments).
        """
        self.require_stats()
        return self.refine_manifold(x if manifold else self.encode_manifold(x), generator)

    def refine_manifold(self, r: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, RefinerAux]:
        """The stages after the frozen encoder, from VAE moments ``r`` (training from cached moments)."""
        self.require_stats()
        seeded = not self.training and generator is None
        out: BottleneckOutput = self.bottleneck(r, noise=self.inference_noise(r, 0) if seeded else None, generator=generator)
        latent_noise = self.inference_noise(out.z[:, : out.z.shape[1] // 2], 1) if seeded else None
        kind = r.device.type
        autocast = torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind)
        dtype = r.dtype if autocast else next(self.unet.parameters()).dtype  # without autocast: the (bf16) UNet's own type
        x0 = self.denoise(self.to_latent(out.z, generator, latent_noise).to(dtype))
        x_hat = self.decode(x0)
        return x_hat, RefinerAux(r=r, z=out.z, lam=out.lam, info_loss=out.info_loss * self.info_per_pixel)

    @torch.inference_mode()
    def refine(self, x01: torch.Tensor) -> torch.Tensor:
        """Pipeline entry: aligned faces (B, 3, 512, 512) in [0, 1] → refined faces in [0, 1], float32.

        No grad, autocast (``autocast_dtype``) on CUDA, channels-last input.
        """
        if x01.dim() != 4 or x01.shape[1] != 3 or x01.shape[2] % 8 or x01.shape[3] % 8:
            raise UsageError(f"refiner input must be (B, 3, H, W) with H, W multiples of 8, got {tuple(x01.shape)}")
        size = self.config.face_size
        if size and tuple(x01.shape[2:]) != (size, size):  # e.g. a 32 px `--tiny` refiner on 512 px aligned faces
            small = F.interpolate(x01.float(), size=(size, size), mode="bicubic", antialias=True, align_corners=False)
            refined = self.refine(small.clamp(0, 1))
            return F.interpolate(refined, size=tuple(x01.shape[2:]), mode="bicubic", align_corners=False).clamp(0, 1)
        x = (x01.to(self.device, torch.float32) * 2 - 1).contiguous(memory_format=torch.channels_last)
        enabled = self.device.type == "cuda" and self.autocast_dtype is not None
        with torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype or torch.float32, enabled=enabled):
            y, _ = self(x)
        return ((y.float() + 1) / 2).clamp(0, 1)

    # ---- training helpers ------------------------------------------------------------------

    def train(self, mode: bool = True) -> InfoBFR:
        """Only the bottleneck (and LoRA) switch mode; the frozen VAE and UNet always run as in eval."""
        super().train(mode)
        self.vae.eval()
        self.unet.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Transformer, λ head and LoRA: the only parameters that require gradients."""
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What ``refiner.safetensors`` holds: bottleneck (+ statistics), LoRA, empty-prompt embedding."""
        if self.config.lora and not has_lora(self.unet):
            raise UsageError("this refiner's LoRA is fused into the UNet; load it with fuse_lora=False to save or train it")
        state = {f"bottleneck.{k}": v for k, v in self.bottleneck.state_dict().items()}
        state |= {f"lora.{k}": v for k, v in lora_state_dict(self.unet).items()}
        state["prompt_embeds"] = self.prompt_embeds
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor], source: str) -> None:
        unknown = sorted(k for k in state if not k.startswith(("bottleneck.", "lora.")) and k != "prompt_embeds")
        if unknown or "prompt_embeds" not in state:
            raise WeightsError(
                f"{source}: "
                + (f"unexpected tensor {unknown[0]!r}" if unknown else "prompt_embeds is missing")
                + "; not a bfrboost refiner file"
            )
        expected = set(self.bottleneck.state_dict())
        bottleneck = {k.removeprefix("bottleneck."): v for k, v in state.items() if k.startswith("bottleneck.")}
        if missing := sorted(expected - set(bottleneck)):
            raise WeightsError(f"{source}: bottleneck weight {missing[0]!r} is missing; the refiner file is incomplete")
        self.bottleneck.set_stats(bottleneck["stats_mean"], bottleneck["stats_std"])  # shapes follow stats_mode
        try:
            self.bottleneck.load_state_dict(bottleneck, strict=True)
        except RuntimeError as exc:
            raise WeightsError(
                f"{source}: bottleneck weights do not fit config.json ({str(exc).splitlines()[1].strip()})"
            ) from None
        load_lora_state_dict(self.unet, {k.removeprefix("lora."): v for k, v in state.items() if k.startswith("lora.")}, source)
        self.prompt_embeds = state["prompt_embeds"].to(self.prompt_embeds)

    def fuse_lora(self) -> None:
        """Merge LoRA into the UNet (inference): same outputs, plain-UNet speed."""
        if has_lora(self.unet):
            fuse_lora(self.unet)

    def compile_stages(self) -> None:
        """torch.compile the heavy parts in place (keeps state-dict names, unlike wrapping the model)."""
        for module in (self.vae.encoder, self.vae.decoder, self.unet, self.bottleneck.transformer):
            if module is not None:
                module.compile()

    # ---- save / load ---------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> None:
        """Weights and config, written together (both or neither, see :class:`bfrboost.safety.OutputSet`)."""
        save_refiner_files(Path(directory), self.trainable_state_dict(), self.config)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        sd_model: str | Path | None = None,
        device: str | torch.device = "cpu",
        fuse_lora: bool = True,
    ) -> InfoBFR:
        directory = Path(directory)
        if not (directory / CONFIG_NAME).is_file() or not (directory / WEIGHTS_NAME).is_file():
            raise WeightsError(
                f"{directory}: not a bfrboost refiner (needs {CONFIG_NAME} and {WEIGHTS_NAME}); "
                "train one or run `bfrboost refiner init --tiny DIR`"
            )
        config = InfoBFRConfig.from_json(directory / CONFIG_NAME)
        sd_dir = directory if is_self_contained(directory) else resolve_sd_dir(sd_model)
        scheduler = read_scheduler_config(sd_dir)
        if scheduler.get("prediction_type", config.prediction_type) != config.prediction_type:
            raise UsageError(
                f"{sd_dir}: SD model predicts {scheduler['prediction_type']!r} "
                f"but the refiner was trained on {config.prediction_type!r}; use the SD model it was trained with"
            )
        vae, unet = load_sd_modules(sd_dir)
        state = weights.load_state_dict(directory / WEIGHTS_NAME)
        model = cls(config, vae, unet, prompt_embeds=torch.zeros(0))  # the stored embedding replaces it below
        model.load_trainable_state_dict(state, str(directory / WEIGHTS_NAME))
        if fuse_lora:
            model.fuse_lora()
        return model.to(device).eval()

    @classmethod
    def create(
        cls,
        config: InfoBFRConfig,
        sd_model: str | Path | None = None,
        device: str | torch.device = "cpu",
        prompt_embeds: torch.Tensor | None = None,
    ) -> InfoBFR:
        """A fresh refiner for training on a real SD folder.

        The empty-prompt embedding is computed here, once, with the SD text encoder (``text_encoder/``
        and ``tokenizer/`` in the SD folder) unless ``prompt_embeds`` is given; ``save_pretrained``
        then stores it, so inference never needs the text encoder.
        """
        sd_dir = resolve_sd_dir(sd_model)
        config = config.with_scheduler(read_scheduler_config(sd_dir))
        vae, unet = load_sd_modules(sd_dir)
        prompt = encode_empty_prompt(sd_dir) if prompt_embeds is None else prompt_embeds
        return cls(config, vae, unet, prompt).to(device)

    @classmethod
    def sd21_on_meta(cls, config: InfoBFRConfig | None = None) -> InfoBFR:
        """The real SD 2.1-base refiner without weights (meta device): for counting parameters and FLOPs."""
        config = (config or InfoBFRConfig()).with_scheduler(SD21_BASE_SCHEDULER_CONFIG)
        with torch.device("meta"):
            vae = AutoencoderKL.from_config(SD21_BASE_VAE_CONFIG)
            unet = UNet2DConditionModel.from_config(SD21_BASE_UNET_CONFIG)
            prompt = torch.empty(SD21_PROMPT_SHAPE)
        return cls(config, vae, unet, prompt).to("meta")

    # ---- size and cost ---------------------------------------------------------------------

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters by part (LoRA, Transformer, λ head) and the frozen SD parts."""
        lora = sum(p.numel() for n, p in self.unet.named_parameters() if is_lora_key(n))
        parts = self.bottleneck.transformer, self.bottleneck.lambda_head
        transformer, head = (sum(p.numel() for p in part.parameters()) if part is not None else 0 for part in parts)
        return {
            "lora": lora,
            "transformer": transformer,
            "lambda_head": head,
            "trainable": lora + transformer + head,
            "frozen_unet": sum(p.numel() for n, p in self.unet.named_parameters() if not is_lora_key(n)),
            "frozen_vae": sum(p.numel() for p in self.vae.parameters()),
        }

    def flops_per_stage(self, size: int = 512) -> dict[str, int]:
        """FLOPs for one size×size face per stage, LoRA excluded (it is fused for inference).

        Counted by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, matmuls, attention), which
        also works on meta tensors: the real SD 2.1 cost is measured without any weights.
        """
        x = torch.zeros(1, 3, size, size, device=self.device)
        counts: dict[str, int] = {}

        def measure(name: str, fn, *args):
            with FlopCounterMode(display=False) as counter:
                result = fn(*args)
            counts[name] = counter.get_total_flops()
            return result

        lora_active = self.config.lora and has_lora(self.unet)
        if lora_active:
            self.unet.disable_adapters()
        try:
            with torch.no_grad():
                r = measure("vae_encoder", self.encode_manifold, x)
                out = measure("bottleneck", self.bottleneck, r)
                x0 = measure("unet", self.denoise, self.to_latent(out.z))
                measure("vae_decoder", self.decode, x0)
        finally:
            if lora_active:
                self.unet.enable_adapters()
        counts["total"] = sum(counts.values())
        return counts


def is_self_contained(directory: Path) -> bool:
    """Tiny refiners carry their own vae/ and unet/ so tests and demos need no SD download."""
    return (directory / "vae" / "config.json").is_file() and (directory / "unet" / "config.json").is_file()


def resolve_sd_dir(sd_model: str | Path | None) -> Path:
    """The SD 2.1-base diffusers folder: ``sd_model`` if given, else the weights cache."""
    if sd_model is not None:
        return Path(sd_model)
    return weights.sd21_dir()  # WeightsError with the download / import instructions when missing


def read_scheduler_config(sd_dir: Path) -> dict[str, Any]:
    path = sd_dir / "scheduler" / "scheduler_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def load_sd_modules(sd_dir: Path) -> tuple[AutoencoderKL, UNet2DConditionModel]:
    return load_diffusers_module(AutoencoderKL, sd_dir / "vae"), load_diffusers_module(UNet2DConditionModel, sd_dir / "unet")


_WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
)
# diffusers < 0.14 named the VAE mid-block attention query/key/value/proj_attn (SD 2.1's files do).
_LEGACY_ATTENTION = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}


def load_diffusers_module(cls: type[nn.Module], folder: Path) -> nn.Module:
    """Build a diffusers model from ``folder/config.json`` and load its weights through the safe loader.

    Built on the meta device and filled with ``assign=True``: no random init of ~900 M parameters.
    """
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise WeightsError(
            f"{folder}: no config.json; pass --sd-model a diffusers folder of {SD21_BASE_REPO} with vae/ and unet/"
        )
    weight_path = next((folder / name for name in _WEIGHT_FILES if (folder / name).is_file()), None)
    if weight_path is None:
        raise WeightsError(f"{folder}: no diffusion_pytorch_model.safetensors; download it from {SD21_BASE_REPO}")
    with torch.device("meta"):
        model = cls.from_config(json.loads(config_path.read_text()))
    expected = model.state_dict()
    state = {}
    for key, tensor in weights.load_state_dict(weight_path).items():
        for old, new in _LEGACY_ATTENTION.items():
            key = key.replace(old, new) if "attentions" in key else key
        if key in expected and tensor.shape != expected[key].shape and tensor.numel() == expected[key].numel():
            tensor = tensor.reshape(expected[key].shape)  # 1×1 conv ↔ linear in old attention weights
        state[key] = tensor.float()
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise WeightsError(
            f"{weight_path}: does not match {config_path.name} ({str(exc).splitlines()[1].strip()}); re-download it"
        ) from None
    return model


def encode_empty_prompt(sd_dir: Path) -> torch.Tensor:
    """The SD text encoder's output for "" (1, 77, D): computed once when a refiner is created, then stored."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    encoder_dir, tokenizer_dir = sd_dir / "text_encoder", sd_dir / "tokenizer"
    weight_path = next(
        (
            encoder_dir / n
            for n in ("model.safetensors", "model.fp16.safetensors", "pytorch_model.bin")
            if (encoder_dir / n).is_file()
        ),
        None,
    )
    if weight_path is None or not (tokenizer_dir / "vocab.json").is_file():
        raise WeightsError(
            f"{sd_dir}: text_encoder/ or tokenizer/ missing; "
            f"they are needed once to create a refiner (download them from {SD21_BASE_REPO})"
        )
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(str(encoder_dir), local_files_only=True))
    expected = encoder.state_dict()
    state = weights.load_state_dict(weight_path)
    # SD's file names keys "text_model.…"; transformers ≥ 5 builds CLIPTextModel without that level
    prefix = "text_model."
    if not any(k.startswith(prefix) for k in expected):
        state = {k.removeprefix(prefix): v for k, v in state.items()}
    elif not any(k.startswith(prefix) for k in state):
        state = {prefix + k: v for k, v in state.items()}
    # only the position_ids buffer may differ between transformers versions; anything else is another model
    missing = sorted(k for k in set(expected) - set(state) if not k.endswith("position_ids"))
    unexpected = sorted(k for k in set(state) - set(expected) if not k.endswith("position_ids"))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        what = (
            f"{len(missing)} missing, e.g. {missing[0]!r}"
            if missing
            else f"{len(unexpected)} unexpected, e.g. {unexpected[0]!r}"
            if unexpected
            else f"{len(wrong)} of the wrong shape, e.g. {wrong[0]!r}"
        )
        raise WeightsError(
            f"{weight_path}: text-encoder weights do not match {encoder_dir / 'config.json'} ({what}); "
            f"re-download text_encoder/ of {SD21_BASE_REPO}"
        )
    encoder.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    ids = tokenizer(
        "", padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        return encoder.eval().float()(ids).last_hidden_state


def save_refiner_files(directory: Path, state: dict[str, torch.Tensor], config: InfoBFRConfig) -> None:
    """``refiner.safetensors`` + ``config.json``, both or neither, so a crash never pairs new weights
    with an old config."""
    OutputSet(overwrite=True).add_path(
        directory / WEIGHTS_NAME, lambda temp: save_file(state, str(temp), metadata={"format": "pt", "bfrboost": "refiner"})
    ).add(directory / CONFIG_NAME, lambda file: file.write(config.to_bytes())).commit()


def init_tiny(directory: str | Path, seed: int = 0, config: InfoBFRConfig | None = None) -> InfoBFR:
    """Write a tiny random self-contained refiner (vae/, unet/, config, weights) for tests and demos.

    ``directory`` must be new or empty; it appears complete or not at all. Its manifold statistics are
    computed here, per channel (so it runs at any face size), on seeded smooth random images: a tiny
    random VAE has no real-face manifold to measure.
    """
    torch.manual_seed(seed)
    vae = AutoencoderKL.from_config(TINY_VAE_CONFIG)
    unet = UNet2DConditionModel.from_config(TINY_UNET_CONFIG)
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randn(TINY_PROMPT_SHAPE, generator=generator)
    config = config or InfoBFRConfig(transformer_width=16, transformer_heads=2, stats_mode="channel", sd_model="tiny-random")
    with atomic_dir(directory) as temp:
        vae.save_pretrained(temp / "vae")
        unet.save_pretrained(temp / "unet")  # before InfoBFR adds LoRA to it
        model = InfoBFR(config, vae, unet, prompt)
        images = torch.rand(TINY_STATS_FACES, 3, 8, 8, generator=generator)
        images = torch.nn.functional.interpolate(images, size=64, mode="bilinear", align_corners=False) * 2 - 1
        with torch.no_grad():
            r = vae_moments(vae, images)
        dims = (0,) if config.stats_mode == "element" else (0, 2, 3)
        model.bottleneck.set_stats(r.mean(dims, keepdim=True)[0], r.std(dims, unbiased=False, keepdim=True)[0])
        model.config.stats_faces = TINY_STATS_FACES
        model.save_pretrained(temp)
    return model


def load_refiner(
    path: str | Path,
    device: str | torch.device = "cpu",
    sd_model: str | Path | None = None,
    *,
    dtype: torch.dtype | None = None,
    compile: bool = False,
) -> InfoBFR:
    """Pipeline entry point: an inference-ready refiner (LoRA fused, eval mode).

    ``dtype`` is the CUDA autocast type (default bf16 where supported, else fp16; ignored on CPU).
    """
    device = torch.device(device)
    model = InfoBFR.from_pretrained(path, sd_model=sd_model, device=device, fuse_lora=True)
    model.require_stats(str(path))
    if device.type == "cuda":
        model.autocast_dtype = dtype or (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        model.to(memory_format=torch.channels_last)
    if compile:
        model.compile_stages()
    return model


def describe_sd21(rank: int = 4, flops: bool = True, size: int = 512) -> dict[str, Any]:
    """Size and cost of the real SD 2.1-base refiner at ``rank``, measured on the meta device (no weights)."""
    model = InfoBFR.sd21_on_meta(InfoBFRConfig(rank=rank))
    counts = model.parameter_counts()
    info: dict[str, Any] = {
        "rank": rank,
        "parameters": counts,
        "trainable_mb_fp32": counts["trainable"] * 4 / 1e6,
        "lora_mb_fp32": counts["lora"] * 4 / 1e6,
    }
    if flops:
        info["flops_per_face"] = model.flops_per_stage(size)
        info["face_size"] = size
    return info
