"""Run search methods side by side on one data set and print the paper's tables.

    python benchmarks/run.py --dataset emoji [--limit 200] [--methods linear,genindex]
                             [--ablation ids,length,fresh]

Features come from one backbone (default: EfficientNet-Lite0, which works
offline) through genindex's feature cache, so every method sees the same
features and a second run embeds nothing; genindex reads the same features.
Results go to ``--out`` (default ``results/<dataset>/``): ``results.json``,
``tables.md`` and PNG plots.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import datasets, metrics, report  # noqa: E402
from benchmarks.baselines import IVFPQ, DiskANN, ScaNN, ivfpq_nlist  # noqa: E402
from benchmarks.methods import GenIndex, Linear, timed  # noqa: E402
from benchmarks.rows import AblationRow, MethodRow, Metrics, PRCurve, Result  # noqa: E402
from benchmarks.sweep import beam_sweep  # noqa: E402
from genindex import IndexConfig  # noqa: E402
from genindex.backbones import get_backbone  # noqa: E402
from genindex.extract import extract_features, open_cache  # noqa: E402

CONFIGS = Path(__file__).resolve().parent / "configs"
K_PRECISION = {"inshop": (1, 10, 20, 30), "cub200": (1, 2, 4, 8), "cars196": (1, 2, 4, 8)}
DEFAULT_K = (1, 3, 10)
MRR_K = (1, 2, 4, 8)
MAP_K = 100
METHODS = ("linear", "ivfpq", "scann", "diskann", "genindex")
ABLATIONS = ("ids", "length", "fresh")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help=f"one of {datasets.names()}")
    parser.add_argument("--data-root", help="where the data set lives or is fetched to")
    parser.add_argument("--limit", type=int, help="keep only the first N classes")
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--metric", choices=("l2", "cosine"),
                        help="exact-search metric (default: cosine for CLIP, else L2)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated, from {','.join(METHODS)}")
    parser.add_argument("--config", help="genindex IndexConfig as JSON (end_to_end: true "
                        "fine-tunes the backbone on the images, the paper); default: "
                        "benchmarks/configs/<dataset>.json where it exists, else 'default', "
                        "the IndexConfig defaults")
    parser.add_argument("--no-ft", action="store_true",
                        help="skip the FT baseline (the ANN methods on fine-tuned features)")
    parser.add_argument("--beam-sizes", default="1,10,20,30",
                        help="genindex throughput sweep (paper Fig. 5); empty to skip")
    parser.add_argument("--ablation", default="", help=f"comma-separated, from {ABLATIONS}")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    for name, known in (("methods", METHODS), ("ablation", ABLATIONS)):
        unknown = sorted(set(_split(getattr(args, name))) - set(known))
        if unknown:
            parser.error(f"--{name}: unknown {unknown}; known: {', '.join(known)}")
    return args


def _split(text: str) -> list[str]:
    return [part for part in text.split(",") if part]


def genindex_config(choice: str | None, dataset: str) -> tuple[IndexConfig | None, str]:
    """The genindex build parameters and their name: a data set's tuned file, or defaults."""
    tuned = CONFIGS / f"{dataset}.json"
    if choice == "default" or (choice is None and not tuned.exists()):
        return None, "default"
    path, name = (tuned, f"benchmarks/configs/{tuned.name}") if choice is None \
        else (Path(choice), choice)
    if not path.is_file():
        raise SystemExit(f"run.py: error: --config {choice}: no such file")
    return IndexConfig.from_json(path.read_text()), name


class Setup(NamedTuple):
    """What every runner starts from: the genindex config, the data and its features."""

    config: IndexConfig | None
    config_name: str
    data: datasets.Dataset
    backbone: Any
    db: np.ndarray
    queries: np.ndarray


