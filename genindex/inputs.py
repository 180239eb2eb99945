"""What a user passes, to what a model reads: the one room of the input path.

:func:`model_inputs` is the entry: feature vectors of dimension d pass through
(checked, never copied unless read-only); images become the backbone's global
features through the feature cache, or uint8 pixels for end-to-end models.

Images are accepted wherever the index takes data: a file path, a folder (its
images, sorted, recursively), a PIL image, a ``uint8`` ``H x W x C`` array, a
``C x H x W`` tensor (uint8, or float in [0, 1]), or a list of any of these; a
4-D array or tensor is a batch. Transparent images are composited on white.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from . import checks, distributed
from .backbones import Backbone
from .cache import FeatureCache
from .runtime import feature_function

_SHARD = 1024  # images per cache shard: an interruption loses at most this many
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ModelInputs(NamedTuple):
    """A batch as the models take it, and its feature vectors where known."""

    tensor: torch.Tensor  # (n, d) vectors, or (n, 3, S, S) uint8 pixels end to end
    vectors: np.ndarray | None  # (n, d) float32; None for pixels until embedded


def model_inputs(x, *, d: int, backbone: Backbone | None, pixels: bool,
                 cache: FeatureCache | None, device: torch.device,
                 progress: bool) -> ModelInputs:
    """What a model takes, and the feature vectors where known.

    Images become cached global features, or uint8 pixels when ``pixels`` (end
    to end; vectors are then None); vectors of dimension d pass through.
    """
    if backbone is not None and looks_like_images(x):
        if pixels:
            return ModelInputs(load_pixels(backbone, x, progress=progress).to(device), None)
        vectors = extract_features(backbone, x, cache=cache, device=device, progress=progress)
        return ModelInputs(torch.from_numpy(vectors).to(device), vectors)
    if pixels:
        raise ValueError("this model is end to end: it reads images (paths, PIL images, "
                         "arrays), not feature vectors")
    vectors = checks.as_vectors(x, d)
    tensor = torch.from_numpy(vectors if vectors.flags.writeable else vectors.copy())
    return ModelInputs(tensor.to(device), vectors)


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


@dataclass(frozen=True)
class ImageRef:
    """One image: a stable key for the feature cache and a way to load it."""

    key: str
    load: Callable[[], Any]  # -> RGB PIL image
    name: str  # for error messages


def looks_like_images(x: Any) -> bool:
    """Images are paths, folders, PIL images, 3-D or 4-D arrays and tensors, and lists
    of these; anything else (a 2-D array above all) is a batch of feature vectors."""
    if isinstance(x, (str, os.PathLike)) or _is_pil(x):
        return True
    if isinstance(x, (list, tuple)):
        return bool(x) and (isinstance(x[0], (str, os.PathLike)) or _is_pil(x[0])
                            or getattr(x[0], "ndim", 0) == 3)
    return isinstance(x, (np.ndarray, torch.Tensor)) and x.ndim in (3, 4)


def image_refs(images: Any) -> list[ImageRef]:
    """Every image in ``images`` (see the module doc), in order."""
    if isinstance(images, (str, os.PathLike)):
        path = Path(images)
        if path.is_dir():
            return [_file_ref(p) for p in image_files(path)]
        return [_file_ref(path)]
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        if len(images) == 0:
            raise ValueError("images is empty: expected at least one image")
        return [_array_ref(images[i], f"images[{i}]") for i in range(len(images))]
    if isinstance(images, (list, tuple)):
        refs = []
        for i, item in enumerate(images):
            if isinstance(item, (str, os.PathLike)):
                if Path(item).is_dir():
                    raise ValueError(f"images[{i}] is a folder: pass it alone, not in a list")
                refs.append(_file_ref(Path(item)))
            else:
                refs.append(_single_ref(item, f"images[{i}]"))
        if not refs:
            raise ValueError("images is empty: expected at least one image")
        return refs
    return [_single_ref(images, "image")]


def image_files(folder: Path) -> list[Path]:
    """The image files under ``folder``, recursively, sorted (by :data:`IMAGE_SUFFIXES`)."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"the folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def to_rgb(image) -> Any:
    """An RGB PIL image; transparency is composited on white."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "P", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return image.convert("RGB")


def pixel_batches(refs: Sequence[ImageRef], preprocess: Callable[[Any], torch.Tensor],
                  batch_size: int, progress: bool, desc: str = "images"
                  ) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, uint8 pixels (B, 3, S, S))`` for consecutive batches of ``refs``. A
    worker thread decodes and resizes the next batch while the caller uses this one
    (PIL releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    def load(start: int) -> torch.Tensor:
        return torch.stack([preprocess(_load(ref)) for ref in refs[start:start + batch_size]])

    starts = range(0, len(refs), batch_size)
    bar = tqdm(total=len(refs), desc=desc, unit="img", disable=not progress, leave=False)
    with ThreadPoolExecutor(max_workers=1) as worker:
        upcoming = worker.submit(load, 0) if len(refs) else None
        try:
            for start in starts:
                pixels = upcoming.result()
                if start + batch_size < len(refs):
                    upcoming = worker.submit(load, start + batch_size)
                yield start, pixels
                bar.update(len(pixels))
        finally:
            if upcoming is not None:
                upcoming.cancel()
            bar.close()


def _load(ref: ImageRef):
    try:
        return to_rgb(ref.load())
    except (OSError, ValueError, SyntaxError) as error:  # PIL reports bad files so
        raise ValueError(f"cannot decode image {ref.name}: {error}") from None


def _file_ref(path: Path) -> ImageRef:
    try:
        stat = path.stat()
    except OSError as error:
        raise ValueError(f"cannot read image {path}: {error.strerror}") from None
    if not path.is_file():
        raise ValueError(f"{path} is not an image file")
    resolved = path.resolve()
    key = f"file:{resolved}|{stat.st_size}|{stat.st_mtime_ns}"

    def load():
        from PIL import Image

        with Image.open(resolved) as image:
            image.load()
            return image

    return ImageRef(key, load, str(path))


def _single_ref(item: Any, name: str) -> ImageRef:
    if _is_pil(item):
        image = item.copy()
        digest = hashlib.sha256(image.mode.encode() + str(image.size).encode()
                                + image.tobytes()).hexdigest()
        return ImageRef(f"sha256:{digest}", lambda: image, name)
    if isinstance(item, (np.ndarray, torch.Tensor)):
        return _array_ref(item, name)
    raise TypeError(f"{name} is a {type(item).__name__}: expected a path, a PIL image, "
                    "a uint8 HxWxC array or a CxHxW tensor")


def _array_ref(array: Any, name: str) -> ImageRef:
    """A uint8 H x W x C array or a C x H x W tensor (uint8, or float in [0, 1])."""
    from PIL import Image

    if isinstance(array, torch.Tensor):
        tensor = array.detach().cpu()
        if tensor.ndim != 3 or tensor.shape[0] not in (1, 3, 4):
            raise ValueError(f"{name}: a tensor image must be C x H x W with C in 1, 3, 4; "
                             f"got shape {tuple(tensor.shape)}")
        if tensor.is_floating_point():
            if not torch.isfinite(tensor).all() or tensor.min() < 0 or tensor.max() > 1:
                raise ValueError(f"{name}: a float tensor image must hold values in [0, 1]")
            tensor = (tensor * 255).round().to(torch.uint8)
        array = tensor.permute(1, 2, 0).numpy()
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise TypeError(f"{name}: an array image must be uint8 H x W x C, got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(f"{name}: an array image must be H x W x C with C in 1, 3, 4; "
                         f"got shape {array.shape}")
    array = np.ascontiguousarray(array).copy()
    digest = hashlib.sha256(str(array.shape).encode() + array.tobytes()).hexdigest()
    return ImageRef(f"sha256:{digest}", lambda: Image.fromarray(array), name)


def _is_pil(x: Any) -> bool:
    return type(x).__module__.startswith("PIL.") and hasattr(x, "convert")

