"""Fashion-MNIST: 70,000 grey 28 x 28 images of 10 kinds of clothing, offline.

The database is the training set (60,000 images), the queries the test set
(10,000). The validation split (``split="val"``) never reads the test set: its
queries are 10,000 training images (drawn with seed 0), its database the other
50,000. Labels are the class indices 0..9 (names in ``notes["classes"]``).
Images come back as a uint8 ``(n, 28, 28, 3)`` array, the grey channel
repeated: genindex takes a 4-D array as a batch of ``H x W x C`` images.

The four idx files (gzipped or not) are read from ``data_root`` (or a
``fashion-mnist`` / ``fashion_mnist`` / ``FashionMNIST/raw`` folder in it) when
given, else from where Debian's ``dataset-fashion-mnist`` package installs them.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from . import Dataset, DataUnavailable, register
from ._common import candidates, find_root, unavailable

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
FOLDERS = ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw")
SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
VAL_QUERIES = 10_000
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot")
SOURCE = ("Debian's package dataset-fashion-mnist (apt-get install dataset-fashion-mnist "
          f"installs it in {DEBIAN}) or https://github.com/zalandoresearch/fashion-mnist")
LAYOUT = "a folder (fashion-mnist/) holding\n" + "\n".join(
    f"  {name}[.gz]" for pair in SPLITS.values() for name in pair)


@register("fashion-mnist")
def load_fashion_mnist(data_root: str | None = None, split: str = "test") -> Dataset:
    if data_root is None:
        looked = [DEBIAN, *candidates(None, FOLDERS)]
    else:
        looked = [*candidates(data_root, FOLDERS), DEBIAN]
    root = find_root(looked, lambda p: all(_file(p, n) for pair in SPLITS.values()
                                           for n in pair))
    if root is None:
        raise unavailable("fashion-mnist", looked, SOURCE, LAYOUT)
    db, db_labels = _split(root, *SPLITS["train"])
    if split == "test":
        query, query_labels = _split(root, *SPLITS["test"])
        notes = {"database": "train", "queries": "test"}
    else:
        held = np.zeros(len(db), bool)
        held[np.random.default_rng(0).permutation(len(db))[:VAL_QUERIES]] = True
        db, db_labels, query, query_labels = db[~held], db_labels[~held], db[held], \
            db_labels[held]
        notes = {"database": f"train less {VAL_QUERIES}", "queries": f"{VAL_QUERIES} "
                 "of train (seed 0), the test set unread"}
    return Dataset("fashion-mnist", _rgb(db), db_labels, _rgb(query), query_labels,
                   {"root": str(root), "split": split, **notes, "classes": list(CLASSES)})


def _file(root: Path, name: str) -> Path | None:
    return next((root / f for f in (name, f"{name}.gz") if (root / f).is_file()), None)


def _split(root: Path, images_name: str, labels_name: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(_file(root, images_name)), read_idx(_file(root, labels_name))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataUnavailable(f"{root}: {images_name} holds shape {images.shape} but "
                              f"{labels_name} shape {labels.shape}; expected (n, H, W) and (n,)")
    if len(labels) and labels.max() >= len(CLASSES):
        raise DataUnavailable(f"{root / labels_name}: labels must be 0..{len(CLASSES) - 1}")
    return images, labels.astype(np.int64)


def read_idx(path: Path) -> np.ndarray:
    """An idx file of unsigned bytes (gzipped or not) as a uint8 array of its shape."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise DataUnavailable(f"{path} is a broken gzip file: {error}") from None
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise DataUnavailable(f"{path} is not an idx file of unsigned bytes (magic 0x0000080N)")
    ndim = raw[3]
    offset = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != offset + int(np.prod(shape)):
        raise DataUnavailable(f"{path}: the header announces shape {shape}, "
                              f"{int(np.prod(shape))} bytes, but {len(raw) - offset} follow")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def _rgb(grey: np.ndarray) -> np.ndarray:
    """(n, H, W) grey -> (n, H, W, 3), a new array."""
    return np.repeat(grey[..., None], 3, axis=-1)
