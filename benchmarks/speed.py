"""Search speed: flat in the database size, against Faiss, against a naive decoder loop.

One index is trained on 10,000 labelled synthetic vectors (1,000 classes of 10,
Gaussian around random centres, as in benchmarks/studies/synthetic.py); vectors of new
classes are then added to reach each database size N. At each N the same 256
held-out queries (k=10, beam 10) go to the GenerativeIndex (features given),
to exact Faiss flat search and to Faiss IVF-PQ, on the same threads. Then:

* the naive decoder loop built the way the original IRGen code is (no key/value
  cache, a Python dict trie walked per beam, one query at a time) against the
  batched search, with the paper's decoder size (12 x 768) and beam 30;
* throughput against beam size with the encoder / decoder / validity-check
  split (paper Fig. 5), saved as a plot.

Every ratio compares timings of this run (median of ``--repeats``): the
machine may be shared, so absolute numbers mean little.

    python benchmarks/speed.py [--threads 2] [--quick] [--repeats 3] [--out results/speed]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import provenance, report  # noqa: E402
from benchmarks.rows import Table, TableSet  # noqa: E402
from genindex import DecoderConfig, GenerativeIndex, IndexConfig, TokenizerConfig  # noqa: E402
from genindex.beam import TIMED_PARTS, beam_search, top_items  # noqa: E402
from genindex.decoder import Decoder  # noqa: E402

DIM, CLASSES, PER_CLASS, NOISE, QUERIES, K, BEAM = 256, 1000, 10, 1.0, 256, 10, 10
# the benchmark's index: the default CPU config with fewer training epochs
CONFIG = IndexConfig(tokenizer=TokenizerConfig(epochs=20, min_steps=0),
                     decoder=DecoderConfig(epochs=8, min_steps=0))


def centres(classes: int, seed: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((classes, dim), dtype=np.float32)


def around(centre: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` Gaussian vectors around each centre, and their class labels."""
    labels = np.repeat(np.arange(len(centre)), per_class)
    noise = np.random.default_rng(seed).standard_normal((len(labels), centre.shape[1]),
                                                        dtype=np.float32)
    return centre[labels] + NOISE * noise, labels


