"""Searches from many threads, and searches racing updates (copy-on-write snapshots)."""

from __future__ import annotations

import copy
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from genindex import GenerativeIndex


def same(a, b) -> bool:
    return np.array_equal(a.ids, b.ids) and np.array_equal(a.scores, b.scores)


def test_parallel_searches_equal_serial_ones(trained, data):
    x = data[0]
    batches = [x[i::7] for i in range(7)]
    serial = [trained.search(b, 6) for b in batches]
    filtered = trained.search(x[:9], 4, filter=np.arange(0, 200, 3))
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: trained.search(batches[i % 7], 6), range(56)))
        masked = list(pool.map(lambda _: trained.search(x[:9], 4, filter=np.arange(0, 200, 3)),
                               range(16)))
    assert all(same(r, serial[i % 7]) for i, r in enumerate(results))
    assert all(same(r, filtered) for r in masked)


UPDATES = [
    lambda ix, x: ix.add(x[:30] + 0.05),
    lambda ix, x: ix.remove_ids(np.arange(0, 120, 2)),
    lambda ix, x: ix.add_with_ids(x[30:40] - 0.05, np.arange(5000, 5010)),
    lambda ix, x: ix.refresh(steps=3),
    lambda ix, x: ix.remove_ids(np.arange(200, 215)),
    lambda ix, x: ix.reset(),
    lambda ix, x: ix.add(x[:50]),
]


def test_searches_during_updates_see_one_snapshot_or_the_next(trained, data):
    """Every result a racing search returns is the result of one of the states
    the updates pass through, computed serially beforehand: never a mix."""
    x = data[0]
    queries = x[::9]
    reference = copy.copy(trained)
    expected = [reference.search(queries, 8)]
    for update in UPDATES:
        update(reference, x)
        expected.append(reference.search(queries, 8))
    index = copy.copy(trained)
    seen: list[list] = [[] for _ in range(4)]
    done = threading.Event()

    def searcher(out: list) -> None:
        while not done.is_set():
            out.append(index.search(queries, 8))
        out.append(index.search(queries, 8))

    threads = [threading.Thread(target=searcher, args=(out,)) for out in seen]
    for thread in threads:
        thread.start()
    try:
        for update in UPDATES:
            update(index, x)
    finally:
        done.set()
        for thread in threads:
            thread.join()
    for out in seen:
        matches = [[j for j, e in enumerate(expected) if same(r, e)] for r in out]
        assert all(matches), "a search saw a state no update sequence passes through"
        assert len(matches[-1]) and matches[-1][-1] == len(UPDATES)  # the final state
    assert same(index.search(queries, 8), expected[-1])


def test_saves_during_updates_write_one_snapshot(trained, data, tmp_path):
    x = data[0]
    index = copy.copy(trained)
    states = [set(index.ids.tolist())]
    stop = threading.Event()
    saved: list[int] = []

    def saver() -> None:
        while not stop.is_set() or not saved:
            index.save(tmp_path / f"s{len(saved) % 2}")
            saved.append(len(saved))

    thread = threading.Thread(target=saver)
    thread.start()
    for step in range(6):
        index.add(x[step * 5:step * 5 + 5])
        states.append(set(index.ids.tolist()))
    stop.set()
    thread.join()
    for name in ("s0", "s1"):
        if (tmp_path / name).exists():
            assert set(GenerativeIndex.load(tmp_path / name).ids.tolist()) in states


def test_same_data_config_and_seed_give_identical_indexes(trained, data):
    """On the CPU: codes, weights and results are bitwise equal, refresh included."""
    x, labels = data
    again = GenerativeIndex.fit(x, labels, trained.config, device="cpu", progress=False)
    np.testing.assert_array_equal(trained.encode(x), again.encode(x))
    for a, b in zip(trained.tokenizer.state_dict().values(),
                    again.tokenizer.state_dict().values()):
        assert torch.equal(a, b)
    one, two = copy.copy(trained), copy.copy(again)
    for ix in (one, two):
        ix.add(x[:20] + 0.1)
        ix.refresh(labels[:20], ids=np.arange(200, 220), steps=5)
    for a, b in zip(one.decoder.state_dict().values(), two.decoder.state_dict().values()):
        assert torch.equal(a, b)
    assert same(one.search(x, 10), two.search(x, 10))
