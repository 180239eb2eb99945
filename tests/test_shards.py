"""Shards that share one trained model, merged by distance (docs/scaling.md's recipe)."""

from __future__ import annotations

import copy
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genindex.container import IndexFormatError
from genindex.shards import ShardedIndex, ShardError, merge


def shard(trained, x: np.ndarray, ids: np.ndarray):
    """A copy of ``trained``'s model holding only ``x`` (with global ``ids``)."""
    part = copy.copy(trained)
    part.reset()
    part.add_with_ids(x, ids)
    return part


def test_shards_merged_by_metric_distance_answer_as_one_index(data, trained):
    faiss = pytest.importorskip("faiss")
    x, _ = data
    rng = np.random.default_rng(0)
    ids = rng.permutation(10 * len(x))[:len(x)].astype(np.int64)  # global ids, any order
    queries = x[:25] + np.float32(0.1) * rng.standard_normal(x[:25].shape, dtype=np.float32)
    k, everything = 5, {"beam_size": len(x), "k_factor": len(x) / 5}  # every item ranked
    halves = np.array_split(rng.permutation(len(x)), 3)
    heap = faiss.ResultHeap(len(queries), k)
    for rows in halves:
        D, I = shard(trained, x[rows], ids[rows]).search(queries, k, **everything)
        heap.add_result(D, I)
    heap.finalize()
    whole = shard(trained, x, ids).search(queries, k, **everything)
    flat = faiss.IndexFlatL2(x.shape[1])
    flat.add(x)
    D_exact, rows_exact = flat.search(queries, k)
    np.testing.assert_array_equal(heap.I, ids[rows_exact])
    np.testing.assert_array_equal(whole.ids, ids[rows_exact])
    np.testing.assert_allclose(heap.D, D_exact, rtol=1e-4, atol=1e-4)
    # the shards left the trained index as it was
    assert trained.ntotal == len(x)


def test_a_shard_at_the_default_beam_returns_its_own_ids_in_distance_order(data, trained):
    x, _ = data
    rows = np.arange(0, len(x), 2)
    part = shard(trained, x[rows], 1000 + rows)
    D, I = part.search(x[:10], 5)
    assert set(I[I >= 0].ravel()) <= set((1000 + rows).tolist())
    assert (np.diff(D, axis=1) >= 0).all()  # squared L2, ascending: mergeable as Faiss's


# ------------------------------------------------------------------ ShardedIndex

EVERYTHING = {"beam_size": 200, "k_factor": 200 / 5}  # every item of the tiny index ranked


