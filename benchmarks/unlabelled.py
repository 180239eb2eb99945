"""The unlabelled path: an index trained without labels beside Faiss, as ANN search.

    python benchmarks/unlabelled.py --dataset emoji [--split val] [--config FILE]
        [--beam-sizes 10,30,100] [--k-factors 1,3,10] [--seeds 3] [--out DIR]
    python benchmarks/unlabelled.py --dataset emoji|fashion-mnist|synthetic --defaults
        [--items 25000 --dim 64 --classes 400]

The config is ``--config``'s file, else ``benchmarks/configs/unlabelled/<dataset>.json``
where there is one (emoji: M 1, L 256 and a one-block decoder, chosen on emoji's
validation split; docs/performance.md), else the library's defaults.
``--defaults``: what a drop-in user gets, ``GenerativeIndex(d)``, ``train(x)``
without labels, ``add(x)``, ``search(q, 10)`` with no config and no search
argument (other seeds: the same preset, ``IndexConfig.unlabelled(n, seed=...)``,
and its search defaults).
``--dataset synthetic``: clustered vectors made by ``scale.make_data``
(``--items`` database vectors in ``--dim`` dimensions around ``--classes``
centres, one query per class; seed 0 for the test split, 1 for val).

What ``index.train(x)`` in existing ANN code does: ``GenerativeIndex.fit(db)``
with no labels (partners are each item's nearest neighbours). One index per
seed is built on the database features of the chosen split and searched in the
metric order (the generative top ``10 * k_factor`` items of each beam size,
ranked by exact squared L2). Beside it, on the same vectors: Faiss IVF-Flat
(about sqrt(n) lists, swept over nprobe) and HNSW (M 32, swept over efSearch).
Printed per setting: recall@10 against exact L2 search (the number an ANN
index is judged by), class precision@1 (labels used only here, to score),
the mean number of candidates ranked, and queries/s (all queries in one call,
torch and Faiss on the same threads). Genindex rows are the mean over seeds
with [min, max].
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import metrics, provenance, report  # noqa: E402
from benchmarks.common import (  # noqa: E402
    prepare,
    prepare_arguments,
    throughput,
    validation_split,
)
from benchmarks.rows import Table, TableSet  # noqa: E402
from genindex import GenerativeIndex, IndexConfig  # noqa: E402

K = 10  # recall@10 against exact search
# Each data set's config for this path, chosen on its validation split (docs/performance.md)
CONFIGS = Path(__file__).resolve().parent / "configs" / "unlabelled"
NPROBES = (1, 2, 4, 8, 16)
EF_SEARCHES = (10, 16, 32, 64)


def quality(ids: np.ndarray, exact: np.ndarray, db_labels, q_labels) -> tuple[float, float]:
    """(recall@10 against ``exact``, class precision@1) of result ids (n, >= 10)."""
    recall = np.mean([len(set(a[:K]) & set(b[:K])) / K for a, b in zip(ids, exact)])
    hits = metrics.relevance(ids[:, :1], db_labels, q_labels)
    return float(recall), float(hits[:, 0].mean())


def faiss_rows(db: np.ndarray, queries: np.ndarray, exact, db_labels, q_labels) -> list:
    import faiss

    rows = []
    nlist = max(1, round(math.sqrt(len(db))))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(db.shape[1]), db.shape[1], nlist)
    ivf.cp.seed = 0
    start = time.perf_counter()
    ivf.train(db)
    ivf.add(db)
    built = time.perf_counter() - start
    for nprobe in NPROBES:
        ivf.nprobe = nprobe
        ids, qps = throughput(lambda q: ivf.search(q, K)[1], queries)
        rows.append((f"Faiss IVF-Flat ({nlist} lists), nprobe {nprobe}", built,
                     *quality(ids, exact, db_labels, q_labels), len(db) * nprobe / nlist, qps))
    hnsw = faiss.IndexHNSWFlat(db.shape[1], 32)
    start = time.perf_counter()
    hnsw.add(db)
    built = time.perf_counter() - start
    for ef in EF_SEARCHES:
        hnsw.hnsw.efSearch = ef
        ids, qps = throughput(lambda q: hnsw.search(q, K)[1], queries)
        rows.append((f"Faiss HNSW (M 32), efSearch {ef}", built,
                     *quality(ids, exact, db_labels, q_labels), float("nan"), qps))
    return rows


def genindex_rows(db, queries, exact, db_labels, q_labels, args, config) -> list:
    """One row per (beam size, k_factor): the mean over seeds, with [min, max]."""
    settings = [(int(b), float(f)) for b in args.beam_sizes.split(",")
                for f in args.k_factors.split(",")]
    measured: dict[tuple[int, float], list[tuple[float, float, float, float]]] = {}
    builds = []
    for seed in range(args.seeds):
        start = time.perf_counter()
        index = GenerativeIndex.fit(db, None, config.replace(seed=config.seed + seed),
                                    device=args.device, progress=not args.quiet)
        builds.append(time.perf_counter() - start)
        history = index.history
        print(f"seed {seed}: built in {builds[-1]:.1f} s (tokenizer {history.tokenizer_s:.1f}"
              f" s, decoder {history.decoder_s:.1f} s)", flush=True)
        for beam, factor in settings:
            ids, qps = throughput(lambda q, i=index, b=beam, f=factor: i.search(
                q, K, beam_size=b, order="metric", k_factor=f).ids, queries)
            measured.setdefault((beam, factor), []).append(
                (*quality(ids, exact, db_labels, q_labels), qps))
    rows = []
    for (beam, factor), values in measured.items():
        recall, p1, qps = (np.array(column) for column in zip(*values))
        rows.append((f"genindex, beam {beam}, k_factor {factor:g}", float(np.mean(builds)),
                     _spread(recall), _spread(p1), K * factor, float(qps.mean())))
    return rows


def default_rows(db, queries, exact, db_labels, q_labels, args) -> list:
    """The drop-in path: no config, no labels, no search argument (seed 0); other seeds
    build the same preset with their seed and set its search defaults."""
    from genindex.config import PRESET_TABLE

    measured, builds = [], []
    for seed in range(args.seeds):
        start = time.perf_counter()
        if seed == 0:
            index = GenerativeIndex(db.shape[1])
        else:
            index = GenerativeIndex(db.shape[1], IndexConfig.unlabelled(len(db), seed=seed))
            search = PRESET_TABLE["unlabelled"]["search"]
            index.nprobe, index.k_factor = search["nprobe"], search["k_factor"]
        index.train(db, progress=not args.quiet)
        index.add(db)
        builds.append(time.perf_counter() - start)
        print(f"seed {seed}: built in {builds[-1]:.1f} s, config "
              f"{'default' if seed == 0 else 'preset unlabelled'}; nprobe {index.nprobe}, "
              f"k_factor {index.k_factor:g}", flush=True)
        ids, qps = throughput(lambda q, i=index: i.search(q, K).ids, queries)
        measured.append((*quality(ids, exact, db_labels, q_labels), qps))
    recall, p1, qps = (np.array(column) for column in zip(*measured))
    return [("genindex, defaults (no config, no search arguments)", float(np.mean(builds)),
             _spread(recall), _spread(p1), float("nan"), float(qps.mean()))]


def _spread(values: np.ndarray) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{values.mean():.3f} [{values.min():.3f}, {values.max():.3f}]"


def name(args) -> str:
    if args.dataset != "synthetic":
        return args.dataset
    return f"synthetic ({args.items:,} items, {args.dim} dimensions, {args.classes} centres)"


def vectors(args):
    """(database, its labels, queries, their labels) of the chosen data set and split."""
    if args.dataset == "synthetic":
        from benchmarks.scale import make_data

        torch.set_num_threads(args.threads or torch.get_num_threads())
        return make_data(args.items, args.classes, args.dim, seed=int(args.validation != "test"))
    args.split = "val" if args.validation == "val" else "test"
    config_file, args.config = args.config, None  # no dataset's tuned (labelled) config
    setup = prepare(args)
    args.config = config_file
    if args.validation == "test":
        return (setup.db, np.asarray(setup.data.db_labels), setup.queries,
                np.asarray(setup.data.query_labels))
    return validation_split(setup, args.validation)


def chosen_config(args):
    """(the config's name, the IndexConfig) of a run that is not --defaults."""
    tuned = CONFIGS / f"{args.dataset}.json"
    if args.config is None and tuned.is_file():
        return (str(tuned.relative_to(CONFIGS.parents[2])),  # as the repo names it
                IndexConfig.from_json(tuned.read_text()))
    if args.config in (None, "default"):
        return args.config, IndexConfig()
    return args.config, IndexConfig.from_json(Path(args.config).read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    prepare_arguments(parser, "an IndexConfig JSON file, or 'default' for the library's "
                      "defaults (default: configs/unlabelled/<dataset>.json if there is one)")
    parser.add_argument("--split", dest="validation", choices=("heldout", "val", "test"),
                        default="test", help="test: the reported queries; val: the data "
                        "set's validation split; heldout: database items as queries")
    parser.add_argument("--beam-sizes", default="10,30,100")
    parser.add_argument("--k-factors", default="1,3,10")
    parser.add_argument("--defaults", action="store_true", help="the drop-in path: no "
                        "config and no search arguments (--config, --beam-sizes and "
                        "--k-factors are not read)")
    parser.add_argument("--items", type=int, default=25_000, help="synthetic: database size")
    parser.add_argument("--dim", type=int, default=64, help="synthetic: dimension")
    parser.add_argument("--classes", type=int, default=400, help="synthetic: centres")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, help="where results.json goes (default "
                        "results/unlabelled-<dataset>[-defaults][-<split>])")
    args = parser.parse_args(argv)
    db, db_labels, queries, q_labels = vectors(args)
    if args.defaults:
        config_file = "none (defaults)"
    else:
        config_file, config = chosen_config(args)
    import faiss

    flat = faiss.IndexFlatL2(db.shape[1])
    flat.add(db)
    exact, qps = throughput(lambda q: flat.search(q, K)[1], queries)
    print(f"{name(args)}, split {args.validation}: {len(db)} database items, {len(queries)}"
          f" queries, no labels in training; config {config_file or 'default'}", flush=True)
    rows = [("exact (Faiss IndexFlatL2)", 0.0, *quality(exact, exact, db_labels, q_labels),
             float(len(db)), qps)]
    rows += faiss_rows(db, queries, exact, db_labels, q_labels)
    rows += (default_rows(db, queries, exact, db_labels, q_labels, args) if args.defaults
             else genindex_rows(db, queries, exact, db_labels, q_labels, args, config))
    body = []
    for method, built, recall, p1, candidates, qps in rows:
        recall, p1 = (v if isinstance(v, str) else f"{v:.3f}" for v in (recall, p1))
        body.append((method, f"{built:.1f}", recall, p1,
                     "" if math.isnan(candidates) else f"{candidates:.0f}", f"{qps:.0f}"))
    table = Table(f"{name(args)}, split {args.validation}: {len(db)} database items, "
                  f"{len(queries)} queries, no labels in training; config "
                  f"{config_file or 'default'}; genindex: mean [min, max] over {args.seeds} "
                  "seeds", ("method", "build s", "recall@10 vs exact", "class P@1",
                            "candidates", "queries/s"), tuple(body))
    suffix = ("-defaults" if args.defaults else "") + (
        "" if args.validation == "test" else f"-{args.validation}")
    report.write_table_set(TableSet(f"Unlabelled training on {name(args)}", (table,),
                                    provenance=provenance.here(threads=torch.get_num_threads())),
                           args.out or Path("results") / f"unlabelled-{args.dataset}{suffix}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
