"""Fresh data: which items are fresh, and what refresh does to them and to the old ones."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

from genindex import GenerativeIndex

from .helpers import TINY, clustered


def test_fresh_ids_follow_the_updates(trained, data):
    x = data[0]
    index = copy.copy(trained)
    assert len(index.fresh_ids) == 0  # fit trains on what it adds
    index.add(x[:3])
    index.add_with_ids(x[3:5], [900, 800])
    np.testing.assert_array_equal(index.fresh_ids, [200, 201, 202, 800, 900])
    index.remove_ids([201, 800, 5])
    np.testing.assert_array_equal(index.fresh_ids, [200, 202, 900])
    index.fresh_ids[0] = 7  # a copy: the index is not changed through it
    np.testing.assert_array_equal(index.fresh_ids, [200, 202, 900])
    history = index.refresh(steps=4)
    assert history.items == 3 and history.steps == 4 and len(history.loss) >= 1
    assert len(index.fresh_ids) == 0
    assert index.refresh().items == 0  # nothing fresh: nothing to do
    index.add(x[:1])
    index.reset()
    assert len(index.fresh_ids) == 0
    assert len(trained.fresh_ids) == 0 and trained.ntotal == 200


def test_refresh_changes_only_the_decoder_of_its_own_index(trained, data):
    x = data[0]
    index = copy.copy(trained)
    index.add(x[:10] + 0.1)
    ids, codes = np.sort(index.ids), index.encode(x)
    before = trained.search(x, 5)
    old_decoder = index.decoder
    index.refresh(steps=3)
    assert index.decoder is not old_decoder
    np.testing.assert_array_equal(np.sort(index.ids), ids)
    np.testing.assert_array_equal(index.encode(x), codes)
    after = trained.search(x, 5)  # the index it was copied from is untouched
    np.testing.assert_array_equal(before.ids, after.ids)
    np.testing.assert_array_equal(before.scores, after.scores)
    assert not any(p.requires_grad for p in index.decoder.parameters())


@pytest.fixture(scope="module")
def half_added():
    return half_added_with(TINY)


def half_added_with(config):
    """Trained with ``config`` on half of each class; the other half added afterwards."""
    x, labels = clustered(num_classes=30, per_class=12, noise=0.5, seed=1)
    rng = np.random.default_rng(0)
    queries = x + 0.5 * rng.standard_normal(x.shape).astype(np.float32)
    old = np.arange(len(x)) % 12 < 6
    index = GenerativeIndex.fit(x[old], labels[old], config, device="cpu", progress=False)
    index.add(x[~old])
    label_of_id = np.r_[labels[old], labels[~old]]
    return index, queries, labels, label_of_id, int(old.sum())


def found(index, queries, query_labels, label_of_id, first_new):
    """Per query: the shares of its class's old and of its new items in its top 10."""
    _, I = index.search(queries, 10)
    hit = (I >= 0) & (label_of_id[np.maximum(I, 0)] == query_labels[:, None])
    new = hit & (I >= first_new)
    return (hit & ~new).sum(1).mean() / 6, new.sum(1).mean() / 6


def test_refresh_teaches_new_items_without_forgetting_old_ones(half_added):
    index, queries, query_labels, label_of_id, first_new = half_added
    old_before, new_before = found(index, queries, query_labels, label_of_id, first_new)
    for labels in (label_of_id, None):  # with labels, and from nearest neighbours
        refreshed = copy.copy(index)
        refreshed.refresh(labels, steps=300)
        old_after, new_after = found(refreshed, queries, query_labels, label_of_id, first_new)
        assert new_after > new_before + 0.1, (new_before, new_after)
        assert old_after > old_before - 0.05, (old_before, old_after)


def test_refresh_with_the_constrained_loss_teaches_new_items():
    # the loss ranges over the codes the index's trie allows, new items' included
    config = TINY.replace(decoder=dataclasses.replace(TINY.decoder, constrained_loss=True))
    index, queries, query_labels, label_of_id, first_new = half_added_with(config)
    old_before, new_before = found(index, queries, query_labels, label_of_id, first_new)
    index.refresh(label_of_id, steps=300)
    old_after, new_after = found(index, queries, query_labels, label_of_id, first_new)
    assert new_after > new_before + 0.1, (new_before, new_after)
    assert old_after > old_before - 0.05, (old_before, old_after)


