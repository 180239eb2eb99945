"""Feature extraction speed: images/s of torch's forward and of ONNX Runtime, one run.

    python benchmarks/studies/extract_speed.py [--images 1024] [--batch-size 64]

Embeds the first ``--images`` emoji database images with EfficientNet-Lite0,
without the feature cache, once through the backbone's torch forward
(``GENINDEX_ONNX=0``, what genindex did before) and once through ONNX Runtime
(the default where ``onnxruntime`` is installed; the export is counted), and
prints both images/s, their ratio and the largest feature difference.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import datasets  # noqa: E402
from genindex.backbones import get_backbone  # noqa: E402
from genindex.inputs import extract_features  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--data-root")
    args = parser.parse_args(argv)
    images = datasets.load("emoji", args.data_root).db_images[:args.images]
    backbone = get_backbone("efficientnet-lite0")
    print(f"{len(images)} emoji images, EfficientNet-Lite0, {torch.get_num_threads()} "
          "threads, no feature cache", flush=True)
    rates, features = {}, {}
    for name, flag in (("torch", "0"), ("onnxruntime", "1")):
        os.environ["GENINDEX_ONNX"] = flag
        start = time.perf_counter()
        features[name] = extract_features(backbone, images, cache=None,
                                          device=torch.device("cpu"),
                                          batch_size=args.batch_size, progress=False)
        rates[name] = len(images) / (time.perf_counter() - start)
        print(f"{name}: {rates[name]:.1f} images/s", flush=True)
    difference = float(np.abs(features["torch"] - features["onnxruntime"]).max())
    print(f"onnxruntime / torch: {rates['onnxruntime'] / rates['torch']:.2f}x; largest "
          f"feature difference {difference:.2e} (features up to "
          f"{np.abs(features['torch']).max():.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