def extra_vectors(count: int, seed: int, dim: int = DIM, chunk: int = 100_000) -> np.ndarray:
    """``count`` vectors of new classes (10 per class) in ``dim`` dimensions, in chunks."""
    parts = []
    for start in range(0, count, chunk):
        size = min(chunk, count - start)
        new = centres(-(-size // PER_CLASS), seed + 2 * start, dim)
        parts.append(around(new, PER_CLASS, seed + 2 * start + 1)[0][:size])
    return np.concatenate(parts)


def median_time(call, repeats: int, warmup: bool = True) -> tuple[float, object]:
    """Median wall time of ``call()`` over ``repeats`` runs (after a warm-up run)."""
    result, times = call() if warmup else None, []
    for _ in range(repeats):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def faiss_module():
    try:
        import faiss
    except ImportError:
        raise SystemExit("benchmarks/speed.py needs faiss: pip install faiss-cpu") from None
    return faiss


def ivfpq(xb: np.ndarray, nlist: int):
    """Faiss IVF-PQ with 4 sub-quantizers of 8 bits, trained on a sample of ``xb``."""
    faiss, dim = faiss_module(), xb.shape[1]
    index = faiss.IndexIVFPQ(faiss.IndexFlatL2(dim), dim, nlist, 4, 8)
    sample = np.random.default_rng(0).permutation(len(xb))[:min(len(xb), 32 * nlist)]
    index.train(xb[sample])
    index.add(xb)
    index.nprobe = 16
    return index


def index_bytes(index: GenerativeIndex) -> tuple[float, float]:
    """(bytes in memory for search: trie + codes + ids, bytes on disk that search reads).

    On disk: the saved file without its ``vectors``/``vector_ids`` arrays (what
    an index built with ``IndexConfig(store_vectors=False)`` writes) and without
    ``fresh_ids`` (the ids added since training, which only ``refresh`` reads):
    the model, the codes and the ids.
    """
    state = index._state  # noqa: SLF001 - the benchmark reads the live snapshot
    trie = state.trie
    unread = state.fresh.nbytes + (0 if state.vectors is None else
                                   state.vectors.ids.nbytes + state.vectors.vectors.nbytes)
    with tempfile.TemporaryDirectory() as folder:
        index.save(Path(folder) / "index.gidx")
        disk = (Path(folder) / "index.gidx").stat().st_size - unread
    return trie.nbytes() / len(trie), disk / len(trie)


def search_parts(index: GenerativeIndex, queries: np.ndarray, beam_size: int,
                 k: int = K) -> dict[str, float]:
    """Seconds of each part of one search (see genindex.beam.TIMED_PARTS), plus top_items."""
    timings: dict[str, float] = {}
    trie = index._state.trie  # noqa: SLF001
    x = torch.from_numpy(queries)
    beams = beam_search(index.decoder, x, trie, beam_size, timings=timings)
    start = time.perf_counter()
    top_items(trie, beams, k)
    timings["items"] = time.perf_counter() - start
    return timings


def mask_share(timings: dict[str, float]) -> float:
    """The share of the decode steps (decoder + mask + select) spent in trie masking."""
    return timings["mask"] / (timings["decoder"] + timings["mask"] + timings["select"])


# ------------------------------------------------------------------ database sizes
def size_rows(index: GenerativeIndex, xb: np.ndarray, queries: np.ndarray,
              sizes: list[int], repeats: int) -> list[dict]:
    """Grow the index and the Faiss baselines to each size; time the same queries."""
    rows = []
    for n in sizes:
        if n > len(xb):
            more = extra_vectors(n - len(xb), seed=10**6 + len(xb), dim=xb.shape[1])
            start = time.perf_counter()
            for chunk in np.array_split(more, max(1, len(more) // 250_000)):
                index.add(chunk)
            print(f"  added {len(more):,} items in {time.perf_counter() - start:.1f} s",
                  flush=True)
            xb = np.concatenate([xb, more])
        rows.append(measure(index, xb, queries, repeats))
        r = rows[-1]
        print(f"  N={n:,}: genindex {r['gen']:.3f} s, flat {r['flat']:.3f} s, "
              f"IVF-PQ {r['pq']:.3f} s", flush=True)
    return rows


def measure(index: GenerativeIndex, xb: np.ndarray, queries: np.ndarray, repeats: int) -> dict:
    """One row of the size table: the three methods on the same queries and threads."""
    faiss, n = faiss_module(), len(xb)
    gen_s, result = median_time(
        lambda: index.search(queries, K, beam_size=BEAM, order="generative"), repeats)
    flat = faiss.IndexFlatL2(xb.shape[1])
    flat.add(xb)
    flat_s, _ = median_time(lambda: flat.search(queries, K), repeats)
    flat.reset()  # free its copy of the vectors
    nlist = 2 ** round(np.log2(4 * np.sqrt(n)))  # the usual 4 sqrt(N) lists
    pq = ivfpq(xb, nlist)
    pq_s, _ = median_time(lambda: pq.search(queries, K), repeats)
    memory, disk = index_bytes(index)
    shares = [mask_share(search_parts(index, queries, BEAM)) for _ in range(repeats)]
    return dict(n=n, gen=gen_s, flat=flat_s, pq=pq_s, nlist=nlist, mem=memory, disk=disk,
                pq_bytes=faiss.serialize_index(pq).nbytes / n, mask=float(np.median(shares)),
                full=float((result.ids >= 0).all()))


# ---------------------------------------------------------------- the naive loop
def dict_trie(codes: np.ndarray) -> dict:
    """Nested dicts code -> subtree, as the original code keeps its prefix tree."""
    root: dict = {}
    for row in codes.tolist():
        node = root
        for code in row:
            node = node.setdefault(code, {})
    return root


@torch.inference_mode()
def naive_search(decoder: Decoder, x: torch.Tensor, trie: dict, codes: np.ndarray,
                 beam_size: int) -> list[list[tuple[float, np.ndarray]]]:
    """Beam search one query at a time, re-running the whole prefix at every step.

    Each beam walks the dict trie from the root in Python and scores its
    allowed codes one by one; the items of each final identifier are found by
    scanning the code table, as the original code checks validity. Returns,
    per query, ``(score, item rows)`` of its beams, best first.
    """
    table = torch.from_numpy(codes.astype(np.int64))
    results = []
    for query in x:
        beams: list[tuple[tuple, float]] = [((), 0.0)]
        for t in range(codes.shape[1]):
            prefix = torch.tensor([p for p, _ in beams], dtype=torch.long).reshape(len(beams), t)
            logits, _ = decoder(query.expand(len(beams), *query.shape), prefix)  # no cache
            candidates = []
            for (p, score), row in zip(beams, logits[:, -1]):
                node = trie
                for code in p:
                    node = node[code]
                allowed = list(node)
                for code, logp in zip(allowed, row[allowed].log_softmax(dim=0).tolist()):
                    candidates.append((p + (code,), score + logp))
            beams = sorted(candidates, key=lambda c: -c[1])[:beam_size]
        results.append([(score, torch.nonzero((table == torch.tensor(p)).all(dim=1)).numpy())
                        for p, score in beams])
    return results


def naive_comparison(trie, x: torch.Tensor, decoder: Decoder, naive_count: int,
                     repeats: int) -> dict:
    """The naive loop on the first ``naive_count`` queries, batched search on all of ``x``."""
    beam = 30
    start = time.perf_counter()
    slow = naive_search(decoder, x[:naive_count], dict_trie(trie.codes), trie.codes, beam)
    naive_s = (time.perf_counter() - start) / naive_count

    def batched(dtype=None):
        beams = beam_search(decoder, x, trie, beam, dtype=dtype)
        return beams, top_items(trie, beams, beam)

    fast_s, (fast, _) = median_time(batched, repeats, warmup=False)
    bf16_s, _ = median_time(lambda: batched(torch.bfloat16), repeats, warmup=False)
    same = [np.allclose([s for s, _ in beams], fast.scores[q, :len(beams)].numpy(), atol=1e-3)
            for q, beams in enumerate(slow)]
    parts: dict[str, float] = {}
    beam_search(decoder, x[:10], trie, beam, timings=parts)
    return dict(count=len(x), naive_count=naive_count, naive=naive_s, fast=fast_s / len(x),
                bf16=bf16_s / len(x), agree=float(np.mean(same)), mask=mask_share(parts))


def naive_comparisons(trie, queries: np.ndarray, count: int, naive_count: int,
                      repeats: int) -> dict[str, dict]:
    """The paper's decoder (12 x 768) against the naive loop, with random weights (the
    work does not depend on them): cross-attending to 197 encoder tokens as in the
    paper (ViT-B/16 at 224 px; random tokens stand in for them), and to the one
    memory token genindex makes of a feature vector."""
    torch.manual_seed(0)
    shape = (DecoderConfig.paper(), trie.codebook_size, trie.num_codebooks)
    paper = Decoder(*shape, memory=torch.nn.Identity())
    vectors = Decoder.for_vectors(*shape, queries.shape[1])
    tokens = torch.randn(count, 197, 768)
    return {
        "paper": naive_comparison(trie, tokens, paper.eval().requires_grad_(False),
                                  naive_count, repeats),
        "vectors": naive_comparison(trie, torch.from_numpy(queries[:count]),
                                    vectors.eval().requires_grad_(False), naive_count, repeats),
    }


# ----------------------------------------------------------------- beam sizes
def beam_rows(index: GenerativeIndex, queries: np.ndarray, repeats: int) -> list[dict]:
    """Per beam size: seconds per query of each part (median over repeats)."""
    rows = []
    for beam in (1, 10, 20, 30):
        runs = [search_parts(index, queries, beam, k=min(K, beam)) for _ in range(repeats)]
        parts = {p: float(np.median([r[p] for r in runs])) / len(queries) for p in runs[0]}
        total = sum(parts.values())
        rows.append(dict(beam=beam, qps=1.0 / total, **parts))
    return rows


def plot_beams(rows: list[dict], path: Path, title: str) -> bool:
    """Plot the beam rows to ``path``; False where matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no plot: pip install matplotlib)")
        return False
    labels = {"encoder": "encoder", "decoder": "decoder", "mask": "validity check (trie)",
              "select": "beam selection", "items": "leaf expansion"}
    figure, axis = plt.subplots(figsize=(6, 4))
    bottom = np.zeros(len(rows))
    beams = [str(r["beam"]) for r in rows]
    for part, label in labels.items():
        values = np.array([r[part] * 1000 for r in rows])
        axis.bar(beams, values, bottom=bottom, label=label)
        bottom += values
    for x, (row, top) in enumerate(zip(rows, bottom)):
        axis.annotate(f"{row['qps']:.0f} q/s", (x, top), ha="center", va="bottom")
    axis.set_xlabel("beam size")
    axis.set_ylabel("milliseconds per query")
    axis.set_title(title, fontsize=10)
    axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    print(f"plot: {path}")
    return True


# ----------------------------------------------------------------------- main
def tables(args, train_s: float, rows: list[dict], naive: dict[str, dict],
           beams: list[dict]) -> tuple[list[Table], list[tuple[str, bool]]]:
    """The run's three tables and its checks (each a claim and whether it held)."""
    base, last, paper = rows[0], rows[-1], naive["paper"]
    sizes = Table(
        f"Search time by database size N: {QUERIES} queries, k={K}, beam {BEAM}, d={args.dim}, "
        f"{args.threads} threads; index trained on {CLASSES * PER_CLASS:,} labelled vectors in "
        f"{train_s:.0f} s (seconds: median of the run's repeats)",
        ("N", "genindex s", "flat s", "IVF-PQ s", "flat/gen", "gen/gen10k", "mask %",
         "B/item RAM", "B/item disk", "IVF-PQ B/item"),
        tuple((f"{r['n']:,}", f"{r['gen']:.3f}", f"{r['flat']:.3f}", f"{r['pq']:.3f}",
               f"{r['flat'] / r['gen']:.2f}", f"{r['gen'] / base['gen']:.2f}",
               f"{100 * r['mask']:.1f}", f"{r['mem']:.1f}", f"{r['disk']:.1f}",
               f"{r['pq_bytes']:.1f}") for r in rows))
    loop = Table(
        f"Naive decoder loop against the batched search, decoder 12 x 768, beam 30 (seconds "
        f"per query; naive on {paper['naive_count']} queries, batched on {paper['count']})",
        ("memory", "naive", "batched", "speed-up", "bfloat16", "speed-up", "same scores %",
         "mask %"),
        tuple((name, f"{r['naive']:.3f}", f"{r['fast']:.4f}", f"{r['naive'] / r['fast']:.1f}x",
               f"{r['bf16']:.4f}", f"{r['naive'] / r['bf16']:.1f}x", f"{100 * r['agree']:.0f}",
               f"{100 * r['mask']:.1f}")
              for name, r in (("197 tokens (paper)", paper), ("1 token (vectors)",
                                                            naive["vectors"]))))
    parts = Table("Throughput by beam size, milliseconds per query by part (paper Fig. 5)",
                  ("beam", "queries/s") + tuple(f"{p} ms" for p in TIMED_PARTS),
                  tuple((str(r["beam"]), f"{r['qps']:.1f}")
                        + tuple(f"{1000 * r[p]:.3f}" for p in TIMED_PARTS) for r in beams))
    checks = [
        (f"search time at N={last['n']:,} <= 1.5 x N={base['n']:,}",
         last["gen"] <= 1.5 * base["gen"]),
        (f"faster than exact Faiss flat search at N={last['n']:,}", last["gen"] < last["flat"]),
        ("trie masking <= 10% of a decode step", max(r["mask"] for r in rows) <= 0.10),
        (">= 20x faster than the naive loop, 12 x 768, beam 30 (float32)",
         paper["naive"] >= 20 * paper["fast"]),
        (f"bytes per item in memory at N={last['n']:,} <= 2 x IVF-PQ's",
         last["mem"] <= 2 * last["pq_bytes"]),
        (f"bytes per item on disk at N={last['n']:,} <= 2 x IVF-PQ's",
         last["disk"] <= 2 * last["pq_bytes"]),
    ]
    return [sizes, loop, parts], checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2,
                        help="torch.set_num_threads and faiss.omp_set_num_threads")
    parser.add_argument("--dim", type=int, default=DIM, help="vector dimension d")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (median)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: N up to 100k, fewer queries for the naive loop")
    parser.add_argument("--out", type=Path, default=Path("results/speed"),
                        help="where results.json and the beam plot go")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    torch.set_num_threads(args.threads)
    faiss_module().omp_set_num_threads(args.threads)
    classes = centres(CLASSES, seed=0, dim=args.dim)
    xb, labels = around(classes, PER_CLASS, seed=1)
    queries, _ = around(classes[:QUERIES], 1, seed=2)  # held out: same classes, new noise
    start = time.perf_counter()
    index = GenerativeIndex.fit(xb, labels, CONFIG, device="cpu", progress=False)
    train_s = time.perf_counter() - start
    print(f"trained in {train_s:.0f} s", flush=True)
    trie_10k = index._state.trie  # noqa: SLF001
    naive = naive_comparisons(trie_10k, queries, 20 if args.quick else 100,
                              2 if args.quick else 20, repeats)
    print("naive loop compared", flush=True)
    sizes = [10_000, 30_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    rows = size_rows(index, xb, queries, sizes, repeats)
    beams = beam_rows(index, queries[:100], repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    plotted = plot_beams(beams, args.out / "speed_beams.png",
                         f"GenerativeIndex search by part: {index.ntotal:,} items, "
                         f"decoder 3 x 256,\n100 queries, {args.threads} CPU thread(s)")
    found, checks = tables(args, train_s, rows, naive, beams)
    notes = tuple(f"- [{'ok' if ok else 'FAIL'}] {name}" for name, ok in checks)
    report.write_table_set(TableSet("Search speed", tuple(found), notes,
                                    ("speed_beams.png",) if plotted else (),
                                    provenance.here(threads=args.threads)), args.out)
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
