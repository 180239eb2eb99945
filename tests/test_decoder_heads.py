"""The decoder's codebook-tied output layer and its f_cls input: trained, saved, loaded."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from genindex import DecoderConfig, GenerativeIndex, IndexConfig

from .helpers import TINY, clustered

VARIANTS = {"codebook head": {"head": "codebook"},
            "f_cls input": {"input": "f_cls"},
            "both": {"head": "codebook", "input": "f_cls"}}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def built(request):
    x, labels = clustered(num_classes=12, per_class=8, d=16, seed=5)
    config = TINY.replace(decoder=dataclasses.replace(TINY.decoder, **VARIANTS[request.param]))
    return GenerativeIndex.fit(x, labels, config, progress=False), x


def test_codewords_are_the_tokenizers_codebooks(built):
    index, _ = built
    decoder = index.decoder
    if decoder.config.head != "codebook":
        assert decoder.codewords is None
        return
    assert torch.equal(decoder.codewords, index.tokenizer.quantizer.codebooks)


def test_f_cls_input_reads_the_frozen_tokenizer_head(built):
    """The decoder's reader gives the tokenizer's f_cls, and training left it as fitted."""
    index, x = built
    reader = index.decoder.memory.reader
    if index.decoder.config.input != "f_cls":
        assert reader is None
        return
    assert not any(p.requires_grad for p in reader.parameters())
    v = torch.from_numpy(x[:9])
    with torch.no_grad():
        assert torch.allclose(reader(v), index.tokenizer.f_cls(v), atol=1e-6)


def test_round_trip_keeps_results(built, tmp_path):
    index, x = built
    path = tmp_path / "index.gidx"
    index.save(path)
    loaded = GenerativeIndex.load(path)
    assert loaded.config == index.config
    for order in ("generative", "semantic"):
        before, after = index.search(x[:10], 5, order=order), loaded.search(x[:10], 5, order=order)
        np.testing.assert_array_equal(before.ids, after.ids)
        np.testing.assert_allclose(before.scores, after.scores, rtol=1e-5, atol=1e-5)


def test_tied_head_is_a_scaled_codeword_cosine():
    """With the free rows at zero, the logits are code_scale times the cosine of the
    projected state with each codeword."""
    from genindex.decoder import Decoder

    torch.manual_seed(0)
    config = DecoderConfig(n_layer=1, n_head=2, n_embd=8, head="codebook")
    decoder = Decoder.for_vectors(config, 5, 2, 4, code_dim=3).eval()
    codebooks = torch.randn(2, 5, 3)
    decoder.set_codewords(codebooks)
    with torch.no_grad():
        decoder.head.zero_()
        h = torch.randn(7, 2, 8)
        state = torch.nn.functional.normalize(decoder.to_code(h), dim=-1)
        expected = decoder.code_scale * torch.einsum("btd,tld->btl", state, codebooks)
        assert torch.allclose(decoder._logits(h, first_level=0), expected, atol=1e-5)


@pytest.mark.parametrize("field,value,match", [
    ("head", "tied", "head must be 'free' or 'codebook'"),
    ("input", "pixels", "input must be 'vector' or 'f_cls'"),
    ("targets", "class", "targets must be 'partner' or 'f_cls'"),
    ("temperature", 0.0, "temperature must be > 0"),
    ("temperature", True, "temperature must be > 0"),
    ("distill", -0.5, "distill must be >= 0"),
])
def test_bad_choices_are_refused(field, value, match):
    with pytest.raises(ValueError, match=match):
        DecoderConfig(**{field: value})


def test_end_to_end_refuses_f_cls_input():
    with pytest.raises(ValueError, match="decoder.input must be 'vector'"):
        IndexConfig(end_to_end=True, decoder=DecoderConfig(input="f_cls"))
