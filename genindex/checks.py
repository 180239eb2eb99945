"""Input checks for the public API: every bad input is refused by name.

Arrays come in as anything NumPy or torch can hold and leave as C-contiguous
arrays of the expected dtype (a view of the input where no conversion is
needed). Nothing here or downstream writes to them: the caller's arrays are
never modified.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from .selectors import is_selector, selected

_NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float: what Faiss would cast
_INT64_MAX = np.iinfo(np.int64).max
_FLOAT_EXACT = 2.0 ** 53  # float64 holds every integer below this, and not all above
MAX_NPROBE = 2**31  # the largest default beam size (nprobe) an index takes and saves
# the largest squared norm of a vector: any two such vectors' squared distance
# (at most 4 times it) and inner product stay finite in float32
MAX_SQUARED_NORM = float(np.finfo(np.float32).max) / 4


class NotTrainedError(RuntimeError, ValueError):
    """The index has no model yet. A RuntimeError, as in Faiss, and a ValueError."""

    def __init__(self, message: str = "the index is not trained: call index.train(x, labels) "
                 "or build it with GenerativeIndex.fit(x, labels)") -> None:
        super().__init__(message)


def as_numpy(value: Any, name: str) -> np.ndarray:
    """A NumPy view of ``value`` (torch tensors are detached and moved to the CPU)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype in (torch.bfloat16, torch.float16):
            value = value.float()  # NumPy has no bfloat16
        value = value.numpy()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be an array of numbers: {error}") from None
    if array.dtype.kind not in _NUMERIC_KINDS:
        raise TypeError(f"{name} must hold numbers, got dtype {array.dtype}")
    return array


def dim_of(x: Any) -> int:
    """The number of columns of a matrix ``x`` (n, d), checked to be 2-D."""
    shape = getattr(x, "shape", None) or np.shape(x)
    if len(shape) != 2:
        raise ValueError(f"x must be a 2-D array of shape (n, d), got shape {tuple(shape)}")
    return int(shape[1])


def as_dim(d: Any, feature_dim: int | None = None) -> int:
    """The index dimension ``d``: a positive integer, by default (and necessarily)
    ``feature_dim``, the size of a backbone's features, when there is one."""
    if d is None and feature_dim is not None:
        d = feature_dim
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d <= 0:
        raise ValueError(f"d must be a positive integer, got {d!r}")
    if feature_dim is not None and d != feature_dim:
        raise ValueError(f"d={d} but the backbone's features have {feature_dim} dimensions")
    return int(d)


def check_cache(cache_dir: Any, cache: Any) -> None:
    """``cache_dir``: None or a path; ``cache``: True or False (no feature cache)."""
    if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
        raise TypeError(f"cache_dir must be a folder path or None, got {cache_dir!r} "
                        "(cache=False turns the feature cache off)")
    if not isinstance(cache, bool):
        raise TypeError(f"cache must be True or False, got {cache!r}")


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
    with np.errstate(over="ignore"):  # values beyond float32 become inf, refused below
        out = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(out).all():
        bad = int(np.flatnonzero(~np.isfinite(out).all(axis=1))[0])
        raise ValueError(f"{name} holds NaN or Inf (first in row {bad}), "
                         "or values too large for float32")
    if float(np.abs(out).max()) ** 2 * d <= MAX_SQUARED_NORM:  # no norm can be too large
        return out
    norms = np.einsum("ij,ij->i", out, out, dtype=np.float64)
    if norms.max() > MAX_SQUARED_NORM:
        bad = int(np.argmax(norms > MAX_SQUARED_NORM))
        raise ValueError(f"{name} row {bad} has a squared norm of {norms[bad]:.3g}, above "
                         f"{MAX_SQUARED_NORM:.3g}: distances between such vectors overflow "
                         "float32; scale the vectors down")
    return out


