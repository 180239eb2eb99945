"""The residual quantizer and the tokenizer: encode/decode round trips."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genindex.config import IndexConfig, TokenizerConfig
from genindex.kmeans import assign, kmeans, squared_distances
from genindex.tokenizer import ResidualQuantizer, SemanticTokenizer
from genindex.train import train_tokenizer


def separated_quantizer(levels: int, size: int, seed: int = 0) -> ResidualQuantizer:
    """Codebooks whose levels are so far apart in scale that greedy RQ is exact:
    codewords of level m are 0.2**m times rotated basis vectors (pairwise
    distance 0.2**m * sqrt(2)), more than twice all deeper levels together."""
    torch.manual_seed(seed)
    rotation, _ = torch.linalg.qr(torch.randn(size, size))
    quantizer = ResidualQuantizer(levels, size, size)
    for m in range(levels):
        quantizer.codebooks[m] = 0.2 ** m * rotation
    return quantizer


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 4), st.integers(2, 12), st.data())
def test_decode_then_encode_gives_the_codes_back(levels, size, data):
    quantizer = separated_quantizer(levels, size)
    codes = torch.tensor(data.draw(st.lists(
        st.lists(st.integers(0, size - 1), min_size=levels, max_size=levels),
        min_size=1, max_size=20)))
    assert torch.equal(quantizer.encode(quantizer.decode(codes)), codes)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 9), st.integers(0, 10**6))
def test_encode_is_greedy_nearest_codeword_per_residual(levels, size, seed):
    rng = np.random.default_rng(seed)
    quantizer = ResidualQuantizer(levels, size, 5)
    quantizer.codebooks.copy_(torch.as_tensor(rng.standard_normal((levels, size, 5))))
    f = rng.standard_normal((30, 5))
    codes = quantizer.encode(torch.as_tensor(f, dtype=torch.float32)).numpy()
    books = quantizer.codebooks.numpy()
    residual = f.copy()
    for m in range(levels):
        dist = ((residual[:, None, :] - books[m][None]) ** 2).sum(-1)
        chosen = dist[np.arange(len(f)), codes[:, m]]
        assert np.all(chosen <= dist.min(axis=1) + 1e-4)
        residual -= books[m][codes[:, m]]
    decoded = quantizer.decode(torch.as_tensor(codes)).numpy()
    assert np.allclose(decoded, f - residual, atol=1e-4)
    partial = quantizer.partial(torch.as_tensor(codes))
    assert torch.allclose(partial[:, -1], torch.as_tensor(decoded), atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(1, 12), st.integers(0, 10**6))
def test_assign_finds_the_nearest_centroid_and_its_squared_distance(n, k, seed):
    rng = np.random.default_rng(seed)
    x, centroids = rng.standard_normal((n, 6)), rng.standard_normal((k, 6))
    brute = ((x[:, None, :] - centroids[None]) ** 2).sum(-1)
    as_t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    assert np.allclose(squared_distances(as_t(x), as_t(centroids)).numpy(), brute, atol=1e-4)
    codes, dists = assign(as_t(x), as_t(centroids))
    chosen = brute[np.arange(n), codes.numpy()]
    assert np.all(chosen <= brute.min(axis=1) + 1e-4)
    assert np.allclose(dists.numpy(), brute.min(axis=1), atol=1e-4)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(2, 12), st.integers(0, 10**6))
def test_bfloat16_assignment_differs_only_between_nearly_equidistant_centroids(n, k, seed):
    """In bfloat16 (8 significant bits) a row may get another centroid only where the
    float32 distances to the two differ by about the rounding of the products."""
    rng = np.random.default_rng(seed)
    x = torch.as_tensor(rng.standard_normal((n, 6)), dtype=torch.float32)
    centroids = torch.as_tensor(rng.standard_normal((k, 6)), dtype=torch.float32)
    exact = squared_distances(x, centroids)
    codes, dists = assign(x, centroids, torch.bfloat16)
    best = exact.min(dim=1).values
    chosen = exact.gather(1, codes[:, None])[:, 0]
    scale = (x.square().sum(1) + centroids.square().sum(1).max()).clamp_min(1.0)
    assert torch.all(chosen - best <= 2 ** -6 * scale)
    assert torch.all((dists - chosen).abs() <= 2 ** -6 * scale)


def test_bfloat16_kmeans_quantizes_as_well_as_float32():
    """The training refits' precision: same seed, the mean squared error of the codebooks
    fit with bfloat16 assignments is within 1 % of float32's (measured in float32)."""
    x = torch.nn.functional.normalize(torch.randn(3000, 32, generator=torch.Generator()
                                                  .manual_seed(4)), dim=1)
    errors = []
    for dtype in (None, torch.bfloat16):
        centroids = kmeans(x, 256, 10, torch.Generator().manual_seed(0), dtype=dtype)
        errors.append(float(assign(x, centroids)[1].mean()))
    assert errors[1] == pytest.approx(errors[0], rel=0.01)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_kmeans_stops_at_a_fixed_point_with_the_centroids_of_every_further_iteration(dtype):
    """Stopping once no point changes cluster returns what all iterations would: a
    reference Lloyd loop run for every iteration gives the same centroids."""
    x = torch.randn(600, 8, generator=torch.Generator().manual_seed(6))
    fitted = kmeans(x, 16, 200, torch.Generator().manual_seed(1), dtype=dtype)
    centroids = x[torch.randperm(600, generator=torch.Generator().manual_seed(1))[:16]]
    for _ in range(200):  # the same start, no early stop (no cluster empties here)
        codes = assign(x, centroids, dtype)[0]
        counts = torch.bincount(codes, minlength=16)
        assert bool((counts > 0).all())
        centroids = torch.zeros_like(centroids).index_add_(0, codes, x) / counts[:, None]
    assert torch.equal(fitted, centroids)


