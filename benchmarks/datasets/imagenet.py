"""ImageNet (ILSVRC2012): the 1,281,167 training images are the database and
5,000 validation images, drawn at random with a fixed seed, the queries (IRGen
paper, section 4). Labels are WordNet ids (``n01440764``).

Only file names are listed; no image is opened at load time. Images are paths
as ``str`` (1.3 million ``Path`` objects would take seconds and gigabytes more).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from . import Dataset, DataUnavailable, register
from ._common import (
    base_folder,
    candidates,
    check_files,
    class_folders,
    find_root,
    has_class_folders,
    sample,
    unavailable,
    warn_unmatched,
)

SOURCE = ("ILSVRC2012 (ImageNet-1k) from https://image-net.org/download.php (training and "
          "validation images), or Kaggle's 'imagenet-object-localization-challenge', whose "
          "ILSVRC/Data/CLS-LOC folder and LOC_val_solution.csv fit here")
LAYOUT = """imagenet/
  train/<wnid>/*.JPEG            1,000 class folders (database)
  val/<wnid>/*.JPEG              the validation images sorted into class folders, or
  val/*.JPEG + LOC_val_solution.csv   flat, labelled by the csv (ImageId,PredictionString;
                                 its first word is the wnid), found beside train/ or up to
                                 three folders above (Kaggle: <root>/ILSVRC/Data/CLS-LOC)"""
SOLUTION = "LOC_val_solution.csv"


@register("imagenet")
def load_imagenet(data_root: str | None = None, num_queries: int | None = 5000,
                  seed: int = 0) -> Dataset:
    looked = candidates(data_root, ["imagenet", "ILSVRC2012", "ILSVRC/Data/CLS-LOC",
                                    "imagenet/ILSVRC/Data/CLS-LOC"])
    root = find_root(looked, lambda p: (p / "train").is_dir() and (p / "val").is_dir())
    if root is None:
        raise unavailable("imagenet", looked, SOURCE, LAYOUT)
    if has_class_folders(root / "val"):
        val_paths, val_labels = class_folders(root / "val", "imagenet val")
        val_layout = "class folders"
    else:
        val_paths, val_labels = _flat_val(root, base_folder(data_root))
        val_layout = SOLUTION
    chosen = sample(len(val_paths), num_queries, seed)
    query_paths = [val_paths[i] for i in chosen]
    check_files(query_paths, "imagenet")
    db_paths, db_labels = class_folders(root / "train", "imagenet train")
    query_labels = val_labels[chosen]
    return Dataset("imagenet", db_paths, db_labels, query_paths, query_labels,
                   {"root": str(root), "database": "train", "val_layout": val_layout,
                    "queries": f"{len(chosen)} of {len(val_paths)} val images, seed {seed}",
                    "unmatched_queries": warn_unmatched("imagenet", db_labels, query_labels)})


def _flat_val(root: Path, base: Path) -> tuple[list[str], np.ndarray]:
    """Validation images in one folder, labelled by LOC_val_solution.csv."""
    places = dict.fromkeys([root, base, *root.parents[:3]])
    solution = next((p / SOLUTION for p in places if (p / SOLUTION).is_file()), None)
    if solution is None:
        raise DataUnavailable(f"{root / 'val'} has no class folders and {SOLUTION} is in none "
                              f"of {', '.join(str(p) for p in places)}: it labels the "
                              "validation images.\nExpected layout:\n" + LAYOUT)
    with open(solution, newline="", encoding="utf-8") as file:
        reader = csv.reader(file)
        header = next(reader, [])
        if header[:2] != ["ImageId", "PredictionString"]:
            raise DataUnavailable(f"{solution}: expected the header ImageId,PredictionString")
        rows = []
        for number, row in enumerate(reader, 2):
            if len(row) < 2 or not row[1].split():
                raise DataUnavailable(f"{solution}:{number}: expected <ImageId>,<wnid ...>")
            rows.append((row[0], row[1].split()[0]))
    rows.sort()
    if not rows:
        raise DataUnavailable(f"{solution} labels no image")
    val = str(root / "val")
    return ([os.path.join(val, f"{image}.JPEG") for image, _ in rows],
            np.array([wnid for _, wnid in rows]))