def split_ids(n: int, parts: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return np.array_split(rng.permutation(n), parts)


def open_shards(trained, x, folder, backend, parts=3, **kwargs) -> ShardedIndex:
    """``parts`` shard files of ``trained``'s model holding thirds of ``x`` (ids: rows)."""
    paths = [folder / f"{s}.gidx" for s in range(parts)]
    for path, rows in zip(paths, split_ids(len(x), parts)):
        shard(trained, x[rows], rows).save(path)
    return ShardedIndex(paths, backend=backend, **kwargs)


def reference_merge(trained, x, parts, queries, k, query):
    """Each part searched on its own, merged by faiss.ResultHeap."""
    faiss = pytest.importorskip("faiss")
    heap = faiss.ResultHeap(len(queries), k)
    for rows in parts:
        D, I = shard(trained, x[rows], rows).search(queries, k, **query)
        heap.add_result(D, I)
    heap.finalize()
    return heap.D, heap.I


def backend_fixture(request):
    if request.param == "ray":
        request.getfixturevalue("local_ray")
    return request.param


@pytest.fixture(params=["threads", "ray"])
def backend(request):
    return backend_fixture(request)


def test_sharded_search_equals_one_index_with_adds_and_removes(data, trained, tmp_path,
                                                               backend):
    x, _ = data
    rng = np.random.default_rng(2)
    queries = x[::7] + np.float32(0.1) * rng.standard_normal(x[::7].shape, dtype=np.float32)
    parts = split_ids(len(x), 3)
    with open_shards(trained, x, tmp_path, backend) as sharded:
        assert (sharded.ntotal, sharded.nshards, sharded.d) == (len(x), 3, x.shape[1])
        whole = shard(trained, x, np.arange(len(x)))
        for query in (EVERYTHING, {}, {"beam_size": 3}, {"order": "semantic"}):
            D, I = sharded.search(queries, 5, **query)
            D_ref, I_ref = reference_merge(trained, x, parts, queries, 5, query) if (
                query.get("order") != "semantic") else (None, None)
            if query is EVERYTHING:  # every item ranked: the one index, and exact search
                expected = whole.search(queries, 5, **query)
                np.testing.assert_array_equal(I, expected.ids)
                np.testing.assert_allclose(D, expected.scores, rtol=1e-5, atol=1e-5)
            if I_ref is not None:
                np.testing.assert_array_equal(I, I_ref)
                np.testing.assert_allclose(D, D_ref, rtol=1e-5, atol=1e-5)
            else:  # cosines, descending
                assert (np.diff(D, axis=1) <= 1e-6).all()
        # removes reach every shard; adds take the next global ids
        gone = np.concatenate([p[:4] for p in parts])
        assert sharded.remove_ids(np.concatenate([gone, [10**6]])) == len(gone)
        new = x[:6] + np.float32(0.05)
        sharded.add(new)
        whole.remove_ids(gone)
        whole.add_with_ids(new, np.arange(len(x), len(x) + 6))
        assert sharded.ntotal == whole.ntotal == len(x) - len(gone) + 6
        D, I = sharded.search(queries, 5, **EVERYTHING)
        expected = whole.search(queries, 5, **EVERYTHING)
        np.testing.assert_array_equal(I, expected.ids)
        np.testing.assert_allclose(D, expected.scores, rtol=1e-5, atol=1e-5)
        assert not np.isin(I, gone).any()
        sharded.save()
    with ShardedIndex([tmp_path / f"{s}.gidx" for s in range(3)], backend=backend) as again:
        assert again.ntotal == whole.ntotal
        D2, I2 = again.search(queries, 5, **EVERYTHING)
        np.testing.assert_array_equal(I2, I)
        np.testing.assert_array_equal(D2, D)


def test_sharded_index_refuses_what_would_be_wrong(data, trained, tmp_path):
    x, _ = data
    with open_shards(trained, x, tmp_path, "threads") as sharded:
        with pytest.raises(ValueError, match="log-probabilities"):
            sharded.search(x[:2], 5, order="generative")
        with pytest.raises(ValueError, match="already in a shard: \\[3\\]"):
            sharded.add_with_ids(x[:2], [len(x) + 50, 3])
        with pytest.raises(ValueError, match="columns"):
            sharded.search(x[:2, :5], 5)
        assert sharded.ntotal == len(x)
        assert sharded.search(x[:1], 1, **EVERYTHING).ids[0, 0] == 0  # nothing was added
    other = copy.deepcopy(trained)
    with torch.no_grad():
        other.decoder.head.mul_(1.5)
    other.save(tmp_path / "other.gidx")
    with pytest.raises(ValueError, match="model"):
        ShardedIndex([tmp_path / "0.gidx", tmp_path / "other.gidx"])
    with pytest.raises(ValueError, match="model"):  # against the model given
        ShardedIndex([tmp_path / "0.gidx"], model=other)
    positions = copy.copy(trained)
    positions.id_map = False
    positions.save(tmp_path / "positions.gidx")
    with pytest.raises(ValueError, match="id_map=True"):
        ShardedIndex([tmp_path / "positions.gidx"])
    with pytest.raises(ValueError, match="backend"):
        ShardedIndex([tmp_path / "0.gidx"], backend="dask")
    with pytest.raises(FileExistsError):
        ShardedIndex.create(trained, [tmp_path / "0.gidx"])


def test_a_damaged_shard_file_is_refused_with_the_index_error(data, trained, tmp_path,
                                                              backend):
    x, _ = data
    open_shards(trained, x, tmp_path, "threads").close()
    damaged = tmp_path / "1.gidx"
    blob = bytearray(damaged.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    damaged.write_bytes(bytes(blob))
    with pytest.raises(IndexFormatError):
        ShardedIndex([tmp_path / f"{s}.gidx" for s in range(3)], backend=backend)


def test_created_shards_start_empty_and_fill_by_routing(data, trained, tmp_path):
    x, _ = data
    paths = [tmp_path / f"s{s}.gidx" for s in range(4)]
    with ShardedIndex.create(trained, paths) as sharded:
        assert sharded.ntotal == 0
        D, I = sharded.search(x[:2], 3)
        assert (I == -1).all() and (D == np.finfo(np.float32).max).all()
        for rows in np.array_split(np.arange(len(x)), 8):
            sharded.add(x[rows])
        assert sharded.ntotal == len(x)
        assert sorted(sharded._ntotal) == [50, 50, 50, 50]  # each batch to the smallest
        D, I = sharded.search(x, 1, **EVERYTHING)
        np.testing.assert_array_equal(I[:, 0], np.arange(len(x)))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 6), st.integers(1, 8), st.sampled_from(["l2", "ip"]),
       st.integers(0, 10**6))
