"""A million-item index trained from scratch: build phases, memory, speed and quality.

    python benchmarks/scale.py [--items 1000000] [--classes 10000] [--dim 128]
        [--config benchmarks/configs/scale.json] [--no-unlabelled]
        [--unlabelled-config benchmarks/configs/unlabelled/scale.json] [--out results/scale]

The data (generated, deterministic, seed 0): ``--classes`` classes in groups of
10 that share a centre (so classes of one group are easily confused), class
sizes drawn from a Zipf-like law (weights 1 / rank^0.7: at the defaults 16
to about 20,000 items, median 52), each item its class centre plus Gaussian
noise (``NOISE``: exact search's P@1 about 0.65), all scaled by a
decaying spectrum (dimension i by 1 / sqrt(1 + i / 8)), as image features'
variance falls off. One item of every class is held out as a query; the
rest, ``--items`` in all, is the database.

On the same vectors: exact search (Faiss IndexFlatL2), Faiss IVF-PQ (1,024
lists; the paper's 4-byte codes and 32-byte codes; nprobe 16 and 64) and
HNSW (M 32; efSearch 128) and, as it uses the labels as genindex does,
nearest class mean; then a GenerativeIndex trained from scratch with the
labels (``--config``: class identifiers, the CPU decoder preset, few epochs;
metric and semantic order, beam 10), and one trained without them (``--unlabelled-config``:
M 2, L 256; partners mined by ``partners.clustered_knn``), searched in the
metric order over 300 candidates (beam 30). Printed per method: build seconds (genindex: per phase;
its decoder phase includes mining the partners), index bytes per item,
queries/s (all queries in one call), precision@1 and MAP@100 against the class
labels, recall@10 against exact search; at the end the process's peak resident
memory (``VmHWM``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import metrics, provenance, report  # noqa: E402
from benchmarks.baselines import HNSW, IVFPQ  # noqa: E402
from benchmarks.common import GIB, status, throughput  # noqa: E402
from benchmarks.labelled import NCM  # noqa: E402
from benchmarks.rows import Table, TableSet  # noqa: E402
from genindex import GenerativeIndex, IndexConfig  # noqa: E402

K = 100  # results per query: MAP@100
GROUP = 10  # classes per shared group centre
NOISE = 1.2  # item noise, set so that exact search's P@1 is about 0.65 (this script prints it)
HEADER = ("method", "build s", "bytes per item", "queries/s", "P@1", "MAP@100",
          "recall@10 vs exact")
CONFIGS = Path(__file__).resolve().parent / "configs"


def make_data(items: int, classes: int, dim: int, seed: int = 0):
    """``(db, db_labels, queries, query_labels)``: ``items`` database vectors, and one
    held-out query of each of ``classes`` classes."""
    rng = np.random.default_rng(seed)
    groups = rng.standard_normal((-(-classes // GROUP), dim), dtype=np.float32)
    centres = groups[np.arange(classes) // GROUP] + 0.5 * rng.standard_normal(
        (classes, dim), dtype=np.float32)
    weights = 1.0 / np.arange(1, classes + 1) ** 0.7
    sizes = 1 + rng.multinomial(items - classes, rng.permutation(weights) / weights.sum())
    labels = np.repeat(np.arange(classes), sizes + 1)  # one more a class: its query
    first = np.cumsum(sizes + 1) - (sizes + 1)
    is_query = np.zeros(len(labels), dtype=bool)
    is_query[first] = True
    spectrum = (1.0 / np.sqrt(1 + np.arange(dim) / 8)).astype(np.float32)
    x = np.empty((len(labels), dim), dtype=np.float32)
    for start in range(0, len(labels), 1 << 18):  # in chunks: no float64 temporaries
        rows = slice(start, start + (1 << 18))
        noise = rng.standard_normal((len(labels[rows]), dim), dtype=np.float32)
        x[rows] = (centres[labels[rows]] + NOISE * noise) * spectrum
    return (np.ascontiguousarray(x[~is_query]), labels[~is_query],
            np.ascontiguousarray(x[is_query]), labels[is_query])


class Scored:
    """Exact search's answers, and how a method's answers score against them."""

    def __init__(self, db, db_labels, queries, q_labels):
        import faiss

        flat = faiss.IndexFlatL2(db.shape[1])
        flat.add(db)
        start = time.perf_counter()
        self.exact = flat.search(queries, K)[1]
        self.exact_qps = len(queries) / (time.perf_counter() - start)
        self.exact_bytes = db.shape[1] * 4
        self.db_labels, self.q_labels = db_labels, q_labels

    def row(self, name: str, build: str, per_item: float, ids: np.ndarray,
            qps: float) -> tuple[str, ...]:
        """A table row's cells."""
        p1, _, map_k = metrics.headline(ids, self.db_labels, self.q_labels, K)
        recall = np.mean([len(np.intersect1d(a[:10], b[:10])) / 10
                          for a, b in zip(ids, self.exact)])
        return (name, build, f"{per_item:.1f}", f"{qps:,.0f}", f"{p1:.1f}", f"{map_k:.1f}",
                f"{recall:.3f}")


