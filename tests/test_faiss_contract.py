"""The Faiss contract: D in the metric's units and order, ids as the Faiss class imitated,
the rest of the index API Faiss clients call, pickling, and no silent knobs. Each test
runs the same calls on the Faiss class and on a GenerativeIndex and compares."""

from __future__ import annotations

import copy
import pickle
import pickletools

import numpy as np
import pytest

from genindex import GenerativeIndex, IndexConfig, SearchParameters

from .helpers import TINY

faiss = pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def model(data):
    """A trained index of positions (faiss.IndexFlat's ids), no items kept."""
    x, labels = data
    index = GenerativeIndex.fit(x, labels, TINY, device="cpu", progress=False)
    index.reset()
    return index


def exhaustive(index) -> dict:
    """Query arguments under which a search ranks every item by its exact distance."""
    return {"beam_size": index._state.trie.num_leaves, "k_factor": index.ntotal}


def same_results(ours, theirs, ids_only=False) -> None:
    np.testing.assert_array_equal(ours[1], theirs[1])
    if not ids_only:
        np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("metric, flat", [("l2", "IndexFlatL2"), ("ip", "IndexFlatIP"),
                                          (1, "IndexFlatL2"), (0, "IndexFlatIP")])
def test_d_is_in_the_metric_units_and_order_faiss_gives(data, metric, flat):
    x, labels = data
    index = GenerativeIndex.fit(x, labels, TINY, metric=metric, device="cpu", progress=False)
    reference = getattr(faiss, flat)(x.shape[1])
    reference.add(x)
    assert index.metric_type == reference.metric_type
    queries = x[::7] + 0.05
    same_results(index.search(queries, 6, **exhaustive(index)), reference.search(queries, 6))
    D, I = index.search(queries, 6)  # the default beam: approximate, still in metric order
    assert (np.diff(D, axis=1) >= 0).all() if metric in ("l2", 1) else (
        np.diff(D, axis=1) <= 0).all()
    exact = (((queries[:, None] - x[I]) ** 2).sum(-1) if metric in ("l2", 1)
             else (queries[:, None] * x[I]).sum(-1))
    np.testing.assert_allclose(D, exact, rtol=1e-4, atol=1e-4)
    # k beyond the items: Faiss's padding, id -1
    same_results(index.search(queries[:2], 250, **exhaustive(index)),
                 reference.search(queries[:2], 250))


def test_the_generative_order_is_an_option_with_log_probabilities(trained, data):
    x = data[0][::9]
    D, I = trained.search(x, 5, order="generative")
    assert (D <= 0).all() and (np.diff(D, axis=1) <= 0).all()
    same_results(trained.search(x, 5, params=SearchParameters(order="generative")), (D, I))
    with pytest.raises(ValueError, match="order must be one of"):
        trained.search(x, 5, order="best")
    with pytest.raises(ValueError, match="given twice"):
        trained.search(x, 5, order="metric", params=SearchParameters(order="generative"))
    no_vectors = GenerativeIndex.fit(data[0], data[1], TINY.replace(store_vectors=False),
                                     device="cpu", progress=False)
    assert no_vectors.metric is None
    assert no_vectors.metric_type == faiss.METRIC_INNER_PRODUCT  # larger D is better
    same_results(no_vectors.search(x, 5), no_vectors.search(x, 5, order="generative"))
    with pytest.raises(ValueError, match="has none"):
        no_vectors.search(x, 5, order="metric")
    with pytest.raises(ValueError, match="ranks by log-probability only"):
        GenerativeIndex(16, TINY.replace(store_vectors=False), metric="l2")
    with pytest.raises(ValueError, match="metric must be"):
        GenerativeIndex(16, TINY, metric="cosine")


