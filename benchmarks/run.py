"""Run search methods side by side on one data set and print the paper's tables.

    python benchmarks/run.py --dataset emoji [--split val] [--seeds 3] [--limit 200]
                             [--methods linear,genindex] [--ablation ids,length,fresh]

Features come from one backbone (default: EfficientNet-Lite0, which works
offline) through genindex's feature cache, so every method sees the same
features and a second run embeds nothing; genindex reads the same features.
``--split val`` runs on the data set's validation split (no reported query is
read), where settings are chosen; ``--split test`` (the default) on the
reported queries. Every genindex config is built with ``--seeds`` seeds and
reported as the mean [min, max]. Results go to ``--out`` (default
``results/<dataset>[-val]/``): ``results.json``, ``tables.md`` and PNG plots.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import datasets, embedding, metrics, provenance, report  # noqa: E402
from benchmarks.baselines import HNSW, IVFPQ, DiskANN, ScaNN, ivfpq_nlist  # noqa: E402
from benchmarks.common import Setup, prepare, split_list, timed  # noqa: E402
from benchmarks.labelled import NCM, Classifier  # noqa: E402
from benchmarks.methods import GenIndex, Linear  # noqa: E402
from benchmarks.rows import AblationRow, MethodRow, Metrics, PRCurve, Result, mean_row  # noqa: E402
from benchmarks.sweep import SWEEP_QUERIES, beam_sweep  # noqa: E402
from genindex import IndexConfig  # noqa: E402

K_PRECISION = {"inshop": (1, 10, 20, 30), "cub200": (1, 2, 4, 8), "cars196": (1, 2, 4, 8),
               "fashion-mnist": (1, 3, 10, 20, 50, 100)}  # to K = 100: the paper's Fig. 6
DEFAULT_K = (1, 3, 10)
MRR_K = (1, 2, 4, 8)
MAP_K = 100
EXACT_K = 10  # recall@10 against exact search: the number ANN users read
METHODS = ("linear", "ivfpq", "hnsw", "scann", "diskann", "ncm", "classifier", "genindex")
# also on the FT features: exact search, ncm and the in-memory approximate indexes (DiskANN,
# the slowest to build, approximates the FT linear-scan row that is already there)
FT_METHODS = ("linear", "ivfpq", "hnsw", "scann", "ncm")
# The FT head's settings per data set where they differ from FineTuneConfig's, chosen on
# --split val (docs/benchmarks.md): 60,000 images take batches of 512 (P@1 90.1 against
# 89.8 with 128, in 105 s instead of 169 s).
FT_PRESETS = {"fashion-mnist": {"batch_size": 512}}
# With --wide, an extra semantic-order row over more candidates, chosen on --split val by
# benchmarks/studies/k_factor.py (docs/benchmarks.md): emoji, beam 1,000 and the top 1,000 ranked.
# Not in the default run: it tied the default row on the reported queries and its
# searches took about 5 of the main job's 22 minutes (2026-12-04).
SEMANTIC_CANDIDATES = {"emoji": {"beam_size": 1000, "k_factor": 10.0}}
# The fused order's weight of the query's codeword cosines in the beam (genindex.fusion),
# per data set, chosen on --split val with benchmarks/studies/levers.py (docs/benchmarks.md).
# Data sets without an entry get no fused row until a weight is chosen on their val split.
FUSION = {"emoji": 160.0}
ABLATIONS = ("ids", "length", "fresh")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help=f"one of {datasets.names()}")
    parser.add_argument("--data-root", help="where the data set lives or is fetched to")
    parser.add_argument("--split", choices=datasets.SPLITS, default="test",
                        help="test: the reported queries; val: the validation split, "
                        "where settings are chosen")
    parser.add_argument("--query-vendor", help="emoji: whose drawings are the queries "
                        "(default google)")
    parser.add_argument("--limit", type=int, help="keep only the first N classes")
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--metric", choices=("l2", "cosine"),
                        help="exact-search metric (default: cosine for CLIP, else L2)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated, from {','.join(METHODS)}")
    parser.add_argument("--config", help="comma-separated genindex IndexConfig JSON files "
                        "(end_to_end: true fine-tunes the backbone on the images, the "
                        "paper), or 'default' (the IndexConfig defaults); default: "
                        "benchmarks/configs/<dataset>.json and <dataset>-*.json where "
                        "they exist, else 'default'")
    parser.add_argument("--seeds", type=int, default=3,
                        help="genindex builds per config (seeds 0..N-1), reported as the "
                        "mean [min, max]")
    parser.add_argument("--no-ft", action="store_true",
                        help="skip the FT baseline (the ANN methods on fine-tuned features)")
    parser.add_argument("--ft-batch-size", type=int,
                        help="the FT head's batch size (default: the data set's FT_PRESETS "
                        "entry, else FineTuneConfig's)")
    parser.add_argument("--beam-sizes", default="1,10,20,30",
                        help="genindex throughput sweep (paper Fig. 5); empty to skip")
    parser.add_argument("--wide", action="store_true",
                        help="add the semantic-order row over the data set's "
                        "SEMANTIC_CANDIDATES (emoji: beam 1000, k_factor 10)")
    parser.add_argument("--fusion", type=float, help="weight of the fused-order row (default: "
                        "the data set's FUSION entry; 0: no such row)")
    parser.add_argument("--ablation", default="", help=f"comma-separated, from {ABLATIONS}")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    for name, known in (("methods", METHODS), ("ablation", ABLATIONS)):
        unknown = sorted(set(split_list(getattr(args, name))) - set(known))
        if unknown:
            parser.error(f"--{name}: unknown {unknown}; known: {', '.join(known)}")
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    if args.ft_batch_size is not None and args.ft_batch_size < 1:
        parser.error(f"--ft-batch-size must be at least 1, got {args.ft_batch_size}")
    return args


class Built(NamedTuple):
    """A method to build, and the seed offset of its config (None: a method without one)."""

    method: Any
    seed: int | None = None


def make_methods(names: list[str], args, metric: str, n: int, setup: Setup,
                 classifier=None) -> list[Built]:
    """The methods of ``names`` in order; genindex once per config and seed.
    ``classifier``: the trained FT model the classifier baseline reads."""
    known = {"linear": lambda: Linear(metric),
             "ivfpq": lambda: IVFPQ(metric, nlist=ivfpq_nlist(args.dataset, n)),
             "hnsw": lambda: HNSW(metric),
             "scann": lambda: ScaNN(metric),
             "diskann": lambda: DiskANN(metric),
             "ncm": lambda: NCM(metric),
             "classifier": lambda: Classifier(classifier)}
    built, wide = [], SEMANTIC_CANDIDATES.get(args.dataset) if args.wide else None
    fusion = FUSION.get(args.dataset) if args.fusion is None else args.fusion
    for name in names:
        if name != "genindex":
            built.append(Built(known[name]()))
            continue
        for (config, config_name), label in zip(setup.configs, genindex_labels(setup.configs)):
            config = config or IndexConfig()
            end_to_end = config.end_to_end
            built += [Built(GenIndex(
                config.replace(seed=config.seed + seed),
                backbone=setup.backbone if end_to_end else None, device=args.device,
                progress=not args.quiet, label=label, note=f"config: {config_name}",
                wide=wide, fusion=fusion), seed) for seed in range(args.seeds)]
    return built


def genindex_labels(configs: list[tuple[IndexConfig | None, str]]) -> list[str]:
    """Each config's row label, ``genindex, <identifiers> ids``, with the config's name
    added where two configs share identifiers (their rows must not be averaged)."""
    kinds = [(config or IndexConfig()).tokenizer.identifiers for config, _ in configs]
    return [f"genindex, {kind} ids" + (f" ({name})" if kinds.count(kind) > 1 else "")
            for kind, (_, name) in zip(kinds, configs)]


def evaluate(ids: np.ndarray, data: datasets.Dataset, ks: tuple[int, ...],
             map_k: int = MAP_K) -> Metrics:
    hits = metrics.relevance(ids, data.db_labels, data.query_labels)
    relevant = metrics.relevant_counts(data.db_labels, data.query_labels)
    return metrics.summary(hits, relevant, ks, MRR_K, (map_k,))


def pr_curve(ids: np.ndarray, data: datasets.Dataset) -> PRCurve:
    hits = metrics.relevance(ids, data.db_labels, data.query_labels)
    precision, recall = metrics.pr_curve(
        hits, metrics.relevant_counts(data.db_labels, data.query_labels))
    return PRCurve(tuple(precision.tolist()), tuple(recall.tolist()))


def exact_recall(ids: np.ndarray, exact: np.ndarray, k: int = EXACT_K) -> float:
    """Mean share of each query's exact top ``k`` found in its top ``k``."""
    return float(np.mean([len(set(row[:k]) & set(truth[:k])) / k
                          for row, truth in zip(ids, exact)]))