def test_labels_may_name_only_some_items_if_every_fresh_one_is_among_them(half_added):
    index, _, _, label_of_id, first_new = half_added
    refreshed = copy.copy(index)
    fresh = refreshed.fresh_ids
    some = np.random.default_rng(0).permutation(np.r_[np.arange(0, first_new, 3), fresh])
    history = refreshed.refresh(label_of_id[some], ids=some, steps=2)  # any order
    assert history.items == len(fresh)


def test_without_stored_vectors_refresh_says_what_it_needs(data):
    x, labels = data
    index = GenerativeIndex.fit(x[:100], labels[:100], TINY.replace(store_vectors=False),
                                progress=False)
    index.add(x[100:110])
    with pytest.raises(ValueError, match="store_vectors=True"):
        index.refresh()
    assert len(index.fresh_ids) == 10


def test_a_labelled_refresh_gives_new_classes_leaves_of_their_own(tmp_path):
    """Class identifiers: items of classes training never saw join known leaves on add;
    a labelled refresh moves each new class to the unused leaf nearest its mean f_cls
    (brute force over the last code) and teaches the decoder to find it."""
    import torch
    import torch.nn.functional as F

    config = TINY.replace(tokenizer=dataclasses.replace(TINY.tokenizer, identifiers="class"))
    x, labels = clustered(num_classes=30, per_class=8, noise=0.3, seed=2)
    seen = labels < 24
    index = GenerativeIndex.fit(x[seen], labels[seen], config, device="cpu", progress=False)
    index.add(x[~seen])
    label_of_id = np.r_[labels[seen], labels[~seen]]
    old_ids, new_ids = np.arange(seen.sum()), np.arange(seen.sum(), len(x))
    old_codes = index.identifiers(old_ids)
    queries = np.r_[x[seen], x[~seen]] + 0.1
    before = index.search(queries[new_ids], 1).ids[:, 0]
    index.refresh(label_of_id, steps=300)
    np.testing.assert_array_equal(index.identifiers(old_ids), old_codes)  # old items stay
    tokenizer = index._state.tokenizer
    quantizer = tokenizer.quantizer
    used = {tuple(code) for code in old_codes.tolist()}
    for c in np.unique(labels[~seen]):
        ids = new_ids[label_of_id[new_ids] == c]
        codes = index.identifiers(ids)
        assert (codes == codes[0]).all()  # one leaf per new class
        with torch.no_grad():
            f = tokenizer.head(torch.from_numpy(np.r_[x[seen], x[~seen]][ids]))
            centre = F.normalize(F.normalize(f, dim=-1).mean(0), dim=0)
        prefix = quantizer.encode(centre[None])[0, :-1].tolist()
        candidates = torch.tensor([prefix + [last] for last in range(quantizer.codebook_size)])
        error = (quantizer.decode(candidates) - centre).square().sum(1)
        free = [i for i in error.argsort().tolist() if tuple(prefix + [i]) not in used]
        assert codes[0].tolist() == prefix + [free[0]]
        used.add(tuple(codes[0].tolist()))
    after = index.search(queries[new_ids], 1).ids[:, 0]
    hit = lambda found: np.mean(label_of_id[np.maximum(found, 0)] == label_of_id[new_ids])  # noqa: E731
    assert hit(after) > hit(before) + 0.3, (hit(before), hit(after))
    with pytest.raises(ValueError, match="not in the index"):
        index.identifiers([len(x) + 5])
    index.save(tmp_path / "refreshed.gidx")  # the moved leaves are what a load reads back
    loaded = GenerativeIndex.load(tmp_path / "refreshed.gidx")
    all_ids = np.arange(len(x))
    np.testing.assert_array_equal(loaded.identifiers(all_ids), index.identifiers(all_ids))
    np.testing.assert_array_equal(loaded.search(queries, 5).ids, index.search(queries, 5).ids)


def test_a_refresh_keeps_per_image_identifiers(half_added):
    index, _, _, label_of_id, _ = half_added
    refreshed = copy.copy(index)
    ids = np.sort(refreshed.ids)
    codes = refreshed.identifiers(ids)
    refreshed.refresh(label_of_id, steps=2)
    np.testing.assert_array_equal(refreshed.identifiers(ids), codes)
