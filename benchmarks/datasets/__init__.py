"""Benchmark data sets by name: database images + labels, query images + labels.

Each loader takes ``data_root`` (where the data lives or is fetched to) and
``limit`` (keep that many classes, for quick runs) and returns a
:class:`Dataset`. Images are file paths or in-memory arrays; labels are any
comparable values.

``split="val"`` gives a validation split that shares no image with the reported
(``"test"``) queries, for choosing settings: a loader that takes a ``split``
argument defines its own (emoji: another vendor's images as queries;
fashion-mnist: 10,000 training images against the other 50,000); for the
others it is :func:`hold_out_queries` of the database, the test queries unread.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, replace
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


SPLITS = ("test", "val")


def load(name: str, data_root: str | None = None, limit: int | None = None,
         split: str = "test", **options: Any) -> Dataset:
    """Data set ``name``: its reported queries (``split="test"``) or its validation
    split (``"val"``); ``options`` go to the loader (emoji: ``query_vendor``)."""
    _import_loaders()
    if name not in _REGISTRY:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    loader = _REGISTRY[name]
    if "split" in inspect.signature(loader).parameters:
        dataset = loader(data_root=data_root, split=split, **options)
    else:
        dataset = loader(data_root=data_root, **options)
        dataset = hold_out_queries(dataset) if split == "val" else \
            replace(dataset, notes={**dataset.notes, "split": "test"})
    return dataset if limit is None else keep_classes(dataset, limit)


def hold_out_queries(dataset: Dataset, seed: int = 0, cap: int = 2000) -> Dataset:
    """The generic validation split: :func:`held_out_rows` of the database as queries
    against the rest of it. The data set's own queries are dropped unread."""
    labels = np.asarray(dataset.db_labels)
    query = np.zeros(len(labels), bool)
    query[held_out_rows(labels, seed, cap)] = True
    return Dataset(dataset.name, _take(dataset.db_images, ~query), labels[~query],
                   _take(dataset.db_images, query), labels[query],
                   {**dataset.notes, "split": "val", "queries": "one database item "
                    f"per class (seed {seed}), the reported queries unread"})


def held_out_rows(labels: np.ndarray, seed: int = 0, cap: int = 2000) -> np.ndarray:
    """Sorted rows: one of each class that has two or more (at most ``cap`` classes,
    drawn with ``seed``)."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    chosen = rng.permutation(classes[counts >= 2])[:cap]
    return np.sort(np.array([rng.choice(np.flatnonzero(labels == c)) for c in chosen],
                            dtype=np.int64))


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
