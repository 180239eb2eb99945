"""Input checks for the public API: every bad input is refused by name.

Arrays come in as anything NumPy or torch can hold and leave as C-contiguous
arrays of the expected dtype (a view of the input where no conversion is
needed). Nothing here or downstream writes to them: the caller's arrays are
never modified.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float: what Faiss would cast


def as_numpy(value: Any, name: str) -> np.ndarray:
    """A NumPy view of ``value`` (torch tensors are detached and moved to the CPU)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be an array of numbers: {error}") from None
    if array.dtype.kind not in _NUMERIC_KINDS:
        raise TypeError(f"{name} must hold numbers, got dtype {array.dtype}")
    return array


def as_vectors(x: Any, d: int, name: str = "x") -> np.ndarray:
    """``x`` as a float32 (n, d) matrix with n >= 1 and only finite values."""
    array = as_numpy(x, name)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of shape (n, {d}), got shape {array.shape}")
    if array.shape[1] != d:
        raise ValueError(f"{name} must have {d} columns (the index dimension d), "
                         f"got shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError(f"{name} is empty: expected at least one row of shape (n, {d})")
    out = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(out).all():
        bad = int(np.flatnonzero(~np.isfinite(out).all(axis=1))[0])
        raise ValueError(f"{name} holds NaN or Inf (first in row {bad}), "
                         "or values too large for float32")
    return out


def as_ids(ids: Any, n: int | None = None, name: str = "ids", *, distinct: bool = True,
           nonnegative: bool = False) -> np.ndarray:
    """``ids`` as a fresh int64 vector of integers (of length n if given)."""
    array = as_numpy(ids, name)
    if array.ndim == 0:
        array = array.reshape(1)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of integers, got shape {array.shape}")
    if n is not None and len(array) != n:
        raise ValueError(f"{name} must have one entry per row of x ({n}), got {len(array)}")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise TypeError(f"{name} must be integers, got non-integral {array.dtype} values")
    if array.dtype.kind == "u" and array.size and array.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} must fit in int64")
    out = np.array(array, dtype=np.int64)
    if nonnegative and out.size and out.min() < 0:
        raise ValueError(f"{name} must be >= 0 (-1 marks a missing result), got {out.min()}")
    if not distinct:
        return out
    unique, counts = np.unique(out, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"{name} must be distinct; repeated: {unique[counts > 1][:10].tolist()}")
    return out


def as_labels(labels: Any, n: int) -> np.ndarray:
    """Class labels of any hashable values as int64 class indices 0..C-1, C >= 2."""
    if hasattr(labels, "detach") and hasattr(labels, "cpu"):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"labels must be 1-D (one label per row of x), got shape {array.shape}")
    if len(array) != n:
        raise ValueError(f"labels must have one entry per row of x ({n}), got {len(array)}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError("labels hold NaN or Inf")
    try:
        classes, index = np.unique(array, return_inverse=True)
    except TypeError as error:
        raise TypeError(f"labels must be comparable values (ints or strings): {error}") from None
    if len(classes) < 2:
        raise ValueError(f"labels must name at least 2 classes to train a classifier, "
                         f"got {len(classes)}; pass labels=None to train without labels")
    return index.astype(np.int64).reshape(-1)


def as_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an integer, got {type(k).__name__}")
    if k <= 0:
        raise ValueError(f"k must be >= 1, got {k}")
    return int(k)


def as_beam_size(beam_size: Any, k: int) -> int:
    if beam_size is None:
        return max(k, 10)
    if isinstance(beam_size, bool) or not isinstance(beam_size, (int, np.integer)):
        raise TypeError(f"beam_size must be an integer or None, got {type(beam_size).__name__}")
    if beam_size <= 0:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    return int(beam_size)
