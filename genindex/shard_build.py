"""Building shard files in parallel: one trained index, a folder of vector slices.

    genindex shard-build trained.gidx --vectors slices/ --out shards/ [--ray]

Each slice is a ``.npy`` file of vectors (n, d), with ``<name>.ids.npy`` beside
it for its global ids (default: positions, slice after slice in name order).
Its shard is the trained index emptied, the slice added under its ids, and
saved as ``<out>/<name>.gidx``. Saves are atomic, so a file there is a
finished shard: a rerun skips it, and an interrupted build resumes where it
stopped. ``<out>/manifest.json`` names the model (:func:`~genindex.shards.model_digest`)
and the slices; a rerun with another model or other slices is refused.

With Ray (:func:`build_shards` ``ray=True``) every shard left is one task, and
the cluster runs as many at once as it has CPUs (``num_cpus`` per task,
default 1); without, they run one after another in this process.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .index import GenerativeIndex
from .shards import import_ray, model_digest

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
ROWS_PER_ADD = 1 << 20  # a slice is added this many rows at a time (bounded memory)


@dataclass(frozen=True)
class Slice:
    """One vector file and the shard it becomes."""

    name: str
    vectors: str  # the .npy file of vectors (n, d)
    ids: str | None  # its .ids.npy file, or None: ids first_id .. first_id + rows - 1
    rows: int
    first_id: int


def plan(folder: str | os.PathLike, d: int) -> list[Slice]:
    """The slices of ``folder``'s ``.npy`` files (``.ids.npy`` beside them), in name
    order, each checked to be (n, ``d``) with n ids where an ids file is given."""
    files = sorted(p for p in Path(folder).glob("*.npy") if not p.name.endswith(".ids.npy"))
    if not files:
        raise FileNotFoundError(f"{folder}: no .npy vector files to build shards from")
    slices, first = [], 0
    for path in files:
        shape = np.load(path, mmap_mode="r").shape
        if len(shape) != 2 or shape[1] != d:
            raise ValueError(f"{path}: vectors of shape (n, {d}) expected (the index's d), "
                             f"got {shape}")
        ids = path.with_name(path.name[:-4] + ".ids.npy")
        if ids.exists() and np.load(ids, mmap_mode="r").shape != (shape[0],):
            raise ValueError(f"{ids}: {shape[0]} ids expected, one per row of {path.name}")
        slices.append(Slice(path.name[:-4], os.fspath(path), os.fspath(ids) if ids.exists()
                            else None, int(shape[0]), first))
        first += shape[0]
    return slices


def build_shards(index: str | os.PathLike, vectors: str | os.PathLike,
                 out: str | os.PathLike, *, ray: bool = False, num_cpus: float = 1,
                 progress: bool = True) -> list[Path]:
    """A shard file in ``out`` for every slice of the folder ``vectors``, from the
    trained ``index`` file (an ``id_map=True`` index); the shard files, in slice
    order. Finished shards are kept (see the module's text)."""
    trained = GenerativeIndex.load(index, device="cpu", mmap=True)
    if not trained.id_map:
        raise ValueError(f"{index}: shards keep global ids; train it with id_map=True")
    slices = plan(vectors, trained.d)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    _check_manifest(folder, {"model": model_digest(trained), "slices": [
        [s.name, s.rows, s.first_id, s.ids is not None] for s in slices]})
    paths = [folder / f"{s.name}.gidx" for s in slices]
    todo = [(s, p) for s, p in zip(slices, paths) if not p.exists()]
    log.info("%d of %d shards to build in %s", len(todo), len(slices), folder)
    bar = tqdm(total=len(slices), initial=len(slices) - len(todo), desc="shards",
               unit="shard", disable=not progress)
    if ray:
        _on_ray(os.fspath(index), todo, num_cpus, bar)
    else:
        for piece, path in todo:
            build_shard(os.fspath(index), piece, os.fspath(path))
            bar.update()
    bar.close()
    return paths


def build_shard(index: str, piece: Slice, path: str) -> int:
    """One shard: the trained ``index`` file emptied, ``piece`` added, saved at
    ``path``; its number of items."""
    shard = GenerativeIndex.load(index, device="cpu")
    shard.reset()
    x = np.load(piece.vectors, mmap_mode="r")
    ids = (np.load(piece.ids) if piece.ids is not None else
           np.arange(piece.first_id, piece.first_id + piece.rows, dtype=np.int64))
    for start in range(0, piece.rows, ROWS_PER_ADD):
        rows = slice(start, start + ROWS_PER_ADD)
        shard.add_with_ids(np.asarray(x[rows], dtype=np.float32), ids[rows], progress=False)
    shard.save(path)
    return shard.ntotal


def _on_ray(index: str, todo: list[tuple[Slice, Path]], num_cpus: float, bar: Any) -> None:
    """Every shard of ``todo`` as a Ray task, run at once as the cluster allows."""
    ray = import_ray()
    task = ray.remote(num_cpus=num_cpus)(build_shard)
    pending = [task.remote(index, piece, os.fspath(path)) for piece, path in todo]
    while pending:
        done, pending = ray.wait(pending)
        ray.get(done)  # a task's error is raised here, the finished shards kept
        bar.update(len(done))


def _check_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Write ``folder``'s manifest, or refuse a folder built from something else."""
    path = folder / MANIFEST
    if path.exists():
        if json.loads(path.read_text()) != manifest:
            raise ValueError(f"{folder} holds shards of another model or other slices "
                             f"(its {MANIFEST} differs); build into a new folder")
        return
    temporary = path.with_name(MANIFEST + ".tmp")
    temporary.write_text(json.dumps(manifest, indent=1))
    os.replace(temporary, path)
