"""What a saved index holds, in one place: the seam between an index and its file.

:func:`write_index` turns an index's parts into a body and named arrays and
hands them to :mod:`genindex.container` (one file, replaced atomically);
:func:`read_index` turns them back, every array checked against the others.
A folder saved by genindex 0.1 (format version 1) is read by
:mod:`genindex.legacy` into the same parts.

The body: ``d``, ``config`` (the IndexConfig as a dict), ``next_id``,
``refreshes``, ``num_classes`` and ``codebook_size`` (the L training used),
``backbone`` (its spec, or null). Tensors (names with a dot): ``tokenizer.*``,
``decoder.*``, and ``backbone.*`` for a randomly initialised frozen backbone
(a pretrained one is saved by name, an end-to-end one inside the tokenizer).
Arrays: ``ids`` and ``codes`` (the trie's rows), ``fresh_ids``, and with
stored vectors ``vector_ids`` and ``vectors``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from . import checks, container, legacy
from .backbones import Backbone, saved_backbone
from .config import IndexConfig
from .container import IndexFormatError
from .decoder import Decoder
from .snapshot import NO_IDS, Snapshot, with_fresh
from .store import VectorStore
from .tokenizer import SemanticTokenizer
from .train import decoder_input, freeze, new_decoder
from .trie import Trie


class Saved(NamedTuple):
    """A saved index, read back."""

    d: int
    config: IndexConfig
    backbone: Backbone | None
    snapshot: Snapshot
    next_id: int
    refreshes: int
    metric: str | None = "l2"  # None: no stored vectors, the generative order only
    id_map: bool = True  # ids given (faiss.IndexIDMap2) or positions (faiss.IndexFlat)
    nprobe: int | None = None  # the default beam size set by the user
    k_factor: float = 1.0  # the default share of candidates the metric order ranks


def write_index(path: str | os.PathLike, saved: Saved, overwrite: bool = False) -> None:
    """Write ``saved`` to the file ``path``, atomically (see :mod:`genindex.container`),
    once it has passed the checks a load applies (:func:`check_parts`)."""
    container.write(path, *_parts(saved), overwrite)


def dumps(saved: Saved) -> bytes:
    """``saved`` as the bytes of an index file (pickling, ``faiss.serialize_index``),
    checked as :func:`write_index` checks them."""
    return container.dumps(*_parts(saved))


def loads(blob: bytes, backbone: Backbone | None = None) -> Saved:
    """The index :func:`dumps` gave, checked as :func:`read_index` checks a file."""
    body, arrays = container.loads(blob)
    return _saved(body, _tensors(arrays), arrays, "the serialized index", backbone)


def read_index(path: str | os.PathLike, mmap: bool = False,
               backbone: Backbone | None = None) -> Saved:
    """The index saved at ``path``; ``mmap`` maps its code table and vectors from disk.

    ``backbone``: the caller's instead of the one the file names (a frozen
    backbone only: an end-to-end index holds its fine-tuned one). Raises
    :class:`IndexFormatError` for anything missing, damaged or inconsistent.
    """
    mapped = ("codes", "vectors") if mmap else ()
    if Path(path).is_dir():
        body, tensors, arrays = legacy.read_folder(path, mmap=mapped)
    else:
        body, arrays = container.read(path, mmap=mapped)
        tensors = _tensors(arrays)
    return _saved(body, tensors, arrays, path, backbone)


def _parts(saved: Saved) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The body and the named arrays (tensors included) of ``saved``."""
    snapshot, backbone, config = saved.snapshot, saved.backbone, saved.config
    tensors = {**{f"tokenizer.{k}": v for k, v in snapshot.tokenizer.state_dict().items()},
               **{f"decoder.{k}": v for k, v in snapshot.decoder.state_dict().items()}}
    if backbone is not None and not config.end_to_end and not backbone.pretrained_weights:
        tensors.update({f"backbone.{k}": v for k, v in backbone.state_dict().items()})
    arrays = {"ids": snapshot.trie.ids, "codes": snapshot.trie.codes,
              "fresh_ids": snapshot.fresh}
    if snapshot.vectors is not None:
        arrays["vector_ids"], arrays["vectors"] = snapshot.vectors.ids, snapshot.vectors.vectors
    body = {"d": saved.d, "config": config.to_dict(), "next_id": saved.next_id,
            "refreshes": saved.refreshes, "num_classes": snapshot.tokenizer.num_classes,
            "codebook_size": snapshot.tokenizer.quantizer.codebook_size,
            "backbone": None if backbone is None else backbone.spec(),
            "metric": saved.metric, "id_map": saved.id_map, "nprobe": saved.nprobe,
            "k_factor": saved.k_factor}
    arrays.update({k: v.detach().cpu().numpy() for k, v in tensors.items()})
    check_parts(body, arrays)
    return body, arrays


