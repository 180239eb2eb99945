"""The FLOP account of one search, against the peak this machine reaches for the same shapes.

For the main job's index (``benchmarks/configs/<dataset>-feature.json``, seed
0, built on the cached features and kept in genindex's cache folder) and for
the paper's 12 x 768 decoder on the same tokenizer and items (random weights:
the shapes and speed, not the quality), the reported queries are searched four
ways (``VARIANTS``): as the search ran before the ragged step and the CPU
settings (float32, every step dense over all L codes, 8,192 beams a batch,
PyTorch's attention kernel for the cached steps, 64 MiB gathers, the first
block's attention computed for every beam: those module settings put back),
and as it runs now in float32, in bfloat16 with dense steps, and in bfloat16
as it is (the default on a CPU with AMX). Each search
is run with ``timings`` while hooks count the FLOPs of every matrix product by
part: the encoder (the queries' memory tokens), the decoder blocks, the output
layer ("head") and the exact distances of the items. The peak is measured
here, for every (in, out) shape a part multiplies, on 8,192 rows in both
precisions; a part's peak is its FLOP-weighted harmonic mean. Attention over
at most M cached positions and the mask and select parts (memory traffic, no
matrix products) are timed, not counted.

    python benchmarks/roofline.py [--dataset emoji] [--k 100] [--beam 100]
        [--paper-k 30] [--paper-beam 30] [--paper-queries 256] [--repeats 3]
        [--threads 2] [--out results/roofline]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import provenance, report  # noqa: E402
from benchmarks.common import CONFIGS, features  # noqa: E402
from benchmarks.datasets import load  # noqa: E402
from benchmarks.rows import Table, TableSet  # noqa: E402
from genindex import GenerativeIndex, IndexConfig, beam, steps, store, tables  # noqa: E402
from genindex import decoder as decoder_module  # noqa: E402
from genindex.backbones import get_backbone  # noqa: E402
from genindex.beam import TIMED_PARTS  # noqa: E402
from genindex.cache import default_cache_dir  # noqa: E402
from genindex.train import new_decoder  # noqa: E402

PARTS = ("encoder", "decoder", "head", "items")  # the parts with matrix products
PEAK_ROWS = 8192
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# the search as it was before the ragged step and the CPU settings, and as it is now
BEFORE = {"RAGGED_SHARE": -1.0, "CPU_BEAMS_IN_FLIGHT": 8192, "GATHER_CHUNK": 1 << 24,
          "SHORT_ATTENTION": 0, "FIRST_CODE_TABLE": False}
VARIANTS = (  # name, precision, settings changed from the library's
    ("before: dense step, 8,192 beams, PyTorch attention, 64 MiB gathers, no table",
     "float32", BEFORE),
    ("now, float32 (exact)", "float32", {}),
    ("now, bfloat16, dense step", "bfloat16", {"RAGGED_SHARE": -1.0}),
    ("now, bfloat16 (the default here)", "bfloat16", {}),
)


class Account:
    """FLOPs by part and by (in, out) shape, counted by hooks during one search."""

    def __init__(self) -> None:
        self.part = "encoder"
        self.flops: dict[str, dict[tuple[int, int], float]] = defaultdict(
            lambda: defaultdict(float))

    def add(self, rows: int, inner: int, outer: int, part: str | None = None) -> None:
        self.flops[part or self.part][(inner, outer)] += 2.0 * rows * inner * outer

    def total(self, part: str) -> float:
        return sum(self.flops[part].values())


@contextmanager
def counting(index: GenerativeIndex, account: Account):
    """Count the FLOPs of ``index``'s decoder, head and item distances while inside."""
    state = index._require_trained()
    decoder, store = state.decoder, state.vectors
    hooks = [m.register_forward_hook(lambda m, inputs, out: account.add(
        inputs[0].numel() // m.in_features, m.in_features, m.out_features))
        for m in decoder.modules() if isinstance(m, torch.nn.Linear)]
    originals = {name: getattr(decoder, name) for name in
                 ("start", "advance", "level_logits", "code_logits")}
    code_dim = None if decoder.codewords is None else decoder.codewords.shape[-1]

    def in_part(name, part, count=None):
        def call(*args, **kwargs):
            account.part = part
            if count is not None:
                count(*args)
            return originals[name](*args, **kwargs)
        return call

    def dense(h, level):  # (B, E) x (E, L), and the codewords' (B, D) x (D, L)
        rows, size = h.shape[0] * h.shape[1], decoder.codebook_size
        account.add(rows, h.shape[-1], size)
        if code_dim:
            account.add(rows, code_dim, size)

    def ragged(h, rows, level, codes):  # one dot product per allowed code
        account.add(len(codes), h.shape[-1], 1)
        if code_dim:
            account.add(len(codes), code_dim, 1)

    decoder.start = in_part("start", "encoder")
    decoder.advance = in_part("advance", "decoder")
    decoder.level_logits = in_part("level_logits", "head", dense)
    decoder.code_logits = in_part("code_logits", "head", ragged)
    distance = store.distance

    def counted_distance(device, queries, metric="l2", exact=True):
        measure = distance(device, queries, metric, exact)

        def pairs(query, ids):
            account.add(len(ids), queries.shape[1], 1, part="items")
            return measure(query, ids)
        return pairs

    store.distance = counted_distance
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        for name in originals:
            delattr(decoder, name)
        del store.distance


def peaks(shapes: set[tuple[int, int]], repeats: int) -> dict[str, dict[tuple, float]]:
    """GFLOP/s of (8192, in) x (in, out) products for each shape, in each precision."""
    out: dict[str, dict[tuple, float]] = {}
    for name, dtype in DTYPES.items():
        out[name] = {}
        for inner, outer in sorted(shapes):
            x = torch.randn(PEAK_ROWS, inner, dtype=dtype)
            w = torch.randn(inner, outer, dtype=dtype)
            for _ in range(2):
                x @ w
            times = []
            for _ in range(max(repeats, 3)):
                start = time.perf_counter()
                x @ w
                times.append(time.perf_counter() - start)
            out[name][(inner, outer)] = 2 * PEAK_ROWS * inner * outer / min(times) / 1e9
    return out


def part_peak(flops: dict[tuple, float], peak: dict[tuple, float]) -> float:
    """The FLOP-weighted harmonic mean of the shapes' peaks: the part's best time."""
    total = sum(flops.values())
    return total / sum(f / peak[shape] for shape, f in flops.items()) if total else 0.0


@contextmanager
def settings(changes: dict):
    """The library's module settings ``changes`` (by name) while inside."""
    modules = [steps, beam, store, decoder_module, tables]
    saved = []
    for name, value in changes.items():
        module = next(m for m in modules if hasattr(m, name))
        saved.append((module, name, getattr(module, name)))
        setattr(module, name, value)
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def measure(index, queries, k, beam, dtype, repeats) -> dict:
    """Queries/s (median of ``repeats`` searches), then one timed, counted search."""
    search = lambda **kw: index.search(queries, k, beam_size=beam, dtype=dtype, **kw)  # noqa: E731
    search()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        search()
        times.append(time.perf_counter() - start)
    account, timings = Account(), {}
    with counting(index, account):
        search(timings=timings)
    return {"qps": len(queries) / float(np.median(times)), "account": account,
            "timings": timings}


def account_table(title: str, run: dict, peak: dict, n: int) -> Table:
    rows = []
    for part in TIMED_PARTS:
        seconds = run["timings"].get(part, 0.0)
        flops = run["account"].total(part) if part in PARTS else 0.0
        achieved = flops / seconds / 1e9 if seconds and flops else 0.0
        best = part_peak(run["account"].flops[part], peak) if flops else 0.0
        rows.append((part, f"{flops / n / 1e6:.2f}", f"{1000 * seconds / n:.3f}",
                     f"{achieved:.1f}", f"{best:.1f}" if best else "-",
                     f"{100 * achieved / best:.0f}" if best else "-"))
    return Table(title, ("part", "MFLOP/query", "ms/query", "GFLOP/s", "peak GFLOP/s",
                         "% of peak"), tuple(rows))


def emoji_index(args, db, labels) -> GenerativeIndex:
    """The main job's index, seed 0, built once and kept in genindex's cache folder."""
    text = (CONFIGS / f"{args.dataset}-feature.json").read_text()
    config = IndexConfig.from_json(text)
    key = hashlib.sha256((text + str(db.shape) + str(float(db.sum()))).encode()).hexdigest()
    path = default_cache_dir() / "roofline" / f"{args.dataset}-{key[:16]}.gidx"
    if path.exists():
        return GenerativeIndex.load(path, device="cpu")
    index = GenerativeIndex.fit(db, labels, config, device="cpu", progress=not args.quiet)
    index.save(path)
    return index


def paper_index(index: GenerativeIndex) -> GenerativeIndex:
    """``index`` with a randomly initialised 12 x 768 decoder (the paper's size)."""
    paper = index.config.replace(decoder=dataclasses.replace(
        index.config.decoder, n_layer=12, n_head=12, n_embd=768))
    state = index._require_trained()
    torch.manual_seed(0)
    decoder = new_decoder(state.tokenizer, paper).eval()
    clone = GenerativeIndex(index.d, paper, metric=index.metric)
    clone._state = state._replace(decoder=decoder)
    return clone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="emoji")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--beam", type=int, default=100)
    parser.add_argument("--paper-k", type=int, default=30)
    parser.add_argument("--paper-beam", type=int, default=30)
    parser.add_argument("--paper-queries", type=int, default=256,
                        help="the first N queries for the 12 x 768 decoder")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("results/roofline"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load(args.dataset, None, None, split="test")
    db, queries = features(data, get_backbone("efficientnet-lite0"), "efficientnet-lite0",
                           progress=not args.quiet)
    main_index = emoji_index(args, db, np.asarray(data.db_labels))
    setups = [("main job's config", main_index, queries, args.k, args.beam),
              ("paper's 12 x 768 decoder, random weights", paper_index(main_index),
               queries[:args.paper_queries], args.paper_k, args.paper_beam)]
    runs, shapes = [], set()
    for name, index, rows, k, beams in setups:
        for variant, dtype, changes in VARIANTS:
            with settings(changes):
                run = measure(index, rows, k, beams, dtype, args.repeats)
            runs.append((name, len(rows), k, beams, variant, dtype, run))
            shapes |= {s for part in PARTS for s in run["account"].flops[part]}
            print(f"{name}, {variant}: {run['qps']:.0f} queries/s", flush=True)
    peak = peaks(shapes, args.repeats)
    tables = [Table(f"Queries/s on {args.dataset} queries, {args.threads} threads (median of "
                    f"{args.repeats} searches)", ("index", "queries", "k", "beam", "search",
                                                  "queries/s"),
                    tuple((name, f"{n:,}", str(k), str(b), variant, f"{run['qps']:.0f}")
                          for name, n, k, b, variant, dtype, run in runs), text_columns=5)]
    tables += [account_table(f"FLOP account: {name}, k {k}, beam {b}; {variant}",
                             run, peak[dtype], n)
               for name, n, k, b, variant, dtype, run in runs]
    tables.append(Table(f"Measured peak of ({PEAK_ROWS}, in) x (in, out) products, GFLOP/s",
                        ("in x out", *DTYPES),
                        tuple((f"{i} x {o}", *(f"{peak[d][(i, o)]:.1f}" for d in DTYPES))
                              for i, o in sorted(shapes))))
    result = TableSet("Search FLOP account against the measured peak", tuple(tables),
                      provenance=provenance.here(argv, args.threads))
    report.write_table_set(result, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
