"""Images to model inputs: cached global features, or pixels for end-to-end mode."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from . import checks, distributed
from .backbones import Backbone
from .cache import FeatureCache
from .images import image_refs, looks_like_images, pixel_batches
from .runtime import feature_function

_SHARD = 1024  # images per cache shard: an interruption loses at most this many


@torch.inference_mode()
def extract_features(backbone: Backbone, images, *, cache: FeatureCache | None,
                     device: torch.device, batch_size: int = 64,
                     progress: bool = True) -> np.ndarray:
    """Global features (n, feature_dim) float32 of ``images``, through ``cache``."""
    refs = image_refs(images)
    out = np.empty((len(refs), backbone.feature_dim), np.float32)
    cached = cache.get([ref.key for ref in refs]) if cache is not None else [None] * len(refs)
    missing = [i for i, feature in enumerate(cached) if feature is None]
    for i, feature in enumerate(cached):
        if feature is not None:
            out[i] = feature
    backbone.eval()
    embed = feature_function(backbone, device) if missing else None
    pending: list[int] = []
    for start, pixels in pixel_batches([refs[i] for i in missing], backbone.preprocess,
                                       batch_size, progress, desc="features"):
        rows = missing[start:start + len(pixels)]
        out[rows] = embed(pixels)
        pending.extend(rows)
        if cache is not None and (len(pending) >= _SHARD or rows[-1] == missing[-1]):
            cache.put([refs[i].key for i in pending], out[pending])
            pending = []
    if not np.isfinite(out).all():
        raise ValueError("the backbone produced NaN or Inf features")
    return out


def load_pixels(backbone: Backbone, images, *, batch_size: int = 256,
                progress: bool = True) -> torch.Tensor:
    """Preprocessed uint8 pixels (n, 3, S, S) of ``images`` for end-to-end mode."""
    refs = image_refs(images)
    batches = [pixels for _, pixels in pixel_batches(refs, backbone.preprocess, batch_size,
                                                     progress, desc="images")]
    return torch.cat(batches)


def open_cache(backbone: Backbone, cache_dir: str | os.PathLike | None = None) -> FeatureCache:
    """The feature cache of ``backbone``, under ``cache_dir`` (default: the user's
    cache folder, see :func:`genindex.cache.default_cache_dir`)."""
    return FeatureCache(backbone.cache_key(), cache_dir)


def extract_sharded(backbone: Backbone, paths: Sequence[Path], *, cache: FeatureCache,
                    device: torch.device, progress: bool = True) -> None:
    """Under ``torchrun``: every rank embeds its share of the images into the shared
    ``cache``, then waits for the others, so that each rank then reads them all."""
    mine = [paths[i] for i in distributed.split_range(len(paths))]
    if mine:
        extract_features(backbone, mine, cache=cache, device=device, progress=progress)
    distributed.barrier()


def model_inputs(x, *, d: int, backbone: Backbone | None, pixels: bool,
                 cache: FeatureCache | None, device: torch.device,
                 progress: bool) -> tuple[torch.Tensor, np.ndarray | None]:
    """``(tensor, vectors)``: what a model takes, and the feature vectors where known.

    Images become cached global features, or uint8 pixels when ``pixels`` (end
    to end; vectors are then None); vectors of dimension d pass through.
    """
    if backbone is not None and looks_like_images(x):
        if pixels:
            return load_pixels(backbone, x, progress=progress).to(device), None
        vectors = extract_features(backbone, x, cache=cache, device=device, progress=progress)
        return torch.from_numpy(vectors).to(device), vectors
    if pixels:
        raise ValueError("this model is end to end: it reads images (paths, PIL images, "
                         "arrays), not feature vectors")
    vectors = checks.as_vectors(x, d)
    tensor = torch.from_numpy(vectors if vectors.flags.writeable else vectors.copy())
    return tensor.to(device), vectors
