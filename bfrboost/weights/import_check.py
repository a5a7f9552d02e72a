"""What a file must be before ``bfrboost weights import`` trusts it for a card that lists no SHA-256.

A card without a hash pins the first file it sees (trust on first use), so the import itself is the
check: the file must load safely (tensor-only, no pickle that would run code) and hold the keys and
shapes of the card's architecture, built on the meta device (no memory, no random init). Safetensors
are read from their header only. Configuration files must parse.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from bfrboost.errors import WeightsError
from bfrboost.safety import one_line

if TYPE_CHECKING:
    import torch
    from torch import nn

    from bfrboost.weights import WeightFile

#: Keys every diffusers/transformers safetensors of SD 2.1 holds (the configs decide the rest).
_SD21_KEYS = {
    "sd21/vae/diffusion_pytorch_model.safetensors": ("encoder.conv_in.weight", "decoder.conv_out.weight", "quant_conv.weight"),
    "sd21/unet/diffusion_pytorch_model.safetensors": ("conv_in.weight", "time_embedding.linear_1.weight", "conv_out.weight"),
    "sd21/text_encoder/model.safetensors": ("text_model.embeddings.token_embedding.weight", "text_model.final_layer_norm.weight"),
}


def _architectures() -> dict[str, Callable[[], nn.Module]]:
    """The network each unhashed ``.pth`` file must fit, by card file name."""
    from bfrboost.backbones import difface, vqfr
    from bfrboost.nets import rrdb

    def musiq() -> nn.Module:
        from pyiqa.archs.musiq_arch import MUSIQ

        return MUSIQ(pretrained=False)

    return {
        difface.PRIOR_FILE: lambda: difface.IDDPMUNet(difface.DifFaceConfig().unet),
        rrdb.RRDB_FILE: lambda: rrdb.TimeRRDB(rrdb.RRDB_CONFIG),
        "VQFR_v2.pth": lambda: vqfr.VQFRv2(None),
        "musiq_koniq_ckpt-e95806b9.pth": musiq,
    }


def check_import(entry: WeightFile, src: Path) -> None:
    """Raise :class:`WeightsError` (one line: the file, what is wrong, where to get the right one) unless
    ``src`` is a usable ``entry.file``."""
    get = f"not imported; get {entry.file} from {entry.url}"
    suffix = PurePosixPath(entry.file).suffix
    if suffix == ".json":
        try:
            json.loads(src.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise WeightsError(f"{one_line(src)}: not a JSON file ({one_line(str(exc).splitlines()[0])}); {get}") from None
        return
    if suffix == ".txt":
        try:
            src.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            raise WeightsError(f"{one_line(src)}: not a UTF-8 text file; {get}") from None
        return
    state = _header_only(src) if src.suffix == ".safetensors" else _safe_load(src)
    problem = _mismatch(entry, state)
    if problem:
        raise WeightsError(f"{one_line(src)}: not the {entry.card} checkpoint {entry.file} ({problem}); {get}")


def _safe_load(src: Path) -> dict[str, torch.Tensor]:
    from bfrboost.weights import load_state_dict

    try:
        return load_state_dict(src)
    except WeightsError as exc:  # refused (a pickle that runs code) or damaged: already one line
        raise WeightsError(f"{exc}; not imported") from None


def _header_only(src: Path) -> dict[str, torch.Tensor]:
    """Names and shapes of a safetensors file as meta tensors, without reading the data."""
    import torch
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(src), framework="pt") as file:
            return {key: torch.empty(file.get_slice(key).get_shape(), device="meta") for key in file.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        reason = one_line(str(exc).splitlines()[0])
        raise WeightsError(f"{one_line(src)}: damaged or not a safetensors file ({reason}); not imported") from None


def _mismatch(entry: WeightFile, state: dict[str, torch.Tensor]) -> str | None:
    """Why ``state`` does not fit ``entry``'s architecture, or ``None``."""
    import torch

    from bfrboost.weights import CheckpointMismatch, check_state_dict

    if entry.file in _SD21_KEYS:
        missing = [key for key in _SD21_KEYS[entry.file] if key not in state]
        return f"{len(missing)} expected key(s) missing, e.g. {missing[0]!r}" if missing else None
    name = PurePosixPath(entry.file).name
    if name == "swinir_restoration512_L1.pth":
        from bfrboost.backbones.difface import load_restorer

        try:
            load_restorer(state)
        except WeightsError:
            return "not a SwinIR restorer"
        return None
    make = _architectures().get(name)
    if make is None:
        return None if state else "no tensors"
    with torch.device("meta"):
        net = make()
    try:
        check_state_dict(net, state)
    except CheckpointMismatch as exc:
        return str(exc)
    return None