def as_ids(ids: Any, n: int | None = None, name: str = "ids", *, distinct: bool = True,
           nonnegative: bool = False) -> np.ndarray:
    """``ids`` as a fresh int64 vector of integers (of length n if given)."""
    array = as_numpy(ids, name)
    if array.dtype.kind == "b":
        raise TypeError(f"{name} must be integers, got booleans (a mask is not a list of ids)")
    if array.ndim == 0:
        array = array.reshape(1)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of integers, got shape {array.shape}")
    if n is not None and len(array) != n:
        raise ValueError(f"{name} must have one entry per row of x ({n}), got {len(array)}")
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise TypeError(f"{name} must be integers, got non-integral {array.dtype} values")
        if array.size and np.abs(array).max() >= 2.0 ** 63:
            raise ValueError(f"{name} must fit in int64")
        if array.size and np.abs(array).max() >= _FLOAT_EXACT:
            raise ValueError(f"{name}: floating-point ids of 2**53 and more do not name one "
                             f"id exactly (got {np.abs(array).max():.17g}); pass int64 ids")
    if array.dtype.kind == "u" and array.size and array.max() > _INT64_MAX:
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


def as_labels(labels: Any, n: int, *, min_classes: int = 2,
              per: str = "row of x") -> np.ndarray:
    """Class labels of any comparable values as int64 class indices 0..C-1.

    ``min_classes``: the fewest classes accepted (2 to train a classifier).
    """
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"labels must be 1-D (one label per {per}), got shape {array.shape}")
    if len(array) != n:
        raise ValueError(f"labels must have one entry per {per} ({n}), got {len(array)}")
    if array.dtype.kind == "O" and any(v is None for v in array):
        raise TypeError("labels hold None: every item needs a label")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError("labels hold NaN or Inf")
    try:
        classes, index = np.unique(array, return_inverse=True)
    except TypeError as error:
        raise TypeError(f"labels must be comparable values (ints or strings): {error}") from None
    if len(classes) < min_classes:
        raise ValueError(f"labels must name at least {min_classes} classes to train a "
                         f"classifier, got {len(classes)}; pass labels=None to train without "
                         "labels")
    return index.astype(np.int64).reshape(-1)


def next_ids(first: int, n: int) -> np.ndarray:
    """The ``n`` consecutive int64 ids from ``first`` (what ``add`` hands out), refused
    where they would pass the largest int64."""
    if first > np.iinfo(np.int64).max - n + 1:
        raise ValueError(f"x: no {n} consecutive int64 ids are left after {first - 1}, "
                         "the largest id used; use add_with_ids")
    return np.arange(first, first + n, dtype=np.int64)


def as_k(k: Any) -> int:
    return as_positive_int(k, "k")


def as_beam_size(beam_size: Any, k: int) -> int:
    """``beam_size``, default ``max(k, 10)``; any positive integer (a search keeps at most
    as many beams as the index has identifiers)."""
    return max(k, 10) if beam_size is None else as_positive_int(beam_size, "beam_size")


def check_result_size(n: int, k: int) -> None:
    """Refuse a search whose (n, k) result arrays would not fit in the free memory."""
    needed = n * k * (np.dtype(np.float32).itemsize + np.dtype(np.int64).itemsize)
    free = available_memory()
    if needed > free:
        raise ValueError(f"k={k} for {n} queries: the result would take {needed / 2**30:.1f} "
                         f"GiB, more than the {free / 2**30:.1f} GiB of free memory; lower k "
                         "or search fewer queries at a time")


