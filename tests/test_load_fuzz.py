"""2,000 mutated index files through ``GenerativeIndex.load``: each loads as the original
did or raises IndexFormatError, within twice the file's size of memory and a second."""

from __future__ import annotations

import json
import resource
import time
import tracemalloc

import numpy as np

from genindex import GenerativeIndex, IndexFormatError

from .helpers import mutations


def _body(edit):
    """A header edit that edits the body (a JSON string in the header's metadata)."""
    def apply(header):
        body = json.loads(header["__metadata__"]["genindex"])
        edit(body)
        header["__metadata__"]["genindex"] = json.dumps(body)
    return apply


EDITS = [
    lambda h: h["ids"].update(shape=[10**18]),
    lambda h: h["codes"].update(data_offsets=[0, 10**18]),
    lambda h: h["vectors"].update(dtype="F8"),
    lambda h: h["codes"].update(shape=[-1, 3]),
    lambda h: h.pop("fresh_ids"),
    lambda h: h.pop("decoder.blocks.0.attn.c_attn.weight"),
    lambda h: h["__metadata__"].update(genindex="[" * 50_000),
    lambda h: h["__metadata__"].update(genindex='{"sha256": {}, "d": 1e999}'),
    _body(lambda b: b.update(d=10**7)),
    _body(lambda b: b.update(codebook_size=10**9)),
    _body(lambda b: b.update(num_classes=-1)),
    _body(lambda b: b.update(next_id=2**70)),
    _body(lambda b: b["config"]["decoder"].update(n_layer=10**5)),
    _body(lambda b: b["config"]["decoder"].update(n_embd=2**20, n_head=1)),
    _body(lambda b: b["config"]["tokenizer"].update(num_codebooks=10**6)),
    _body(lambda b: b.update(config=[[[[]]]])),
    _body(lambda b: b.update(backbone={"kind": "open_clip", "name": "../../x",
                                       "pretrained": "/etc/passwd"})),
    _body(lambda b: b.pop("d")),
    _body(lambda b: b.update(format_version=3)),
    _body(lambda b: b["sha256"].update(ids="0" * 64)),
    _body(lambda b: b.update(refreshes=1)),  # harmless: loads, with another refresh count
]


def test_mutated_index_files_load_identically_or_raise_a_format_error(trained, data, tmp_path):
    path = tmp_path / "ix.gidx"
    trained.save(path)
    blob = path.read_bytes()
    queries = data[0][::5]
    expected = trained.search(queries, 5)
    GenerativeIndex.load(path)  # lazy imports happen once, before anything is traced
    target = tmp_path / "mutant.gidx"
    outcomes = {"identical": 0, "refused": 0}
    slowest, rss = 0.0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    for mutant in mutations(blob, np.random.default_rng(0), 2000, EDITS):
        target.write_bytes(mutant)
        tracemalloc.reset_peak()
        base, started = tracemalloc.get_traced_memory()[0], time.perf_counter()
        try:
            loaded = GenerativeIndex.load(target, device="cpu")
        except IndexFormatError:
            outcomes["refused"] += 1
            continue
        finally:  # nothing sized by the file's claims
            assert tracemalloc.get_traced_memory()[1] - base <= 2 * len(mutant) + 2**20
            slowest = max(slowest, time.perf_counter() - started)
        result = loaded.search(queries, 5)  # only harmless changes pass
        assert np.array_equal(result.ids, expected.ids)
        assert np.array_equal(result.scores, expected.scores)
        outcomes["identical"] += 1
    tracemalloc.stop()
    assert outcomes["refused"] > 1900 and outcomes["identical"] > 0, outcomes
    assert slowest < 1.0, f"a load took {slowest:.2f} s"
    # torch's allocations are not traced; the peak RSS (KiB) bounds them
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 256 * 1024
