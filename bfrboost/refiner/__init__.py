"""InfoBFR refiner: VAE manifold → information bottleneck → one-step LoRA UNet → VAE decoder."""

from bfrboost.refiner.bottleneck import (
    BottleneckOutput,
    ManifoldBottleneck,
    ManifoldTransformer,
    information_loss,
)
from bfrboost.refiner.model import (
    InfoBFR,
    InfoBFRConfig,
    RefinerAux,
    describe_sd21,
    encode_empty_prompt,
    init_tiny,
    load_refiner,
)
from bfrboost.refiner.stats import (
    ManifoldStats,
    compute_manifold_stats,
    list_faces,
    refiner_vae,
    save_stats,
)

__all__ = [
    "BottleneckOutput",
    "InfoBFR",
    "InfoBFRConfig",
    "ManifoldBottleneck",
    "ManifoldStats",
    "ManifoldTransformer",
    "RefinerAux",
    "compute_manifold_stats",
    "describe_sd21",
    "encode_empty_prompt",
    "information_loss",
    "init_tiny",
    "list_faces",
    "load_refiner",
    "refiner_vae",
    "save_stats",
]
