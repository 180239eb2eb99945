"""The fast search paths give the results of the plain ones (correctness only, no timing)."""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from genindex import steps
from genindex.beam import TIMED_PARTS, beam_search
from genindex.config import DecoderConfig
from genindex.decoder import Decoder
from genindex.trie import Trie

CONFIG = DecoderConfig(n_layer=1, n_head=2, n_embd=16, n_memory=1, dropout=0.0)


@torch.no_grad()
def plain_beam_search(decoder: Decoder, x: torch.Tensor, trie: Trie, beam_size: int):
    """Every beam decoded at every step, forced codes included (the textbook loop)."""
    state = decoder.start(x)
    queries, vocab = len(x), trie.codebook_size
    scores = torch.zeros(queries, 1)
    nodes = torch.zeros(queries, 1, dtype=torch.long)
    codes = None
    for depth in range(trie.num_codebooks):
        logits = decoder.step(state, codes).float()
        child = trie.children(depth, nodes.clamp(min=0))
        allowed = (child >= 0) & (nodes >= 0)[..., None]
        logp = logits.masked_fill(~allowed, float("-inf")).log_softmax(dim=-1)
        candidates = (scores[..., None] + logp).masked_fill(~allowed, float("-inf"))
        top = candidates.reshape(queries, -1).topk(min(beam_size, candidates[0].numel()), dim=1)
        scores = top.values
        nodes = child.reshape(queries, -1).gather(1, top.indices)
        nodes = nodes.masked_fill(torch.isinf(scores), -1)
        if depth + 1 < trie.num_codebooks:
            state.reorder(top.indices // vocab)
            codes = top.indices % vocab
    return scores, nodes


class CountingDecoder(Decoder):
    """A decoder that records how many beams each step feeds."""

    widths: list[int]

    def advance(self, state, codes):
        self.widths.append(state.beams if codes is None else codes.shape[1])
        return super().advance(state, codes)


def decoder_for(vocab: int, levels: int, seed: int, d: int = 4) -> CountingDecoder:
    torch.manual_seed(seed)
    decoder = CountingDecoder.for_vectors(CONFIG, vocab, levels, d).eval()
    with torch.no_grad():
        decoder.head.normal_(std=0.5)  # sharper, more varied scores than the initial ones
    decoder.widths = []
    return decoder


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(2, 6), st.integers(1, 60), st.integers(1, 12),
       st.integers(0, 10**6))