def test_merge_equals_faiss_result_heap_s(shards, rows, k, metric, seed):
    """Per-shard answers with padding merged as faiss.ResultHeap merges them."""
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(seed)
    answers = []
    for s in range(shards):
        found = rng.integers(0, k + 1, rows)
        D = np.sort(rng.random((rows, k)).astype(np.float32), axis=1)
        D = D if metric == "l2" else -D
        I = (rng.permutation(1000)[:rows * k].reshape(rows, k) + 1000 * s).astype(np.int64)
        padded = np.arange(k)[None, :] >= found[:, None]
        I[padded] = -1
        D[padded] = np.finfo(np.float32).max * (1 if metric == "l2" else -1)
        answers.append((D, I))
    heap = faiss.ResultHeap(rows, k, keep_max=metric == "ip")
    for D, I in answers:
        heap.add_result(D, I)
    heap.finalize()
    merged = merge(answers, k, metric)
    np.testing.assert_array_equal(merged.ids, heap.I)
    np.testing.assert_array_equal(merged.scores, heap.D)


def test_a_killed_actor_restarts_from_its_file_and_no_answer_is_wrong(data, trained, tmp_path,
                                                                      local_ray):
    """Searches stream while one shard's actor is killed: every answer equals the one
    before the kill; the restarted actor answers again."""
    import threading

    x, _ = data
    queries = x[::5]
    with open_shards(trained, x, tmp_path, "ray") as sharded:
        expected = sharded.search(queries, 5)
        answers, errors, stop = [], [], threading.Event()

        def stream():
            while not stop.is_set():
                try:
                    answers.append(sharded.search(queries, 5))
                except Exception as error:  # noqa: BLE001 (the test reports it)
                    errors.append(error)

        worker = threading.Thread(target=stream)
        worker.start()
        while len(answers) < 3:
            pass
        before = sharded._incarnations[1]
        local_ray.kill(sharded._shards.actors[1], no_restart=False)
        seen = len(answers)
        while len(answers) < seen + 5 and not errors:
            pass
        stop.set()
        worker.join(60)
        assert not errors, errors
        for D, I in answers:
            np.testing.assert_array_equal(I, expected.ids)
            np.testing.assert_array_equal(D, expected.scores)
        assert sharded._incarnations[1] != before  # a new process answered


def searches_until_restarted(sharded, shard, queries):
    """Search until ``shard``'s actor answers from a new process (a kill lands later)."""
    before = sharded._incarnations[shard]
    for _ in range(600):
        answer = sharded.search(queries, 3, **EVERYTHING)
        if sharded._incarnations[shard] != before:
            return answer
        time.sleep(0.05)
    raise AssertionError("the killed actor did not restart in 30 s")


def test_a_restart_that_lost_unsaved_updates_is_an_error(data, trained, tmp_path, local_ray):
    x, _ = data
    with open_shards(trained, x, tmp_path, "ray") as sharded:
        sharded.remove_ids(np.arange(len(x)))  # every shard changed, nothing saved
        local_ray.kill(sharded._shards.actors[0], no_restart=False)
        with pytest.raises(ShardError, match="lost the updates"):
            searches_until_restarted(sharded, 0, x[:2])
    (tmp_path / "saved").mkdir()
    with open_shards(trained, x, tmp_path / "saved", "ray") as sharded:
        sharded.remove_ids(np.arange(10))
        sharded.save()  # the files hold the removals: a restart loses nothing
        local_ray.kill(sharded._shards.actors[0], no_restart=False)
        D, I = searches_until_restarted(sharded, 0, x[:20])
        assert not np.isin(I, np.arange(10)).any() and (I >= 0).all()