def _tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The model tensors (names with a dot) taken out of ``arrays``."""
    return {k: torch.from_numpy(arrays.pop(k)) for k in [k for k in arrays if "." in k]}


def _saved(body: dict[str, Any], tensors: dict[str, torch.Tensor],
           arrays: dict[str, np.ndarray], path: Any, backbone: Backbone | None) -> Saved:
    """The index these parts hold, every part checked against the others."""
    if backbone is not None:
        _check_given(body, backbone)
    try:
        config = IndexConfig.from_dict(body["config"])
        tokenizer, decoder = _models(body, config, tensors)
        if backbone is None:
            backbone = _backbone(body.get("backbone"), config, tokenizer, tensors)
        snapshot, next_id = _snapshot(body, arrays, tokenizer, decoder, config.store_vectors)
        return Saved(body["d"], config, backbone, snapshot, next_id,
                     int(body.get("refreshes", 0)), *_options(body, config))
    except IndexFormatError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, OverflowError,
            RecursionError) as error:
        raise IndexFormatError(f"{path} does not hold a consistent index: {error}") from None


def _options(body: dict[str, Any], config: IndexConfig) -> tuple:
    """``(metric, id_map, nprobe, k_factor)``; files written before they existed: L2
    where vectors are stored, ids as given, no nprobe, k_factor 1."""
    metric = body.get("metric", "l2" if config.store_vectors else None)
    id_map, nprobe, k_factor = body.get("id_map", True), body.get("nprobe"), body.get(
        "k_factor", 1.0)
    if metric not in (("l2", "ip") if config.store_vectors else (None,)):
        raise IndexFormatError(f"metric={metric!r} is not valid for an index "
                               f"{'with' if config.store_vectors else 'without'} stored vectors")
    if not isinstance(id_map, bool) or not (nprobe is None or (
            type(nprobe) is int and 0 < nprobe <= checks.MAX_NPROBE)):
        raise IndexFormatError(f"id_map={id_map!r} or nprobe={nprobe!r} is not valid")
    return metric, id_map, nprobe, checks.as_k_factor(k_factor)


def _check_given(body: dict[str, Any], backbone: Backbone) -> None:
    """Refuse a caller's backbone that cannot stand for the saved one."""
    config = body.get("config")
    if body.get("backbone") is None:
        raise ValueError("backbone=: this index was built on vectors, without a backbone")
    if isinstance(config, dict) and config.get("end_to_end") is True:
        raise ValueError("backbone=: an end-to-end index holds its fine-tuned backbone; "
                         "load it without backbone=")
    if backbone.feature_dim != body.get("d"):
        raise ValueError(f"backbone=: its features have {backbone.feature_dim} dimensions, "
                         f"the index {body.get('d')!r}")


