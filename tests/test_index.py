"""GenerativeIndex: the search contract, updates, persistence, training."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genindex import GenerativeIndex, IndexConfig, SearchResult

from .helpers import TINY


def copy_of(index: GenerativeIndex, tmp_path, name: str = "copy") -> GenerativeIndex:
    index.save(tmp_path / name)
    return GenerativeIndex.load(tmp_path / name, device="cpu")


def check_contract(index: GenerativeIndex, result: SearchResult, n: int, k: int,
                   order: str | None = None) -> None:
    """The result of ``index.search(x, k, order=order)`` as Faiss code expects it: D in
    the order's units and direction, padding at the end (Faiss's values for a metric,
    -inf for log-probabilities)."""
    from genindex.beam import PADDING

    generative = order == "generative" or index.metric is None
    D, I = result
    assert D.shape == I.shape == (n, k)
    assert D.dtype == np.float32 and I.dtype == np.int64
    present = set(index.ids.tolist())
    expected_full = min(k, index.ntotal)
    for scores, row in zip(D, I):
        found = row[row >= 0]
        assert (row[:len(found)] >= 0).all(), "padding only at the end of a row"
        assert len(set(found.tolist())) == len(found), "an id twice in one row"
        assert set(found.tolist()) <= present, "an id that is not in the index"
        kept = scores[:len(found)]
        assert np.all(scores[len(found):] == PADDING[None if generative else index.metric])
        assert np.all(np.isfinite(kept))
        if generative:
            assert np.all(kept <= 0) and np.all(np.diff(kept) <= 0), "log-probabilities"
        elif index.metric == "l2":
            assert np.all(kept >= 0) and np.all(np.diff(kept) >= 0), "squared L2, ascending"
        else:
            assert np.all(np.diff(kept) <= 0), "inner products, descending"
        assert len(found) == expected_full


@pytest.mark.parametrize("k", [1, 5, 37])
def test_search_contract(trained, data, k):
    x, _ = data
    check_contract(trained, trained.search(x[:13], k), 13, k)
    check_contract(trained, trained.search(x[:13], k, order="generative"), 13, k, "generative")


def test_k_larger_than_ntotal_pads_with_minus_one(tmp_path, data):
    index = _fit(data)
    index.remove_ids(np.arange(3, 200))
    D, I = index.search(data[0][:4], 6)
    assert (np.sort(I[:, :3], axis=1) == [0, 1, 2]).all()
    assert (I[:, 3:] == -1).all() and (D[:, 3:] == np.finfo(np.float32).max).all()
    check_contract(index, (D, I), 4, 6)


def _fit(data):
    x, labels = data
    return GenerativeIndex.fit(x, labels, TINY, device="cpu", progress=False)


def test_result_is_a_named_tuple_that_unpacks(trained, data):
    result = trained.search(data[0][:2], 3)
    D, I = result
    assert D is result.scores and I is result.ids


def test_retrieves_the_query_class(trained, data):
    x, labels = data
    rng = np.random.default_rng(5)
    queries, query_labels = x[::10] + 0.3 * rng.standard_normal((20, 16)), labels[::10]
    _, I = trained.search(queries, 5)
    precision = (labels[I] == query_labels[:, None]).mean()
    assert precision > 0.8, precision


def test_save_load_gives_identical_results(trained, data, tmp_path):
    x, _ = data
    loaded = copy_of(trained, tmp_path)
    assert loaded.ntotal == trained.ntotal and loaded.d == trained.d
    assert loaded.config == trained.config
    for k in (1, 10):
        a, b = trained.search(x, k), loaded.search(x, k)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.scores, b.scores)
    np.testing.assert_array_equal(trained.encode(x), loaded.encode(x))
    # saving over an existing index replaces it
    loaded.remove_ids([0, 1])
    loaded.save(tmp_path / "copy")
    assert GenerativeIndex.load(tmp_path / "copy").ntotal == trained.ntotal - 2


def test_add_puts_new_items_beside_their_originals(trained, data, tmp_path):
    x, _ = data
    index = copy_of(trained, tmp_path)
    n = index.ntotal
    index.add(x[:20] + 1e-4)  # near-copies: same identifiers, new ids n..n+19
    assert index.ntotal == n + 20
    np.testing.assert_array_equal(index.encode(x[:20] + 1e-4), index.encode(x[:20]))
    _, I = index.search(x[:20], 40)
    found_original = [i in row for i, row in enumerate(I)]
    found_copy = [n + i in row for i, row in enumerate(I)]
    assert found_original == found_copy
    assert np.mean(found_copy) > 0.8
    for i, row in enumerate(I):
        if i in row:  # same leaf, nearest to the query: first the original, then the copy
            position = list(row).index(i)
            assert row[position + 1] == n + i


def test_add_with_ids_and_remove_ids(trained, data, tmp_path):
    x, _ = data
    index = copy_of(trained, tmp_path)
    index.add_with_ids(x[:3], np.array([1000, 2000, 3000]))
    assert {1000, 2000, 3000} <= set(index.ids.tolist())
    assert index.remove_ids(np.array([2000, 5, 5, 999999])) == 2
    assert index.ntotal == trained.ntotal + 1
    _, I = index.search(x, 20)
    assert not np.isin(I, [2000, 5]).any()
    index.add(x[:1])  # add continues after the largest id ever used
    assert 3001 in index.ids


def test_reset_keeps_the_model(trained, data, tmp_path):
    x, _ = data
    index = copy_of(trained, tmp_path)
    index.reset()
    assert index.ntotal == 0 and index.is_trained
    D, I = index.search(x[:2], 4)
    assert (I == -1).all() and (D == np.finfo(np.float32).max).all()  # Faiss's padding
    index.add(x[:5])
    assert sorted(index.ids.tolist()) == [0, 1, 2, 3, 4]


def test_training_lowers_the_losses(trained):
    history = trained.history
    assert len(history.tokenizer_loss) == TINY.tokenizer.epochs
    assert len(history.decoder_loss) == TINY.decoder.epochs
    assert history.tokenizer_loss[-1] < history.tokenizer_loss[0]
    assert history.decoder_loss[-1] < history.decoder_loss[0]


def test_training_is_deterministic_and_keeps_the_global_rng(data, trained):
    x, labels = data
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    again = GenerativeIndex.fit(x, labels, TINY, device="cpu", progress=False)
    assert torch.rand(1) == before  # the caller's RNG stream is not consumed
    for a, b in zip(trained.decoder.state_dict().values(), again.decoder.state_dict().values()):
        assert torch.equal(a, b)
    np.testing.assert_array_equal(trained.search(x, 5).ids, again.search(x, 5).ids)


def test_without_labels_neighbours_stand_in_for_classes(data):
    x, labels = data
    index = GenerativeIndex.fit(x, None, TINY, progress=False)
    assert not index.tokenizer.supervised
    _, I = index.search(x[::10], 5)
    check_contract(index, (_, I), 20, 5)
    assert (labels[I] == labels[::10, None]).mean() > 0.5


def test_faiss_path_train_then_add(data):
    x, labels = data
    index = GenerativeIndex(16, TINY)
    assert not index.is_trained and index.ntotal == 0
    with pytest.raises(RuntimeError, match="not trained"):
        index.search(x[:1], 1)
    index.train(x, labels, progress=False)
    assert index.is_trained and index.ntotal == 0
    index.add(x[:50])
    index.add(x[50:])
    assert index.ntotal == 200
    assert sorted(index.ids.tolist()) == list(range(200))


@pytest.mark.parametrize("call, error, message", [
    (lambda ix, x: ix.search(x[:, :5], 1), ValueError, "16 columns"),
    (lambda ix, x: ix.search(x[0], 1), ValueError, "2-D"),
    (lambda ix, x: ix.search(x[:0], 1), ValueError, "empty"),
    (lambda ix, x: ix.search(np.where(x == x[0, 0], np.nan, x), 1), ValueError, "NaN"),
    (lambda ix, x: ix.search(x, 0), ValueError, "k must be >= 1"),
    (lambda ix, x: ix.search(x, 2.0), TypeError, "k must be an integer"),
    (lambda ix, x: ix.search(x, 2, beam_size=0), ValueError, "beam_size"),
    (lambda ix, x: ix.search(x.astype(str), 1), TypeError, "numbers"),
    (lambda ix, x: ix.add(x[:, :3]), ValueError, "16 columns"),
    (lambda ix, x: ix.add_with_ids(x[:2], [7, 7]), ValueError, "distinct"),
    (lambda ix, x: ix.add_with_ids(x[:2], [1, 100000]), ValueError, "already in the index"),
    (lambda ix, x: ix.add_with_ids(x[:2], [100000]), ValueError, "one entry per row"),
    (lambda ix, x: ix.add_with_ids(x[:1], [-1]), ValueError, ">= 0"),
    (lambda ix, x: ix.add_with_ids(x[:1], [1.5]), TypeError, "integers"),
    (lambda ix, x: ix.train(x, np.zeros(len(x))), ValueError, "at least 2 classes"),
    (lambda ix, x: ix.train(x, np.arange(3)), ValueError, "one entry per row"),
    (lambda ix, x: ix.train(x, np.arange(len(x)) % 3), ValueError, "call reset"),
])
def test_bad_input_is_refused_and_leaves_the_index_unchanged(trained, data, tmp_path,
                                                              call, error, message):
    x, _ = data
    index = copy_of(trained, tmp_path)
    before = index.search(x, 5)
    with pytest.raises(error, match=message):
        call(index, x)
    after = index.search(x, 5)
    np.testing.assert_array_equal(before.ids, after.ids)
    np.testing.assert_array_equal(before.scores, after.scores)
    assert index.ntotal == trained.ntotal


def test_inputs_are_never_modified(trained, data):
    x, _ = data
    queries = x[:5].copy()
    queries.flags.writeable = False
    trained.search(queries, 3)
    trained.encode(torch.from_numpy(x[:5].copy()))
    np.testing.assert_array_equal(queries, x[:5])


def test_config_round_trips_through_json():
    config = IndexConfig().replace(seed=3)
    assert IndexConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="unknown fields"):
        IndexConfig.from_dict({"bogus": 1})


def test_importing_genindex_loads_no_optional_dependency():
    import subprocess
    import sys

    code = ("import sys, genindex, genindex.shards, genindex.shard_build, genindex.serving, "
            "genindex.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('faiss', 'scann', 'open_clip', 'matplotlib', 'diskannpy', 'ray')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, 60), beam=st.one_of(st.none(), st.integers(1, 40)),
       removed=st.lists(st.integers(0, 199), max_size=190, unique=True),
       rows=st.lists(st.integers(0, 199), min_size=1, max_size=8))
def test_search_output_invariants(trained, data, k, beam, removed, rows):
    x, _ = data
    index = copy.copy(trained)  # items are immutable snapshots: updating the copy is safe
    index.remove_ids(removed)
    assert trained.ntotal == 200
    result = index.search(x[rows], k, beam_size=beam)
    if beam is None or beam >= k:
        check_contract(index, result, len(rows), k)
    else:  # fewer beams than k: rows may end early, never with a wrong id
        D, I = result
        assert set(I[I >= 0].tolist()) <= set(index.ids.tolist())
        assert all(len(set(r[r >= 0])) == (r >= 0).sum() for r in I)


def test_small_data_sets_train_for_at_least_min_steps():
    from genindex.loop import num_epochs

    assert num_epochs(40, 1200, n=4000, batch_size=128) == 40  # 32 steps an epoch
    assert num_epochs(40, 1200, n=300, batch_size=128) == 400  # 3 steps an epoch
    assert num_epochs(40, 0, n=10, batch_size=128) == 40


def test_class_identifiers_survive_save_load_and_group_each_class(tmp_path):
    from .helpers import clustered

    x, labels = clustered(num_classes=10, per_class=8, d=16, noise=0.5, seed=3)
    tokenizer = {**TINY.to_dict()["tokenizer"], "identifiers": "class", "head": "linear"}
    config = IndexConfig.from_dict({**TINY.to_dict(), "tokenizer": tokenizer})
    index = GenerativeIndex.fit(x, labels, config, device="cpu", progress=False)
    codes = index.encode(x)
    # one identifier per class: as many distinct identifiers as classes, and (the
    # classes being well apart) every class's items all share theirs
    rows = {tuple(row) for row in codes.tolist()}
    assert len(rows) == 10
    for c in range(10):
        assert len({tuple(row) for row in codes[labels == c].tolist()}) == 1
    expected = index.tokenizer.class_codes.numpy()
    loaded = copy_of(index, tmp_path)
    np.testing.assert_array_equal(loaded.tokenizer.class_codes.numpy(), expected)
    np.testing.assert_array_equal(loaded.encode(x), codes)
    a, b = index.search(x, 8), loaded.search(x, 8)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.scores, b.scores)
    # the first hit of a training item is an item of its own class, as a linear scan finds
    assert (labels[a.ids[:, 0]] == labels).mean() >= 0.9


def test_constrained_loss_index_learns_and_survives_save_load(data, tmp_path):
    x, labels = data
    config = TINY.replace(decoder=dataclasses.replace(TINY.decoder, constrained_loss=True))
    index = GenerativeIndex.fit(x, labels, config, device="cpu", progress=False)
    loaded = copy_of(index, tmp_path)
    assert loaded.config.decoder.constrained_loss
    a, b = index.search(x, 5), loaded.search(x, 5)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.scores, b.scores)
    # the items found first are of the query's class, as a linear scan finds them
    assert (labels[a.ids[:, 0]] == labels).mean() >= 0.9


def test_paper_presets_come_from_one_table_and_the_benchmark_file_equals_them():
    import json
    from pathlib import Path

    from genindex.cli_inputs import read_config
    from genindex.config import PRESET_TABLE, PRESETS, DecoderConfig, TokenizerConfig

    saved = Path(__file__).resolve().parent.parent / "benchmarks" / "configs" / "paper.json"
    paper = IndexConfig.paper()
    assert json.loads(saved.read_text()) == json.loads(paper.to_json())
    assert IndexConfig.from_json(saved.read_text()) == paper
    # appendix A, from the one table
    assert (paper.tokenizer.batch_size, paper.tokenizer.epochs, paper.tokenizer.lr) == (
        128, 200, 5e-4)
    assert (paper.decoder.n_layer, paper.decoder.n_embd, paper.decoder.lr) == (12, 768, 4e-5)
    assert paper.end_to_end and paper.backbone_lr_scale == 0.01
    assert paper.tokenizer == TokenizerConfig.paper() == TokenizerConfig(
        **PRESET_TABLE["paper"]["tokenizer"])
    assert paper.decoder == DecoderConfig.paper()
    assert IndexConfig.paper(large=True).decoder == DecoderConfig.paper_large()
    assert DecoderConfig.paper_large().n_layer == 24
    # the command line's presets are the same objects' values
    for name in PRESETS:
        assert read_config(name) == IndexConfig.preset(name)
    assert IndexConfig.preset("default") == IndexConfig()
    with pytest.raises(ValueError, match="unknown preset"):
        IndexConfig.preset("paper-xl")
    unlabelled = IndexConfig.unlabelled(1_000_000)  # the no-label preset, L from n
    assert unlabelled.decoder == DecoderConfig(**PRESET_TABLE["unlabelled"]["decoder"])
    assert (unlabelled.tokenizer.num_codebooks, unlabelled.tokenizer.codebook_size) == (1, 1024)
    assert IndexConfig.unlabelled(300).tokenizer.codebook_size == 256


def test_no_config_and_no_labels_trains_the_unlabelled_preset_and_keeps_set_knobs(data):
    from genindex.config import PRESET_TABLE

    x = np.concatenate([data[0]] * 2)  # 400 items: enough for L = 256
    index = GenerativeIndex(x.shape[1])
    index.k_factor = 3  # set by the caller: kept
    index.train(x, progress=False)
    assert index.config == IndexConfig.unlabelled(len(x))
    assert (index.nprobe, index.k_factor) == (PRESET_TABLE["unlabelled"]["search"]["nprobe"], 3)
    given = GenerativeIndex(x.shape[1], TINY)  # a config given: used as it is
    given.train(x, progress=False)
    assert given.config == TINY and (given.nprobe, given.k_factor) == (None, 1)


def test_fit_encodes_the_training_set_once_and_adds_what_training_computed(data, monkeypatch):
    from genindex.tokenizer import SemanticTokenizer

    x, labels = data
    calls = []
    encode = SemanticTokenizer.encode_vectors

    def counting(self, v):
        calls.append(len(v))
        return encode(self, v)

    monkeypatch.setattr(SemanticTokenizer, "encode_vectors", counting)
    index = GenerativeIndex.fit(x, labels, TINY, device="cpu", progress=False)
    assert calls == [len(x)]  # in training; fit inserts those codes, no second pass
    monkeypatch.undo()
    order = np.argsort(index.ids)
    stored = index._state.trie.codes[order]
    np.testing.assert_array_equal(stored, index.encode(x))  # the codes an add would give
    np.testing.assert_array_equal(index._state.vectors.vectors, x)


def test_items_of_unseen_classes_get_identifiers_of_their_own(tmp_path):
    """Class identifiers with a novelty threshold: an added item far from every trained
    class keeps its own feature's identifier instead of joining another class's leaf."""
    from .helpers import clustered

    x, labels = clustered(num_classes=12, per_class=10, d=16, noise=0.3, seed=5)
    seen = labels < 9
    tokenizer = {**TINY.to_dict()["tokenizer"], "identifiers": "class", "head": "linear",
                 "novelty": 0.05}
    config = IndexConfig.from_dict({**TINY.to_dict(), "tokenizer": tokenizer})
    index = GenerativeIndex.fit(x[seen], labels[seen], config, progress=False)
    threshold = float(index.tokenizer.novelty_cosine)
    assert -1 < threshold < 1
    class_rows = {tuple(row) for row in index.tokenizer.class_codes.tolist()}
    codes = index.encode(x)
    own = [tuple(row) not in class_rows for row in codes.tolist()]
    # unseen classes (measured: 0.7; some lie near a trained class, or quantize onto one)
    assert np.mean([o for o, s in zip(own, seen) if not s]) >= 0.6
    assert np.mean([o for o, s in zip(own, seen) if s]) <= 0.1  # about the 5% quantile
    loaded = copy_of(index, tmp_path)
    assert float(loaded.tokenizer.novelty_cosine) == threshold
    np.testing.assert_array_equal(loaded.encode(x), codes)
    without = GenerativeIndex.fit(x[seen], labels[seen], config.replace(
        tokenizer=dataclasses.replace(config.tokenizer, novelty=0.0)), progress=False)
    assert all(tuple(row) in {tuple(r) for r in without.tokenizer.class_codes.tolist()}
               for row in without.encode(x).tolist())  # every item joins a class's leaf
