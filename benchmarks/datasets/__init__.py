"""Benchmark data sets by name: database images + labels, query images + labels.

Each loader takes ``data_root`` (where the data lives or is fetched to) and
``limit`` (keep that many classes, for quick runs) and returns a
:class:`Dataset`. Images are file paths or in-memory arrays; labels are any
comparable values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Dataset:
    name: str
    db_images: Any  # list of paths, or a (n, H, W, C) uint8 array
    db_labels: np.ndarray
    query_images: Any
    query_labels: np.ndarray
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.db_images) != len(self.db_labels):
            raise ValueError(f"{self.name}: {len(self.db_images)} database images but "
                             f"{len(self.db_labels)} labels")
        if len(self.query_images) != len(self.query_labels):
            raise ValueError(f"{self.name}: {len(self.query_images)} queries but "
                             f"{len(self.query_labels)} labels")


class DataUnavailable(RuntimeError):
    """The data set is not where it should be; the message says where it comes from."""


_REGISTRY: dict[str, Callable[..., Dataset]] = {}


def register(name: str):
    def wrap(loader: Callable[..., Dataset]) -> Callable[..., Dataset]:
        _REGISTRY[name] = loader
        return loader
    return wrap


def names() -> list[str]:
    _import_loaders()
    return sorted(_REGISTRY)


def load(name: str, data_root: str | None = None, limit: int | None = None,
         **options: Any) -> Dataset:
    _import_loaders()
    if name not in _REGISTRY:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    dataset = _REGISTRY[name](data_root=data_root, **options)
    return dataset if limit is None else keep_classes(dataset, limit)


def keep_classes(dataset: Dataset, limit: int) -> Dataset:
    """The first ``limit`` classes (in sorted order) of a data set."""
    kept = np.unique(dataset.db_labels)[:limit]
    db = np.isin(dataset.db_labels, kept)
    query = np.isin(dataset.query_labels, kept)
    return Dataset(dataset.name, _take(dataset.db_images, db), dataset.db_labels[db],
                   _take(dataset.query_images, query), dataset.query_labels[query],
                   {**dataset.notes, "limit": limit})


def _take(images: Any, mask: np.ndarray) -> Any:
    if isinstance(images, np.ndarray):
        return images[mask]
    return [image for image, keep in zip(images, mask) if keep]


def _import_loaders() -> None:
    from . import (  # noqa: F401  (each registers itself)
        cars196,
        cub200,
        digits,
        emoji,
        fashion_mnist,
        imagenet,
        inshop,
        places365,
    )
