"""Metric speed: seconds per 512² face for every `bfrboost eval` metric, and the FID matrix step.

The networks have the real architectures with random weights (no download), so the timings are
those of the real metrics. NIQE needs its real parameter file: it is taken from an installed
basicsr(-fixed) package when there is one, else NIQE is left out. MUSIQ runs only when pyiqa is
installed and its weights are cached by pyiqa.

    python bench/bench_metrics.py [--faces N] [--device cpu|cuda] [--json FILE]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

FACES = Path(__file__).resolve().parents[1].parent / "shared" / "testdata" / "aligned"


def _random_checkpoints(home: Path) -> None:
    """Official-format checkpoints with random values for Inception, VGG16 and ArcFace."""
    import torchvision
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from bfrboost.metrics.inception import INCEPTION_FILE
    from bfrboost.metrics.perceptual import VGG16_FILE
    from bfrboost.nets.arcface import ARCFACE_FILE, random_arcface

    empty = home / "empty.pth"
    torch.save({}, empty)
    original = FeatureExtractorInceptionV3.load_state_dict
    FeatureExtractorInceptionV3.load_state_dict = lambda self, *a, **k: None  # type: ignore[method-assign]
    try:
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    finally:
        FeatureExtractorInceptionV3.load_state_dict = original  # type: ignore[method-assign]
    torch.save(net.state_dict(), home / INCEPTION_FILE)
    torch.save(torchvision.models.vgg16(weights=None).state_dict(), home / VGG16_FILE)
    torch.save(random_arcface(0).net.state_dict(), home / ARCFACE_FILE)
    spec = importlib.util.find_spec("basicsr")
    if spec is not None and spec.origin is not None:
        params = Path(spec.origin).parent / "metrics" / "niqe_pris_params.npz"
        if params.is_file():
            shutil.copy(params, home / params.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=12, help="faces to score (the test faces, repeated and flipped)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from PIL import Image

    base = [np.asarray(Image.open(p).convert("RGB").resize((512, 512))) for p in sorted(FACES.iterdir())]
    faces = [(f if i // len(base) % 2 == 0 else f[:, ::-1]).copy() for i, f in enumerate(base * (args.faces // len(base) + 1))][
        : args.faces
    ]
    refs = [np.ascontiguousarray(f[::-1]) for f in faces]
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        os.environ["BFRBOOST_HOME"] = str(home)
        os.environ["BFRBOOST_OFFLINE"] = "1"
        _random_checkpoints(home)
        from bfrboost import weights

        weights.ensure = lambda file, **_: weights.home() / file  # random files cannot match the cards' hashes
        from bfrboost.evaluation.evaluator import Evaluator, MetricModels
        from bfrboost.metrics.inception import ReferenceStats, fid, inception_features

        models = MetricModels(args.device)
        names = ["fid", "niqe", "lpips", "psnr", "ssim", "ids"] + (["musiq"] if importlib.util.find_spec("pyiqa") else [])
        if not (home / "niqe_pris_params.npz").exists():
            names.remove("niqe")
        for name in ("inception", "lpips", "ids"):  # load time is not per-face time
            models.get(name)
        stats = ReferenceStats.from_features(inception_features(models.get("inception"), faces[:2]), 512)
        evaluator = Evaluator(names, models=models, reference_stats=stats)
        evaluator.update(faces[:2], refs[:2])  # warm-up
        evaluator = Evaluator(names, models=models, reference_stats=stats)
        evaluator.update(faces, refs)
        results = evaluator.results()
        feats = inception_features(models.get("inception"), faces)
        start = time.perf_counter()
        fid(ReferenceStats.from_features(feats, 512), ReferenceStats.from_features(feats[::-1].copy(), 512))
        fid_matrix = time.perf_counter() - start
    table = {name: round(v.seconds / max(v.count, 1), 4) for name, v in results.items() if name != "fid"}
    table["fid_features_per_face"] = round(results["fid"].seconds / len(faces), 4)
    table["fid_2048_matrix_once"] = round(fid_matrix, 2)
    print(f"seconds per 512² face on {args.device} ({torch.get_num_threads()} threads, {len(faces)} faces):")
    for name, secs in table.items():
        print(f"  {name:24s} {secs}")
    if args.json:
        args.json.write_text(json.dumps({"device": args.device, "faces": len(faces), "seconds_per_face": table}, indent=2))


if __name__ == "__main__":
    main()