def run_methods(args, setup: Setup, db, queries, names, metric, ks, label, classifier=None):
    """Fit and search each method; its result rows (genindex: one per order, from one
    built index, and the f_cls rows of that build; each the mean over its seeds) and the
    first genindex method built."""
    rows, genindex, data = {}, None, setup.data
    exact = Linear(metric)
    exact.fit(db, data.db_labels)
    context = (queries, data, ks, exact.search(queries, EXACT_K))
    for built in make_methods(names, args, metric, len(db), setup, classifier):
        method = built.method
        _, build_s = timed(method.fit, db, data.db_labels, images=data.db_images)
        measure_rows(method, built.seed, build_s, label, context, rows)
        if isinstance(method, GenIndex) and method.backbone is None:
            suffix = "" if len(setup.configs) == 1 else f" ({method.label})"
            for ablation in embedding.methods(method, suffix):
                _, fit_s = timed(ablation.fit, db, data.db_labels)
                if isinstance(ablation.inner, HNSW):
                    embedding.choose_ef_search(ablation, db)
                measure_rows(ablation, built.seed, method.index.history.tokenizer_s + fit_s,
                             label, context, rows)
        if isinstance(method, GenIndex) and genindex is None:
            genindex = method
    return [runs[0][0] if len(runs) == 1 else mean_row([row for row, _ in runs])
            for runs in rows.values()], genindex


