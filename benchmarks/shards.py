"""Shards on one machine: the Ray router against the in-process one and a single index.

    python benchmarks/shards.py [--items 1000000] [--shards 1,2,4,8] [--queries 256]
        [--latency-queries 200] [--threads 2] [--out results/shards]

The index of ``benchmarks/speed.py`` (10,000 labelled synthetic vectors of d
256, its config) is trained once with ``id_map=True``; ``--items`` vectors of
new classes (``speed.extra_vectors``) are written as slices (``.npy``) for
each shard count and built into shard files by ``genindex.shard_build``:
one after another in this process, then again as Ray tasks on a local Ray of
``--threads`` CPUs (a task a CPU at a time; the files are compared). The same
items in one index are the "single index" row. Each is searched with the same
``--queries`` queries of known classes (k 10, beam 10, the metric order):
queries/s of one call with all of them, and the latency of
``--latency-queries`` calls of one query each (p50 and p99). Printed per row:
build seconds, resident memory of each shard process (Ray: each actor's
``VmRSS``; in-process: the whole process), and whether the sharded answers
equal the shards' own answers merged (in-process and Ray alike).
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
from benchmarks.common import GIB, status  # noqa: E402
from benchmarks.rows import Table, TableSet  # noqa: E402
from benchmarks.speed import CLASSES, CONFIG, PER_CLASS, around, centres, extra_vectors  # noqa: E402
from genindex import GenerativeIndex  # noqa: E402
from genindex.shard_build import build_shards  # noqa: E402
from genindex.shards import ShardedIndex, import_ray  # noqa: E402

K, BEAM = 10, 10


def rss(pid: int | str = "self") -> float:
    """Resident memory of a process, GiB (``VmRSS``)."""
    return status("VmRSS", pid) / GIB


def timed_searches(index, queries: np.ndarray, single: int) -> dict:
    """Queries/s of one batched call; p50/p99 ms of ``single`` one-query calls."""
    index.search(queries[:8], K, beam_size=BEAM)  # warm-up
    start = time.perf_counter()
    result = index.search(queries, K, beam_size=BEAM)
    qps = len(queries) / (time.perf_counter() - start)
    latencies = []
    for row in queries[:single]:
        start = time.perf_counter()
        index.search(row[None], K, beam_size=BEAM)
        latencies.append(1000 * (time.perf_counter() - start))
    return {"qps": qps, "p50": float(np.percentile(latencies, 50)),
            "p99": float(np.percentile(latencies, 99)), "ids": result.ids}


def write_slices(folder: Path, items: np.ndarray, shards: int) -> None:
    folder.mkdir(parents=True)
    for s, rows in enumerate(np.array_split(np.arange(len(items)), shards)):
        np.save(folder / f"part-{s:03d}.npy", items[rows])
        np.save(folder / f"part-{s:03d}.ids.npy", rows.astype(np.int64))


def shard_rows(args, trained_path: Path, items: np.ndarray, queries: np.ndarray,
               work: Path, ray) -> list[tuple]:
    rows = []
    for count in args.shards:
        slices = work / f"slices-{count}"
        write_slices(slices, items, count)
        start = time.perf_counter()
        serial = build_shards(trained_path, slices, work / f"serial-{count}", progress=False)
        serial_s = time.perf_counter() - start
        start = time.perf_counter()
        parallel = build_shards(trained_path, slices, work / f"ray-{count}", ray=True,
                                progress=False)
        ray_s = time.perf_counter() - start
        same_files = all(a.read_bytes() == b.read_bytes() for a, b in zip(serial, parallel))
        for backend, paths in (("threads", serial), ("ray", parallel)):
            with ShardedIndex(paths, backend=backend) as sharded:
                run = timed_searches(sharded, queries, args.latency_queries)
                memory = ([rss(i["pid"]) for i in sharded._call(range(count), "info")]
                          if backend == "ray" else [rss()])
            rows.append((count, backend, run, memory, serial_s, ray_s, same_files))
            print(f"  {count} shard(s), {backend}: {run['qps']:,.0f} q/s, p50 "
                  f"{run['p50']:.1f} ms, p99 {run['p99']:.1f} ms; build serial "
                  f"{serial_s:.0f} s, Ray {ray_s:.0f} s", flush=True)
        for path in serial + parallel:
            path.unlink()
    return rows


def tables(args, single: dict, single_build: float, rows: list[tuple]) -> list[Table]:
    head = ("index", "shards", "router", "queries/s", "p50 ms", "p99 ms",
            "GiB per shard process", "build s (serial / Ray tasks)", "Ray files = serial")
    body = [("single index", "1", "-", f"{single['qps']:,.0f}", f"{single['p50']:.1f}",
             f"{single['p99']:.1f}", f"{rss():.2f} (this process)", f"{single_build:.0f}",
             "-")]
    for count, backend, run, memory, serial_s, ray_s, same in rows:
        body.append(("sharded", str(count), {"threads": "in-process", "ray": "Ray"}[backend],
                     f"{run['qps']:,.0f}", f"{run['p50']:.1f}", f"{run['p99']:.1f}",
                     (f"{np.mean(memory):.2f} (max {max(memory):.2f})" if backend == "ray"
                      else f"{memory[0]:.2f} (this process, all shards)"),
                     f"{serial_s:.0f} / {ray_s:.0f}", "yes" if same else "NO"))
    caption = (f"{args.items:,} items of d 256 in shards, {args.queries} queries (k {K}, beam "
               f"{BEAM}, metric order), latency over {args.latency_queries} one-query calls, "
               f"{args.threads} CPUs")
    return [Table(caption, head, tuple(body))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--shards", type=lambda s: [int(v) for v in s.split(",")],
                        default=[1, 2, 4, 8])
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--latency-queries", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/shards"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    ray = import_ray()
    ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False)
    classes = centres(CLASSES, seed=0)
    xb, labels = around(classes, PER_CLASS, seed=1)
    trained = GenerativeIndex.fit(xb, labels, CONFIG, id_map=True, device="cpu",
                                  progress=False)
    items = extra_vectors(args.items, seed=10**6)
    queries = items[::max(1, len(items) // args.queries)][:args.queries] + np.float32(0.1)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        trained.save(work / "trained.gidx")
        start = time.perf_counter()
        single = GenerativeIndex.load(work / "trained.gidx")
        single.reset()
        single.add_with_ids(items, np.arange(len(items)), progress=False)
        single_build = time.perf_counter() - start
        single_run = timed_searches(single, queries, args.latency_queries)
        print(f"  single index: {single_run['qps']:,.0f} q/s", flush=True)
        del single
        rows = shard_rows(args, work / "trained.gidx", items, queries, work, ray)
    ray.shutdown()
    found = tables(args, single_run, single_build, rows)
    notes = ("- the per-shard answers are the shards' own, merged by distance: rows of one "
             "shard count give the same ids with either router",)
    same = all((rows[i][2]["ids"] == rows[i + 1][2]["ids"]).all()  # threads, then Ray
               for i in range(0, len(rows), 2))
    notes += (f"- [{'ok' if same else 'FAIL'}] Ray and in-process routers gave the same ids",)
    report.write_table_set(TableSet("Shards on one machine", tuple(found), notes, (),
                                    provenance.here(threads=args.threads)), args.out)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
