"""scikit-learn's handwritten digits: 1,797 grey 8 x 8 images of 10 digits, offline.

The data ship inside scikit-learn (``sklearn.datasets.load_digits``), so
``data_root`` is not used. Each class is split at random with a fixed ``seed``:
``query_fraction`` of its images (rounded down) are queries, the rest database.
Pixels (0..16 in scikit-learn) are scaled to 0..255 and returned as a uint8
``(n, 8, 8, 3)`` array, the grey channel repeated. Labels are the digits 0..9.
"""

from __future__ import annotations

import numpy as np

from . import Dataset, register


@register("digits")
def load_digits(data_root: str | None = None, seed: int = 0,
                query_fraction: float = 0.5) -> Dataset:
    if not 0 < query_fraction < 1:
        raise ValueError(f"query_fraction must be in (0, 1), got {query_fraction!r}")
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise ImportError("the digits data set ships with scikit-learn: pip install "
                          "scikit-learn (or genindex[bench])") from None
    bunch = sklearn_digits()
    grey = np.round(bunch.images * (255 / 16)).astype(np.uint8)
    images = np.repeat(grey[..., None], 3, axis=-1)
    labels = np.asarray(bunch.target, dtype=np.int64)
    query = split_per_class(labels, query_fraction, seed)
    return Dataset("digits", images[~query], labels[~query], images[query], labels[query],
                   {"seed": seed, "query_fraction": query_fraction,
                    "source": "sklearn.datasets.load_digits"})


def split_per_class(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A mask choosing ``floor(fraction * size)`` members of each class at random."""
    rng = np.random.default_rng(seed)
    chosen = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        chosen[rng.permutation(members)[:int(fraction * len(members))]] = True
    return chosen
