"""Training on augmented views of the database images, measured on a validation split.

    python benchmarks/studies/augment.py --dataset emoji [--views 2] [--config FILE]

Issue 16's lever "training pairs drawn by query augmentation". On the data
set's validation split (emoji: Apple queries against Twitter + Facebook; the
reported queries are never read), ``--views`` augmented copies of every
database image (random resized crop of 60-100 % of the area, rotation up to
15 degrees, colour jitter; seeded) are embedded with the same backbone. Both
label-aware methods then train on the originals plus the views, with the
views' labels, and are compared with the same methods trained on the
originals alone:

* the FT baseline (linear head), its features searched by linear scan over
  the original database;
* genindex: the index is fit on originals + views (the tokenizer's head and
  codebooks, the decoder's training pairs: a view reads and writes like any
  item), then the views are removed, so searches return original items only.

The views' features are kept in ``--cache`` (one .npy per image set and seed).
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import metrics  # noqa: E402
from benchmarks.common import prepare_validation, study_parser  # noqa: E402
from benchmarks.run import FT_PRESETS  # noqa: E402
from genindex import GenerativeIndex  # noqa: E402
from genindex.finetune import FineTuneConfig, finetune  # noqa: E402
from genindex.inputs import extract_features, image_refs, to_rgb  # noqa: E402

K = 100  # results per query: MAP@100, as the tables
CHUNK = 512  # images augmented and embedded at a time (bounds the PIL images held)


def augmentation():
    from torchvision import transforms

    return transforms.Compose([
        transforms.RandomResizedCrop(224, scale=(0.6, 1.0), ratio=(0.8, 1.25)),
        transforms.RandomRotation(15, fill=(255, 255, 255)),
        transforms.ColorJitter(0.4, 0.4, 0.4, 0.05)])


def view_features(backbone, images, views: int, cache: Path, progress: bool) -> np.ndarray:
    """(views * n, d) features of ``views`` augmented copies of each image, view-major."""
    refs = image_refs(images)
    key = hashlib.sha256("\n".join([backbone.cache_key(), str(views)]
                                   + [r.key for r in refs]).encode()).hexdigest()[:20]
    path = cache / f"views-{key}.npy"
    if path.exists():
        return np.load(path)
    augment, out = augmentation(), []
    torch.manual_seed(0)  # torchvision's transforms draw from the global RNG
    for _ in range(views):
        for start in range(0, len(refs), CHUNK):
            batch = [augment(to_rgb(ref.load())) for ref in refs[start:start + CHUNK]]
            out.append(extract_features(backbone, batch, cache=None,
                                        device=torch.device("cpu"), progress=progress))
    out = np.concatenate(out)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


def report(name: str, ids: np.ndarray, db_labels, q_labels, seconds: float) -> None:
    print(metrics.headline_row(name, ids, db_labels, q_labels, seconds), flush=True)


def ft_linear_scan(train_x, train_y, db, queries, dataset: str, progress: bool) -> np.ndarray:
    import faiss

    model = finetune(train_x, train_y, config=FineTuneConfig(**FT_PRESETS.get(dataset, {})),
                     progress=progress)
    flat = faiss.IndexFlatL2(model.model.head[1].out_features)
    flat.add(model.embed(db))
    return flat.search(model.embed(queries), K)[1]


def genindex_ids(train_x, train_y, n_db: int, queries, config, progress: bool
                 ) -> dict[str, np.ndarray]:
    index = GenerativeIndex.fit(train_x, train_y, config, progress=progress)
    if len(train_x) > n_db:
        index.remove_ids(np.arange(n_db, len(train_x)))
    return {order: index.search(queries, K, order=order).ids
            for order in ("generative", "semantic")}


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(__doc__, "views")
    parser.add_argument("--views", type=int, default=2)
    args = parser.parse_args(argv)
    setup, db_labels, q_labels = prepare_validation(args)
    data, progress, db, queries = setup.data, not args.quiet, setup.db, setup.queries
    started = time.perf_counter()
    views = view_features(setup.backbone, data.db_images, args.views, args.cache, progress)
    print(f"{args.dataset} val: {len(db)} items, {len(queries)} queries, {len(views)} views "
          f"in {time.perf_counter() - started:.0f} s; config {setup.config_name}\n\n"
          "| method, training set | P@1 | P@3 | MAP@100 | build s |\n|---|---|---|---|---|",
          flush=True)
    sets = {"originals": (db, db_labels),
            f"originals + {args.views} views": (np.concatenate([db, views]),
                                                np.tile(db_labels, args.views + 1))}
    for name, (x, y) in sets.items():
        started = time.perf_counter()
        ids = ft_linear_scan(x, y, db, queries, args.dataset, progress)
        report(f"FT linear scan, {name}", ids, db_labels, q_labels,
               time.perf_counter() - started)
    for seed in range(args.seeds):
        config = setup.config.replace(seed=setup.config.seed + seed)
        for name, (x, y) in sets.items():
            started = time.perf_counter()
            found = genindex_ids(x, y, len(db), queries, config, progress)
            seconds = time.perf_counter() - started
            for order, ids in found.items():
                report(f"genindex (seed {seed}), {name}, {order} order", ids, db_labels,
                       q_labels, seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