def test_the_semantic_order_ranks_the_candidates_by_f_cls_cosine(trained, data):
    import torch
    import torch.nn.functional as F

    x = data[0]
    queries = x[::9] + 0.05
    head = trained._state.tokenizer.head
    with torch.no_grad():
        f_items = F.normalize(head(torch.from_numpy(x)), dim=-1).numpy()
        f_queries = F.normalize(head(torch.from_numpy(queries)), dim=-1).numpy()
    cosines = f_queries @ f_items.T
    # every item a candidate: the brute-force ranking by cosine (ids are rows here)
    D, I = trained.search(queries, 6, order="semantic", **exhaustive(trained))
    np.testing.assert_array_equal(I, np.argsort(-cosines, axis=1, kind="stable")[:, :6])
    np.testing.assert_allclose(D, np.take_along_axis(cosines, I, axis=1), atol=1e-5)
    # the default beam: the metric order's candidates, ranked by cosine instead
    D, I = trained.search(queries, 6, order="semantic")
    _, I_metric = trained.search(queries, 6, order="metric")
    for ours, theirs in zip(I, I_metric):
        assert set(ours) == set(theirs)
    assert (np.diff(D, axis=1) <= 0).all()
    np.testing.assert_allclose(D, np.take_along_axis(cosines, I, axis=1), atol=1e-5)
    no_vectors = GenerativeIndex.fit(x, data[1], TINY.replace(store_vectors=False),
                                     device="cpu", progress=False)
    with pytest.raises(ValueError, match="order='semantic' ranks by the stored vectors"):
        no_vectors.search(queries, 5, order="semantic")


def test_positions_behave_as_index_flat_under_the_same_calls(model, data):
    x = data[0]
    index, reference = copy.copy(model), faiss.IndexFlatL2(x.shape[1])
    queries = x[::11] + 0.05
    calls = [lambda ix: ix.add(x[:120]),
             lambda ix: ix.remove_ids(np.array([3, 50, 51, 119], dtype=np.int64)),
             lambda ix: ix.add(x[120:]),
             lambda ix: ix.remove_ids(faiss.IDSelectorRange(10, 20)),
             lambda ix: ix.remove_ids(faiss.IDSelectorBatch(np.array([0, 500]))),
             lambda ix: ix.add(x[:5])]
    for call in calls:
        assert call(index) == call(reference)  # remove_ids: the count removed
        assert index.ntotal == reference.ntotal
        same_results(index.search(queries, 8, **exhaustive(index)), reference.search(queries, 8))
        np.testing.assert_array_equal(index.reconstruct_n(0, index.ntotal),
                                      reference.reconstruct_n(0, reference.ntotal))
    with pytest.raises(ValueError, match="id_map=True"):
        index.add_with_ids(x[:2], np.array([7000, 7001]))


def test_an_id_map_behaves_as_index_id_map2_under_the_same_calls(data):
    x, labels = data
    index = GenerativeIndex.fit(x, labels, TINY, id_map=True, device="cpu", progress=False)
    index.reset()
    reference = faiss.IndexIDMap2(faiss.IndexFlatL2(x.shape[1]))
    queries = x[::11] + 0.05
    ids = np.arange(len(x), dtype=np.int64) * 7 + 1000
    calls = [lambda ix: ix.add_with_ids(x[:120], ids[:120]),
             lambda ix: ix.remove_ids(ids[[3, 50, 51]]),
             lambda ix: ix.add_with_ids(x[120:], ids[120:]),
             lambda ix: ix.remove_ids(faiss.IDSelectorRange(1000, 1100))]
    for call in calls:
        assert call(index) == call(reference)
        assert index.ntotal == reference.ntotal
        same_results(index.search(queries, 8, **exhaustive(index)), reference.search(queries, 8))
    for key in (int(ids[130]), int(ids[-1])):
        np.testing.assert_array_equal(index.reconstruct(key), reference.reconstruct(key))
    with pytest.raises(ValueError, match="not in the index"):
        index.reconstruct(int(ids[3]))


