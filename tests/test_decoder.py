"""The decoder: cached incremental decoding equals full recomputation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from genindex.config import DecoderConfig
from genindex.decoder import Decoder, masked_cross_entropy

CONFIG = DecoderConfig(n_layer=2, n_head=2, n_embd=16, n_memory=3, dropout=0.0)


def make_decoder(vocab=7, levels=4, d=5, seed=0) -> Decoder:
    torch.manual_seed(seed)
    return Decoder.for_vectors(CONFIG, codebook_size=vocab, num_codebooks=levels,
                               input_dim=d).eval()


def test_forward_shapes_and_loss():
    decoder = make_decoder()
    x, codes = torch.randn(6, 5), torch.randint(0, 7, (6, 4))
    logits, loss = decoder(x, codes[:, :-1], codes)
    assert logits.shape == (6, 4, 7)
    smoothing = CONFIG.label_smoothing
    assert smoothing > 0  # the default: the loss mixes the target with a uniform one
    log_p = torch.log_softmax(logits.reshape(-1, 7), dim=1)
    nll = -log_p.gather(1, codes.reshape(-1, 1)).squeeze(1)
    expected = ((1 - smoothing) * nll - smoothing * log_p.mean(dim=1)).mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    logits_only, no_loss = decoder(x, codes[:, :2])
    assert logits_only.shape == (6, 3, 7) and no_loss is None
    # a prefix only sees itself: the first logits do not depend on later codes
    assert torch.allclose(logits_only, logits[:, :3], atol=1e-5)


def test_without_label_smoothing_the_loss_is_the_plain_cross_entropy():
    torch.manual_seed(0)
    config = DecoderConfig(n_layer=2, n_head=2, n_embd=16, dropout=0.0, label_smoothing=0.0)
    decoder = Decoder.for_vectors(config, codebook_size=7, num_codebooks=4, input_dim=5).eval()
    x, codes = torch.randn(6, 5), torch.randint(0, 7, (6, 4))
    logits, loss = decoder(x, codes[:, :-1], codes)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 7), codes.reshape(-1))
    assert torch.allclose(loss, expected)


@torch.no_grad()
def test_cached_steps_equal_full_forward_with_beams_reordered():
    decoder = make_decoder()
    queries, beams, levels = 3, 4, 4
    x = torch.randn(queries, 5)
    # every beam of every query follows its own random identifier
    codes = torch.randint(0, 7, (queries, beams, levels))
    full, _ = decoder(x.repeat_interleave(beams, 0), codes.reshape(-1, levels)[:, :-1])
    full = full.reshape(queries, beams, levels, 7)

    state = decoder.start(x)
    first = decoder.step(state, None)  # (Q, 1, L): every beam starts alike
    assert torch.allclose(first[:, 0], full[:, 0, 0], atol=1e-5)
    state.reorder(torch.zeros(queries, beams, dtype=torch.long))
    for t in range(1, levels):
        logits = decoder.step(state, codes[:, :, t - 1])
        assert torch.allclose(logits, full[:, :, t], atol=1e-5)
    # a reorder that swaps beams must carry the cache along
    state = decoder.start(x)
    decoder.step(state, None)
    state.reorder(torch.zeros(queries, beams, dtype=torch.long))
    decoder.step(state, codes[:, :, 0])
    perm = torch.tensor([[3, 2, 1, 0]] * queries)
    state.reorder(perm)
    swapped = codes.gather(1, perm[:, :, None].expand(-1, -1, levels))
    logits = decoder.step(state, swapped[:, :, 1])
    assert torch.allclose(logits, full.gather(1, perm[:, :, None, None].expand(
        -1, -1, levels, 7))[:, :, 2], atol=1e-5)


def test_masked_loss_over_every_code_is_the_smoothed_cross_entropy():
    decoder = make_decoder()
    x, codes = torch.randn(6, 5), torch.randint(0, 7, (6, 4))
    _, loss = decoder(x, codes[:, :-1], codes)
    _, masked = decoder(x, codes[:, :-1], codes, torch.ones(6, 4, 7, dtype=torch.bool))
    assert torch.allclose(masked, loss, atol=1e-6)


def test_masked_loss_is_the_cross_entropy_among_the_allowed_codes():
    torch.manual_seed(1)
    logits, smoothing = torch.randn(3, 5), 0.2
    allowed = torch.tensor([[1, 0, 1, 1, 0], [0, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    targets = torch.tensor([3, 1, 0])
    loss = masked_cross_entropy(logits, targets, allowed, smoothing)
    # by hand: row 0 is a 3-way problem over codes 0, 2, 3 (target at place 2);
    # row 1 is forced (one allowed code) and adds 0; row 2 is the plain loss
    row0 = F.cross_entropy(logits[0, [0, 2, 3]][None], torch.tensor([2]),
                           label_smoothing=smoothing)
    row2 = F.cross_entropy(logits[2][None], targets[2:], label_smoothing=smoothing)
    assert torch.allclose(loss, (row0 + row2) / 3, atol=1e-6)
    with pytest.raises(ValueError, match="target code is not allowed"):
        masked_cross_entropy(logits, torch.tensor([1, 1, 0]), allowed, smoothing)


def test_forced_levels_give_no_gradient_to_their_output_layer():
    decoder = make_decoder().train()
    x, codes = torch.randn(6, 5), torch.randint(0, 7, (6, 4))
    allowed = torch.ones(6, 4, 7, dtype=torch.bool)
    allowed[:, 2] = F.one_hot(codes[:, 2], 7).bool()  # level 2 has one choice everywhere
    _, loss = decoder(x, codes[:, :-1], codes, allowed)
    loss.backward()
    assert decoder.head.grad[2].abs().max() == 0
    assert decoder.head.grad[[0, 1, 3]].abs().max() > 0
