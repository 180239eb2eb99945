"""Search throughput against beam size, split into encoder, decoder and validity check.

The paper's Fig. 5: seconds for 100 queries at beam sizes 1, 10, 20, 30, all
from one built genindex method whose beam size is set between searches
(``set_query_arguments``). The encoder time is the backbone embedding 100
query images (no cache). The other two parts come from the search's own
``timings`` (:data:`genindex.beam.TIMED_PARTS`): the validity check is the
trie's work, ``"mask"`` (the codes allowed at every step) plus ``"items"``
(expanding the final leaves into items and ranking them); the decoder is the
rest of a search given the query features.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from genindex.inputs import extract_features

from .methods import GenIndex
from .rows import BeamRow, Metrics

PER = 100  # queries per timed batch, as the paper's Fig. 5
SWEEP_QUERIES = 2000  # the runner sweeps the first this many queries (time)
TRIE_PARTS = ("mask", "items")


def beam_sweep(method: GenIndex, backbone, data, queries: np.ndarray, beam_sizes: list[int],
               evaluate: Callable[[np.ndarray], Metrics], k: int = 10) -> list[BeamRow]:
    """One row per beam size: queries/s, seconds per 100 queries by part, and the
    metrics ``evaluate`` computes from the max(``k``, beam) results of each query (so
    none may look past rank ``k``). ``method`` is fitted; its beam size is back to the
    default afterwards."""
    encoder_s = _encoder_seconds(backbone, data.query_images[:PER])
    scale = PER / len(queries)
    rows = []
    for beam in beam_sizes:
        method.set_query_arguments(beam_size=beam)
        timings: dict[str, float] = {}
        start = time.perf_counter()
        # an end-to-end index reads the images: its search time then includes the encoder
        ids = method.search(queries, max(k, beam), images=data.query_images, timings=timings)
        total = time.perf_counter() - start
        trie_s = sum(timings.get(part, 0.0) for part in TRIE_PARTS)
        rows.append(BeamRow(beam, qps=len(queries) / total, encoder_s=encoder_s,
                            decoder_s=(total - trie_s) * scale, trie_s=trie_s * scale,
                            metrics=evaluate(ids)))
        print(f"beam {beam}: {rows[-1].qps:.0f} queries/s", flush=True)
    method.set_query_arguments()
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


__all__ = ["SWEEP_QUERIES", "beam_sweep"]
