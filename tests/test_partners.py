"""Neighbour mining for unlabelled training: exact for small n, clustered above."""

from __future__ import annotations

from unittest import mock

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genindex import partners
from genindex.partners import Neighbors, Partners, nearest_neighbors


def clustered(n: int, d: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, d)) * 4
    return torch.from_numpy((centres[rng.integers(0, 20, n)]
                             + rng.normal(size=(n, d))).astype(np.float32))


def recall(found: torch.Tensor, exact: torch.Tensor) -> float:
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / len(b)
                          for a, b in zip(found, exact)]))


def test_approximate_neighbours_match_exact_search_and_repeat(monkeypatch):
    monkeypatch.setattr(partners, "EXACT_NEIGHBORS", 200)
    monkeypatch.setattr(partners, "DISTANCE_BLOCK", 20_000)  # several blocks a list
    x, rows = clustered(2_000, 16), torch.arange(2_000)
    found = Neighbors(x, 5)
    assert found.knn is not None
    first = found(rows)
    exact = nearest_neighbors(x, rows, 5)
    assert first.shape == (2_000, 5)
    assert not (first == rows[:, None]).any() and ((first >= 0) & (first < 2_000)).all()
    assert recall(first, exact) >= 0.9
    assert torch.equal(Neighbors(x, 5)(rows), first)  # seeded k-means: the same graph


def test_rows_whose_visited_lists_hold_too_few_items_are_searched_exactly(monkeypatch):
    monkeypatch.setattr(partners, "EXACT_NEIGHBORS", 100)
    monkeypatch.setattr(partners, "NPROBE", 1)  # one list of ~17 items, 40 wanted
    x, rows = clustered(300, 4), torch.arange(300)
    found = Neighbors(x, 40)(rows)
    assert (found >= 0).all() and not (found == rows[:, None]).any()
    exact = nearest_neighbors(x, rows, 40)
    assert all(set(a.tolist()) == set(b.tolist()) for a, b in zip(found, exact))


@settings(max_examples=15, deadline=None)
@given(n=st.integers(101, 400), d=st.integers(1, 6), k=st.integers(1, 8),
       seed=st.integers(0, 3))
def test_unlabelled_partners_of_a_large_set_are_other_valid_rows(n, d, k, seed):
    x = clustered(n, d, seed)
    with mock.patch.object(partners, "EXACT_NEIGHBORS", 100):
        pairs = Partners(x, None, neighbors=k)
        assert pairs.neighbors.knn is not None
        drawn = pairs.sample(torch.Generator().manual_seed(seed))
        some = torch.arange(0, n, 7)
        batch = pairs.sample(torch.Generator().manual_seed(seed), some)
    assert drawn.shape == (n,) and ((drawn >= 0) & (drawn < n)).all()
    assert not (drawn == torch.arange(n)).any()
    assert ((batch >= 0) & (batch < n)).all() and not (batch == some).any()


def brute_force_odds(ranking: torch.Tensor, k: int, temperature: float) -> torch.Tensor:
    """(n, n) the chance that each row draws each other row: softmax(cosine / T) over
    its k most cosine-similar other rows, zero elsewhere."""
    f = torch.nn.functional.normalize(ranking.double(), dim=1)
    cosine = f @ f.T
    cosine.fill_diagonal_(-float("inf"))
    top = cosine.topk(k, dim=1)
    odds = torch.zeros_like(cosine)
    return odds.scatter_(1, top.indices, torch.softmax(top.values / temperature, dim=1))


@settings(max_examples=10, deadline=None)
@given(n=st.integers(6, 40), k=st.integers(1, 5), temperature=st.sampled_from([0.05, 0.5]),
       seed=st.integers(0, 3))
def test_f_cls_partners_are_drawn_with_softmax_odds_over_the_nearest(n, k, temperature,
                                                                     seed):
    rng = np.random.default_rng(seed)
    ranking = torch.from_numpy(rng.normal(size=(n, 3)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, 2, n))  # ignored: the ranking decides
    pairs = Partners(torch.zeros(n, 2), labels, k, ranking=ranking, temperature=temperature)
    expected = brute_force_odds(ranking, k, temperature)
    generator = torch.Generator().manual_seed(seed)
    draws = torch.stack([pairs.sample(generator) for _ in range(2000)])  # (2000, n)
    seen = torch.zeros(n, n, dtype=torch.float64)
    seen.scatter_add_(1, draws.T, torch.ones(n, 2000, dtype=torch.float64))
    assert (seen[expected == 0] == 0).all()  # only the k nearest others, never itself
    assert torch.allclose(seen / 2000, expected, atol=0.05)  # 4.5 sd at most
    some = torch.arange(0, n, 3)
    assert (expected[some, pairs.sample(generator, some)] > 0).all()


