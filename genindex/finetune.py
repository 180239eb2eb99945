"""The FT baseline: a backbone fine-tuned for classification, searched by linear scan.

The paper compares IRGen with "FT-CLIP": CLIP fine-tuned on the target data
set, whose features are then searched exhaustively or with an ANN index.
:func:`finetune` trains the same kind of model on the same backbone and
labels as an index: a linear head over the global feature with the cosine
classifier and CosFace margin of the tokenizer, on frozen features (fast,
the CPU default) or with the backbone itself fine-tuned at
``backbone_lr_scale`` times the learning rate (``full=True``, for a GPU). Its
:meth:`FineTuned.embed` exports L2-normalised features for linear scan.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import checks
from .backbones import Backbone, get_backbone
from .cache import FeatureCache
from .config import PRECISIONS
from .inputs import model_inputs, open_cache
from .loop import Objective, batches, epoch_plan, train_loop
from .tokenizer import CosineClassifier


@dataclass(frozen=True)
class FineTuneConfig:
    dim: int = 512  # width of the exported feature
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    scale: float = 16.0
    margin: float = 0.2
    full: bool = False  # fine-tune the backbone too (images only)
    backbone_lr_scale: float = 0.01
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.96)
    seed: int = 0
    precision: str = "auto"  # training's autocast, as IndexConfig.precision

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"FineTuneConfig: precision must be one of {PRECISIONS}, "
                             f"got {self.precision!r}")


class FineTuned(nn.Module):
    """(Backbone +) linear head; ``embed`` gives the features to search."""

    def __init__(self, input_dim: int, config: FineTuneConfig, num_classes: int,
                 backbone: Backbone | None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.LayerNorm(input_dim), nn.Linear(input_dim, config.dim))
        self.classifier = CosineClassifier(config.dim, num_classes, config.scale, config.margin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backbone is not None:
            x = self.backbone(x).global_feature.float()
        return F.normalize(self.head(x), dim=-1)


class FineTunedFeatures:
    """A fine-tuned model with the input handling of an index."""

    def __init__(self, model: FineTuned, backbone: Backbone | None, d: int,
                 device: torch.device, cache: FeatureCache | None, history: list[float]) -> None:
        self.model, self.backbone, self.d = model, backbone, d
        self.device, self.cache = device, cache
        self.history = history  # mean training loss of every epoch

    @torch.inference_mode()
    def embed(self, x: Any, *, progress: bool = False) -> np.ndarray:
        """L2-normalised features (n, dim) float32 of images or backbone features."""
        inputs, _ = model_inputs(x, d=self.d, backbone=self.backbone,
                                 pixels=self.model.backbone is not None, cache=self.cache,
                                 device=self.device, progress=progress)
        self.model.eval()
        return torch.cat([self.model(chunk).float() for chunk in inputs.split(256)]
                         ).cpu().numpy()


def finetune(x: Any, labels: Any, *, backbone: str | Backbone | None = None,
             config: FineTuneConfig = FineTuneConfig(), device: str = "cpu",
             cache_dir: str | os.PathLike | None = None, cache: bool = True,
             progress: bool = True) -> FineTunedFeatures:
    """Train the FT baseline on ``x`` (images with a backbone, else vectors).

    ``cache_dir``: where image features are cached (default: the user's cache
    folder); ``cache=False``: no feature cache."""
    device_t = torch.device(device)
    backbone_m = None if backbone is None else get_backbone(backbone).to(device_t)
    if config.full and backbone_m is None:
        raise ValueError("full=True fine-tunes a backbone: pass backbone=")
    features = None if backbone_m is None or not cache else open_cache(backbone_m, cache_dir)
    d = backbone_m.feature_dim if backbone_m is not None else _width(x)
    inputs, _ = model_inputs(x, d=d, backbone=backbone_m, pixels=config.full, cache=features,
                             device=device_t, progress=progress)
    y = torch.from_numpy(checks.as_labels(labels, len(inputs))).to(device_t)
    generator = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        trainable = copy.deepcopy(backbone_m).train() if config.full else None
        model = FineTuned(d, config, int(y.max()) + 1, trainable).to(device_t)
        passes = (batches(len(inputs), config.batch_size, generator, device_t)
                  for _ in range(config.epochs))
        history = train_loop(Objective(model, lambda m, x, y: m.classifier.loss(m(x), y)),
                             lambda objective, rows: objective(inputs[rows], y[rows]), passes,
                             epoch_plan(config.lr, config.epochs, 1, len(inputs),
                                        config.batch_size), config, "FT baseline", progress)
    return FineTunedFeatures(model.eval(), backbone_m, d, device_t, features, history)


def _width(x: Any) -> int:
    shape = np.shape(x)
    if len(shape) != 2:
        raise ValueError(f"x must be images or a 2-D array of features, got shape {shape}")
    return int(shape[1])