def measure_rows(method, seed: int | None, build_s: float, label: str, context, rows) -> None:
    """Measure every row of one built method (its ``rows`` of query arguments, or its
    current ones) and add them to ``rows`` by name; ``context``: queries, data, ks and
    the exact ids."""
    size = method.nbytes()  # one built index, whatever its query arguments
    phases = f" ({method.phases()})" if hasattr(method, "phases") else ""
    for name, arguments in getattr(method, "rows", {method.name: None}).items():
        if arguments is not None:
            method.set_query_arguments(**arguments)
        row, _ = measure(method, name, label, *context, build_s, size)
        rows.setdefault(name, []).append((row, seed))
        print(f"{name} ({label}{'' if seed is None else f', seed {seed}'}): built in "
              f"{build_s:.1f} s{phases}, {row.qps:.0f} queries/s, "
              f"P@1 {row.metrics.precision.get(1, np.nan):.3f}", flush=True)
    if hasattr(method, "rows"):
        method.set_query_arguments()


def measure(method, name: str, label: str, queries, data, ks, exact_ids, build_s: float,
            size: int) -> tuple[MethodRow, np.ndarray]:
    """Search ``queries`` with the method as it is set; its row (metrics computed from
    the ids it returned; ``size``, the built index's bytes) and those ids."""
    ids, search_s = timed(method.search, queries, MAP_K, images=data.query_images)
    row = MethodRow(method=name, backbone=label, metrics=evaluate(ids, data, ks),
                    qps=len(queries) / search_s, build_s=build_s, bytes=size,
                    note=getattr(method, "note", None) or None, pr_curve=pr_curve(ids, data),
                    exact_recall=exact_recall(ids, exact_ids))
    return row, ids