def test_search_and_reconstruct_and_range_search_as_index_flat(trained, data):
    x = data[0]
    reference = faiss.IndexFlatL2(x.shape[1])
    reference.add(x)
    queries = x[::13] + 0.05
    D, I, R = trained.search_and_reconstruct(queries, 250, **exhaustive(trained))
    Df, If, Rf = reference.search_and_reconstruct(queries, 250)
    same_results((D, I), (Df, If))
    np.testing.assert_array_equal(R[I >= 0], Rf[If >= 0])
    assert np.isnan(R[I < 0]).all() and np.isnan(Rf[If < 0]).all()  # Faiss's padding too
    trained_all = copy.copy(trained)
    trained_all.nprobe = trained._state.trie.num_leaves
    for radius in (0.5, 2.0):
        lims, RD, RI = trained_all.range_search(queries, radius)
        limsf, RDf, RIf = reference.range_search(queries, radius)
        np.testing.assert_array_equal(lims, limsf)
        for q in range(len(queries)):
            mine, theirs = slice(lims[q], lims[q + 1]), slice(limsf[q], limsf[q + 1])
            assert dict(zip(RI[mine], RD[mine].round(4))) == dict(zip(RIf[theirs],
                                                                       RDf[theirs].round(4)))


def test_params_out_arrays_and_nprobe_are_real_knobs(trained, data, tmp_path):
    x = data[0][::9]
    allowed = trained.search(x, 4, filter=np.arange(50, 90))
    selector = faiss.SearchParameters(sel=faiss.IDSelectorRange(50, 90))
    same_results(trained.search(x, 4, params=selector), allowed)
    D, I = np.zeros((len(x), 4), np.float32), np.zeros((len(x), 4), np.int64)
    result = trained.search(x, 4, D=D, I=I)
    assert result.scores is D and result.ids is I
    same_results((D, I), trained.search(x, 4))
    with pytest.raises(ValueError, match="must be a writeable int64 array"):
        trained.search(x, 4, I=np.zeros((len(x), 3), np.int64))
    index = copy.copy(trained)
    wide = index.search(x, 4, beam_size=40)
    index.nprobe = 40  # what IVF-tuning code sets
    assert index.nprobe == 40
    same_results(index.search(x, 4), wide)
    same_results(index.search(x, 4, params=faiss.SearchParametersIVF(nprobe=40)), wide)
    index.save(tmp_path / "ix")
    assert GenerativeIndex.load(tmp_path / "ix").nprobe == 40
    with pytest.raises(ValueError, match="params must be"):
        index.search(x, 4, params=faiss.SearchParametersHNSW())
    for name in ("nprob", "efSearch", "parallel_mode"):
        with pytest.raises(AttributeError, match=f"no attribute '{name}'"):
            setattr(index, name, 4)
    with pytest.raises(AttributeError):
        index.ntotal = 5


@pytest.mark.parametrize("metric, flat", [("l2", "IndexFlatL2"), ("ip", "IndexFlatIP")])
def test_training_on_fewer_items_than_l_gives_an_exact_flat_index(data, metric, flat, tmp_path):
    x = data[0] * 3  # not normalised: inner products and distances order items differently
    index = GenerativeIndex(x.shape[1], TINY, metric=metric)
    index.train(x[:1], progress=False)  # a vector store's first upsert: one item
    assert index.is_flat and index.history.decoder_loss == []
    index.add(x)
    reference = getattr(faiss, flat)(x.shape[1])
    reference.add(x)
    queries = x[::9] + 0.1
    same_results(index.search(queries, 7), reference.search(queries, 7))  # default search
    index.remove_ids(np.arange(0, 40))
    reference.remove_ids(np.arange(0, 40))
    same_results(index.search(queries, 7), reference.search(queries, 7))
    index.save(tmp_path / "flat")
    loaded = GenerativeIndex.load(tmp_path / "flat")
    assert loaded.is_flat
    same_results(loaded.search(queries, 7), reference.search(queries, 7))
    index.train(x, progress=False)  # enough items now: models trained, the items kept
    assert not index.is_flat and index.ntotal == reference.ntotal
    np.testing.assert_array_equal(np.sort(index.ids), np.arange(reference.ntotal))
    np.testing.assert_array_equal(index.reconstruct_n(0, 5), reference.reconstruct_n(0, 5))
    same_results(index.search(queries, 7, **exhaustive(index)), reference.search(queries, 7))


