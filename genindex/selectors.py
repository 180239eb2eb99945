"""Faiss ``IDSelector`` objects as a search filter or a set of ids to remove.

Faiss code passes selectors (``IDSelectorBatch``, ``IDSelectorRange``,
``IDSelectorArray``, ``IDSelectorBitmap``, ``IDSelectorNot`` / ``And`` /
``Or`` / ``XOr``, or a ``PyCallbackIDSelector``) where genindex takes an id
array. :func:`selected` asks a selector which of the index's ids it holds, in
Faiss's own C++ code: it fills a throw-away ``IndexIDMap`` with the ids and
lets ``remove_ids(selector)`` visit them, so there is no Python call per item
(except inside a ``PyCallbackIDSelector``, which is Python by nature).
Faiss is imported only when a selector is passed, so only then is it needed.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def is_selector(value: Any) -> bool:
    """Whether ``value`` is a Faiss ``IDSelector`` (any subclass)."""
    return type(value).__module__.startswith("faiss") and hasattr(value, "is_member")


def selected(selector: Any, ids: np.ndarray) -> np.ndarray:
    """The ids among ``ids`` (int64, distinct) that ``selector`` holds, sorted."""
    import faiss

    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if not len(ids):
        return ids.copy()
    probe = faiss.IndexIDMap(faiss.IndexFlatL2(1))
    probe.add_with_ids(np.zeros((len(ids), 1), np.float32), ids)
    probe.remove_ids(selector)
    return np.setdiff1d(ids, faiss.vector_to_array(probe.id_map))
