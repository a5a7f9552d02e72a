"""One-pass colourisation and inpainting with CodeFormer's own task networks (``--method codeformer``).

CodeFormer publishes two networks beside its restorer, both its architecture with other settings
(``inference_colorization.py`` / ``inference_inpainting.py`` of sczhou/CodeFormer):

| task | file | codebook | connect list | forward |
|---|---|---|---|---|
| colorize | ``codeformer_colorization.pth`` | 1024 | 32, 64, 128 | w = 0, AdaIN on |
| inpaint | ``codeformer_inpainting.pth`` | 512 | 32, 64, 128 | w = 1, AdaIN off |

Pre/post-processing as upstream: the 512² crop in mean 0.5 / std 0.5, the output clipped to
[-1, 1] and rounded to 8 bits; for inpainting the holes are painted pure white in the input (what
the network was trained on; upstream finds the holes as the pure-white pixels) and the known
pixels are put back, ``(1 − mask)·input + mask·output``. One forward per face: seconds on a CPU,
where PGDiff's guided sampling takes hours.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from spandrel_extra_arches.architectures.CodeFormer import CodeFormer
from spandrel_extra_arches.architectures.CodeFormer.__arch.codeformer import adaptive_instance_normalization

from bfrboost import weights
from bfrboost.backbones.spec import CheckpointMismatch, build_strict
from bfrboost.errors import UsageError, WeightsError

#: Tasks each one-pass network serves: file, architecture settings, fidelity weight w, AdaIN.
NETWORKS: dict[str, dict] = {
    "colorize": dict(file="codeformer_colorization.pth", codebook_size=1024, w=0.0, adain=True),
    "inpaint": dict(file="codeformer_inpainting.pth", codebook_size=512, w=1.0, adain=False),
}
CONNECT_LIST = ["32", "64", "128"]


def build(task: str, state_dict: Mapping[str, torch.Tensor] | None = None) -> CodeFormer:
    """CodeFormer configured as upstream's ``task`` network; random, or the checkpoint loaded strictly."""
    if task not in NETWORKS:
        raise UsageError(f"--method codeformer does {', '.join(NETWORKS)}, not {task!r}; use --method pgdiff")
    size = NETWORKS[task]["codebook_size"]
    make = lambda: CodeFormer(dim_embd=512, codebook_size=size, n_head=8, n_layers=9, connect_list=CONNECT_LIST)  # noqa: E731
    return build_strict(make, state_dict).eval().requires_grad_(False)


def load(task: str, path: str | None = None) -> CodeFormer:
    """The task's released network (cached and verified, or ``path``), loaded strictly."""
    file = NETWORKS[task]["file"] if task in NETWORKS else None
    source = path if path is not None else weights.ensure(file) if file else None
    if source is None:
        return build(task)
    state = weights.load_state_dict(source)
    try:
        return build(task, state)
    except (CheckpointMismatch, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0]
        raise WeightsError(
            f"{source}: not CodeFormer's {task} network ({reason}); use {file} from `bfrboost weights download codeformer`"
        ) from None


def codeformer_forward(net: CodeFormer, x: torch.Tensor, w: float, adain: bool) -> torch.Tensor:
    """CodeFormer's inference forward ([-1, 1] in and out) with upstream's ``w`` and ``adain`` switches
    (spandrel's own forward always applies AdaIN, which the inpainting network must not)."""
    skips = {net.fuse_encoder_block[size]: size for size in net.connect_list}
    features: dict[str, torch.Tensor] = {}
    for i, block in enumerate(net.encoder.blocks):
        x = block(x)
        if i in skips:
            features[str(x.shape[-1])] = x.clone()
    lq_feat = x
    pos_emb = net.position_emb.unsqueeze(1).repeat(1, x.shape[0], 1)
    query = net.feat_emb(lq_feat.flatten(2).permute(2, 0, 1))
    for layer in net.ft_layers:
        query = layer(query, query_pos=pos_emb)
    logits = net.idx_pred_layer(query).permute(1, 0, 2)
    top_idx = torch.topk(torch.softmax(logits, dim=2), 1, dim=2)[1]
    quant = net.quantize.get_codebook_feat(top_idx, shape=[x.shape[0], 16, 16, 256])
    if adain:
        quant = adaptive_instance_normalization(quant, lq_feat)
    fuse_at = {net.fuse_generator_block[size] for size in net.connect_list}
    x = quant
    for i, block in enumerate(net.generator.blocks):
        x = block(x)
        if i in fuse_at and w > 0:
            size = str(x.shape[-1])
            x = net.fuse_convs_dict[size](features[size], x, w)
    return x


class OnePass:
    """A CodeFormer task network on aligned 512² crops, with upstream's pre/post-processing."""

    def __init__(self, task: str, net: CodeFormer, device: torch.device | str = "cpu") -> None:
        self.task = task
        self.settings = NETWORKS[task]
        self.device = torch.device(device)
        self.net = net.to(self.device)

    @torch.no_grad()
    def __call__(
        self, crops: Sequence[np.ndarray], masks: Sequence[np.ndarray | None] | None = None, keep_known: bool = True
    ) -> list[np.ndarray]:
        """RGB uint8 512² crops (and for inpainting their H×W masks, 1 = fill) → RGB uint8 results."""
        out = []
        for index, crop in enumerate(crops):
            mask = None if masks is None else masks[index]
            if mask is not None:
                crop = np.where(mask[..., None] > 0, np.uint8(255), crop)  # holes pure white, as trained
            x = torch.from_numpy(np.array(crop, copy=True)).permute(2, 0, 1)[None].float().div(255).to(self.device) * 2 - 1
            y = codeformer_forward(self.net, x, self.settings["w"], self.settings["adain"])
            if mask is not None and keep_known:
                m = torch.from_numpy(mask.astype(np.float32))[None, None].to(y)
                y = (1 - m) * x + m * y
            image = ((y.clamp(-1, 1) + 1) / 2 * 255).round().to(torch.uint8)[0].permute(1, 2, 0).cpu().numpy()
            out.append(image)
        return out