def test_k_factor_zero_means_no_extra_candidates_as_faiss_accepts_it(trained, data):
    x = data[0][::9]
    index = copy.copy(trained)
    index.k_factor = 0  # ann-benchmarks' "no re-rank"
    assert index.k_factor == 0
    same_results(index.search(x, 4), trained.search(x, 4, k_factor=1))
    same_results(trained.search(x, 4, k_factor=0.5), trained.search(x, 4, k_factor=1))
    for bad in (-1, 2**21, float("nan"), True, "1"):
        with pytest.raises(ValueError, match="k_factor must be a number in"):
            index.k_factor = bad
    assert index.k_factor == 0


def test_standalone_codes_are_index_flat_s(trained, data):
    x = data[0][:7]
    reference = faiss.IndexFlatL2(x.shape[1])
    codes = trained.sa_encode(x)
    assert trained.sa_code_size() == reference.sa_code_size()
    np.testing.assert_array_equal(codes, reference.sa_encode(x))
    np.testing.assert_array_equal(trained.sa_decode(codes), reference.sa_decode(codes))
    assert trained.sa_decode(codes).dtype == np.float32
    np.testing.assert_array_equal(trained.sa_decode(codes[::2]), x[::2])  # strided input
    with pytest.raises(ValueError, match="codes must be a uint8 array"):
        trained.sa_decode(codes[:, :-1])
    with pytest.raises(ValueError, match="codes must be a uint8 array"):
        trained.sa_decode(codes.astype(np.int16))
    bare = GenerativeIndex(x.shape[1], IndexConfig(store_vectors=False))
    for call in (bare.sa_code_size, lambda: bare.sa_encode(x), lambda: bare.sa_decode(codes)):
        with pytest.raises(ValueError, match="stores none"):
            call()