def test_skipping_finished_beams_gives_the_plain_result(levels, vocab, n, beam_size, seed):
    """Both steps, dense over L codes and ragged over the allowed ones, every time."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, vocab, (n, levels))
    trie = Trie(codes, np.arange(n), vocab)
    decoder = decoder_for(vocab, levels, seed)
    x = torch.randn(4, 4, generator=torch.Generator().manual_seed(seed))
    scores, leaves = plain_beam_search(decoder, x, trie, beam_size)
    width = scores.shape[1]
    for share in (-1.0, 1.0):  # never ragged, always ragged
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(steps, "RAGGED_SHARE", share)
            fast = beam_search(decoder, x, trie, beam_size)
        assert fast.scores.shape == fast.leaves.shape == (4, beam_size)
        torch.testing.assert_close(fast.scores[:, :width], scores, atol=1e-5, rtol=0)
        assert (fast.leaves[:, :width] == leaves).all()
        assert torch.isinf(fast.scores[:, width:]).all() and (fast.leaves[:, width:] == -1).all()


def test_a_query_whose_prefixes_are_unique_is_decoded_once():
    # every first code leads to a single identifier: nothing is left to decode after step one
    codes = np.array([[0, 1, 2], [1, 0, 0], [2, 2, 1]])
    trie = Trie(codes, np.arange(3), codebook_size=3)
    decoder = decoder_for(3, 3, seed=0)
    beams = beam_search(decoder, torch.randn(2, 4), trie, beam_size=3)
    assert decoder.widths == [1]
    assert sorted(beams.leaves[0].tolist()) == [0, 1, 2]


def test_only_live_beams_are_fed_to_the_decoder():
    # leaf 0..3 share the prefix (0, 0); 4..7 hang alone under first codes 1..4
    codes = np.array([[0, 0, c] for c in range(4)] + [[c, 0, 0] for c in range(1, 5)])
    trie = Trie(codes, np.arange(8), codebook_size=5)
    decoder = decoder_for(5, 3, seed=1)
    x = torch.randn(3, 4)
    fast = beam_search(decoder, x, trie, beam_size=8)
    # one root, then at most the one live beam (0, ...) per query: 3 steps in all
    assert decoder.widths == [1, 1, 1]
    scores, leaves = plain_beam_search(decoder, x, trie, beam_size=8)
    assert (fast.leaves == leaves).all()


def test_reduced_precision_stays_close_and_bad_dtype_is_refused():
    rng = np.random.default_rng(0)
    trie = Trie(rng.integers(0, 8, (300, 3)), np.arange(300), 8)
    decoder = decoder_for(8, 3, seed=2)
    x = torch.randn(6, 4)
    exact = beam_search(decoder, x, trie, 5)
    half = beam_search(decoder, x, trie, 5, dtype=torch.bfloat16)
    torch.testing.assert_close(half.scores, exact.scores, atol=0.1, rtol=0)
    assert (half.leaves[:, 0] == exact.leaves[:, 0]).float().mean() >= 0.8
    with pytest.raises(ValueError, match="dtype"):
        beam_search(decoder, x, trie, 5, dtype=torch.int8)


def test_timings_cover_every_part():
    trie = Trie(np.array([[0, 1], [1, 1], [1, 0]]), np.arange(3), 2)
    timings: dict[str, float] = {}
    beam_search(decoder_for(2, 2, seed=3), torch.randn(2, 4), trie, 2, timings=timings)
    # every part but "items", the expansion into items that beam.search adds
    assert set(timings) == set(TIMED_PARTS) - {"items"}
    assert all(t >= 0 for t in timings.values())


def test_one_memory_token_shortcut_equals_attention():
    torch.manual_seed(0)
    decoder = Decoder.for_vectors(CONFIG, 4, 2, 4).eval()
    cross = decoder.blocks[0].cross
    x, memory = torch.randn(3, 5, 16), torch.randn(3, 1, 16)
    kv = cross.memory_kv(memory)
    with torch.no_grad():
        fast = cross(x, kv).expand(3, 5, 16)
        q = cross.q(x).view(3, 5, 2, 8).transpose(1, 2)
        full = F.scaled_dot_product_attention(q, *kv).transpose(1, 2).reshape(3, 5, 16)
        torch.testing.assert_close(fast, cross.c_proj(full))


def test_storage_is_compact_and_shared_with_the_cpu_tables():
    rng = np.random.default_rng(0)
    trie = Trie(rng.integers(0, 256, (5000, 4)), np.arange(5000) * 7, 256)
    assert trie.codes.dtype == np.uint8 and trie.ids.dtype == np.int64
    assert trie.leaf_ptr.dtype == np.int32
    assert all(p.dtype == np.int32 for p in trie.child_ptr)
    assert all(c.dtype == np.uint8 for c in trie.child_code)
    tables = trie.tables("cpu")
    assert tables.ids.data_ptr() == trie.ids.ctypes.data  # no copy on the CPU
    assert trie.nbytes() >= trie.codes.nbytes + trie.ids.nbytes
    assert Trie(rng.integers(0, 300, (10, 2)), np.arange(10), 300).codes.dtype == np.uint16


@pytest.mark.parametrize("vocab", [3, 70_000])  # one packed sort key / a lexicographic sort
def test_leaf_ranges_and_order_match_brute_force(vocab):
    rng = np.random.default_rng(vocab)
    codes = rng.integers(0, min(vocab, 4), (200, 5)) * (vocab // 4 or 1)
    ids = rng.permutation(10**6)[:200]
    trie = Trie(codes, ids, vocab)
    order = np.lexsort((ids, *codes.T[::-1]))
    assert (trie.ids == ids[order]).all() and (trie.codes == codes[order]).all()
    leaf_of = {tuple(row): leaf for leaf, row in enumerate(np.unique(codes, axis=0).tolist())}
    for depth in range(6):
        under = defaultdict(set)
        for row in codes.tolist():
            under[tuple(row[:depth])].add(leaf_of[tuple(row)])
        prefixes = sorted(under)
        nodes = torch.arange(len(prefixes))  # nodes are numbered in sorted prefix order
        first, count = trie.leaf_range(depth, nodes)
        for prefix, f, c in zip(prefixes, first.tolist(), count.tolist()):
            assert set(range(f, f + c)) == under[prefix]


@pytest.mark.parametrize("limit", [0, 1 << 18])  # CSR levels / dense levels
def test_node_minus_one_has_no_children(limit, monkeypatch):
    from genindex import trie as trie_module

    monkeypatch.setattr(trie_module, "DENSE_TABLE_LIMIT", limit)
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 5, (40, 3))
    trie = Trie(codes, np.arange(40), 5)
    for depth in range(3):
        nodes = torch.tensor([-1, 0, trie.num_nodes(depth) - 1, -1])
        child = trie.children(depth, nodes)
        assert (child[[0, 3]] == -1).all()
        assert (child[1] >= 0).any() and (child[2] >= 0).any()
        assert torch.equal(child[1:3], trie.children(depth, nodes[1:3]))


@pytest.mark.parametrize("head", ["free", "codebook"])
def test_the_ragged_step_gives_the_dense_step_s_results_on_a_trained_index(data, head):
    """Same ids and scores (float32) on a trained index, metric and generative order,
    fused and filtered, whichever step scores the codes."""
    from genindex import GenerativeIndex

    from .helpers import TINY

    x, labels = data
    config = TINY.replace(decoder=dataclasses.replace(TINY.decoder, head=head))
    index = GenerativeIndex.fit(x, labels, config, device="cpu", progress=False)
    queries = x[::7] + 0.1
    searches = [dict(), dict(order="generative"), dict(fusion=2.0, order="generative"),
                dict(filter=np.arange(0, 200, 3), beam_size=30)]
    results = {}
    for share in (-1.0, 1.0):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(steps, "RAGGED_SHARE", share)
            results[share] = [index.search(queries, 10, **kw) for kw in searches]
    for dense, ragged in zip(results[-1.0], results[1.0]):
        np.testing.assert_allclose(ragged.scores, dense.scores, rtol=1e-5, atol=1e-5)
        assert (ragged.ids == dense.ids).mean() > 0.99  # near-ties may swap


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 16), st.integers(1, 4), st.integers(1, 40), st.integers(0, 10**6))
def test_short_cached_attention_equals_pytorch_s(positions, heads, beams, seed):
    """One new position over a few cached ones, by elementwise products (float32)."""
    from genindex.decoder import _short_attention

    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(beams, heads, t, 8, generator=g) for t in (1, positions, positions))
    torch.testing.assert_close(_short_attention(q, k, v),
                               F.scaled_dot_product_attention(q, k, v), atol=1e-5, rtol=1e-5)


def test_code_logits_equal_level_logits_and_follow_changed_weights():
    """The ragged head's values are the dense head's at those codes, in float32 and in
    bfloat16, and its low-precision copy of the weights follows an in-place change."""
    torch.manual_seed(0)
    decoder = Decoder.for_vectors(CONFIG, 6, 2, 4).eval().requires_grad_(False)
    h = 50 * torch.randn(5, 1, CONFIG.n_embd)  # logits of a few units: a stale copy shows
    rows, codes = torch.tensor([0, 0, 2, 4, 4]), torch.tensor([1, 5, 0, 3, 2])
    for autocast in (False, True):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            dense = decoder.level_logits(h, 1).float()[:, 0]
            ragged = decoder.code_logits(h[:, 0], rows, 1, codes)
            torch.testing.assert_close(ragged, dense[rows, codes], atol=0.05 if autocast
                                       else 1e-5, rtol=0.02 if autocast else 1e-5)
            decoder.head.mul_(2.0)  # the cached bfloat16 rows must follow
            again = decoder.code_logits(h[:, 0], rows, 1, codes)
            torch.testing.assert_close(again, 2 * ragged, atol=0.1 if autocast else 1e-5,
                                       rtol=0.02 if autocast else 1e-5)
            decoder.head.mul_(0.5)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 2), st.integers(2, 3), st.integers(2, 9), st.integers(1, 5),
       st.booleans(), st.integers(0, 10**6))
def test_stepped_logits_equal_teacher_forcing_s(layers, levels, size, beams, autocast, seed):
    """Cached steps (the first block's attention after the first code read from a
    table) give the logits of ``forward`` on whole prefixes, float32 and bfloat16."""
    torch.manual_seed(seed)
    config = dataclasses.replace(CONFIG, n_layer=layers)
    decoder = Decoder.for_vectors(config, size, levels, 4).eval()
    x = torch.randn(3, 4)
    codes = torch.randint(0, size, (3, beams, levels))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        reference = decoder(x.repeat_interleave(beams, 0), codes.reshape(3 * beams, levels)[
            :, :-1])[0].float().reshape(3, beams, levels, size)
        state = decoder.start(x)
        stepped = [decoder.step(state, None).float().expand(-1, beams, -1)]
        state.reorder(torch.zeros(3, beams, dtype=torch.long))
        for level in range(1, levels):
            stepped.append(decoder.step(state, codes[:, :, level - 1]).float())
    tolerance = {"atol": 0.05, "rtol": 0.02} if autocast else {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(torch.stack(stepped, dim=2), reference, **tolerance)


def test_first_code_table_follows_changed_weights():
    """A frozen decoder's table is recomputed when an embedding or the attention
    changes; a training one's, at every call (an optimiser's write may leave the
    versions as they were, as a write through ``.data`` does)."""
    torch.manual_seed(0)
    decoder = Decoder.for_vectors(CONFIG, 6, 2, 4).eval().requires_grad_(False)
    x, codes = torch.randn(2, 4), torch.tensor([[1], [4]])

    def last_step():
        state = decoder.start(x)
        decoder.step(state, None)
        return decoder.step(state, codes)

    with torch.no_grad():
        before = last_step()
        for weight in (decoder.wte.weight, decoder.blocks[0].attn.c_attn.weight):
            weight.mul_(3.0)
            expected = decoder(x, codes)[0][:, 1:]
            torch.testing.assert_close(last_step(), expected, atol=1e-5, rtol=1e-5)
            assert not torch.allclose(last_step(), before)
        decoder.requires_grad_(True)  # training: the versions no longer tell
        last_step()
        decoder.wte.weight.data.mul_(0.5)
        torch.testing.assert_close(last_step(), decoder(x, codes)[0][:, 1:], atol=1e-5,
                                   rtol=1e-5)
