"""Faiss's own persistence functions for GenerativeIndex: opt in with :func:`install`.

>>> import genindex.faiss_compat
>>> genindex.faiss_compat.install()          # before any ``from faiss import write_index``
>>> faiss.write_index(index, "my.index")     # a GenerativeIndex: genindex's one-file format
>>> index = faiss.read_index("my.index")     # a genindex file: a GenerativeIndex back

:func:`install` replaces ``faiss.write_index``, ``read_index``,
``serialize_index`` and ``deserialize_index`` with functions that handle a
GenerativeIndex (or a genindex file or byte array) and pass everything else to
Faiss's own, untouched. It is idempotent; :func:`uninstall` puts Faiss's back.
Code that imported a function by name (``from faiss import write_index``)
before :func:`install` keeps Faiss's: install first.

``write_index`` replaces the file at the path, as Faiss's does (a folder, a
device, pipe or socket is still refused). ``read_index`` of a genindex file
(through a link too) or of a genindex 0.1 folder loads it, or raises genindex's
own :class:`~genindex.container.IndexFormatError` (say, "upgrade genindex")
for one it refuses; ``read_index(path, faiss.IO_FLAG_MMAP)`` maps the code table
and vectors. ``serialize_index`` gives the bytes of the index file as a uint8
array, and ``deserialize_index`` checks them as ``load`` checks a file. Nothing
is unpickled either way.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

NAMES = ("write_index", "read_index", "serialize_index", "deserialize_index")
_ORIGINALS = "_genindex_originals"


def install() -> None:
    """Make Faiss's persistence functions handle GenerativeIndex (module doc)."""
    faiss = _faiss()
    if getattr(faiss, _ORIGINALS, None) is not None:
        return
    originals = {name: getattr(faiss, name) for name in NAMES}
    setattr(faiss, _ORIGINALS, originals)
    for name, wrapper in (("write_index", _write_index), ("read_index", _read_index),
                          ("serialize_index", _serialize_index),
                          ("deserialize_index", _deserialize_index)):
        setattr(faiss, name, functools.wraps(originals[name])(
            functools.partial(wrapper, originals[name])))


def uninstall() -> None:
    """Put Faiss's own functions back (nothing to do if :func:`install` was not called)."""
    faiss = _faiss()
    originals = getattr(faiss, _ORIGINALS, None)
    if originals is not None:
        for name, function in originals.items():
            setattr(faiss, name, function)
        delattr(faiss, _ORIGINALS)


def installed() -> bool:
    return getattr(_faiss(), _ORIGINALS, None) is not None


def _write_index(original, index: Any, target: Any, *args: Any) -> None:
    if not _is_ours(index):
        return original(index, target, *args)
    if args or not isinstance(target, (str, os.PathLike)):
        raise TypeError("faiss.write_index(GenerativeIndex, path): the target must be a "
                        "path; Faiss writers and IO flags do not apply")
    index.save(target, overwrite=True)


def _read_index(original, source: Any, *args: Any) -> Any:
    from . import container
    from .index import GenerativeIndex

    if isinstance(source, (str, os.PathLike)) and (os.path.isdir(source)
                                                   or container.names_genindex(source)):
        flags = args[0] if args else 0
        mmap = bool(flags & _faiss().IO_FLAG_MMAP) if isinstance(flags, int) else False
        return GenerativeIndex.load(source, mmap=mmap)
    return original(source, *args)


def _serialize_index(original, index: Any) -> np.ndarray:
    if not _is_ours(index):
        return original(index)
    return np.frombuffer(index._to_bytes(), dtype=np.uint8).copy()


def _deserialize_index(original, data: Any, *args: Any) -> Any:
    from . import container

    array = np.asarray(data)
    blob = array.tobytes() if array.dtype == np.uint8 and array.ndim == 1 else None
    if blob is not None and container.is_index_bytes(blob):
        from .checks import default_device
        from .index import GenerativeIndex

        return GenerativeIndex._from_bytes(blob, default_device())
    return original(data, *args)


def _is_ours(index: Any) -> bool:
    from .index import GenerativeIndex

    return isinstance(index, GenerativeIndex)


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError("genindex.faiss_compat needs Faiss: pip install faiss-cpu") from None
    return faiss
