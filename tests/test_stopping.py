"""The stopping rule: held-out scores after each pass, patience, the best pass's weights."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from genindex import GenerativeIndex
from genindex.loop import Stopping
from genindex.partners import Partners

from .helpers import TINY


def test_stopping_waits_patience_passes_then_keeps_the_best_weights():
    model = nn.Linear(2, 1)
    scores = iter([0.1, 0.5, 0.4, 0.5, 0.3, 0.9])
    rule = Stopping(lambda: next(scores), patience=3)
    stops = []
    for step in range(5):
        with torch.no_grad():
            model.weight.fill_(step)
        stops.append(rule.update(model))
    # best at pass 1 (0.5); passes 2, 3 (a tie is no gain), 4 do not improve: stop after 4
    assert stops == [False, False, False, False, True] and rule.best_pass == 1
    rule.restore(model)
    assert (model.weight == 1).all()
    assert rule.scores == [0.1, 0.5, 0.4, 0.5, 0.3]


def test_partner_codes_by_class_and_by_neighbour():
    x = torch.tensor([[0.0], [0.1], [5.0], [5.2], [9.0]])
    codes = torch.tensor([[1, 2], [1, 3], [4, 4], [4, 5], [7, 7]])
    labelled = Partners(x, torch.tensor([0, 0, 1, 1, 2]), neighbors=1)
    rows = torch.tensor([0, 0, 2, 4, 4])
    decoded = torch.tensor([[1, 3], [4, 4], [4, 5], [7, 7], [1, 2]])
    assert labelled.is_partner_code(rows, decoded, codes).tolist() == [
        True, False, True, True, False]
    unlabelled = Partners(x, None, neighbors=1)  # nearest: 0<->1, 2<->3, 4->3
    decoded = torch.tensor([[1, 3], [4, 4], [4, 5], [4, 5], [9, 9]])
    assert unlabelled.is_partner_code(rows, decoded, codes).tolist() == [
        True, False, True, True, False]


@pytest.mark.parametrize("labelled", [True, False])
def test_a_stopping_rule_ends_training_early_and_records_its_scores(data, labelled):
    x, labels = data
    config = TINY.replace(
        tokenizer=dataclasses.replace(TINY.tokenizer, epochs=200, patience=5),
        decoder=dataclasses.replace(TINY.decoder, epochs=200, patience=5), holdout=0.1)
    index = GenerativeIndex.fit(x, labels if labelled else None, config, progress=False)
    history = index.history
    assert len(history.decoder_loss) < 200 and len(history.decoder_score) == len(
        history.decoder_loss)
    assert max(history.decoder_score) > 0.5  # the held-out items find a partner
    if labelled:
        assert len(history.tokenizer_loss) < 200
        assert len(history.tokenizer_score) == len(history.tokenizer_loss)
        assert max(history.tokenizer_score) > 0.9
    assert history.tokenizer_s > 0 and history.decoder_s > 0
    ids = index.search(x, 5).ids
    assert (labels[ids] == labels[:, None]).mean() > 0.5
    # held-out items are still indexed: every item is found
    assert sorted(np.unique(index.ids).tolist()) == list(range(len(x)))