def prepare(args) -> Setup:
    """The runners' common start: logging, threads, config, data set, backbone, features.
    ``args`` has dataset, data_root, limit, backbone, config, device, threads and quiet."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    config, config_name = genindex_config(args.config, args.dataset)
    data = datasets.load(args.dataset, args.data_root, args.limit)
    backbone = get_backbone(args.backbone).to(args.device)
    db, queries = features(data, backbone, args.backbone, device=args.device,
                           progress=not args.quiet)
    return Setup(config, config_name, data, backbone, db, queries)


def make_methods(names: list[str], args, metric: str, n: int, setup: Setup):
    config = setup.config
    end_to_end = config is not None and config.end_to_end
    known = {"linear": lambda: Linear(metric),
             "ivfpq": lambda: IVFPQ(metric, nlist=ivfpq_nlist(args.dataset, n)),
             "scann": lambda: ScaNN(metric),
             "diskann": lambda: DiskANN(metric),
             "genindex": lambda: GenIndex(config, backbone=setup.backbone if end_to_end else None,
                                          device=args.device, progress=not args.quiet,
                                          note=f"config: {setup.config_name}")}
    return [known[name]() for name in names]


def evaluate(ids: np.ndarray, data: datasets.Dataset, ks: tuple[int, ...]) -> Metrics:
    hits = metrics.relevance(ids, data.db_labels, data.query_labels)
    relevant = metrics.relevant_counts(data.db_labels, data.query_labels)
    return metrics.summary(hits, relevant, ks, MRR_K, (MAP_K,))


def pr_curve(ids: np.ndarray, data: datasets.Dataset) -> PRCurve:
    hits = metrics.relevance(ids, data.db_labels, data.query_labels)
    precision, recall = metrics.pr_curve(
        hits, metrics.relevant_counts(data.db_labels, data.query_labels))
    return PRCurve(tuple(precision.tolist()), tuple(recall.tolist()))


def features(data: datasets.Dataset, backbone, backbone_name: str, *, device: str = "cpu",
             progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Database and query features through genindex's feature cache, as float32."""
    cache = open_cache(backbone, None)
    (db, queries), embed_s = timed(lambda: [
        extract_features(backbone, images, cache=cache, device=torch.device(device),
                         progress=progress)
        for images in (data.db_images, data.query_images)])
    print(f"{data.name}: {len(db)} database items, {len(queries)} queries, "
          f"{len(np.unique(data.db_labels))} classes; {backbone_name} features in "
          f"{embed_s:.1f} s (cache: {cache.folder if cache else 'off'})", flush=True)
    return np.asarray(db, dtype="float32"), np.asarray(queries, dtype="float32")


def run_methods(args, setup: Setup, db, queries, names, metric, ks, label):
    """Fit and search each method; its result rows (genindex: one per order, from one
    built index) and the genindex method."""
    rows, genindex, data = [], None, setup.data
    for method in make_methods(names, args, metric, len(db), setup):
        _, build_s = timed(method.fit, db, data.db_labels, images=data.db_images)
        for name, arguments in getattr(method, "rows", {method.name: {}}).items():
            method.set_query_arguments(**arguments)
            ids, search_s = timed(method.search, queries, MAP_K, images=data.query_images)
            row = MethodRow(method=name, backbone=label, metrics=evaluate(ids, data, ks),
                            qps=len(queries) / search_s, build_s=build_s,
                            bytes=method.nbytes(), note=getattr(method, "note", None) or None,
                            pr_curve=pr_curve(ids, data))
            rows.append(row)
            print(f"{name} ({label}): built in {build_s:.1f} s, searched in {search_s:.1f} s"
                  + (f" ({row.note})" if row.note else ""), flush=True)
        method.set_query_arguments()
        if method.name == "genindex":
            genindex = method
    return rows, genindex


def fine_tuned(args, data, db, queries):
    """The FT baseline's features: a cosine-classifier head trained on the database."""
    from genindex.finetune import finetune

    model, seconds = timed(finetune, db, data.db_labels, device=args.device,
                           progress=not args.quiet)
    print(f"FT head trained in {seconds:.1f} s", flush=True)
    return model.embed(db), model.embed(queries)


def run_ablations(args, setup: Setup, ks) -> dict[str, tuple[AblationRow, ...]]:
    from benchmarks import ablations

    out, data = {}, setup.data
    for name in _split(args.ablation):
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
    setup = prepare(args)
    data, db, queries = setup.data, setup.db, setup.queries
    metric = args.metric or ("cosine" if setup.backbone.spec()["kind"] == "open_clip" else "l2")
    ks = K_PRECISION.get(args.dataset, DEFAULT_K)
    names = _split(args.methods)
    rows, genindex = run_methods(args, setup, db, queries, names, metric, ks, args.backbone)
    baselines = [name for name in names if name != "genindex"]
    if baselines and not args.no_ft:
        db_ft, queries_ft = fine_tuned(args, data, db, queries)
        rows += run_methods(args, setup, db_ft, queries_ft, baselines, "cosine", ks,
                            f"{args.backbone} FT")[0]
    threads, date = torch.get_num_threads(), time.strftime("%Y-%m-%d")
    beams = [int(b) for b in _split(args.beam_sizes)]
    sweep = [] if genindex is None or not beams else beam_sweep(
        genindex, setup.backbone, data, queries, beams, lambda ids: evaluate(ids, data, ks))
    result = Result(dataset=args.dataset, rows=tuple(rows), database=len(db),
                    queries=len(queries), ks=tuple(ks), metric=metric, threads=threads,
                    date=date, notes=data.notes, beam_sweep=tuple(sweep),
                    ablations=run_ablations(args, setup, ks) if args.ablation else {})
    write(result, args.out or Path("results") / args.dataset)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
