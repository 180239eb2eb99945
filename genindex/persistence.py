"""Saving and loading a GenerativeIndex: ``save``/``load`` (Faiss's
``write_index``/``read_index``) and pickling, all through the one-file format
of :mod:`genindex.schema` (no pickled Python objects inside).

:class:`Persistence` is a mixin of :class:`genindex.GenerativeIndex`. What is
written passes the checks a load applies first (:func:`genindex.schema.check_parts`),
so every file, pickle and serialized index that is written loads; a state that
would not is refused where it is set (ids, ``nprobe``).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from . import checks, schema
from .backbones import Backbone, get_backbone
from .checks import default_device

log = logging.getLogger(__name__)


class Persistence:
    """``save``, ``load`` and pickling (a mixin of GenerativeIndex)."""

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        """Write the index to the file ``path``, atomically (see genindex.container):
        an index file there is replaced, another file only if ``overwrite``, a
        folder never. A frozen pretrained backbone is saved by name, any other
        with its weights."""
        with self._lock:
            saved = self._saved()
        schema.write_index(path, saved, overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | torch.device | None = None,
             backbone: str | Backbone | None = None,
             cache_dir: str | os.PathLike | None = None, cache: bool = True,
             mmap: bool = False) -> Any:
        """Read an index file :meth:`save` wrote (or a genindex 0.1 folder); unpickles nothing.

        Every size, checksum and array is checked: a damaged, inconsistent or
        crafted file raises :class:`IndexFormatError`. ``device``: where to search
        (default: CUDA when present, else the CPU). ``mmap``: map the code table
        and vectors from the file (replace the file, never rewrite it in place:
        see genindex.container). ``backbone``: this frozen backbone (a name or
        object) instead of the one the file names; weights are never read from a
        path written in a file.
        """
        device = default_device() if device is None else checks.as_device(device)
        given = None if backbone is None else get_backbone(backbone)
        return cls._from_saved(schema.read_index(path, mmap=mmap, backbone=given), device,
                               cache_dir, cache)

    def _saved(self) -> schema.Saved:
        return schema.Saved(self.d, self.config, self.backbone, self._require_trained(),
                            self._next_id, self._refreshes, self.metric, self.id_map,
                            self._nprobe, self._k_factor)

    @classmethod
    def _from_saved(cls, saved: schema.Saved, device: Any, cache_dir: Any,
                    cache: bool) -> Any:
        index = cls(saved.d, saved.config, metric=saved.metric, id_map=saved.id_map,
                    backbone=saved.backbone, cache_dir=cache_dir, cache=cache)
        index._state, index._next_id, index._refreshes = (saved.snapshot, saved.next_id,
                                                          saved.refreshes)
        index._nprobe, index._k_factor = saved.nprobe, saved.k_factor
        return index.to(device)

    def _to_bytes(self) -> bytes:
        """The index as the bytes of its index file."""
        with self._lock:
            return schema.dumps(self._saved())

    @classmethod
    def _from_bytes(cls, blob: bytes, device: Any, cache_dir: Any = None,
                    cache: bool = True) -> Any:
        """The index of :meth:`_to_bytes`'s bytes, checked as ``load`` checks a file."""
        return cls._from_saved(schema.loads(blob), device, cache_dir, cache)

    def __reduce__(self):
        """Pickle and ``copy.deepcopy`` through the one-file format: the bytes of an
        index file, checked on the way back; no pickled Python object inside."""
        return (unpickle, (type(self), self._to_bytes(), str(self.device), self.cache_dir,
                           self.cache, self.verbose))


def unpickle(cls: Any, blob: Any, device: Any, cache_dir: Any, cache: Any,
             verbose: Any) -> Any:
    """The index :meth:`Persistence.__reduce__` pickled: ``blob`` must be the bytes
    of an index file (checked as ``load`` checks one), never anything else."""
    if not (isinstance(cls, type) and issubclass(cls, Persistence)) or not isinstance(
            blob, (bytes, bytearray)) or not isinstance(device, str) or not (
            isinstance(verbose, bool)):
        raise TypeError(f"a pickled GenerativeIndex holds its class, the bytes of an index "
                        f"file, its device name and verbosity; got {cls!r}, "
                        f"{type(blob).__name__}, {type(device).__name__}, "
                        f"{type(verbose).__name__}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        log.warning("unpickling an index that was on %s: no CUDA here, so on the CPU", device)
        device = "cpu"
    index = cls._from_bytes(bytes(blob), checks.as_device(device), cache_dir, cache)
    index.verbose = verbose
    return index