def test_pickle_and_deepcopy_go_through_the_index_file(trained, data):
    x = data[0][::9]
    blob = pickle.dumps(trained)
    globals_used = {arg for op, arg, _ in pickletools.genops(blob)
                    if op.name in ("GLOBAL", "STACK_GLOBAL") and arg}
    strings = [arg for op, arg, _ in pickletools.genops(blob) if isinstance(arg, str)]
    assert "unpickle" in strings and globals_used <= {"genindex.persistence unpickle",
                                                      "genindex.index GenerativeIndex"}
    for clone in (pickle.loads(blob), copy.deepcopy(trained)):
        same_results(clone.search(x, 5), trained.search(x, 5))
        assert clone.metric == trained.metric and clone.id_map == trained.id_map
    blob = bytearray(blob)
    blob[len(blob) // 2] ^= 1
    with pytest.raises((ValueError, pickle.UnpicklingError)):
        pickle.loads(bytes(blob))


def test_merge_from_moves_the_items_of_an_index_sharing_the_model(model, data):
    x = data[0]
    one, two, whole = copy.copy(model), copy.copy(model), copy.copy(model)
    one.add(x[:80])
    two.add(x[80:])
    whole.add(x)
    one.merge_from(two)
    assert two.ntotal == 0 and one.ntotal == len(x)  # as Faiss: the other is emptied
    queries = x[::7] + 0.05
    same_results(one.search(queries, 6, **exhaustive(one)), whole.search(queries, 6,
                                                                      **exhaustive(whole)))
    reference, other = faiss.IndexFlatL2(x.shape[1]), faiss.IndexFlatL2(x.shape[1])
    reference.add(x[:80])
    other.add(x[80:])
    reference.merge_from(other)
    same_results(one.search(queries, 6, **exhaustive(one)), reference.search(queries, 6))
    stranger = GenerativeIndex.fit(x, data[1], TINY.replace(seed=1), device="cpu",
                                   progress=False)
    with pytest.raises(ValueError, match="not trained as one model"):
        one.merge_from(stranger)
    with pytest.raises(TypeError, match="merge_from takes a GenerativeIndex"):
        one.merge_from(reference)


def test_constructor_arguments_are_checked():
    with pytest.raises(TypeError, match="id_map must be True or False"):
        GenerativeIndex(16, IndexConfig(), id_map="yes")
    with pytest.raises(ValueError, match="metric must be"):
        GenerativeIndex(16, IndexConfig(), metric=True)


def test_faiss_persistence_functions_after_install(trained, data, tmp_path):
    from genindex import faiss_compat

    x = data[0][::9]
    flat = faiss.IndexFlatL2(x.shape[1])
    flat.add(x)
    original = faiss.write_index
    faiss_compat.install()
    faiss_compat.install()  # idempotent
    try:
        faiss.write_index(trained, str(tmp_path / "ours.index"))
        faiss.write_index(flat, str(tmp_path / "flat.index"))  # Faiss's, untouched
        ours = faiss.read_index(str(tmp_path / "ours.index"))
        mapped = faiss.read_index(str(tmp_path / "ours.index"), faiss.IO_FLAG_MMAP)
        theirs = faiss.read_index(str(tmp_path / "flat.index"))
        assert isinstance(theirs, faiss.IndexFlatL2) and theirs.ntotal == len(x)
        for loaded in (ours, mapped, faiss.deserialize_index(faiss.serialize_index(trained))):
            assert isinstance(loaded, GenerativeIndex)
            same_results(loaded.search(x, 5), trained.search(x, 5))
        blob = faiss.serialize_index(flat)
        assert isinstance(faiss.deserialize_index(blob), faiss.IndexFlatL2)
    finally:
        faiss_compat.uninstall()
    assert faiss.write_index is original and not faiss_compat.installed()


def test_faiss_contrib_evaluation_and_sharded_merging(model, data):
    from faiss.contrib.evaluation import check_ref_knn_with_draws, knn_intersection_measure
    from faiss.contrib.exhaustive_search import range_search_max_results

    x = data[0]
    index = copy.copy(model)
    index.add(x)
    reference = faiss.IndexFlatL2(x.shape[1])
    reference.add(x)
    queries = x[::5] + 0.05
    D, I = index.search(queries, 10, **exhaustive(index))
    Dref, Iref = reference.search(queries, 10)
    check_ref_knn_with_draws(Dref, Iref, D, I)  # raises unless equal up to ties
    approximate = index.search(queries, 10).ids
    assert knn_intersection_measure(approximate, Iref) > 0.3
    index.nprobe = 2**20
    _, lims, RD, RI = range_search_max_results(index, iter([queries]), 1.0,
                                               max_results=10**6)
    _, limsf, RDf, RIf = range_search_max_results(reference, iter([queries]), 1.0,
                                                  max_results=10**6)
    np.testing.assert_array_equal(lims, limsf)
    np.testing.assert_array_equal(np.sort(RI), np.sort(RIf))
    # two shards of one trained model, merged as client_server code merges them
    shards = [copy.copy(model), copy.copy(model)]
    shards[0].add(x[:100])
    shards[1].add(x[100:])
    parts = [s.search(queries, 10, **exhaustive(s)) for s in shards]
    Dm, Im = faiss.merge_knn_results(np.stack([p[0] for p in parts]),
                                     np.stack([p[1] + (0, 100)[i] for i, p in enumerate(parts)]),
                                     keep_max=index.metric_type == faiss.METRIC_INNER_PRODUCT)
    check_ref_knn_with_draws(Dref, Iref, Dm, Im)


def test_big_batch_search_needs_an_ivf_index_on_both(trained, data):
    """An intended difference from IVF indexes, the same outcome as IndexFlatL2's:
    faiss.contrib.big_batch_search reads an IVF index's lists, which neither has."""
    from faiss.contrib.big_batch_search import big_batch_search

    x = data[0][:5]
    flat = faiss.IndexFlatL2(x.shape[1])
    flat.add(data[0])
    for index in (flat, copy.copy(trained)):
        with pytest.raises((AttributeError, RuntimeError, TypeError)):
            big_batch_search(index, x, 3)