def test_f_cls_targets_are_the_fitted_tokenizers_nearest_items(tmp_path):
    """An index built with targets="f_cls" drew its decoder's partners from each item's
    nearest items by its own tokenizer's f_cls; saved, loaded and refreshed with them."""
    import dataclasses

    from genindex import GenerativeIndex
    from genindex.train import decoder_partners

    from .helpers import TINY
    from .helpers import clustered as labelled_clusters

    x, labels = labelled_clusters(num_classes=6, per_class=6, d=8, seed=2)
    config = TINY.replace(decoder=dataclasses.replace(TINY.decoder, targets="f_cls",
                                                      neighbors=4, temperature=0.1))
    index = GenerativeIndex.fit(x, labels, config, progress=False)
    v = torch.from_numpy(x)
    pairs = decoder_partners(v, v, torch.from_numpy(labels), index.tokenizer, index.config)
    expected = brute_force_odds(index.tokenizer.f_cls(v).detach(), 4, 0.1)
    assert torch.allclose(pairs.weights.double(),
                          expected.gather(1, pairs._knn), atol=1e-5)
    assert torch.equal(expected.gt(0), torch.zeros_like(expected, dtype=torch.bool)
                       .scatter_(1, pairs._knn, True))
    index.save(tmp_path / "index.gidx")
    loaded = GenerativeIndex.load(tmp_path / "index.gidx")
    assert loaded.config.decoder.targets == "f_cls"
    loaded.add(x[:4] + 0.01)
    loaded.refresh(steps=2)
    assert loaded.search(x[:3], 2).ids.shape == (3, 2)


def test_teacher_loss_is_the_cross_entropy_toward_codeword_cosine_odds():
    """Teacher.loss against a direct computation: softmax(f_cls . codeword / T) over the
    allowed codes as the target of the student's log-softmax over the same codes."""
    from genindex.train import Teacher

    rng = np.random.default_rng(4)
    f = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(6, 3))).float(), dim=1)
    words = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(5, 3))).float(),
                                          dim=1)
    logits = torch.from_numpy(rng.normal(size=(4, 5))).float()
    allowed = torch.tensor([[1, 1, 0, 1, 1]] * 4, dtype=torch.bool)
    rows = torch.tensor([0, 2, 5, 2])
    teacher = Teacher(f, words, 0.2, 1.0)
    keep = allowed[0]
    odds = torch.softmax(f[rows] @ words[keep].T / 0.2, dim=1)
    expected = -(odds * torch.log_softmax(logits[:, keep], dim=1)).sum(1).mean()
    assert torch.allclose(teacher.loss(rows, logits, allowed), expected, atol=1e-6)
    full = torch.softmax(f[rows] @ words.T / 0.2, dim=1)
    assert torch.allclose(teacher.loss(rows, logits, None),
                          -(full * torch.log_softmax(logits, dim=1)).sum(1).mean(), atol=1e-6)


def test_a_distilled_decoder_fits_saves_and_refreshes(tmp_path):
    import dataclasses

    from genindex import GenerativeIndex

    from .helpers import TINY
    from .helpers import clustered as labelled_clusters

    x, labels = labelled_clusters(num_classes=6, per_class=6, d=8, seed=3)
    config = TINY.replace(decoder=dataclasses.replace(TINY.decoder, distill=1.0))
    index = GenerativeIndex.fit(x, labels, config, progress=False)
    plain = GenerativeIndex.fit(x, labels, TINY, progress=False)
    assert not torch.equal(index.decoder.head, plain.decoder.head)  # the teacher was read
    index.save(tmp_path / "index.gidx")
    loaded = GenerativeIndex.load(tmp_path / "index.gidx")
    assert loaded.config.decoder.distill == 1.0
    np.testing.assert_array_equal(loaded.search(x[:5], 3).ids, index.search(x[:5], 3).ids)
    loaded.add(x[:4] + 0.01)
    loaded.refresh(steps=2)
    assert loaded.search(x[:3], 2).ids.shape == (3, 2)