def baseline_rows(db, db_labels, queries, scored: Scored) -> list[tuple[str, ...]]:
    import faiss

    rows = [scored.row("exact (Faiss IndexFlatL2)", "0", scored.exact_bytes, scored.exact,
                       scored.exact_qps)]
    for name, method, settings in (
            ("IVF-PQ, 1,024 lists, 4-byte codes (the paper's)", IVFPQ(nlist=1024, m=4),
             [{"nprobe": 16}, {"nprobe": 64}]),
            ("IVF-PQ, 1,024 lists, 32-byte codes", IVFPQ(nlist=1024, m=32),
             [{"nprobe": 16}, {"nprobe": 64}]),
            ("HNSW, M 32", HNSW(), [{"ef_search": 128}]),
            ("nearest class mean (labels)", NCM(), [{}])):
        start = time.perf_counter()
        method.fit(db, db_labels)
        build = f"{time.perf_counter() - start:.0f}"
        per_item = (method.nbytes() if isinstance(method, NCM) else
                    len(faiss.serialize_index(method.index))) / len(db)
        for arguments in settings:
            if arguments:
                method.set_query_arguments(**arguments)
            ids, qps = throughput(lambda q, m=method: m.search(q, K), queries)
            shown = "".join(f", {key} {value}" for key, value in arguments.items())
            rows.append(scored.row(f"{name}{shown}", build, per_item, ids, qps))
            print(" | ".join(rows[-1]), flush=True)
    return rows


def genindex_rows(name: str, db, labels, queries, scored: Scored, config: IndexConfig,
                  searches: list[dict]) -> list[tuple[str, ...]]:
    start = time.perf_counter()
    index = GenerativeIndex.fit(db, labels, config, progress=True)
    total = time.perf_counter() - start
    history = index.history
    build = (f"{total:.0f} (tokenizer {history.tokenizer_s:.0f}, decoder "
             f"{history.decoder_s:.0f})")
    with tempfile.TemporaryDirectory() as folder:
        index.save(Path(folder) / "index.gidx")
        per_item = (Path(folder) / "index.gidx").stat().st_size / len(db)
    rows = []
    for arguments in searches:
        ids, qps = throughput(lambda q, a=arguments: index.search(q, K, **a).ids, queries)
        shown = ", ".join(f"{key} {value}" for key, value in arguments.items())
        rows.append(scored.row(f"{name}, {shown}", build, per_item, ids, qps))
        print(" | ".join(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--config", type=Path, default=CONFIGS / "scale.json")
    parser.add_argument("--unlabelled-config", type=Path,
                        default=CONFIGS / "unlabelled" / "scale.json")
    parser.add_argument("--no-unlabelled", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("results/scale"),
                        help="where results.json goes")
    args = parser.parse_args(argv)
    import torch

    started = time.perf_counter()
    db, db_labels, queries, q_labels = make_data(args.items, args.classes, args.dim)
    sizes = np.bincount(db_labels)
    caption = (f"{len(db):,} items of {args.classes:,} classes (sizes {sizes.min()} to "
               f"{sizes.max()}, median {np.median(sizes):.0f}), d {args.dim}, {len(queries):,} "
               f"queries, {torch.get_num_threads()} threads")
    print(f"{caption}; made in {time.perf_counter() - started:.0f} s\n\n"
          + " | ".join(HEADER), flush=True)
    scored = Scored(db, db_labels, queries, q_labels)
    rows = baseline_rows(db, db_labels, queries, scored)
    config = IndexConfig.from_json(args.config.read_text())
    rows += genindex_rows("genindex, labels", db, db_labels, queries, scored, config,
                          [{"order": "metric", "beam_size": 10},
                           {"order": "semantic", "beam_size": 10}])
    if not args.no_unlabelled:
        unlabelled = IndexConfig.from_json(args.unlabelled_config.read_text())
        rows += genindex_rows("genindex, no labels", db, None, queries, scored, unlabelled,
                              [{"order": "metric", "beam_size": 30, "k_factor": 3.0}])
    note = (f"Peak resident memory {status('VmHWM') / GIB:.2f} GiB; whole run "
            f"{(time.perf_counter() - started) / 60:.0f} min.")
    report.write_table_set(TableSet(f"{len(db):,} items, trained from scratch",
                                    (Table(caption, HEADER, tuple(rows)),), (note,),
                                    provenance=provenance.here(threads=torch.get_num_threads())),
                           args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
