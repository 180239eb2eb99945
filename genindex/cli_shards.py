"""The ``genindex`` commands for shards: ``shard-build`` and ``serve``."""

from __future__ import annotations

import argparse
import json
import time


def _shard_build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("index", help="the trained index file (built with --id-map)")
    p.add_argument("--vectors", required=True, metavar="DIR", help="a folder of .npy vector "
                   "slices (NAME.npy, NAME.ids.npy beside it for its ids)")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder of shard files "
                   "(NAME.gidx); finished shards there are kept")
    p.add_argument("--ray", action="store_true", help="build the shards as Ray tasks, at "
                   "once (default: one after another here)")
    p.add_argument("--address", help="with --ray: the Ray cluster to join (e.g. auto; "
                   "default: start a local one)")
    p.add_argument("--cpus-per-shard", type=float, default=1.0, metavar="N",
                   help="with --ray: CPUs each task reserves (default 1)")


def _shard_build(args: argparse.Namespace) -> int:
    from .shard_build import build_shards

    if args.address and not args.ray:
        raise ValueError("--address needs --ray")
    if args.ray:
        from .shards import import_ray

        import_ray().init(address=args.address)
    started = time.perf_counter()
    paths = build_shards(args.index, args.vectors, args.out, ray=args.ray,
                         num_cpus=args.cpus_per_shard, progress=not args.quiet)
    summary = {"out": str(args.out), "shards": [str(p) for p in paths],
               "seconds": round(time.perf_counter() - started, 3)}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{len(paths)} shards in {args.out} ({summary['seconds']:.1f} s)")
    return 0


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="a folder of shard files (*.gidx) of one trained model")
    p.add_argument("--address", help="the Ray cluster to join (e.g. auto; default: start "
                   "a local one)")
    p.add_argument("--host", default="127.0.0.1", help="HTTP host (default 127.0.0.1; "
                   "0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--cpus-per-shard", type=float, default=0.0, metavar="N",
                   help="CPUs each shard replica reserves (default 0: share the machine)")


def _serve(args: argparse.Namespace) -> int:
    from .serving import run

    print(f"serving {args.folder} on http://{args.host}:{args.port}/ (Ctrl-C stops)")
    run(args.folder, address=args.address, host=args.host, port=args.port,
        num_cpus=args.cpus_per_shard, blocking=True)
    return 0


# (name, help, arguments, handler, examples): genindex.cli.COMMANDS takes these
COMMANDS = (
    ("shard-build", "build shard files of a trained index from a folder of vector slices",
     _shard_build_args, _shard_build,
     "  genindex shard-build trained.gidx --vectors slices/ --out shards/\n"
     "  genindex shard-build trained.gidx --vectors slices/ --out shards/ --ray"),
    ("serve", "serve a folder of shards over HTTP with Ray Serve", _serve_args, _serve,
     "  genindex serve shards/ --port 8000\n"
     "  genindex serve /shared/shards --address auto --host 0.0.0.0   (on a Ray cluster)\n"
     "  curl -d '{\"x\": [[0.1, 0.2]], \"k\": 5}' localhost:8000/"),
)
