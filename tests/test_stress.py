"""Every write and read method from threads at once, a thread switch every microsecond.

Two ``id_map`` indexes of one model, ``a`` and ``b``, take adds, removes, resets
and merges in both directions; a third, ``c`` (ids by position), is reset,
retrained and refreshed while adds go into it. Readers search, reconstruct and
range-search all three; a saver writes, pickles and reloads them. Checked: no
deadlock (every thread ends within its timeout), no exception but the documented
refusals, no returned id that was never added, every returned vector the one
added under its id (and ``|q - R|^2 = D``), every file written loads, and every
acknowledged add that no remove or reset could have reached is present at the end.
"""

from __future__ import annotations

import copy
import itertools
import pickle
import sys
import threading
import time
from collections import Counter

import numpy as np

from genindex import GenerativeIndex

from .helpers import TINY

SECONDS = 12.0  # how long the writers and readers run
REFUSALS = (  # the documented refusals a racing call may meet, and nothing else
    "keys not in the index",  # reconstruct of an id a remove or merge took meanwhile
    "ids: not in the index",  # identifiers of such an id
    "call reset() before train()",  # train while a racing add put items in
)


class Book:
    """What the threads did: ids added (and their vectors), ids maybe removed, counts."""

    def __init__(self, x: np.ndarray) -> None:
        self.x, self.lock, self.clock = x, threading.Lock(), itertools.count()
        self.vectors: dict[int, np.ndarray] = {}  # every id ever given to add_with_ids
        self.acked: dict[int, int] = {}  # id -> the clock when its add began
        self.maybe: set[int] = set()  # ids a remove was asked to take
        self.resets: list[tuple[int, int]] = []  # (begin, end) of every reset of a or b
        self.c_adds: list[tuple[int, int]] = []  # (begin, end) of every add to c
        self.c_resets: list[tuple[int, int]] = []
        self.calls, self.refused, self.failures = Counter(), Counter(), []
        self.next_id = itertools.count(10_000)

    def vector_of(self, item: int) -> np.ndarray:
        return (self.x[item % len(self.x)] + 1e-3 * (item % 997)).astype(np.float32)

    def call(self, kind: str, function) -> object:
        """Run one call, counting it; a documented refusal is counted, anything else kept."""
        self.calls[kind] += 1
        try:
            return function()
        except ValueError as error:
            if any(text in str(error) for text in REFUSALS):
                self.refused[kind] += 1
                return None
            self.failures.append(f"{kind}: {type(error).__name__}: {error}")
        except Exception as error:  # noqa: BLE001 - every other exception is a failure
            self.failures.append(f"{kind}: {type(error).__name__}: {error}")
        return None

    def check_result(self, kind: str, ids: np.ndarray, vectors=None, queries=None,
                     scores=None) -> None:
        """No id that was never added; stored vectors those added under their id."""
        found = ids[ids >= 0]
        unknown = [int(i) for i in found if int(i) not in self.vectors]
        if unknown:
            self.failures.append(f"{kind}: ids never added: {unknown[:5]}")
            return
        if vectors is not None:
            expected = np.stack([self.vectors[int(i)] for i in found]) if len(found) else None
            if expected is not None and not np.array_equal(vectors[ids >= 0], expected):
                self.failures.append(f"{kind}: vectors of other items")
        if queries is not None:
            mask = ids >= 0
            distances = ((queries[:, None] - vectors) ** 2).sum(-1)
            if not np.allclose(distances[mask], scores[mask], rtol=1e-3, atol=1e-3):
                self.failures.append(f"{kind}: |q - R|^2 != D")


def until(deadline: float, at_least: int = 0):
    """Rounds until ``deadline``, and at least ``at_least`` of them however slow the
    machine (the coverage check below needs two calls of each slow method)."""
    rounds = 0
    while rounds < at_least or time.monotonic() < deadline:
        rounds += 1
        yield


def writers(book: Book, a, b, deadline: float) -> list:
    def add(index, name):
        for _ in until(deadline):
            ids = [next(book.next_id) for _ in range(3)]
            vectors = np.stack([book.vector_of(i) for i in ids])
            with book.lock:
                book.vectors.update(zip(ids, vectors))
            begin = next(book.clock)
            book.call(f"add_with_ids {name}", lambda v=vectors, i=ids: index.add_with_ids(v, i))
            with book.lock:
                book.acked.update({i: begin for i in ids})

    def remove():
        rng = np.random.default_rng(1)
        for _ in until(deadline):
            with book.lock:
                pool = list(book.acked)
            chosen = [int(i) for i in rng.choice(pool, min(4, len(pool)), replace=False)] \
                if pool else []
            with book.lock:
                book.maybe.update(chosen)
            for index, name in ((a, "a"), (b, "b")):
                book.call(f"remove_ids {name}", lambda ix=index, c=chosen: ix.remove_ids(c))

    def merge(into, other, name):
        for _ in until(deadline):
            book.call(f"merge_from {name}", lambda: into.merge_from(other))

    def reset():
        for _ in until(deadline):
            time.sleep(2.0)
            begin = next(book.clock)
            book.call("reset b", b.reset)
            book.resets.append((begin, next(book.clock)))

    return [lambda: add(a, "a"), lambda: add(b, "b"), remove,
            lambda: merge(a, b, "a<-b"), lambda: merge(b, a, "b<-a"), reset]


