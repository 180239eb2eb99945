"""Helpers shared by the loaders of data sets kept in folders in their official layouts.

A loader's ``data_root`` may be the data set's own folder or the folder above it
(then the data set's usual folder names are tried beneath it); without one, the
genindex cache folder's ``datasets`` sub-folder is searched the same way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from genindex.cache import default_cache_dir
from genindex.inputs import IMAGE_SUFFIXES

from . import DataUnavailable

log = logging.getLogger(__name__)


def base_folder(data_root: str | os.PathLike | None) -> Path:
    if data_root is None:
        return default_cache_dir() / "datasets"
    return Path(data_root).expanduser()


def candidates(data_root: str | os.PathLike | None, names: Iterable[str]) -> list[Path]:
    """``data_root`` itself, then each of the data set's usual folder names under it."""
    base = base_folder(data_root)
    return [base] + [base / name for name in names]


def find_root(folders: Sequence[Path], is_root: Callable[[Path], bool]) -> Path | None:
    """The first of ``folders`` that holds the data set, or None."""
    for folder in folders:
        if folder.is_dir() and is_root(folder):
            return folder
    return None


def unavailable(name: str, looked: Sequence[Path], source: str, layout: str) -> DataUnavailable:
    """The error for a data set that is not there: where it comes from, what is expected."""
    where = ", ".join(str(p) for p in looked)
    return DataUnavailable(
        f"the {name} data set was not found (looked in: {where}).\n"
        f"It comes from {source}\n"
        f"Expected layout (pass --data-root pointing at this folder or its parent):\n{layout}")


def read_rows(path: Path, columns: int, skip: int = 0) -> list[list[str]]:
    """Whitespace-separated rows of a text file, each with exactly ``columns`` fields."""
    rows = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if number <= skip or not line.strip():
                continue
            fields = line.split()
            if len(fields) != columns:
                raise DataUnavailable(f"{path}:{number}: expected {columns} fields, got "
                                      f"{len(fields)}: {line.strip()[:200]!r}")
            rows.append(fields)
    return rows


def check_files(paths: Sequence[Path | str], name: str) -> None:
    """Every path must be an existing file (catches a partly unpacked archive)."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataUnavailable(f"{name}: {len(missing)} of {len(paths)} images are missing, "
                              f"e.g. {missing[0]}; unpack the image archive completely")


def class_folders(folder: Path, desc: str) -> tuple[list[str], np.ndarray]:
    """Images in ``folder/<class>/...``: (sorted paths as str, labels). A class is the path
    of the folder that holds the images, relative to ``folder`` (``a/abbey``,
    ``n01440764``). Only names are listed: no image is opened."""
    paths: list[str] = []
    labels: list[str] = []
    start = len(str(folder)) + 1
    with tqdm(desc=desc, unit=" folders", leave=False) as bar:
        for current, subfolders, files in os.walk(folder):
            subfolders.sort()
            images = sorted(f for f in files if f.lower().endswith(IMAGE_SUFFIXES))
            bar.update()
            if not images:
                continue
            if current == str(folder):
                raise DataUnavailable(f"{folder} holds images directly; expected one "
                                      "sub-folder per class")
            label = current[start:].replace(os.sep, "/")
            paths.extend(f"{current}{os.sep}{f}" for f in images)
            labels.extend([label] * len(images))
    if not paths:
        raise DataUnavailable(f"{folder} holds no images in class sub-folders "
                              f"({', '.join(IMAGE_SUFFIXES)})")
    return paths, np.array(labels)


def pick(paths: Sequence[Path], mask: np.ndarray) -> list[Path]:
    """The paths where ``mask`` is True."""
    return [p for p, keep in zip(paths, mask) if keep]


def has_class_folders(folder: Path) -> bool:
    """Whether ``folder`` has at least one sub-folder (the images are not flat)."""
    with os.scandir(folder) as entries:
        return any(entry.is_dir() for entry in entries)


def sample(count: int, num: int | None, seed: int, argument: str = "num_queries") -> np.ndarray:
    """Sorted indices of ``num`` items drawn at random (fixed ``seed``) out of ``count``;
    all of them when ``num`` is None."""
    if num is None:
        return np.arange(count)
    if not isinstance(num, (int, np.integer)) or isinstance(num, bool) or num < 1:
        raise ValueError(f"{argument} must be a positive int or None, got {num!r}")
    if num > count:
        raise ValueError(f"{argument}={num} but only {count} images are there to draw "
                         f"from; pass {argument}=None to use all of them")
    return np.sort(np.random.default_rng(seed).choice(count, size=num, replace=False))


def warn_unmatched(name: str, db_labels: np.ndarray, query_labels: np.ndarray) -> int:
    """Log (and return) how many queries have no class in the database."""
    unmatched = int((~np.isin(query_labels, db_labels)).sum())
    if unmatched:
        log.warning("%s: %d of %d queries have a class that no database image has",
                    name, unmatched, len(query_labels))
    return unmatched
