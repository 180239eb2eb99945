"""Search in float32 or bfloat16: the same quality? Measured on a validation split.

    python benchmarks/studies/precision.py --dataset emoji [--seeds 3] [--split val]

The reported queries are never read: ``--split val`` (the default) is the data
set's validation split (emoji: Apple queries against a Twitter + Facebook
database), ``heldout`` one database item of every class as a query. For each
seed one GenerativeIndex is built there (the data set's tuned config, as
``run.py``, with that seed) and searched at k 100, beam 100 in both precisions
and in the generative and metric orders. Printed per precision and order:
P@1, P@3, MAP@100 (class labels) and recall@10 against exact L2 search, each as
the mean [min, max] over the seeds, then the queries/s of the two precisions,
and how many result ids of the first 10 agree between them. This is what
chose the search precision of ``IndexConfig(precision="auto")``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import metrics  # noqa: E402
from benchmarks.common import prepare, prepare_arguments, validation_split  # noqa: E402
from genindex import GenerativeIndex  # noqa: E402

K, BEAM = 100, 100
DTYPES = ("float32", "bfloat16")
ORDERS = ("generative", "metric")


def scores(ids, exact, db_labels, q_labels) -> tuple[float, ...]:
    p1, p3, map_k = metrics.headline(ids, db_labels, q_labels, K)
    recall = 100 * np.mean([len(set(a[:10]) & set(b[:10])) / 10 for a, b in zip(ids, exact)])
    return p1, p3, map_k, recall


def spread(values: list[float]) -> str:
    return f"{np.mean(values):.1f} [{min(values):.1f}, {max(values):.1f}]"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    prepare_arguments(parser, "as run.py's --config (one file)")
    parser.add_argument("--split", dest="validation", choices=("heldout", "val"),
                        default="val")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    args.split = "test" if args.validation == "heldout" else "val"
    setup = prepare(args)
    db, db_labels, queries, q_labels = validation_split(setup, args.validation)
    print(f"{args.dataset} validation split ({args.validation}): {len(db)} database items, "
          f"{len(queries)} queries (the reported queries are not read); config "
          f"{setup.config_name}", flush=True)
    import faiss

    flat = faiss.IndexFlatL2(db.shape[1])
    flat.add(db)
    exact = flat.search(queries, 10)[1]
    found = {(d, o): [] for d in DTYPES for o in ORDERS}
    speed, agree = {d: [] for d in DTYPES}, {o: [] for o in ORDERS}
    for seed in range(args.seeds):
        index = GenerativeIndex.fit(db, db_labels, setup.config.replace(seed=seed),
                                    device=args.device, progress=not args.quiet)
        for order in ORDERS:
            ids = {}
            for dtype in DTYPES:
                index.search(queries[:64], K, beam_size=BEAM, order=order, dtype=dtype)
                start = time.perf_counter()
                ids[dtype] = index.search(queries, K, beam_size=BEAM, order=order,
                                          dtype=dtype).ids
                speed[dtype].append(len(queries) / (time.perf_counter() - start))
                found[dtype, order].append(scores(ids[dtype], exact, db_labels, q_labels))
            agree[order].append(100 * np.mean([len(set(a[:10]) & set(b[:10])) / 10
                                               for a, b in zip(*ids.values())]))
        print(f"seed {seed} done", flush=True)
    print(f"\nk {K}, beam {BEAM}, {args.seeds} seeds: mean [min, max]\n\n"
          "| order | precision | P@1 | P@3 | MAP@100 | recall@10 vs exact |\n"
          "|---|---|---|---|---|---|")
    for order in ORDERS:
        for dtype in DTYPES:
            values = list(zip(*found[dtype, order]))
            print(f"| {order} | {dtype} | " + " | ".join(spread(list(v)) for v in values)
                  + " |")
    print("\n| precision | queries/s (every search) |\n|---|---|")
    for dtype in DTYPES:
        print(f"| {dtype} | {spread(speed[dtype])} |")
    for order in ORDERS:
        print(f"\n{order} order: {spread(agree[order])} % of the first 10 ids the same in "
              "both precisions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