def _models(body: dict[str, Any], config: IndexConfig,
            tensors: dict[str, torch.Tensor]) -> tuple[SemanticTokenizer, torch.nn.Module]:
    """The tokenizer and decoder of a saved index, with its weights loaded.

    Nothing is allocated before :func:`_check_sizes` has matched every size the
    manifest gives against the tensors the file holds.
    """
    spec = body.get("backbone")
    _check_sizes(body, config, tensors)
    encoder = saved_backbone(spec, weights=False) if spec is not None and config.end_to_end \
        else None
    tokenizer = SemanticTokenizer(body["d"], config.tokenizer, body["num_classes"],
                                  body["codebook_size"], encoder)
    decoder = new_decoder(tokenizer, config)
    for prefix, module in (("tokenizer.", tokenizer), ("decoder.", decoder)):
        module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items()
                                if k.startswith(prefix)}, strict=True)
        freeze(module)
    return tokenizer, decoder


def _check_sizes(body: dict[str, Any], config: IndexConfig,
                 tensors: dict[str, torch.Tensor]) -> None:
    """Refuse a manifest whose model sizes are not those of the tensors in the file.

    The decoder's depth is counted from the tensor names; every other size is
    compared on models built on the ``meta`` device, which allocates nothing.
    A backbone (its tensors under ``encoder.`` and ``memory.``) is built from
    its name, so its size is the library's, not the file's.
    """
    depth = {int(name.split(".")[2]) for name in tensors
             if name.startswith("decoder.blocks.") and name.split(".")[2].isdigit()}
    if len(depth) != config.decoder.n_layer or depth != set(range(len(depth))):
        raise IndexFormatError(f"the config's decoder has {config.decoder.n_layer} blocks but "
                               f"the file holds weights for {len(depth)}")
    d, num_classes, size = body["d"], body["num_classes"], body["codebook_size"]
    for name, value in (("d", d), ("codebook_size", size), ("num_classes", num_classes)):
        if (value is not None or name != "num_classes") and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise IndexFormatError(f"{name}={value!r} is not a positive integer")
    with torch.device("meta"):
        tokenizer = SemanticTokenizer(d, config.tokenizer, num_classes, size)
        width, reader = decoder_input(tokenizer, config)
        decoder = Decoder.for_vectors(config.decoder, size, config.tokenizer.num_codebooks,
                                      width, tokenizer.quantizer.codebooks.shape[-1], reader)
    backbone_parts = ("tokenizer.encoder.", "decoder.memory.") if config.end_to_end else ()
    for prefix, module in (("tokenizer.", tokenizer), ("decoder.", decoder)):
        expected = {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()
                    if not (prefix + k).startswith(backbone_parts)}
        present = {k: tuple(v.shape) for k, v in tensors.items()
                   if k.startswith(prefix) and not k.startswith(backbone_parts)}
        if expected != present:
            wrong = sorted(set(expected.items()) ^ set(present.items()))[:3]
            raise IndexFormatError(f"the manifest's model sizes do not match the tensors in "
                                   f"the file (first differences: {wrong})")


def _backbone(spec: dict | None, config: IndexConfig, tokenizer: SemanticTokenizer,
              tensors: dict[str, torch.Tensor]) -> Backbone | None:
    """The backbone of a saved index: the fine-tuned encoder end to end, else by name."""
    if spec is None:
        return None
    if config.end_to_end:
        return copy.deepcopy(tokenizer.encoder)
    weights = {k[len("backbone."):]: v for k, v in tensors.items() if k.startswith("backbone.")}
    backbone = saved_backbone(spec, weights=not weights)
    if weights:
        backbone.load_state_dict(weights, strict=True)
    return backbone.eval()


def _snapshot(body: dict[str, Any], arrays: dict[str, np.ndarray], tokenizer: SemanticTokenizer,
              decoder: torch.nn.Module, store_vectors: bool) -> tuple[Snapshot, int]:
    """The snapshot and next id of a saved index, every array checked against the others.

    Memory-mapped ``codes`` and ``vectors`` stay mapped (see :func:`_keep_mapped`).
    """
    ids, codes, stored, fresh = _checked_arrays(body, arrays, tokenizer.quantizer.num_codebooks,
                                                store_vectors)
    trie = _keep_mapped(Trie(codes, ids, int(body["codebook_size"])), "codes", codes)
    vectors = None if stored is None else _keep_mapped(
        VectorStore(arrays["vector_ids"], stored), "vectors", stored)
    return Snapshot(tokenizer, decoder, trie, vectors, with_fresh(fresh)), body["next_id"]


