"""The trained prior (``DecoderConfig.prior``): the codeword cosines inside the decoder's
logits, in training and in beam search, against exhaustive scoring and the loss by hand."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genindex import GenerativeIndex, steps
from genindex.beam import beam_search
from genindex.config import DecoderConfig
from genindex.decoder import Decoder, masked_cross_entropy
from genindex.fusion import codeword_scores
from genindex.train import decoder_loss, f_cls_teacher
from genindex.trie import Trie

from .helpers import TINY, clustered
from .test_beam import exhaustive

PRIOR = dataclasses.replace(TINY, decoder=dataclasses.replace(TINY.decoder, prior=4.0,
                                                              constrained_loss=True))
WITH_PRIOR = DecoderConfig(n_layer=1, n_head=2, n_embd=16, n_memory=2, dropout=0.0, prior=2.0)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 3), st.integers(2, 5), st.integers(1, 25), st.integers(0, 10**6),
       st.sampled_from([0.0, 1.0]))
def test_wide_beam_with_bias_equals_exhaustive_scoring(levels, vocab, n, seed, share):
    """Dense (share 0) and ragged (share 1) steps both add the bias inside each softmax."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, vocab, (n, levels))
    trie = Trie(codes, np.arange(n), vocab)
    torch.manual_seed(seed)
    decoder = Decoder.for_vectors(WITH_PRIOR, vocab, levels, 4).eval()
    x = torch.randn(3, 4)
    bias = 3 * torch.randn(3, levels, vocab, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(steps, "RAGGED_SHARE", share)
        ids, scores = exhaustive(decoder, x, codes, bias)
        beams = beam_search(decoder, x, trie, beam_size=trie.num_leaves, bias=bias)
    best, order = scores.sort(dim=1, descending=True)
    assert torch.allclose(beams.scores, best, atol=1e-4)
    assert torch.allclose(scores.exp().sum(dim=1), torch.ones(3), atol=1e-4)
    leaf_of = torch.as_tensor(trie.lookup(ids.numpy()))
    by_leaf = torch.empty_like(scores)
    by_leaf[:, leaf_of] = scores
    assert torch.allclose(by_leaf.gather(1, beams.leaves), beams.scores, atol=1e-4)


@torch.no_grad()
def test_beam_search_refuses_a_missing_or_unexpected_bias():
    codes = np.random.default_rng(0).integers(0, 4, (20, 2))
    trie = Trie(codes, np.arange(20), 4)
    x, bias = torch.randn(2, 4), torch.zeros(2, 2, 4)
    trained = Decoder.for_vectors(WITH_PRIOR, 4, 2, 4).eval()
    plain = Decoder.for_vectors(dataclasses.replace(WITH_PRIOR, prior=0.0), 4, 2, 4).eval()
    with pytest.raises(ValueError, match="prior=2.0 needs bias"):
        beam_search(trained, x, trie, 3)
    with pytest.raises(ValueError, match="takes none"):
        beam_search(plain, x, trie, 3, bias=bias)


@pytest.mark.parametrize("changes, message", [({"prior": -1.0}, "prior must be >= 0"),
                                              ({"prior": 1.0, "patience": 3}, "patience")])
def test_config_refuses_a_bad_prior(changes, message):
    with pytest.raises(ValueError, match=message):
        DecoderConfig(**changes)


@pytest.fixture(scope="module")
def index():
    x, labels = clustered(num_classes=12, per_class=8, d=16, seed=3)
    return GenerativeIndex.fit(x, labels, PRIOR), x, labels


def test_the_loss_adds_the_prior_to_the_logits(index):
    """The training loss equals the constrained cross-entropy of the decoder's logits plus
    the prior of each input, computed here by hand."""
    ix, x, _ = index
    tokenizer, decoder = ix.tokenizer, ix.decoder
    inputs = torch.from_numpy(x)
    codes = torch.as_tensor(ix.identifiers(np.arange(ix.ntotal)).astype(np.int64))
    trie = Trie(codes.numpy(), np.arange(len(codes)), decoder.codebook_size)
    teacher = f_cls_teacher(tokenizer, inputs, ix.config)
    assert teacher is not None and teacher.weight == 0
    pairs = torch.tensor([[0, 1], [5, 2], [40, 41], [90, 88]])
    with torch.no_grad():
        loss = decoder_loss(inputs, codes, trie, teacher)(decoder.eval(), pairs)
        target = codes[pairs[:, 1]]
        prior = codeword_scores(tokenizer, tokenizer.feature_vectors(inputs[pairs[:, 0]]), 4.0)
        logits, _ = decoder(inputs[pairs[:, 0]], target[:, :-1])
        expected = masked_cross_entropy(logits + prior, target, trie.allowed(target),
                                        decoder.config.label_smoothing)
    assert torch.allclose(loss, expected, atol=1e-5)


def test_search_scores_are_the_prior_decoders_log_probabilities(index, tmp_path):
    """A wide beam's generative scores equal exhaustive scoring with the query's prior,
    and a saved and loaded index gives the same answers."""
    ix, x, _ = index
    q = x[::10]
    result = ix.search(q, 8, order="generative", beam_size=10**4)
    codes = ix.identifiers(np.arange(ix.ntotal)).astype(np.int64)
    with torch.no_grad():
        queries = torch.from_numpy(q)
        bias = codeword_scores(ix.tokenizer, ix.tokenizer.feature_vectors(queries), 4.0)
        ids, scores = exhaustive(ix.decoder, queries, codes, bias)
    leaf = {tuple(row): j for j, row in enumerate(ids.numpy())}
    for row in range(len(q)):
        found = ix.identifiers(result.ids[row])
        expected = scores[row, [leaf[tuple(c)] for c in found]]
        np.testing.assert_allclose(result.scores[row], expected.numpy(), atol=1e-4)
        assert result.scores[row, 0] == pytest.approx(float(scores[row].max()), abs=1e-4)
    path = tmp_path / "prior.gidx"
    ix.save(path)
    again = GenerativeIndex.load(path).search(q, 8, order="generative", beam_size=10**4)
    assert again.scores.tolist() == result.scores.tolist()
    assert again.ids.tolist() == result.ids.tolist()
