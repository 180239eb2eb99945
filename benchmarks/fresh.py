"""Fresh data: add alone, add + refresh, and a full retrain, on one held-out split.

    python benchmarks/fresh.py --dataset emoji [--limit 50] [--steps N] [--quiet]

Half of every class's database items (alternately rounded down and up, so
half of the whole database) are held out of training. The index is fitted on
the rest, then the held-out half is added with ``add`` (no retraining); then
``refresh`` fine-tunes the decoder on the added items (with their labels;
``--unlabelled`` adds a row without labels); last, an index is fitted on the
whole database. The paper's Table 6 shows the precision of plain ``add``
collapsing as K grows. Features come from a frozen backbone (default
EfficientNet-Lite0) through genindex's feature cache, as in
``benchmarks/run.py``. Besides the usual metrics, ``old@10`` and ``new@10``
are the shares of a query's relevant trained-on (old) and added (new) items
found in its top 10. With ``--new-classes`` (a share of the classes held out
whole), ``unseen P@1`` is the precision@1 of the queries of those classes and
``own ids`` the share of their items whose identifier no trained-on item has
(with class identifiers: the items that did not join a known class's leaf).
Results go to ``--out`` (default ``results/fresh-<dataset>/``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import metrics  # noqa: E402
from benchmarks.common import prepare  # noqa: E402
from benchmarks.rows import FreshRow, Metrics  # noqa: E402
from genindex import GenerativeIndex, IndexConfig  # noqa: E402

KS = (1, 3, 10)
MAP_K = 100


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="emoji", help="a name from benchmarks/datasets")
    parser.add_argument("--data-root", help="where the data set lives or is fetched to")
    parser.add_argument("--split", choices=("test", "val"), default="test",
                        help="as run.py: the reported queries or the validation split")
    parser.add_argument("--limit", type=int, help="keep only the first N classes")
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--config", help="IndexConfig as JSON; default: as run.py, "
                        "benchmarks/configs/<dataset>.json where it exists, else 'default'")
    parser.add_argument("--steps", type=int, help="refresh steps (default: refresh's default)")
    parser.add_argument("--replay", type=float, default=1.0, help="old items per new item")
    parser.add_argument("--unlabelled", action="store_true", help="also refresh without labels")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    parser.add_argument("--new-classes", type=float, default=0.0,
                        help="share of the classes held out whole (never trained on)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def split(labels: np.ndarray, seed: int, new_classes: float = 0.0
          ) -> tuple[np.ndarray, np.ndarray]:
    """Rows kept for training and rows held out: every item of a ``new_classes`` share
    of the classes (drawn with ``seed``: classes training never sees), and half of
    each other class, rounded down for every other class and up for the rest."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    unseen = set(rng.permutation(classes)[:int(round(new_classes * len(classes)))].tolist())
    old, new = [], []
    for c, cls in enumerate(classes):
        rows = rng.permutation(np.flatnonzero(labels == cls))
        held = len(rows) // 2 if c % 2 == 0 else (len(rows) + 1) // 2
        # every seen class keeps a trained-on item
        held = len(rows) if cls in unseen else min(held, len(rows) - 1)
        new.append(rows[:held])
        old.append(rows[held:])
    return np.sort(np.concatenate(old)), np.sort(np.concatenate(new))


def evaluate(index: GenerativeIndex, queries: np.ndarray, row_of_id: np.ndarray,
             db_labels: np.ndarray, query_labels: np.ndarray, is_new: np.ndarray,
             unseen_query: np.ndarray) -> tuple[Metrics, tuple[float, float], float,
                                                float | None]:
    """Metrics of ``index`` (ids mapped to database rows), the shares of relevant old and
    new items in the top 10, the search time, and the precision@1 of the queries
    ``unseen_query`` marks (None: none marked)."""
    start = time.perf_counter()
    ids = index.search(queries, MAP_K, order="generative").ids
    search_s = time.perf_counter() - start
    rows = np.where(ids >= 0, row_of_id[np.maximum(ids, 0)], -1)
    hits = metrics.relevance(rows, db_labels, query_labels)
    quality = metrics.summary(hits, metrics.relevant_counts(db_labels, query_labels), KS,
                              map_ks=(MAP_K,))
    found_new = hits[:, :10] & is_new[np.maximum(rows[:, :10], 0)]
    shares = []
    for found, counts in ((hits[:, :10] & ~found_new, _counts(db_labels[~is_new], query_labels)),
                          (found_new, _counts(db_labels[is_new], query_labels))):
        has = counts > 0
        shares.append(float((found.sum(1)[has] / counts[has]).mean()) if has.any() else 0.0)
    unseen_p1 = float(hits[unseen_query, 0].mean()) if unseen_query.any() else None
    return quality, (shares[0], shares[1]), search_s, unseen_p1


def own_ids(index: GenerativeIndex, trained: np.ndarray, items: np.ndarray) -> float | None:
    """The share of the items with ids ``items`` whose identifier in the index is that
    of none of the ``trained`` ids (with class identifiers: the items in a leaf of
    their own); None while they are not in the index."""
    if not np.isin(items, index.ids).all():
        return None
    known = {code.tobytes() for code in index.identifiers(trained)}
    return float(np.mean([code.tobytes() not in known for code in index.identifiers(items)]))


