"""Each term of the tokenizer's loss (paper eq. 3-4), checked against its definition:

    L = CE(f_cls) + lambda1 * sum_m CE(f^<=m) + lambda2 * sum_m ||f_cls - sg[f^<=m]||^2

where the partial reconstructions f^<=m pass the gradient straight through to f_cls."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from genindex.config import TokenizerConfig
from genindex.tokenizer import SemanticTokenizer

M, L, D, C = 3, 8, 8, 4


@pytest.fixture
def setup():
    torch.manual_seed(0)
    tokenizer = SemanticTokenizer(12, TokenizerConfig(num_codebooks=M, codebook_size=L, dim=D,
                                                      head="linear"), C)
    x, labels = torch.randn(32, 12), torch.arange(32) % C
    with torch.no_grad():
        tokenizer.quantizer.fit(tokenizer.features(x), 5, torch.Generator().manual_seed(0))
    return tokenizer, x, labels


def head_grad(tokenizer, loss):
    tokenizer.zero_grad()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in tokenizer.head.parameters()])


def test_the_loss_is_the_sum_of_its_three_terms(setup):
    tokenizer, x, labels = setup
    f = tokenizer.features(x)
    partial = tokenizer.quantizer.partial(tokenizer.quantizer.encode(f))
    ce = tokenizer.classifier.loss(f, labels)
    partial_ce = sum(tokenizer.classifier.loss(partial[:, m], labels) for m in range(M))
    commitment = sum(((f - partial[:, m]) ** 2).sum(1).mean() for m in range(M))
    for lambda1, lambda2 in [(0, 0), (1, 0), (0, 1), (0.5, 2.0)]:
        expected = ce + lambda1 * partial_ce + lambda2 * commitment
        assert tokenizer.loss(x, labels, lambda1, lambda2).item() == pytest.approx(
            expected.item(), rel=1e-5)
    assert partial_ce.item() > 0 and commitment.item() > 0  # neither term is empty


def test_partial_ce_gradient_reaches_the_head_straight_through(setup):
    """The CE term of f^<=m has the value at f^<=m and sends d CE / d f^<=m to f_cls."""
    tokenizer, x, labels = setup
    only_partial = tokenizer.loss(x, labels, 1.0, 0.0) - tokenizer.loss(x, labels, 0.0, 0.0)
    got = head_grad(tokenizer, only_partial)
    assert got.abs().sum() > 0  # the quantized path trains the head
    f = tokenizer.features(x)
    with torch.no_grad():
        partial = tokenizer.quantizer.partial(tokenizer.quantizer.encode(f))
    at = partial.clone().requires_grad_(True)
    sum(tokenizer.classifier.loss(at[:, m], labels) for m in range(M)).backward()
    expected = head_grad(tokenizer, (f * at.grad.sum(dim=1)).sum())
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    # not the gradient of CE at f itself: the value used is the reconstruction's
    tokenizer.zero_grad()
    plain = head_grad(tokenizer, M * tokenizer.classifier.loss(tokenizer.features(x), labels))
    assert not torch.allclose(got, plain, rtol=1e-2)


def test_commitment_pulls_f_cls_and_leaves_the_codebooks(setup):
    tokenizer, x, labels = setup
    codebooks = tokenizer.quantizer.codebooks
    codebooks.requires_grad_(True)
    only_commitment = tokenizer.loss(x, labels, 0.0, 1.0) - tokenizer.loss(x, labels, 0.0, 0.0)
    grad = head_grad(tokenizer, only_commitment)
    assert codebooks.grad is None or not codebooks.grad.any()  # sg[f^<=m]
    f = tokenizer.features(x)
    with torch.no_grad():
        target = tokenizer.quantizer.partial(tokenizer.quantizer.encode(f))
    expected = head_grad(tokenizer, ((f[:, None] - target) ** 2).sum(2).mean(0).sum())
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)
    # a small step along it brings f_cls nearer to its (fixed) reconstructions
    before = ((f - target[:, -1]) ** 2).sum().item()
    with torch.no_grad():
        offset = 0
        for p in tokenizer.head.parameters():
            p -= 1e-2 * grad[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
        after = ((tokenizer.features(x) - target[:, -1]) ** 2).sum().item()
    assert after < before


@pytest.mark.parametrize("lambda1,lambda2", [(2.0, 0.0), (0.0, 3.0)])
def test_lambdas_scale_their_term_alone(setup, lambda1, lambda2):
    tokenizer, x, labels = setup
    base = tokenizer.loss(x, labels, 0.0, 0.0).item()
    unit = tokenizer.loss(x, labels, float(lambda1 > 0), float(lambda2 > 0)).item() - base
    scaled = tokenizer.loss(x, labels, lambda1, lambda2).item() - base
    assert scaled == pytest.approx(max(lambda1, lambda2) * unit, rel=1e-5)


def test_the_classifier_loss_is_cosface(setup):
    # CE over scale * cos(f, w_c), the true class's cosine lowered by the margin
    tokenizer, x, labels = setup
    classifier, f = tokenizer.classifier, tokenizer.features(x)
    cos = F.normalize(f, dim=1) @ F.normalize(classifier.weight, dim=1).T
    margin = classifier.margin * F.one_hot(labels, C)
    expected = F.cross_entropy(classifier.scale * (cos - margin), labels)
    assert torch.allclose(classifier.loss(f, labels), expected, atol=1e-6)
    assert classifier.margin > 0 and not torch.allclose(
        classifier.loss(f, labels), F.cross_entropy(classifier.scale * cos, labels))