def available_memory() -> int:
    """Bytes of memory free for new allocations (Linux: MemAvailable), else all of it."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def as_filter(selection: Any, ids: np.ndarray, name: str = "filter") -> np.ndarray:
    """The allowed ids of a search filter, sorted and distinct (int64); ``ids`` are the
    index's ids (what a Faiss selector is asked about).

    One rule, by type: an array of dtype ``bool`` is a mask indexed by id
    (``mask[i]``: may item ``i`` be returned; ids at or beyond ``len(mask)`` may
    not); an array of integers, whatever their dtype (``uint8`` too), is a list
    of allowed ids (ids not in the index are ignored); a Faiss ``IDSelector``
    (``IDSelectorBatch``, ``IDSelectorRange``, ``IDSelectorBitmap`` for packed
    bits, ...) selects as it does in Faiss (see :mod:`genindex.selectors`).
    """
    if is_selector(selection):
        return selected(selection, ids)
    array = as_numpy(selection, name)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of allowed ids, a 1-D boolean mask "
                         f"indexed by id or a Faiss IDSelector, got shape {array.shape}")
    if array.dtype.kind == "b":
        return np.flatnonzero(array).astype(np.int64)
    return np.unique(as_ids(array, name=name, distinct=False))


def as_removal(ids: Any, present: np.ndarray) -> np.ndarray:
    """The ids ``remove_ids`` is given, sorted and distinct: an id array, or a Faiss
    ``IDSelector`` asked about the ``present`` ids."""
    if is_selector(ids):
        return selected(ids, present)
    return np.unique(as_ids(ids, distinct=False))


def as_outputs(D: Any, I: Any, n: int, k: int) -> tuple[np.ndarray, np.ndarray] | None:  # noqa: E741
    """Faiss's ``search(..., D=, I=)``: the arrays to write into, made where not given;
    None when neither is."""
    if D is None and I is None:
        return None
    arrays = []
    for name, array, dtype in (("D", D, np.float32), ("I", I, np.int64)):
        if array is None:
            array = np.empty((n, k), dtype)
        if not isinstance(array, np.ndarray) or array.shape != (n, k) or (
                array.dtype != dtype) or not array.flags.writeable:
            raise ValueError(f"{name} must be a writeable {np.dtype(dtype).name} array of "
                             f"shape ({n}, {k}), got {getattr(array, 'shape', type(array))}")
        arrays.append(array)
    return arrays[0], arrays[1]


def check_timings(timings: Any) -> None:
    if timings is not None and not isinstance(timings, dict):
        raise TypeError(f"timings must be a dict or None, got {type(timings).__name__}")


def as_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def as_k_factor(value: Any) -> float:
    """The metric order's candidates per result: a number in [0, 2**20]; below 1 (Faiss
    accepts 0, "no re-rank") the candidates are the ``k`` results themselves."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0 <= value <= 2**20:
        raise ValueError(f"k_factor must be a number in [0, 2**20], got {value!r}")
    return float(value)


def as_add_id(add_id: Any, ids: np.ndarray) -> np.ndarray:
    """``ids + add_id`` (``merge_from``): ``add_id`` an integer (not a bool) that keeps
    every id in [0, 2**63 - 1] (no negative id, no -1, no overflow)."""
    if isinstance(add_id, bool) or not isinstance(add_id, (int, np.integer)):
        raise TypeError(f"add_id must be an integer, got {type(add_id).__name__}")
    add_id = int(add_id)
    if ids.size and (int(ids.min()) + add_id < 0 or int(ids.max()) + add_id > _INT64_MAX):
        raise ValueError(f"add_id={add_id}: the merged ids would run from "
                         f"{int(ids.min()) + add_id} to {int(ids.max()) + add_id}, outside "
                         "[0, 2**63 - 1] (-1 marks a missing result)")
    return ids + np.int64(add_id) if ids.size else ids.copy()


def as_nonnegative(value: Any, name: str) -> float:
    """A finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return float(value)


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def as_device(device: Any, name: str = "device") -> torch.device:
    """A torch device that exists on this machine."""
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"{name} must be a string such as 'cpu' or 'cuda', or a torch.device, "
                        f"got {type(device).__name__}")
    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"{name}={device!r} is not a torch device: {error}") from None
    if parsed.type == "meta":
        raise ValueError(f"{name}='meta' holds no data: an index searches on 'cpu' or 'cuda'")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}={device!r} but CUDA is not available on this machine")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"{name}={device!r} but this machine has "
                             f"{torch.cuda.device_count()} CUDA devices")
    return parsed
