"""The decoder's levers on the validation split, beside the baselines it must beat there.

    python benchmarks/studies/levers.py --dataset emoji \\
        --config benchmarks/configs/emoji-feature.json \\
        --levers benchmarks/configs/levers/emoji.jsonl [--seeds 1] [--fusion 0,20,80,160]

Each line of ``--levers`` is one lever: ``{"name": ..., "tokenizer": {...},
"decoder": {...}}``, fields changed from ``--config`` (``{"name": "base"}``
changes nothing). Every lever is built on the data set's validation split
(emoji: Apple queries against Twitter + Facebook; the reported queries are
never read), once per seed, and searched in the generative order (the decoder
alone) at each ``--fusion`` weight (0: no fusion; see ``genindex.fusion``) and in
the semantic order. Beside them, on the same split: the exact cosine scan and
nearest class mean over each lever's own f_cls, and the label-aware baselines on
FT features (nearest class mean, the classifier, linear scan). Printed: one
markdown row per lever and order with P@1, P@3 and MAP@100 (%, mean [min, max]
over the seeds), queries/s and the build's seconds; ``--out`` also writes them
as JSON.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import metrics  # noqa: E402
from benchmarks.common import prepare_arguments, prepare_validation, split_list  # noqa: E402
from benchmarks.labelled import NCM, Classifier  # noqa: E402
from benchmarks.methods import GenIndex, Linear  # noqa: E402
from genindex import IndexConfig  # noqa: E402

K = 100


def scores(ids: np.ndarray, db_labels, q_labels) -> tuple[float, float, float]:
    hits = metrics.relevance(ids, db_labels, q_labels)
    summary = metrics.summary(hits, metrics.relevant_counts(db_labels, q_labels), (1, 3),
                              (8,), (K,))
    return 100 * summary.precision[1], 100 * summary.precision[3], 100 * summary.map[K]


def lever_config(base: IndexConfig, lever: dict) -> IndexConfig:
    values = base.to_dict()
    for part in ("tokenizer", "decoder"):
        unknown = set(lever.get(part, {})) - set(values[part])
        if unknown:
            raise SystemExit(f"levers.py: lever {lever['name']!r}: unknown {part} fields "
                             f"{sorted(unknown)}")
        values[part].update(lever.get(part, {}))
    return IndexConfig.from_dict(values)


def measured(method, queries, labels):
    """(P@1, P@3, MAP@100, queries/s) of one method's search."""
    start = time.perf_counter()
    ids = method.search(queries, K)
    qps = len(queries) / (time.perf_counter() - start)
    return (*scores(ids, *labels), qps)


def lever_rows(base, lever, seeds, fusions, db, labels, queries) -> dict[str, list]:
    """Every row of one lever: seed -> (P@1, P@3, MAP, q/s, build s)."""
    rows: dict[str, list] = {}
    for seed in range(seeds):
        config = lever_config(base, lever).replace(seed=base.seed + seed)
        method = GenIndex(config, progress=False)
        start = time.perf_counter()
        method.fit(db, labels[0])
        build = time.perf_counter() - start
        runs = [(f"generative, fusion {w:g}", {"order": "generative", "fusion": w})
                for w in fusions] + [("semantic", {"order": "semantic"})]
        for name, arguments in runs:
            method.set_query_arguments(**arguments)
            rows.setdefault(name, []).append((*measured(method, queries, labels), build))
        f_db, f_q = method.f_cls(db), method.f_cls(queries)
        for name, inner in (("f_cls exact scan", Linear("cosine")), ("ncm on f_cls",
                                                                     NCM("cosine"))):
            inner.fit(f_db, labels[0])
            rows.setdefault(name, []).append((*measured(inner, f_q, labels), build))
        print(f"{lever['name']}, seed {seed}: built in {build:.1f} s ({method.phases()})",
              flush=True)
    return rows


def label_aware(db, labels, queries) -> dict[str, list]:
    from genindex.finetune import finetune

    start = time.perf_counter()
    model = finetune(db, labels[0], progress=False)
    build = time.perf_counter() - start
    e_db, e_q = model.embed(db), model.embed(queries)
    rows = {}
    for name, method, q in (("FT linear scan", Linear("cosine"), e_q),
                            ("ncm FT", NCM("cosine"), e_q),
                            ("classifier", Classifier(model), queries)):
        method.fit(db if name == "classifier" else e_db, labels[0])
        rows[name] = [(*measured(method, q, labels), build)]
    return rows


def spread(values) -> str:
    values = np.asarray(values)
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{values.mean():.1f} [{values.min():.1f}, {values.max():.1f}]"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    prepare_arguments(parser, "the base config (one file)")
    parser.add_argument("--levers", type=Path, required=True, help="JSON lines, one lever each")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--fusion", default="0,20,80,160", help="comma-separated weights")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    setup, db_labels, q_labels = prepare_validation(args)
    base = setup.config or IndexConfig()
    levers = [json.loads(line) for line in args.levers.read_text().splitlines() if line.strip()]
    fusions = [float(w) for w in split_list(args.fusion)]
    labels = (db_labels, q_labels)
    table = {"label-aware": label_aware(setup.db, labels, setup.queries)}
    for lever in levers:
        table[lever["name"]] = lever_rows(base, lever, args.seeds, fusions, setup.db, labels,
                                          setup.queries)
    print(f"\n{args.dataset} validation split, base config {setup.config_name}, "
          f"{args.seeds} seed(s)\n\n| lever | order | P@1 | P@3 | MAP@100 | queries/s | "
          "build s |\n|---|---|---:|---:|---:|---:|---:|")
    for lever, rows in table.items():
        for order, runs in rows.items():
            columns = list(zip(*runs))
            print(f"| {lever} | {order} | {spread(columns[0])} | {spread(columns[1])} | "
                  f"{spread(columns[2])} | {np.mean(columns[3]):.0f} | "
                  f"{np.mean(columns[4]):.0f} |")
    if args.out:
        args.out.write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