def retrainer(book: Book, c, deadline: float) -> list:
    x = book.x

    def train():
        for _ in until(deadline, at_least=2):
            begin = next(book.clock)
            book.call("reset c", c.reset)
            book.c_resets.append((begin, next(book.clock)))
            book.call("train c", lambda: c.train(x, progress=False))
            book.call("refresh c", lambda: c.refresh(steps=1))  # a and b: one model

    def add():
        for _ in until(deadline, at_least=2):
            begin = next(book.clock)
            book.call("add c", lambda: c.add(x[:3] + 0.01))
            book.c_adds.append((begin, next(book.clock)))
            time.sleep(0.01)

    return [train, add]


def readers(book: Book, indexes: dict, deadline: float, tmp_path) -> list:
    queries = book.x[::25]

    def search(name, index):
        for _ in until(deadline):
            result = book.call(f"search {name}", lambda: index.search(queries, 5))
            if result is not None and name != "c":
                book.check_result(f"search {name}", result.ids)
            if name == "c":
                continue
            both = book.call(f"search_and_reconstruct {name}",
                             lambda: index.search_and_reconstruct(queries, 5))
            if both is not None:
                book.check_result(f"search_and_reconstruct {name}", both.ids, both.vectors,
                                  queries, both.scores)
            with book.lock:
                some = list(book.acked)[-6:]
            rows = book.call(f"reconstruct_batch {name}", lambda s=some: index.reconstruct_batch(s))
            if rows is not None:
                book.check_result(f"reconstruct_batch {name}", np.array(some, np.int64), rows)
            book.call(f"range_search {name}", lambda: index.range_search(queries, 1.0))
            allowed = np.array(some[::2], np.int64)
            kept = book.call(f"filtered search {name}",
                             lambda f=allowed: index.search(queries, 3, filter=f))
            if kept is not None and not np.isin(kept.ids[kept.ids >= 0], allowed).all():
                book.failures.append(f"filtered search {name}: an id the filter excludes")
            book.call(f"encode {name}", lambda: index.encode(queries))
            book.call(f"identifiers {name}", lambda s=some: index.identifiers(s))
            book.call(f"describe {name}", index.describe)

    def save():
        for _ in until(deadline, at_least=2):
            for name, index in indexes.items():
                path = tmp_path / f"{name}.gidx"  # rewritten each round (overwrite=True)
                book.call(f"save {name}", lambda i=index, p=path: i.save(p, overwrite=True))
                if path.exists():
                    loaded = book.call(f"load {name}", lambda p=path: GenerativeIndex.load(p))
                    if loaded is not None and name != "c":
                        book.check_result(f"load {name}", loaded.ids)
                blob = book.call(f"pickle {name}", lambda i=index: pickle.dumps(i))
                if blob is not None:
                    book.call(f"unpickle {name}", lambda b=blob: pickle.loads(b))

    return [*(lambda n=n, i=i: search(n, i) for n, i in indexes.items()), save]


def test_every_method_from_threads_at_once(trained, data, tmp_path):
    x = data[0]
    a, b = copy.copy(trained), copy.copy(trained)
    b.reset()
    c = GenerativeIndex.fit(x, data[1], TINY, device="cpu", progress=False)
    c.reset()
    book = Book(x)
    book.vectors.update({i: x[i] for i in range(len(x))})  # what a holds at the start
    book.acked.update({i: -1 for i in range(len(x))})
    deadline = time.monotonic() + SECONDS
    jobs = (writers(book, a, b, deadline) + retrainer(book, c, deadline)
            + readers(book, {"a": a, "b": b, "c": c}, deadline, tmp_path))
    threads = [threading.Thread(target=job, daemon=True) for job in jobs]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    started = time.monotonic()
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=SECONDS + 240)
    finally:
        sys.setswitchinterval(switch)
    seconds = time.monotonic() - started
    assert not any(t.is_alive() for t in threads), "a thread hung: deadlock or lost wake-up"
    assert not book.failures, book.failures[:10]
    _check_final(book, a, b, c)
    print(f"\nstress: {seconds:.1f} s, {sum(book.calls.values())} calls, "
          f"{sum(book.refused.values())} refused")
    for kind in sorted(book.calls):
        print(f"  {kind}: {book.calls[kind]} calls, {book.refused[kind]} refused")
    assert min(book.calls[k] for k in ("merge_from a<-b", "merge_from b<-a", "train c",
                                       "add c", "refresh c", "save a")) >= 2, book.calls


def _check_final(book: Book, a, b, c) -> None:
    held = np.concatenate([a.ids, b.ids])
    assert len(np.unique(held)) == len(held), "an id in both indexes"
    assert set(held.tolist()) <= set(book.vectors), "an id that was never added"
    np.testing.assert_array_equal(np.concatenate([a.reconstruct_batch(a.ids),
                                                  b.reconstruct_batch(b.ids)]),
                                  np.array([book.vectors[int(i)] for i in held],
                                           dtype=np.float32).reshape(len(held), a.d))
    last_reset_end = max((end for _, end in book.resets), default=-1)
    sure = {i for i, begin in book.acked.items()
            if i not in book.maybe and begin > last_reset_end}
    missing = sure - set(held.tolist())
    assert not missing, f"acknowledged adds lost: {sorted(missing)[:10]}"
    begin, end = book.c_resets[-1]
    after = sum(start > end for start, _ in book.c_adds)
    overlapping = sum(start <= end and stop >= begin for start, stop in book.c_adds)
    assert 3 * after <= c.ntotal <= 3 * (after + overlapping), (c.ntotal, after, overlapping)
