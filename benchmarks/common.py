"""What the benchmark scripts share: their configs, their start (data set, backbone,
features), the splits they choose settings on, and small measuring helpers."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from benchmarks import datasets
from genindex import IndexConfig
from genindex.backbones import get_backbone
from genindex.inputs import extract_features, open_cache

CONFIGS = Path(__file__).resolve().parent / "configs"
GIB = 1 << 30


def split_list(text: str) -> list[str]:
    """The parts of a comma-separated option, empty parts left out."""
    return [part for part in text.split(",") if part]


def genindex_config(choice: str | None, dataset: str) -> tuple[IndexConfig | None, str]:
    """One genindex config and its name: a file, 'default', or (None) the data set's own
    tuned file where there is one, else the defaults."""
    tuned = CONFIGS / f"{dataset}.json"
    if choice == "default" or (choice is None and not tuned.exists()):
        return None, "default"
    path, name = (tuned, f"benchmarks/configs/{tuned.name}") if choice is None \
        else (Path(choice), choice)
    if not path.is_file():
        raise SystemExit(f"run.py: error: --config {choice}: no such file")
    return IndexConfig.from_json(path.read_text()), name


def genindex_configs(choice: str | None, dataset: str) -> list[tuple[IndexConfig | None, str]]:
    """Every genindex config to run: those named (comma-separated), or the data set's
    ``<dataset>.json`` and ``<dataset>-*.json`` files, or the defaults."""
    if choice is not None:
        return [genindex_config(part, dataset) for part in split_list(choice)]
    files = [CONFIGS / f"{dataset}.json"] + sorted(CONFIGS.glob(f"{dataset}-*.json"))
    found = [str(path) for path in files if path.is_file()]
    return [(IndexConfig.from_json(Path(path).read_text()),
             f"benchmarks/configs/{Path(path).name}") for path in found] or [(None, "default")]


class Setup(NamedTuple):
    """What every runner starts from: the genindex configs, the data and its features."""

    configs: list[tuple[IndexConfig | None, str]]
    data: datasets.Dataset
    backbone: Any
    db: np.ndarray
    queries: np.ndarray

    @property
    def config(self) -> IndexConfig | None:
        """The first config (the runners that build one index use it)."""
        return self.configs[0][0]

    @property
    def config_name(self) -> str:
        return self.configs[0][1]


def prepare_arguments(parser: argparse.ArgumentParser, config_help: str) -> None:
    """The options :func:`prepare` reads, for the runners that build one index."""
    parser.add_argument("--dataset", required=True, help=f"one of {datasets.names()}")
    parser.add_argument("--data-root", help="where the data set lives or is fetched to")
    parser.add_argument("--limit", type=int, help="keep only the first N classes")
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--config", help=config_help)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def study_parser(doc: str, cache: str) -> argparse.ArgumentParser:
    """The command line of a study that builds on the validation split: :func:`prepare`'s
    options, ``--seeds`` and a ``--cache`` folder (default: genindex's cache / ``cache``)."""
    from genindex.cache import default_cache_dir

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    prepare_arguments(parser, "as run.py's --config (one file)")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=default_cache_dir() / cache)
    return parser


def prepare(args) -> Setup:
    """The runners' common start: logging, threads, configs, data set, backbone, features.
    ``args`` has dataset, data_root, limit, backbone, config, device, threads and quiet,
    and may have split and query_vendor."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = genindex_configs(args.config, args.dataset)
    options = {"query_vendor": args.query_vendor} if getattr(args, "query_vendor", None) \
        else {}
    data = datasets.load(args.dataset, args.data_root, args.limit,
                         split=getattr(args, "split", "test"), **options)
    backbone = get_backbone(args.backbone).to(args.device)
    db, queries = features(data, backbone, args.backbone, device=args.device,
                           progress=not args.quiet)
    return Setup(configs, data, backbone, db, queries)


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


def prepare_validation(args) -> tuple[Setup, np.ndarray, np.ndarray]:
    """:func:`prepare` on the data set's validation split (never the reported queries),
    with the database's and the queries' labels as arrays."""
    args.split = "val"
    setup = prepare(args)
    data = setup.data
    return setup, np.asarray(data.db_labels), np.asarray(data.query_labels)


def validation_split(setup: Setup, which: str):
    """(database, its labels, queries, their labels) where settings are chosen: ``"val"``,
    the data set's validation split as loaded; ``"heldout"``, database items held out as
    queries (no reported query is read)."""
    if which == "val":
        data = setup.data
        return setup.db, np.asarray(data.db_labels), setup.queries, np.asarray(data.query_labels)
    labels = np.asarray(setup.data.db_labels)
    q_rows = datasets.held_out_rows(labels)
    db_rows = np.setdiff1d(np.arange(len(labels)), q_rows)
    return setup.db[db_rows], labels[db_rows], setup.db[q_rows], labels[q_rows]


def timed(call, *args, **kwargs) -> tuple[Any, float]:
    """``call(*args, **kwargs)`` and the seconds it took."""
    start = time.perf_counter()
    result = call(*args, **kwargs)
    return result, time.perf_counter() - start


def status(field: str, pid: int | str = "self") -> int:
    """A ``/proc/<pid>/status`` memory field (VmRSS, VmHWM) in bytes (this process's
    by default)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise SystemExit(f"reading /proc/{pid}/status (Linux only): no {field}")


def throughput(search, queries: np.ndarray) -> tuple[np.ndarray, float]:
    """Result ids of ``search(queries)`` and queries/s of that call."""
    start = time.perf_counter()
    ids = search(queries)
    return ids, len(queries) / (time.perf_counter() - start)
