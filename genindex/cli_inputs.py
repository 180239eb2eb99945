"""What the ``genindex`` command reads: vector files, image folders, label files, configs.

Label files (``--labels``, ``--db-labels``):

* ``.npy``: a 1-D array, one label per row of the vectors, or per image of
  the folder in sorted order (the order :mod:`genindex.inputs` lists them);
* ``.csv``: a header row with a ``label`` column and, optionally, a ``path``
  (or ``file``, ``image``, ``filename``) column; with paths, the images are
  those files (under the ``--images`` folder; a leading ``/`` too, unless the
  first path exists as written) in the file's order;
* any other suffix (``.txt``, ``.tsv``, ...): one line per item, either
  ``LABEL`` or ``PATH LABEL`` (the label is the last whitespace-separated
  field, so it holds no spaces; the ImageNet ``train.txt`` layout).

Labels that all parse as integers are integers; otherwise they are strings.

Vectors and ids (``--vectors``, ``--ids``) are ``.npy`` files (``numpy.save``),
memory-mapped when they are regular files and read whole from a pipe
(``--vectors <(...)``); an ``.npz`` archive, text or anything else is refused
in one line.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import stat
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .config import PRESETS, IndexConfig
from .container import check_target
from .inputs import image_files

_PATH_COLUMNS = ("path", "file", "image", "filename")
_NPY_MAGIC = b"\x93NUMPY"  # the first bytes of every .npy file


class Labelled(NamedTuple):
    """Items to index or query: image paths or vectors, and their labels if given."""

    data: Any  # list[Path] of images, or a float32 (n, d) array
    labels: np.ndarray | None
    paths: list[Path] | None  # the images, when the items are images


class LabelFile(NamedTuple):
    labels: np.ndarray
    paths: list[str] | None  # as written in the file, when it names files


def read_vectors(path: str, option: str = "--vectors") -> np.ndarray:
    """A 2-D float array from a ``.npy`` file (memory-mapped: read as it is used)."""
    array = _load_npy(path, option)
    if array.ndim != 2 or array.dtype.kind not in "biuf":
        raise ValueError(f"{option} {path}: expected a 2-D array of numbers (n, d), got "
                         f"{array.dtype} of shape {array.shape}")
    return array


def read_ids(path: str) -> np.ndarray:
    array = _load_npy(path, "--ids")
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise ValueError(f"--ids {path}: expected a 1-D array of integers, got "
                         f"{array.dtype} of shape {array.shape}")
    return np.asarray(array, dtype=np.int64)


def read_label_file(path: str, option: str = "--labels") -> LabelFile:
    """Labels (and the files they belong to, if named) from a label file (module doc)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        array = np.asarray(_load_npy(path, option))
        if array.ndim != 1:
            raise ValueError(f"{option} {path}: expected a 1-D array, got shape {array.shape}")
        return LabelFile(array, None)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{option} {path}: cannot read: {_reason(error)}") from None
    rows = _csv_rows(text, path, option) if suffix == ".csv" else _text_rows(text, path, option)
    if not rows:
        raise ValueError(f"{option} {path}: holds no labels")
    paths = [p for p, _ in rows] if rows[0][0] is not None else None
    return LabelFile(_typed([label for _, label in rows]), paths)


def list_images(folder: str, option: str = "--images") -> list[Path]:
    """The images under ``folder``, recursively, sorted (as genindex.inputs does)."""
    if not Path(folder).is_dir():
        raise ValueError(f"{option} {folder}: not a folder")
    return image_files(Path(folder))


def read_items(vectors: str | None, images: str | None, labels: str | None,
               labels_from_dirs: bool = False, option: str = "--labels") -> Labelled:
    """The items of ``build`` / ``eval``: vectors or images, with labels if given."""
    if labels_from_dirs and images is None:
        raise ValueError("--labels-from-dirs needs --images")
    if labels_from_dirs and labels is not None:
        raise ValueError("pass either --labels or --labels-from-dirs, not both")
    label_file = None if labels is None else read_label_file(labels, option)
    if vectors is not None:
        x = read_vectors(vectors)
        if label_file is not None and label_file.paths is not None:
            raise ValueError(f"{option} {labels} names files, but the items are --vectors")
        y = None if label_file is None else _aligned(label_file.labels, len(x), option,
                                                      f"rows in {vectors}")
        return Labelled(x, y, None)
    root = Path(images)
    if label_file is not None and label_file.paths is not None:
        paths = _resolve(label_file.paths, root)
        return Labelled(paths, label_file.labels, paths)
    paths = list_images(images)
    if labels_from_dirs:
        y = _typed([str(p.parent.relative_to(root)) for p in paths])
    else:
        y = None if label_file is None else _aligned(label_file.labels, len(paths), option,
                                                      f"images in {images}")
    return Labelled(paths, y, paths)


