"""DeepFashion In-shop Clothes Retrieval: 52,712 images of 7,982 clothing items.

``list_eval_partition.txt`` puts each image in ``train`` (25,882 images, 3,997
items), ``gallery`` (12,612) or ``query`` (14,218); the gallery and query items
are the same 3,985, disjoint from the training items. As in the IRGen paper
(section 4), the database is train + gallery (``database="train+gallery"``);
``database="gallery"`` gives the usual gallery-only protocol. The queries are
the query set. Labels are the item ids (``id_00000001``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import Dataset, DataUnavailable, register
from ._common import candidates, check_files, find_root, pick, unavailable

SOURCE = ("DeepFashion's In-shop Clothes Retrieval Benchmark, "
          "https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html "
          "(Eval/list_eval_partition.txt and Img/img.zip)")
LAYOUT = """In-shop Clothes Retrieval Benchmark/
  Eval/list_eval_partition.txt   (or at the top) a count line, a header line, then
                                 <image_name> <item_id> <train|query|gallery>
  img/...  or  Img/img/...       the images, at the paths <image_name> (img/WOMEN/...)"""
PARTITION = ("list_eval_partition.txt", "Eval/list_eval_partition.txt")
DATABASES = {"train+gallery": ("train", "gallery"), "gallery": ("gallery",)}


@register("inshop")
def load_inshop(data_root: str | None = None, database: str = "train+gallery") -> Dataset:
    if database not in DATABASES:
        raise ValueError(f"database must be one of {sorted(DATABASES)}, got {database!r}")
    looked = candidates(data_root, ["In-shop Clothes Retrieval Benchmark", "inshop",
                                    "In-shop", "InShop", "deepfashion_inshop"])
    root = find_root(looked, lambda p: _partition(p) is not None)
    if root is None:
        raise unavailable("inshop", looked, SOURCE, LAYOUT)
    rows = _read_partition(_partition(root))
    base = next((b for b in (root, root / "Img") if (b / rows[0][0]).is_file()), None)
    if base is None:
        raise unavailable("inshop", [root / rows[0][0], root / "Img" / rows[0][0]], SOURCE,
                          LAYOUT)
    paths = [base / name for name, _, _ in rows]
    check_files(paths, "inshop")
    labels = np.array([item for _, item, _ in rows])
    status = np.array([split for _, _, split in rows])
    db = np.isin(status, DATABASES[database])
    query = status == "query"
    counts = {split: int((status == split).sum()) for split in ("train", "gallery", "query")}
    return Dataset("inshop", pick(paths, db), labels[db], pick(paths, query), labels[query],
                   {"root": str(root), "database": database, "queries": "query",
                    "split_sizes": counts})


def _partition(root: Path) -> Path | None:
    return next((root / f for f in PARTITION if (root / f).is_file()), None)


def _read_partition(path: Path) -> list[tuple[str, str, str]]:
    """(image_name, item_id, evaluation_status) rows; the count line is checked."""
    with open(path, encoding="utf-8") as lines:
        head = [next(lines, "").strip(), next(lines, "").split()]
        rows = [tuple(line.split()) for line in lines if line.strip()]
    if not head[0].isdigit() or head[1] != ["image_name", "item_id", "evaluation_status"]:
        raise DataUnavailable(f"{path}: expected a count line and the header "
                              "'image_name item_id evaluation_status'")
    bad = next((r for r in rows if len(r) != 3 or r[2] not in ("train", "query", "gallery")),
               None)
    if bad is not None:
        raise DataUnavailable(f"{path}: bad row {' '.join(bad)!r}: expected "
                              "<image_name> <item_id> <train|query|gallery>")
    if int(head[0]) != len(rows) or not rows:
        raise DataUnavailable(f"{path} announces {head[0]} images but lists {len(rows)}")
    return rows
