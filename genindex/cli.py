"""The ``genindex`` command (also ``python -m genindex``).

    genindex build --vectors X.npy --labels y.npy --out my.index   # or --images photos/
    genindex search my.index --vectors Q.npy -k 10 --json
    genindex add my.index --vectors more.npy
    genindex info my.index
    genindex eval my.index --vectors Q.npy --labels yq.npy --db-labels y.npy
    genindex shard-build trained.gidx --vectors slices/ --out shards/ --ray
    genindex serve shards/ --port 8000
    torchrun --nproc_per_node=4 -m genindex build ...   # data-parallel training

Exit status: 0 on success, 1 when the command fails (a one-line ``genindex:
error: ...`` on stderr), 2 for a bad command line, 130 when interrupted.
``GENINDEX_DEBUG=1``: a traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from . import __version__, checks, cli_shards, distributed
from .cli_inputs import (
    check_out,
    expand_images,
    label_kind,
    positive_int,
    read_config,
    read_ids,
    read_items,
    read_vectors,
)
from .config import PRESETS
from .inputs import extract_sharded, open_cache

log = logging.getLogger("genindex")


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error that points to --help."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    args = build_parser().parse_args(argv)
    _setup(args)
    try:
        if args.device is not None:
            checks.as_device(args.device, "--device")
        if args.command != "build" and distributed.launched():
            raise ValueError(f"only 'build' runs under torchrun; run '{args.command}' "
                             "as a single process")
        return args.handler(args)
    except KeyboardInterrupt:
        print("genindex: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        if os.environ.get("GENINDEX_DEBUG"):
            raise
        print("genindex: error: out of memory (lower -k, --beam-size or the number of "
              "queries)", file=sys.stderr)
        return 1
    except (ValueError, TypeError, OSError, RuntimeError) as error:
        if os.environ.get("GENINDEX_DEBUG"):
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"genindex: error: {message}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="genindex", description="Image retrieval as generation (IRGen): "
                     "build, search, update and evaluate a generative index.",
                     epilog="Run 'genindex COMMAND --help' for the options of a command.")
    parser.add_argument("--version", action="version", version=f"genindex {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _Parser(add_help=False)
    common.add_argument("--device", help="where to run: cpu, cuda, cuda:1 "
                        "(default: CUDA when present)")
    common.add_argument("--threads", type=positive_int, help="CPU threads for PyTorch")
    common.add_argument("--json", action="store_true", help="print the result as JSON")
    common.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bars or log messages")
    for command in COMMANDS:
        sub = commands.add_parser(command.name, parents=[common], help=command.help,
                                  description=command.help,
                                  epilog="examples:\n" + command.examples,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        command.arguments(sub)
        sub.set_defaults(handler=command.run)
    return parser


# ------------------------------------------------------------------ arguments
def _build_args(p: argparse.ArgumentParser) -> None:
    _source_args(p, "the items to index")
    p.add_argument("--labels", metavar="FILE", help="class labels: .npy, .csv (label, path "
                   "columns) or .txt ('LABEL' or 'PATH LABEL' lines); without, the index "
                   "learns from nearest neighbours")
    p.add_argument("--labels-from-dirs", action="store_true",
                   help="with --images: an image's class is the name of its folder")
    p.add_argument("--out", required=True, metavar="INDEX", help="the index file to write")
    p.add_argument("--force", action="store_true", help="replace a file already at --out")
    p.add_argument("--config", metavar="CONFIG", help=f"a preset ({', '.join(PRESETS)}), "
                   "IndexConfig fields as inline JSON ('{\"decoder\": {\"n_layer\": 6}}') or "
                   "a JSON file")
    p.add_argument("--seed", type=int, help="random seed (overrides the config's)")
    p.add_argument("--metric", choices=("l2", "ip"), help="search scores: squared L2 "
                   "(default) or inner product")
    p.add_argument("--id-map", action="store_true", help="keep the ids given to 'add --ids' "
                   "(faiss.IndexIDMap2); default: positions (faiss.IndexFlat)")
    _image_args(p)
    p.add_argument("--backbone", default="efficientnet-lite0",
                   help="with --images: efficientnet-lite0 (default, offline), an open_clip "
                   "name such as ViT-B-16, NAME:TAG or NAME:/path/weights.bin")
    p.add_argument("--end-to-end", action="store_true",
                   help="with --images: fine-tune the backbone (the paper; needs labels)")


def _search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("index", metavar="INDEX", help="a saved index file")
    p.add_argument("queries", nargs="*", metavar="QUERY",
                   help="query image files or folders (their images, sorted)")
    p.add_argument("--vectors", metavar="Q.npy", help="query vectors (n, d) instead of images")
    p.add_argument("-k", type=positive_int, default=10, help="results per query (default 10)")
    _search_options(p)
    _image_args(p)


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("index", metavar="INDEX", help="a saved index file")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files or folders to add")
    p.add_argument("--vectors", metavar="X.npy", help="vectors (n, d) to add instead of images")
    p.add_argument("--ids", metavar="IDS.npy", help="int64 ids of the new items "
                   "(default: after the largest id ever used)")
    p.add_argument("--out", metavar="INDEX", help="write the result to this file (default: "
                   "in place)")
    p.add_argument("--force", action="store_true", help="replace a file at --out that is "
                   "not an index file")
    _image_args(p)


def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("index", metavar="INDEX", help="a saved index file")


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("index", metavar="INDEX", help="a saved index file")
    _source_args(p, "the queries")
    labels = p.add_mutually_exclusive_group(required=True)
    labels.add_argument("--labels", metavar="FILE",
                        help="the queries' labels (formats as for build)")
    labels.add_argument("--labels-from-dirs", action="store_true",
                        help="with --images: a query's class is the name of its folder")
    p.add_argument("--db-labels", required=True, metavar="FILE|DIR",
                   help="the indexed items' labels, row i for item id i: build's --labels "
                   "file, or its --images folder if it was built with --labels-from-dirs")
    p.add_argument("-k", type=positive_int, nargs="+", default=[1, 10, 100], metavar="K",
                   help="cut-offs for precision@K, recall@K and MAP@K (default 1 10 100)")
    _search_options(p)
    _image_args(p)


def _source_args(p: argparse.ArgumentParser, what: str) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--vectors", metavar="X.npy", help=f"{what}: float vectors (n, d)")
    source.add_argument("--images", metavar="DIR", help=f"{what}: a folder of images")


def _search_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--beam-size", type=positive_int,
                   help="beams kept per step (default max(k, 10))")
    p.add_argument("--order", choices=("metric", "generative", "semantic"),
                   help="rank by exact distance (default), by identifier log-probability "
                   "or by the cosine of the tokenizer's f_cls")
    p.add_argument("--mmap", action="store_true", help="map the index's code table and "
                   "vectors from disk instead of reading them (large indexes)")


def _image_args(p: argparse.ArgumentParser) -> None:
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--cache-dir", metavar="DIR", help="feature cache folder "
                       "(default $GENINDEX_CACHE or ~/.cache/genindex)")
    cache.add_argument("--no-cache", action="store_true", help="do not cache image features")


# ------------------------------------------------------------------- commands
def _build(args: argparse.Namespace) -> int:
    from .index import GenerativeIndex

    config = read_config(args.config, args.seed)
    if args.images is None and (args.end_to_end or args.labels_from_dirs):
        raise ValueError("--end-to-end and --labels-from-dirs need --images")
    config = config.replace(end_to_end=True) if args.end_to_end else config
    check_out(args.out, args.force, fresh=True)
    items = read_items(args.vectors, args.images, args.labels, args.labels_from_dirs)
    if items.labels is not None:
        checks.as_labels(items.labels, len(items.data))  # refuse bad labels before any work
    device = distributed.init(args.device)
    progress = _progress(args)
    started = time.perf_counter()
    options = {"metric": args.metric, "id_map": args.id_map}
    if items.paths is None:
        index = GenerativeIndex(items.data.shape[1], config, **options)
    else:
        index = GenerativeIndex(None, config, backbone=args.backbone, **options, **_cache(args))
    index.to(device)
    if items.paths is not None and distributed.active() and index.cache and not index.end_to_end:
        extract_sharded(index.backbone, items.paths, device=device, progress=progress,
                        cache=open_cache(index.backbone, index.cache_dir))
    log.info("training on %d items (%d process(es), %s)", len(items.data),
             distributed.world_size(), device)
    history = index.train(items.data, items.labels, progress=progress)
    if distributed.is_main():
        index.add(items.data, progress=progress)
        index.save(args.out, overwrite=args.force)
    summary = {"index": str(args.out), "ntotal": index.ntotal, "d": index.d,
               "world_size": distributed.world_size(), "device": str(device),
               "seconds": round(time.perf_counter() - started, 3),
               "tokenizer_loss": history.tokenizer_loss[-1] if history.tokenizer_loss else None,
               "decoder_loss": history.decoder_loss[-1] if history.decoder_loss else None}
    distributed.shutdown()
    if distributed.is_main():
        _emit(args, summary, f"built {args.out}: {summary['ntotal']} items of dimension "
              f"{summary['d']} in {summary['seconds']:.1f} s on {summary['world_size']} "
              f"process(es), {device}")
    return 0


def _search(args: argparse.Namespace) -> int:
    if bool(args.queries) == bool(args.vectors):
        raise ValueError("give query image files or --vectors Q.npy (one of them)")
    index = _load(args)
    queries = read_vectors(args.vectors) if args.vectors else expand_images(args.queries)
    scores, ids = index.search(queries, args.k, beam_size=args.beam_size, order=args.order,
                               progress=_progress(args))
    names = list(range(len(ids))) if args.vectors else [str(q) for q in queries]
    if args.json:
        _print_json({"k": args.k, "queries": names, "ids": ids.tolist(),
                     "scores": [[None if math.isinf(s) else float(s) for s in row]
                                for row in scores]})
        return 0
    width = max(len(str(name)) for name in names + ["query"])
    print(f"{'query':<{width}}  {'rank':>4}  {'id':>10}  {'score':>10}")
    for name, row_ids, row_scores in zip(names, ids, scores):
        for rank, (item, score) in enumerate(zip(row_ids, row_scores), start=1):
            if item >= 0:
                print(f"{name!s:<{width}}  {rank:>4}  {item:>10}  {score:>10.4f}")
    return 0


def _add(args: argparse.Namespace) -> int:
    if bool(args.images) == bool(args.vectors):
        raise ValueError("give image files or folders, or --vectors X.npy (one of them)")
    out = args.out or args.index
    check_out(out, args.force, fresh=False)
    index = _load(args)
    items: Any = read_vectors(args.vectors) if args.vectors else expand_images(args.images)
    before = index.ntotal
    if args.ids:
        index.add_with_ids(items, read_ids(args.ids), progress=_progress(args))
    else:
        index.add(items, progress=_progress(args))
    index.save(out, overwrite=args.force)
    _emit(args, {"index": str(out), "added": index.ntotal - before, "ntotal": index.ntotal},
          f"added {index.ntotal - before} items to {out}: {index.ntotal} in all")
    return 0


def _info(args: argparse.Namespace) -> int:
    index = _load(args, mmap=True)
    path = Path(args.index)
    files = [p for p in path.iterdir() if p.is_file()] if path.is_dir() else [path]
    info = {"index": str(args.index), **index.describe(),
            "disk_bytes": sum(p.stat().st_size for p in files)}
    if args.json:
        _print_json(info)
    else:
        for key, value in info.items():
            if key != "config":
                print(f"{key + ':':<22}{value}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .cli_inputs import read_label_file
    from .metrics import evaluate

    queries = read_items(args.vectors, args.images, args.labels, args.labels_from_dirs)
    if Path(args.db_labels).is_dir():
        db_labels = read_items(None, args.db_labels, None, labels_from_dirs=True).labels
    else:
        db_labels = read_label_file(args.db_labels, "--db-labels").labels
    if queries.labels.dtype.kind != db_labels.dtype.kind:
        raise ValueError(f"--labels holds {label_kind(queries.labels)} but --db-labels "
                         f"{label_kind(db_labels)}: they must name classes the same way")
    index = _load(args)
    ids = index.search(queries.data, max(args.k), beam_size=args.beam_size, order=args.order,
                       progress=_progress(args)).ids
    quality = evaluate(ids, db_labels, queries.labels, tuple(sorted(set(args.k))))
    result = {f"{name}@{k}": value for name, values in
              (("precision", quality.precision), ("recall", quality.recall),
               ("map", quality.map)) for k, value in values.items()}
    if args.json:
        _print_json({"queries": len(ids), **result})
        return 0
    print(f"{len(ids)} queries")
    print(f"{'K':>5}  {'precision':>9}  {'recall':>9}  {'MAP':>9}")
    for k in sorted(quality.precision):
        print(f"{k:>5}  {quality.precision[k]:>9.4f}  {quality.recall[k]:>9.4f}  "
              f"{quality.map[k]:>9.4f}")
    return 0


# -------------------------------------------------------------------- helpers
def _setup(args: argparse.Namespace) -> None:
    level = logging.WARNING if args.quiet or not distributed.is_main() else logging.INFO
    logging.basicConfig(level=level, format="genindex: %(message)s", stream=sys.stderr)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def _progress(args: argparse.Namespace) -> bool:
    return not args.quiet and distributed.is_main()


def _load(args: argparse.Namespace, mmap: bool = False):
    """The index at ``args.index``; ``mmap`` maps its code table and vectors from disk."""
    from .index import GenerativeIndex

    extra = {"mmap": True} if mmap or getattr(args, "mmap", False) else {}
    return GenerativeIndex.load(args.index, device=args.device, **_cache(args), **extra)


def _cache(args: argparse.Namespace) -> dict[str, Any]:
    """The feature-cache arguments of an index: ``--cache-dir`` and ``--no-cache``."""
    return {"cache_dir": getattr(args, "cache_dir", None),
            "cache": not getattr(args, "no_cache", False)}


def _emit(args: argparse.Namespace, result: dict, text: str) -> None:
    if args.json:
        _print_json(result)
    else:
        print(text)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, allow_nan=False))



class Command(NamedTuple):
    """A sub-command: its name, what it does, its arguments, its handler, examples."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    examples: str


