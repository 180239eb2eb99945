"""Per-item RAM and disk of an index holding many added items, and what that makes of 1B.

    python benchmarks/studies/memory.py [--items 10000000] [--chunk 500000] [--dim 256]

The index of ``benchmarks/speed.py`` (trained on 10,000 labelled synthetic
vectors, the default CPU config with fewer epochs) is built with
``IndexConfig(store_vectors=False)``; then ``--items`` vectors of new classes
are added in chunks of ``--chunk`` (each generated, added and freed). Printed:
the process's resident memory before and after the adds (``VmRSS``) and its
peak (``VmHWM``), the prefix tree's own bytes, the saved file's size, each per
added item, the seconds the adds and the save took, queries/s of 256 queries
(k 10, beam 10) at that size, and the per-item figures scaled to 100M and 1B.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.common import GIB, status  # noqa: E402
from benchmarks.speed import CLASSES, CONFIG, PER_CLASS, around, centres, extra_vectors  # noqa: E402
from genindex import GenerativeIndex  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000_000)
    parser.add_argument("--chunk", type=int, default=500_000)
    parser.add_argument("--dim", type=int, default=256)
    args = parser.parse_args(argv)
    xb, labels = around(centres(CLASSES, 0, args.dim), PER_CLASS, 1)
    queries, _ = around(centres(CLASSES, 0, args.dim)[:256], 1, 2)
    start = time.perf_counter()
    index = GenerativeIndex.fit(xb, labels, CONFIG.replace(store_vectors=False),
                                progress=False)
    print(f"{torch.get_num_threads()} threads, d {args.dim}: trained on {len(xb):,} "
          f"vectors in {time.perf_counter() - start:.0f} s", flush=True)
    gc.collect()
    before = status("VmRSS")
    start = time.perf_counter()
    for offset in range(0, args.items, args.chunk):
        index.add(extra_vectors(min(args.chunk, args.items - offset), 10 + offset, args.dim))
        gc.collect()
    added_s = time.perf_counter() - start
    after, peak, n = status("VmRSS"), status("VmHWM"), index.ntotal
    start = time.perf_counter()
    index.search(queries, 10, beam_size=10)
    qps = len(queries) / (time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        index.save(Path(folder) / "index.gidx")
        saved_s = time.perf_counter() - start
        disk = (Path(folder) / "index.gidx").stat().st_size
    ram = (after - before) / args.items
    tree = index._state.trie.nbytes() / n  # noqa: SLF001 - the benchmark reads the snapshot
    print(f"\n{n:,} items ({args.items:,} added in {added_s:.0f} s; saved in {saved_s:.0f} s)"
          f"\n\n| | bytes per item | at {n / 1e6:.0f}M | at 100M | at 1B |\n"
          "|---|---:|---:|---:|---:|")
    for name, per_item, total in (("resident memory added by the items", ram, after - before),
                                  ("prefix tree (codes, ids, nodes)", tree, tree * n),
                                  ("index file on disk", disk / n, disk)):
        print(f"| {name} | {per_item:.1f} | {total / GIB:.2f} GiB | "
              f"{per_item * 1e8 / GIB:.1f} GiB | {per_item * 1e9 / GIB:.0f} GiB |")
    print(f"\nresident memory: {before / GIB:.2f} GiB before the adds, {after / GIB:.2f} GiB "
          f"after, peak {peak / GIB:.2f} GiB; search at {n:,} items: {qps:.0f} queries/s "
          "(256 queries, k 10, beam 10)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
