"""Run search methods side by side on one data set and print the paper's metrics.

    python benchmarks/run.py --dataset emoji [--limit 200] [--methods linear,genindex]

Features come from one backbone (default: EfficientNet-Lite0, which works
offline) through genindex's feature cache, so every method sees the same
features and a second run embeds nothing. genindex reads the images through
the same backbone and cache. Results go to ``--out`` (default
``results/<dataset>/``): ``results.json`` and ``tables.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import datasets, metrics  # noqa: E402
from benchmarks.methods import GenIndex, Linear, timed  # noqa: E402
from genindex.backbones import get_backbone  # noqa: E402
from genindex.extract import extract_features, open_cache  # noqa: E402

K_PRECISION = {"inshop": (1, 10, 20, 30), "cub200": (1, 2, 4, 8), "cars196": (1, 2, 4, 8)}
DEFAULT_K = (1, 3, 10)
MRR_K = (1, 2, 4, 8)
MAP_K = 100


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help=f"one of {datasets.names()}")
    parser.add_argument("--data-root", help="where the data set lives or is fetched to")
    parser.add_argument("--limit", type=int, help="keep only the first N classes")
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--metric", choices=("l2", "cosine"),
                        help="linear scan metric (default: cosine for CLIP, else L2)")
    parser.add_argument("--methods", default="linear,genindex")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def make_methods(names: list[str], args, backbone, metric: str):
    known = {"linear": lambda: Linear(metric),
             "genindex": lambda: GenIndex(backbone=backbone, device=args.device,
                                          progress=not args.quiet)}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; known: {sorted(known)}")
    return [known[n]() for n in names]


def evaluate(ids: np.ndarray, data: datasets.Dataset, ks: tuple[int, ...]) -> dict[str, float]:
    hits = metrics.relevance(ids, data.db_labels, data.query_labels)
    relevant = metrics.relevant_counts(data.db_labels, data.query_labels)
    out = {}
    for k in ks:
        out[f"P@{k}"] = metrics.precision_at_k(hits, k)
        out[f"R@{k}"] = metrics.recall_at_k(hits, k)
    for k in MRR_K:
        out[f"MRR@{k}"] = metrics.mrr_at_k(hits, k)
    out[f"MAP@{MAP_K}"] = metrics.map_at_k(hits, MAP_K, relevant)
    return out


def table(rows: list[dict], ks: tuple[int, ...]) -> str:
    columns = [f"P@{k}" for k in ks] + [f"R@{k}" for k in ks] + [f"MAP@{MAP_K}"]
    lines = ["| method | backbone | " + " | ".join(columns) + " | build s | queries/s | bytes |",
             "|---" * (len(columns) + 5) + "|"]
    for row in rows:
        values = " | ".join(f"{100 * row['metrics'][c]:.1f}" for c in columns)
        lines.append(f"| {row['method']} | {row['backbone']} | {values} | {row['build_s']:.1f} "
                     f"| {row['qps']:.0f} | {row['bytes']:,} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    data = datasets.load(args.dataset, args.data_root, args.limit)
    backbone = get_backbone(args.backbone).to(args.device)
    metric = args.metric or ("cosine" if backbone.spec()["kind"] == "open_clip" else "l2")
    cache = open_cache(backbone, None)
    (db, queries), embed_s = timed(lambda: [
        extract_features(backbone, images, cache=cache, device=torch.device(args.device),
                         progress=not args.quiet)
        for images in (data.db_images, data.query_images)])
    print(f"{args.dataset}: {len(db)} database items, {len(queries)} queries, "
          f"{len(np.unique(data.db_labels))} classes; {args.backbone} features in "
          f"{embed_s:.1f} s (cache: {cache.folder if cache else 'off'})", flush=True)
    ks = K_PRECISION.get(args.dataset, DEFAULT_K)
    rows = []
    for method in make_methods(args.methods.split(","), args, backbone, metric):
        _, build_s = timed(method.fit, db, data.db_labels, images=data.db_images)
        ids, search_s = timed(method.search, queries, MAP_K, images=data.query_images)
        rows.append({"method": method.name, "backbone": args.backbone,
                     "metrics": evaluate(ids, data, ks), "qps": len(queries) / search_s,
                     "build_s": build_s, "bytes": method.nbytes()})
        print(f"{method.name}: built in {build_s:.1f} s, searched in {search_s:.1f} s",
              flush=True)
    markdown = table(rows, ks)
    print(markdown)
    out = args.out or Path("results") / args.dataset
    out.mkdir(parents=True, exist_ok=True)
    (out / "tables.md").write_text(markdown + "\n")
    result = {"dataset": args.dataset, "rows": rows, "queries": len(queries),
              "database": len(db), "date": time.strftime("%Y-%m-%d"), "notes": data.notes}
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