def _counts(labels: np.ndarray, query_labels: np.ndarray) -> np.ndarray:
    return metrics.relevant_counts(labels, query_labels) if len(labels) else np.zeros(
        len(query_labels), int)


def table(rows: list[FreshRow]) -> str:
    columns = ([f"P@{k}" for k in KS] + [f"R@{k}" for k in KS]
               + [f"MAP@{MAP_K}", "old@10", "new@10", "unseen P@1", "own ids"])
    lines = ["| index | " + " | ".join(columns) + " | train s |",
             "|---" * (len(columns) + 2) + "|"]
    for row in rows:
        quality = row.metrics
        values = ([quality.precision[k] for k in KS] + [quality.recall[k] for k in KS]
                  + [quality.map[MAP_K], row.old_at_10, row.new_at_10, row.unseen_p1,
                     row.own_ids])
        cells = " | ".join("–" if value is None else f"{100 * value:.1f}" for value in values)
        lines.append(f"| {row.name} | {cells} | {row.train_s:.1f} |")
    return "\n".join(lines)


def fresh_rows(db: np.ndarray, queries: np.ndarray, labels: np.ndarray,
               query_labels: np.ndarray, config: IndexConfig, *, device: str = "cpu",
               progress: bool = True, steps: int | None = None, replay: float = 1.0,
               unlabelled: bool = False, seed: int = 0,
               new_classes: float = 0.0) -> list[FreshRow]:
    """Table 6: train on half of each class (and none of a ``new_classes`` share of
    them), then add / refresh / retrain; a row each."""
    old, new = split(labels, seed, new_classes)
    row_of_id = np.concatenate([old, new])  # ids: trained-on rows first, then added ones
    is_new = np.isin(np.arange(len(db)), new)
    unseen = np.setdiff1d(np.unique(labels), labels[old])
    unseen_query = np.isin(query_labels, unseen)
    unseen_ids = np.flatnonzero(np.isin(labels[row_of_id], unseen))  # ids once added
    print(f"fresh data: {len(old)} items trained on, {len(new)} added ({len(unseen)} "
          f"classes never trained on, {int(unseen_query.sum())} of their queries)", flush=True)
    rows = []

    def record(name: str, index: GenerativeIndex, train_s: float,
               retrained: bool = False) -> None:
        """A row; ``own ids`` where the index was trained on the old part only."""
        quality, (old_share, new_share), search_s, unseen_p1 = evaluate(
            index, queries, row_of_id, labels, query_labels, is_new, unseen_query)
        own = (own_ids(index, np.arange(len(old)), unseen_ids)
               if len(unseen) and not retrained else None)
        rows.append(FreshRow(name, quality, old_share, new_share, train_s, search_s,
                             unseen_p1, own))
        print(f"{name}: trained in {train_s:.1f} s, searched in {search_s:.1f} s", flush=True)

    start = time.perf_counter()
    added = GenerativeIndex.fit(db[old], labels[old], config, device=device, progress=progress)
    fit_s = time.perf_counter() - start
    record("trained on the old half only", added, fit_s)
    added.add(db[new])
    record("+ add", added, fit_s)
    refreshes = [("+ add + refresh", labels[row_of_id])]
    if unlabelled:
        refreshes.append(("+ add + refresh without labels", None))
    for name, refresh_labels in refreshes:
        index = copy.copy(added)  # a snapshot: refreshing the copy leaves `added` alone
        start = time.perf_counter()
        history = index.refresh(refresh_labels, steps=steps, replay=replay, progress=progress)
        record(f"{name} ({history.steps} steps)", index, time.perf_counter() - start)
    start = time.perf_counter()
    full = GenerativeIndex.fit(db[row_of_id], labels[row_of_id], config, device=device,
                               progress=progress)
    record("full retrain on both halves", full, time.perf_counter() - start, retrained=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup = prepare(args)
    config, db, queries = setup.config or IndexConfig(), setup.db, setup.queries
    rows = fresh_rows(db, queries, np.asarray(setup.data.db_labels),
                      np.asarray(setup.data.query_labels), config, device=args.device,
                      progress=not args.quiet, steps=args.steps, replay=args.replay,
                      unlabelled=args.unlabelled, seed=args.seed,
                      new_classes=args.new_classes)
    markdown = table(rows)
    print(markdown)
    out = args.out or Path("results") / f"fresh-{args.dataset}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "tables.md").write_text(markdown + "\n")
    (out / "results.json").write_text(json.dumps(
        {"dataset": args.dataset, "limit": args.limit, "database": len(db),
         "queries": len(queries), "date": time.strftime("%Y-%m-%d"),
         "new_classes": args.new_classes, "split": getattr(args, "split", "test"),
         "config": config.to_dict(), "rows": [dataclasses.asdict(row) for row in rows]},
        indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