def test_fitted_codebooks_reduce_the_error_at_every_level():
    generator = torch.Generator().manual_seed(0)
    f = torch.randn(2000, 8, generator=generator)
    quantizer = ResidualQuantizer(3, 16, 8)
    quantizer.fit(f, iters=10, generator=generator)
    partial = quantizer.partial(quantizer.encode(f))
    errors = [float(((f - partial[:, m]) ** 2).sum(1).mean()) for m in range(3)]
    assert float((f ** 2).sum(1).mean()) > errors[0] > errors[1] > errors[2]


def test_kmeans_is_seeded_and_uses_every_centroid():
    x = torch.randn(500, 4, generator=torch.Generator().manual_seed(1))
    a = kmeans(x, 32, 10, torch.Generator().manual_seed(3))
    b = kmeans(x, 32, 10, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    labels = ((x[:, None] - a[None]) ** 2).sum(-1).argmin(1)
    assert len(torch.unique(labels)) == 32


def test_warm_started_kmeans_continues_from_its_start():
    """Lloyd's iterations from converged centroids stay there; a warm refit of fitted
    codebooks keeps them (nothing moved) and refits changed features from them."""
    x = torch.randn(400, 4, generator=torch.Generator().manual_seed(2))
    converged = kmeans(x, 8, 100, torch.Generator().manual_seed(0))
    again = kmeans(x, 8, 3, torch.Generator().manual_seed(9), init=converged)
    torch.testing.assert_close(again, converged)
    quantizer = ResidualQuantizer(2, 8, 4)
    quantizer.fit(x, 100, torch.Generator().manual_seed(0))
    before = quantizer.codebooks.clone()
    quantizer.fit(x, 3, torch.Generator().manual_seed(5), warm=True)
    torch.testing.assert_close(quantizer.codebooks, before)
    error = float(((x + 0.5 - quantizer.decode(quantizer.encode(x + 0.5))) ** 2).mean())
    quantizer.fit(x + 0.5, 3, torch.Generator().manual_seed(5), warm=True)
    assert float(((x + 0.5 - quantizer.decode(quantizer.encode(x + 0.5))) ** 2).mean()) < error


def test_codebook_shrinks_to_the_number_of_training_items(caplog):
    config = IndexConfig(tokenizer=TokenizerConfig(codebook_size=64, epochs=1, min_steps=0, dim=8))
    x = torch.randn(20, 6, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(20) % 4
    with caplog.at_level(logging.WARNING):
        tokenizer, _ = train_tokenizer(x, labels, config, torch.Generator().manual_seed(0),
                                       progress=False)
    assert tokenizer.quantizer.codebook_size == 20
    assert "shrunk from 64 to 20" in caplog.text
    codes = tokenizer.encode(x)
    assert codes.shape == (20, 4) and codes.dtype == torch.int64
    assert int(codes.max()) < 20


def test_unsupervised_tokenizer_is_residual_quantization_of_the_input():
    config = IndexConfig(tokenizer=TokenizerConfig(codebook_size=8, num_codebooks=2))
    x = torch.randn(300, 5, generator=torch.Generator().manual_seed(0))
    tokenizer, history = train_tokenizer(x, None, config, torch.Generator().manual_seed(0),
                                         progress=False)
    assert history == ([], []) and not tokenizer.supervised
    assert tokenizer.decode(tokenizer.encode(x)).shape == (300, 5)
    assert torch.equal(tokenizer.encode(x), tokenizer.quantizer.encode(x))


def test_supervised_features_are_unit_vectors():
    tokenizer = SemanticTokenizer(6, TokenizerConfig(num_codebooks=2, codebook_size=4, dim=8), 3)
    f = tokenizer.features(torch.randn(10, 6))
    assert torch.allclose(f.norm(dim=1), torch.ones(10), atol=1e-5)


def _class_tokenizer(identifiers: str, seed: int = 0, size: int = 8):
    from tests.helpers import TINY, clustered

    x, labels = clustered(num_classes=12, per_class=6, d=16, noise=0.4, seed=seed)
    config = TINY.replace(tokenizer=dataclasses.replace(
        TINY.tokenizer, identifiers=identifiers, head="linear", codebook_size=size))
    x, labels = torch.from_numpy(x), torch.from_numpy(labels)
    torch.manual_seed(seed)  # the heads' initial weights
    tokenizer, _ = train_tokenizer(x, labels, config, torch.Generator().manual_seed(seed),
                                   progress=False)
    return tokenizer, x, labels


def test_class_identifiers_are_the_codes_of_the_class_centres():
    tokenizer, x, labels = _class_tokenizer("class")
    with torch.no_grad():
        f = tokenizer.features(x)
        centres = torch.stack([f[labels == c].mean(0) for c in range(12)])
        expected = tokenizer.quantizer.encode(torch.nn.functional.normalize(centres, dim=1))
        assigned = tokenizer.classifier(f).argmax(1)
    assert torch.equal(tokenizer.class_codes, expected)
    # an item's identifier is its assigned class's: one identifier per class
    assert torch.equal(tokenizer.encode(x), expected[assigned])
    assert (assigned == labels).float().mean() > 0.9  # the classifier learnt the classes


def test_class_centres_are_the_normalised_class_means():
    tokenizer, x, labels = _class_tokenizer("class")
    with torch.no_grad():
        f = tokenizer.features(x)
        centres = torch.stack([f[labels == c].mean(0) for c in range(12)])
    assert torch.allclose(tokenizer.class_centres(f, labels),
                          torch.nn.functional.normalize(centres, dim=1), atol=1e-6)


def test_levels_with_nothing_left_to_quantize_get_code_zero():
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    quantizer = ResidualQuantizer(3, 6, 4)  # one codeword per point at the first level
    quantizer.fit(x, 5, torch.Generator().manual_seed(0))
    codes = quantizer.encode(x)
    assert sorted(codes[:, 0].tolist()) == list(range(6))
    assert not codes[:, 1:].any() and not quantizer.codebooks[1:].any()
    assert torch.allclose(quantizer.decode(codes), x)


def test_feature_identifiers_quantize_each_items_own_feature():
    tokenizer, x, _ = _class_tokenizer("feature")
    assert tokenizer.class_codes is None
    with torch.no_grad():
        assert torch.equal(tokenizer.encode(x), tokenizer.quantizer.encode(tokenizer.features(x)))


def test_class_identifiers_need_labels_to_be_set():
    tokenizer = SemanticTokenizer(6, TokenizerConfig(identifiers="class"), None)
    assert tokenizer.class_codes is None  # unlabelled: plain RQ of the input
    with pytest.raises(RuntimeError, match="identifiers='class'"):
        tokenizer.set_class_codes(torch.randn(3, 6))
    with pytest.raises(ValueError, match="identifiers must be 'feature', 'class' or"):
        TokenizerConfig(identifiers="item")


def test_first_codebook_given_holds_the_centres_and_codes_are_the_nearest_one():
    generator = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(5, 8, generator=generator), dim=1)
    f = centres[torch.arange(40) % 5] + 0.05 * torch.randn(40, 8, generator=generator)
    quantizer = ResidualQuantizer(2, 8, 8)
    quantizer.fit(f, 10, generator, first=centres)
    assert torch.equal(quantizer.codebooks[0, :5], centres)
    codes = quantizer.encode(f)
    nearest = torch.cdist(f, centres).argmin(dim=1)
    assert torch.equal(codes[:, 0], nearest)  # the repeats (rows 5..7) are never chosen
    # the second level quantizes what the centre leaves
    residual = f - centres[nearest]
    assert (f - quantizer.decode(codes)).norm(dim=1).mean() < residual.norm(dim=1).mean()
    # more centres than codewords: their k-means
    quantizer.fit(f, 10, generator, first=f[:20])
    assert len(torch.unique(quantizer.encode(f)[:, 0])) == 8


def test_class_first_identifiers_put_a_class_behind_one_first_code():
    tokenizer, x, labels = _class_tokenizer("class-first", size=16)  # 12 classes: all kept
    assert tokenizer.class_codes is None
    with torch.no_grad():
        f = tokenizer.features(x)
        codes = tokenizer.encode(x)
    centres = tokenizer.class_centres(f, labels)
    nearest = (f @ centres.T).argmax(dim=1)  # nearest class mean in f_cls
    assert torch.equal(tokenizer.quantizer.codebooks[0][codes[:, 0]], centres[nearest])
