"""Places365-Standard: about 1.8 million training images of 365 scene categories
are the database; as for ImageNet in the IRGen paper (section 4: "the same
settings"), 5,000 of the 36,500 validation images, drawn with a fixed seed, are
the queries.

With the official file lists, labels are the category indices (0..364) of
``places365_train_standard.txt`` / ``places365_val.txt``; with the easy-format
class folders they are the class folder paths (``airfield``, ``a/airfield``).
Only file names are read; no image is opened at load time. Images are paths as
``str`` (1.8 million ``Path`` objects would take seconds and gigabytes more).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import Dataset, DataUnavailable, register
from ._common import (
    candidates,
    check_files,
    class_folders,
    find_root,
    sample,
    unavailable,
    warn_unmatched,
)

SOURCE = ("Places365-Standard from http://places2.csail.mit.edu/download.html (the file lists "
          "filelist_places365-standard.tar with train_256_places365standard.tar and "
          "val_256.tar, or the easy format places365standard_easyformat.tar)")
LAYOUT = """either the official file lists (also torchvision's Places365 root):
  places365_train_standard.txt   /a/abbey/00000000.jpg 0
  places365_val.txt              Places365_val_00000001.jpg 165
  data_256/a/abbey/00000000.jpg  (or data_256_standard/, data_large/, data_large_standard/)
  val_256/Places365_val_00000001.jpg   (or val_large/)
or the easy format (places365_standard/):
  train/<class>/*.jpg   val/<class>/*.jpg"""
TRAIN_LIST, VAL_LIST = "places365_train_standard.txt", "places365_val.txt"
TRAIN_DIRS = ("data_256", "data_256_standard", "data_large", "data_large_standard")
VAL_DIRS = ("val_256", "val_large")


@register("places365")
def load_places365(data_root: str | None = None, num_queries: int | None = 5000,
                   seed: int = 0) -> Dataset:
    looked = candidates(data_root, ["places365_standard", "places365", "Places365",
                                    "places365/places365_standard"])
    root = find_root(looked, lambda p: _lists(p) is not None or _folders(p))
    if root is None:
        raise unavailable("places365", looked, SOURCE, LAYOUT)
    lists = _lists(root)
    if lists is not None:
        db_paths, db_labels = _read_list(root / TRAIN_LIST, lists[0])
        val_paths, val_labels = _read_list(root / VAL_LIST, lists[1])
        check_files([db_paths[0], db_paths[-1]], "places365")
        layout = "file lists"
    else:
        db_paths, db_labels = class_folders(root / "train", "places365 train")
        val_paths, val_labels = class_folders(root / "val", "places365 val")
        layout = "class folders"
    chosen = sample(len(val_paths), num_queries, seed)
    query_paths, query_labels = [val_paths[i] for i in chosen], val_labels[chosen]
    check_files(query_paths, "places365")
    return Dataset("places365", db_paths, db_labels, query_paths, query_labels,
                   {"root": str(root), "layout": layout, "database": "train",
                    "queries": f"{len(chosen)} of {len(val_paths)} val images, seed {seed}",
                    "unmatched_queries": warn_unmatched("places365", db_labels,
                                                        query_labels)})


def _lists(root: Path) -> tuple[Path, Path] | None:
    """The train and val image folders when the official file lists are there."""
    if not ((root / TRAIN_LIST).is_file() and (root / VAL_LIST).is_file()):
        return None
    train = next((root / d for d in TRAIN_DIRS if (root / d).is_dir()), None)
    val = next((root / d for d in VAL_DIRS if (root / d).is_dir()), None)
    return None if train is None or val is None else (train, val)


def _folders(root: Path) -> bool:
    return (root / "train").is_dir() and (root / "val").is_dir()


def _read_list(path: Path, images: Path) -> tuple[list[str], np.ndarray]:
    """``<relative path> <category index>`` lines: (paths under ``images``, indices)."""
    prefix = str(images)
    paths: list[str] = []
    labels: list[int] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        name, _, index = line.rstrip().rpartition(" ")
        if not (name and index.isdigit()):
            if not line.strip():
                continue
            raise DataUnavailable(f"{path}:{number}: expected <image path> <category "
                                  f"index>, got {line.strip()[:200]!r}")
        paths.append(f"{prefix}/{name.lstrip('/')}")
        labels.append(int(index))
    if not paths:
        raise DataUnavailable(f"{path} lists no image")
    return paths, np.array(labels)