def fine_tuned(args, data, db):
    """The FT baseline: a cosine-classifier head trained on the database."""
    from genindex.finetune import FineTuneConfig, finetune

    preset = dict(FT_PRESETS.get(args.dataset, {}))
    if args.ft_batch_size is not None:
        preset["batch_size"] = args.ft_batch_size
    config = FineTuneConfig(**preset)
    model, seconds = timed(finetune, db, data.db_labels, config=config, device=args.device,
                           progress=not args.quiet)
    print(f"FT head trained in {seconds:.1f} s (batch {config.batch_size}, "
          f"{config.epochs} epochs)", flush=True)
    return model


def run_ablations(args, setup: Setup, ks) -> dict[str, tuple[AblationRow, ...]]:
    from benchmarks import ablations

    out, data = {}, setup.data
    for name in split_list(args.ablation):
        if name == "fresh":
            from benchmarks import fresh

            rows = fresh.fresh_rows(setup.db, setup.queries, np.asarray(data.db_labels),
                                    np.asarray(data.query_labels), setup.config or IndexConfig(),
                                    device=args.device, progress=not args.quiet)
            out["fresh"] = tuple(AblationRow(row.name, row.metrics, split="all",
                                             train_s=row.train_s) for row in rows)
            continue
        build = ablations.ids_variants if name == "ids" else ablations.length_variants
        rows = []
        for variant, (length, search) in build(setup.db, data.db_labels, setup.config,
                                               progress=not args.quiet).items():
            ids = search(setup.queries, MAP_K)
            rows.append(AblationRow(variant, evaluate(ids, data, ks), length=length))
            print(f"ablation {name}: {variant} (T={length}) done", flush=True)
        out[name] = tuple(rows)
    return out


def write(result: Result, out: Path) -> None:
    """Print the tables; write them, results.json and the plots to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    markdown = report.markdown(result)
    print(markdown)
    (out / "tables.md").write_text(markdown + "\n")
    (out / "results.json").write_text(result.to_json())
    for path in report.plots(result, out):
        print(f"plot: {path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        setup = prepare(args)
    except datasets.DataUnavailable as error:
        print(f"run.py: error: {error}", file=sys.stderr)
        return 2
    data, db, queries = setup.data, setup.db, setup.queries
    metric = args.metric or ("cosine" if setup.backbone.spec()["kind"] == "open_clip" else "l2")
    ks = K_PRECISION.get(args.dataset, DEFAULT_K)
    names = split_list(args.methods)
    ft_names = [] if args.no_ft else [name for name in names if name in FT_METHODS]
    ft = fine_tuned(args, data, db) if ft_names or "classifier" in names else None
    rows, genindex = run_methods(args, setup, db, queries, names, metric, ks, args.backbone,
                                 classifier=ft)
    if ft_names:
        rows += run_methods(args, setup, ft.embed(db), ft.embed(queries), ft_names, "cosine",
                            ks, f"{args.backbone} FT")[0]
    threads = torch.get_num_threads()
    beams = [int(b) for b in split_list(args.beam_sizes)]
    sweep_ks = tuple(k for k in ks if k <= 10)
    swept = replace(data, query_images=data.query_images[:SWEEP_QUERIES],
                    query_labels=data.query_labels[:SWEEP_QUERIES])
    sweep = [] if genindex is None or not beams else beam_sweep(
        genindex, setup.backbone, swept, queries[:SWEEP_QUERIES], beams,
        lambda ids: evaluate(ids, swept, sweep_ks, map_k=10))
    result = Result(dataset=args.dataset, rows=tuple(rows), database=len(db),
                    queries=len(queries), ks=tuple(ks), metric=metric, threads=threads,
                    provenance=provenance.here(threads=threads), notes=data.notes,
                    beam_sweep=tuple(sweep), split=args.split,
                    ablations=run_ablations(args, setup, ks) if args.ablation else {})
    default_out = Path("results") / (args.dataset + ("-val" if args.split == "val" else ""))
    write(result, args.out or default_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