def _checked_arrays(body: dict[str, Any], arrays: dict[str, np.ndarray], m: int,
                    store_vectors: bool) -> tuple[np.ndarray, np.ndarray, Any, np.ndarray]:
    """``(ids, codes, vectors or None, fresh ids)`` of a saved index, checked against
    each other and ``next_id`` (at most 2**63: every int64 id used)."""
    ids, codes = _array(arrays, "ids", 1, "i"), _array(arrays, "codes", 2, "iu")
    if codes.shape != (len(ids), m):
        raise IndexFormatError(f"the code table has shape {codes.shape}, expected "
                               f"({len(ids)}, {m})")
    if ids.size and ids.min() < 0:
        raise IndexFormatError("the stored ids include negative values")
    if len(np.unique(ids)) != len(ids):
        raise IndexFormatError("the stored ids are not unique")
    if codes.size and not 0 <= codes.min() <= codes.max() < body["codebook_size"]:
        raise IndexFormatError(f"the codes must lie in [0, {body['codebook_size']})")
    next_id = body["next_id"]
    if isinstance(next_id, bool) or not isinstance(next_id, int) or not (
            0 <= next_id <= 2**63) or (ids.size and next_id <= ids.max()):
        raise IndexFormatError(f"next_id={next_id!r} is not an integer in [0, 2**63] above "
                               "every stored id")
    stored = None
    if store_vectors:
        vector_ids = _array(arrays, "vector_ids", 1, "i")
        stored = _array(arrays, "vectors", 2, "f")
        if stored.shape != (len(vector_ids), body["d"]) or not np.array_equal(vector_ids,
                                                                             np.sort(ids)):
            raise IndexFormatError("the stored vectors do not match the stored ids")
        if not np.isfinite(stored).all():
            raise IndexFormatError("the stored vectors hold NaN or Inf")
    fresh = arrays.get("fresh_ids", NO_IDS)
    if fresh.ndim != 1 or fresh.dtype.kind != "i" or not np.isin(fresh, ids).all():
        raise IndexFormatError("the fresh ids are not stored ids")
    return ids, codes, stored, fresh


def check_parts(body: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Apply to the parts about to be written the checks :func:`read_index` applies to
    what it reads (all but loading the weights), so that every file written loads."""
    try:
        config = IndexConfig.from_dict(body["config"])
        _check_sizes(body, config, {k: v for k, v in arrays.items() if "." in k})
        _checked_arrays(body, arrays, config.tokenizer.num_codebooks, config.store_vectors)
        _options(body, config)
    except (KeyError, TypeError, ValueError, RuntimeError, OverflowError) as error:
        raise ValueError(f"the index cannot be saved: the file would not load ({error}); "
                         "nothing was written") from None


def _array(arrays: dict[str, np.ndarray], name: str, ndim: int, kinds: str) -> np.ndarray:
    if name not in arrays:
        raise IndexFormatError(f"the index has no {name} array")
    array = arrays[name]
    if array.ndim != ndim or array.dtype.kind not in kinds:
        raise IndexFormatError(f"the {name} array has shape {array.shape} and dtype "
                               f"{array.dtype}; expected {ndim} dimensions")
    return array


def _keep_mapped(value: Any, attribute: str, mapped: np.ndarray):
    """Let ``value`` keep the memory-mapped array it was built from instead of its copy.

    Saved tables are already in the order the trie and the store keep, so the
    copy equals the mapping: swapping frees the copy and leaves the data on
    disk, paged in on use. Skipped when the two differ in any way.
    """
    if isinstance(mapped, np.memmap):
        current = getattr(value, attribute)
        if (current.dtype == mapped.dtype and current.shape == mapped.shape
                and np.array_equal(current, mapped)):
            setattr(value, attribute, mapped)
    return value