COMMANDS = (
    Command("build", "train an index on vectors or images and save it", _build_args, _build,
            "  genindex build --vectors x.npy --labels y.npy --out my.index\n"
            "  genindex build --images photos/ --labels labels.csv --out my.index\n"
            "  genindex build --images train/ --labels-from-dirs --config paper-large "
            "--out big.index\n"
            "  torchrun --nproc_per_node=4 -m genindex build ...   (one process per GPU)"),
    Command("search", "print the k best items for each query", _search_args, _search,
            "  genindex search my.index query.jpg other.jpg -k 5\n"
            "  genindex search my.index --vectors q.npy -k 10 --json"),
    Command("add", "add items to a saved index (no retraining)", _add_args, _add,
            "  genindex add my.index new/photos/\n"
            "  genindex add my.index --vectors more.npy --ids more_ids.npy"),
    Command("info", "describe a saved index", _info_args, _info,
            "  genindex info my.index --json"),
    Command("eval", "precision@K, recall@K and MAP@K of an index on labelled queries",
            _eval_args, _eval,
            "  genindex eval my.index --vectors q.npy --labels yq.npy --db-labels y.npy\n"
            "  genindex eval my.index --images val/ --labels-from-dirs --db-labels train/"),
) + tuple(Command(*command) for command in cli_shards.COMMANDS)