def read_config(value: str | None, seed: int | None = None) -> IndexConfig:
    """``--config``: a preset name, inline JSON (``{...}``) or a JSON file."""
    if value is None or value in PRESETS:
        config = IndexConfig.preset(value or "default")
    else:
        text = value
        if not value.lstrip().startswith("{"):
            try:
                text = Path(value).read_text(encoding="utf-8")
            except OSError as error:
                raise ValueError(f"--config {value}: not a preset ({', '.join(PRESETS)}), "
                                 f"inline JSON or a readable file: {_reason(error)}") from None
        try:
            values = json.loads(text)
        except ValueError as error:
            raise ValueError(f"--config: invalid JSON: {error}") from None
        if not isinstance(values, dict):
            raise ValueError("--config: expected a JSON object of IndexConfig fields")
        try:
            config = IndexConfig.from_dict(values)
        except (TypeError, ValueError) as error:
            raise ValueError(f"--config: {error}") from None
    return config if seed is None else config.replace(seed=seed)


def expand_images(values: list[str]) -> list[Path]:
    """Images named on the command line: files as given, folders as their sorted images."""
    paths: list[Path] = []
    for value in values:
        paths += list_images(value, "IMAGE") if Path(value).is_dir() else [Path(value)]
    return paths


def check_out(out: str, force: bool, fresh: bool) -> None:
    """Refuse, before any work, an --out where the save would fail or would replace a
    file without --force: any file when ``fresh`` (build), else one that is not an
    index file (add); never a folder."""
    path = Path(out)
    if fresh and not force and path.is_file():
        raise ValueError(f"--out {out}: the file exists (pass --force to replace it)")
    try:
        check_target(path, overwrite=force)
    except ValueError as error:
        raise ValueError(f"--out {out}: {error}") from None


def label_kind(labels: np.ndarray) -> str:
    return "numbers" if labels.dtype.kind in "iuf" else "text"


def _load_npy(path: str, option: str) -> np.ndarray:
    """The array of a ``.npy`` file: mapped from a regular file, read whole from a pipe."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(6)
            if magic == _NPY_MAGIC and not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return np.load(io.BytesIO(magic + handle.read()), allow_pickle=False)
        if magic == _NPY_MAGIC:
            return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"{option} {path}: cannot read a .npy array: {_reason(error)}") from None
    kind = "an .npz archive" if magic.startswith(b"PK") else "not a .npy file"
    raise ValueError(f"{option} {path}: {kind}; give one array saved with numpy.save "
                     "(a .npy file)")


def _csv_rows(text: str, path: str, option: str) -> list[tuple[str | None, str]]:
    reader = csv.DictReader(text.splitlines())
    fields = [name.strip().lower() for name in reader.fieldnames or []]
    if "label" not in fields:
        raise ValueError(f"{option} {path}: the CSV header needs a 'label' column "
                         f"(got {fields})")
    reader.fieldnames = fields
    column = next((name for name in _PATH_COLUMNS if name in fields), None)
    rows = []
    for line, row in enumerate(reader, start=2):
        label = (row.get("label") or "").strip()
        if not label:
            raise ValueError(f"{option} {path}: line {line} has no label")
        rows.append(((row.get(column) or "").strip() if column else None, label))
    return rows


def _text_rows(text: str, path: str, option: str) -> list[tuple[str | None, str]]:
    rows: list[tuple[str | None, str]] = []
    for line, raw in enumerate(text.splitlines(), start=1):
        fields = raw.strip().rsplit(None, 1)
        if not fields:
            continue
        row = (fields[0], fields[1]) if len(fields) == 2 else (None, fields[0])
        if rows and (rows[0][0] is None) != (row[0] is None):
            raise ValueError(f"{option} {path}: line {line} has {len(fields)} field(s) but "
                             "earlier lines do not: use LABEL or PATH LABEL on every line")
        rows.append(row)
    return rows


def _resolve(names: list[str], root: Path) -> list[Path]:
    """Paths of a label file under ``root``. A leading ``/`` is taken as relative to
    ``root`` (as in Places365's lists) unless the first path exists as written."""
    if Path(names[0]).is_absolute() and Path(names[0]).is_file():
        return [Path(name) for name in names]
    return [root / name.lstrip("/") for name in names]


def _typed(labels: list[str]) -> np.ndarray:
    try:
        return np.array([int(label) for label in labels], dtype=np.int64)
    except ValueError:
        return np.array(labels, dtype=str)


def _aligned(labels: np.ndarray, n: int, option: str, what: str) -> np.ndarray:
    if len(labels) != n:
        raise ValueError(f"{option}: {len(labels)} labels for {n} {what}")
    return labels


def _reason(error: Exception) -> str:
    return getattr(error, "strerror", None) or str(error)


def positive_int(text: str) -> int:
    """argparse type: a positive integer."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value
