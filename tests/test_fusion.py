"""Score fusion in the beam against exhaustive scoring, and through the index."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genindex import GenerativeIndex
from genindex.beam import beam_search
from genindex.decoder import Decoder
from genindex.fusion import codeword_scores
from genindex.trie import Trie

from .helpers import TINY, clustered
from .test_beam import CONFIG, exhaustive


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.integers(2, 5), st.integers(1, 25), st.integers(0, 10**6))
def test_fused_wide_beam_equals_exhaustive_fused_scoring(levels, vocab, n, seed):
    """Every identifier's fused score is log p + the prior of each of its codes, whether
    its beam finished early (forced codes) or not."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, vocab, (n, levels))
    trie = Trie(codes, np.arange(n), vocab)
    torch.manual_seed(seed)
    decoder = Decoder.for_vectors(CONFIG, vocab, levels, 4).eval()
    x = torch.randn(3, 4)
    prior = torch.randn(3, levels, vocab, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ids, scores = exhaustive(decoder, x, codes)
        beams = beam_search(decoder, x, trie, beam_size=trie.num_leaves, prior=prior)
    levels_index = torch.arange(levels)
    fused = scores + prior[:, levels_index, ids].sum(dim=-1)  # (3, identifiers)
    best, order = fused.sort(dim=1, descending=True)
    assert torch.allclose(beams.scores, best, atol=1e-4)
    leaf_of = torch.as_tensor(trie.lookup(ids.numpy()))  # the leaf of each identifier
    by_leaf = torch.empty_like(fused)
    by_leaf[:, leaf_of] = fused
    assert torch.allclose(by_leaf.gather(1, beams.leaves), beams.scores, atol=1e-4)


@torch.no_grad()
def test_zero_prior_is_the_plain_beam():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 6, (80, 3))
    trie = Trie(codes, np.arange(80), 6)
    decoder = Decoder.for_vectors(CONFIG, 6, 3, 4).eval()
    x = torch.randn(4, 4)
    plain = beam_search(decoder, x, trie, beam_size=5)
    fused = beam_search(decoder, x, trie, beam_size=5, prior=torch.zeros(4, 3, 6))
    assert torch.equal(plain.leaves, fused.leaves)
    assert torch.allclose(plain.scores, fused.scores)


@pytest.fixture(scope="module")
def index():
    x, labels = clustered(num_classes=12, per_class=8, d=16, seed=3)
    return GenerativeIndex.fit(x, labels, TINY), x


def test_fusion_scores_are_the_codeword_cosines(index):
    ix, x = index
    tokenizer = ix.tokenizer
    with torch.no_grad():
        vectors = tokenizer.feature_vectors(torch.from_numpy(x[:5]))
        table = codeword_scores(tokenizer, vectors, 2.0)
        f = torch.nn.functional.normalize(tokenizer.f_cls(vectors), dim=-1)
    codebooks = tokenizer.quantizer.codebooks
    assert table.shape == (5, *codebooks.shape[:2])
    assert torch.allclose(table[1, 0, 3], 2.0 * f[1] @ codebooks[0, 3], atol=1e-5)


def test_large_fusion_weight_orders_by_reconstruction_cosine(index):
    """With the decoder's share made negligible, the generative order is the order of the
    identifiers' reconstructions by cosine to the query's f_cls (the exact answer among
    the beam's identifiers when the beam holds every one)."""
    ix, x = index
    q = x[:6]
    scores, ids = ix.search(q, 10, order="generative", fusion=1e4, beam_size=10**4)
    tokenizer = ix.tokenizer
    with torch.no_grad():
        f = torch.nn.functional.normalize(
            tokenizer.f_cls(tokenizer.feature_vectors(torch.from_numpy(q))), dim=-1)
        codes = torch.as_tensor(ix.identifiers(np.arange(ix.ntotal)).astype(np.int64))
        cosine = f @ tokenizer.quantizer.decode(codes).T  # (6, n)
    for row in range(len(q)):
        expected = cosine[row].sort(descending=True).values[:10]
        assert torch.allclose(cosine[row, ids[row]], expected, atol=1e-4)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_fusion_is_a_query_parameter_and_checked(index):
    from genindex.faiss_api import SearchParameters

    ix, x = index
    by_keyword = ix.search(x[:4], 5, order="generative", fusion=3.0)
    by_params = ix.search(x[:4], 5, params=SearchParameters(order="generative", fusion=3.0))
    np.testing.assert_array_equal(by_keyword.ids, by_params.ids)
    plain = ix.search(x[:4], 5, order="generative")
    np.testing.assert_array_equal(plain.ids, ix.search(x[:4], 5, order="generative",
                                                       fusion=0.0).ids)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="fusion"):
            ix.search(x[:4], 5, fusion=bad)
    with pytest.raises(TypeError, match="fusion"):
        ix.search(x[:4], 5, fusion="1")
