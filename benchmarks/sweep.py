"""Search throughput against beam size, split into encoder, decoder and validity check.

The paper's Fig. 5: seconds for 100 queries at beam sizes 1, 10, 20, 30. The
encoder time is the backbone embedding 100 query images (no cache); the
validity check is the trie's work (allowed next codes at every step, and the
expansion of the final leaves into items); the decoder is the rest of a search
given the query features. The trie is timed by wrapping its two calls, so the
split costs a little time itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any
from unittest import mock

import numpy as np

import genindex.index
from genindex.extract import extract_features
from genindex.trie import Trie

PER = 100  # queries per timed batch, as the paper's Fig. 5


def beam_sweep(index, backbone, data, queries: np.ndarray, beam_sizes: list[int],
               evaluate: Callable[[np.ndarray], dict[str, float]], k: int = 10
               ) -> list[dict[str, Any]]:
    """One row per beam size: queries/s, seconds per 100 queries by part, and metrics."""
    encoder_s = _encoder_seconds(backbone, data.query_images[:PER])
    # an end-to-end index reads pixels: its search time then includes the encoder
    x = data.query_images if index.end_to_end else queries
    rows = []
    for beam in beam_sizes:
        with _timed_trie() as trie_s:
            start = time.perf_counter()
            ids = index.search(x, max(k, beam), beam_size=beam).ids
            total = time.perf_counter() - start
        scale = PER / len(queries)
        rows.append({"beam_size": beam, "qps": len(queries) / total,
                     "encoder_s": encoder_s, "decoder_s": (total - trie_s[0]) * scale,
                     "trie_s": trie_s[0] * scale, **evaluate(_pad(ids, 100))})
        print(f"beam {beam}: {rows[-1]['qps']:.0f} queries/s", flush=True)
    return rows


def _encoder_seconds(backbone, images) -> float:
    """Seconds to embed up to 100 images through the backbone, scaled to 100."""
    if backbone is None or len(images) == 0:
        return 0.0
    device = next(backbone.parameters()).device
    extract_features(backbone, images[:8], cache=None, device=device, progress=False)  # warm-up
    start = time.perf_counter()
    extract_features(backbone, images, cache=None, device=device, progress=False)
    return (time.perf_counter() - start) * PER / len(images)


@contextmanager
def _timed_trie():
    spent = [0.0]

    def timing(call):
        def wrapped(*args, **kwargs):
            start = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start
        return wrapped

    with mock.patch.object(Trie, "children", timing(Trie.children)), \
            mock.patch.object(genindex.index, "top_items", timing(genindex.index.top_items)):
        yield spent


def _pad(ids: np.ndarray, width: int) -> np.ndarray:
    """Results widened with -1 to ``width`` columns (MAP@100 needs 100)."""
    out = np.full((len(ids), max(width, ids.shape[1])), -1, dtype=np.int64)
    out[:, :ids.shape[1]] = ids
    return out


__all__ = ["beam_sweep"]
