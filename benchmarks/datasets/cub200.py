"""CUB-200-2011 birds: 11,788 images of 200 species, in the official split.

The database is the official training half (5,994 images), the queries the test
half (5,794), as listed in ``train_test_split.txt``. Labels are the class ids
(1..200) of ``image_class_labels.txt``.
"""

from __future__ import annotations

import numpy as np

from . import Dataset, DataUnavailable, register
from ._common import candidates, check_files, find_root, pick, read_rows, unavailable

SOURCE = ("the Caltech-UCSD Birds-200-2011 page, https://www.vision.caltech.edu/datasets/"
          "cub_200_2011/ (archive CUB_200_2011.tgz)")
LAYOUT = """CUB_200_2011/
  images.txt               <image_id> <class_folder>/<file>.jpg
  image_class_labels.txt   <image_id> <class_id>
  train_test_split.txt     <image_id> <1 = train (database) | 0 = test (queries)>
  images/<class_folder>/<file>.jpg"""
FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt")


@register("cub200")
def load_cub200(data_root: str | None = None) -> Dataset:
    looked = candidates(data_root, ["CUB_200_2011", "CUB_200_2011/CUB_200_2011", "cub200"])
    root = find_root(looked, lambda p: all((p / f).is_file() for f in FILES))
    if root is None:
        raise unavailable("cub200", looked, SOURCE, LAYOUT)
    names = dict(read_rows(root / "images.txt", 2))
    classes = dict(read_rows(root / "image_class_labels.txt", 2))
    is_train = dict(read_rows(root / "train_test_split.txt", 2))
    if not names.keys() == classes.keys() == is_train.keys():
        raise DataUnavailable(f"{root}: images.txt, image_class_labels.txt and "
                              "train_test_split.txt list different image ids")
    if set(is_train.values()) - {"0", "1"}:
        raise DataUnavailable(f"{root / 'train_test_split.txt'}: the flag must be 0 or 1")
    if not all(i.isdigit() and classes[i].isdigit() for i in names):
        raise DataUnavailable(f"{root}: image and class ids must be integers")
    ids = sorted(names, key=int)
    paths = [root / "images" / names[i] for i in ids]
    check_files(paths, "cub200")
    labels = np.array([int(classes[i]) for i in ids])
    train = np.array([is_train[i] == "1" for i in ids])
    return Dataset("cub200", pick(paths, train), labels[train], pick(paths, ~train),
                   labels[~train], {"root": str(root), "database": "train",
                                    "queries": "test"})
