"""Training's arithmetic (IndexConfig.precision): checked, saved, and used."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genindex import GenerativeIndex, IndexConfig
from genindex.finetune import FineTuneConfig
from genindex.loop import native_bfloat16, training_dtype

from .helpers import TINY


@pytest.mark.parametrize("make", [lambda p: IndexConfig(precision=p),
                                  lambda p: FineTuneConfig(precision=p)])
def test_an_unknown_precision_is_refused_by_name(make):
    with pytest.raises(ValueError, match="precision must be one of"):
        make("float16")


def test_precision_is_saved_with_the_config():
    config = IndexConfig(precision="bfloat16")
    assert IndexConfig.from_json(config.to_json()) == config
    assert IndexConfig.from_dict({}).precision == "auto"  # configs saved before it existed


def test_training_dtype_follows_the_setting_and_the_hardware():
    cpu = torch.device("cpu")
    assert training_dtype(cpu, "float32") is None
    assert training_dtype(cpu, "bfloat16") is torch.bfloat16
    assert training_dtype(cpu, "auto") is (torch.bfloat16 if native_bfloat16(cpu) else None)
    assert training_dtype(torch.device("cuda"), "auto") is torch.bfloat16
    with pytest.raises(ValueError, match="precision"):
        training_dtype(cpu, "half")


def test_bfloat16_training_is_deterministic_and_close_to_float32(data):
    x, labels = data
    fits = {p: [GenerativeIndex.fit(x, labels, TINY.replace(precision=p), progress=False)
                for _ in range(2 if p == "bfloat16" else 1)] for p in ("float32", "bfloat16")}
    a, b = fits["bfloat16"]
    assert np.array_equal(a.identifiers(np.arange(len(x))), b.identifiers(np.arange(len(x))))
    assert np.array_equal(a.search(x, 5).ids, b.search(x, 5).ids)
    for index in (a, fits["float32"][0]):  # both train a working index
        ids = index.search(x, 5).ids
        assert (labels[ids] == labels[:, None]).mean() > 0.5


@pytest.mark.parametrize("native", [True, False])
def test_search_precision_follows_the_config_and_falls_back_without_hardware(
        trained, data, monkeypatch, native):
    """``precision="auto"``: bfloat16 search where the device computes it natively,
    float32 elsewhere; ``"float32"`` always; an explicit ``dtype`` wins."""
    import copy

    import genindex.loop

    monkeypatch.setattr(genindex.loop, "native_bfloat16", lambda device: native)
    queries = data[0][::5] + 0.05
    exact = trained.search(queries, 8, order="generative", dtype="float32")
    low = trained.search(queries, 8, order="generative", dtype="bfloat16")
    assert not np.array_equal(exact.scores, low.scores)  # the two precisions differ here
    auto = copy.copy(trained)
    auto.config = trained.config.replace(precision="auto")
    default = auto.search(queries, 8, order="generative")
    np.testing.assert_array_equal(default.scores, (low if native else exact).scores)
    np.testing.assert_array_equal(trained.search(queries, 8, order="generative").scores,
                                  exact.scores)  # TINY: precision="float32"
    np.testing.assert_array_equal(auto.search(queries, 8, order="generative",
                                              dtype="float32").scores, exact.scores)


def test_the_ragged_step_in_bfloat16_stays_close_to_the_dense_one(trained, data, monkeypatch):
    from genindex import steps

    queries = data[0][::5] + 0.05
    found = {}
    for share in (-1.0, 1.0):
        monkeypatch.setattr(steps, "RAGGED_SHARE", share)
        found[share] = trained.search(queries, 8, order="generative", dtype="bfloat16")
    np.testing.assert_allclose(found[1.0].scores, found[-1.0].scores, atol=0.05)
    assert (found[1.0].ids[:, 0] == found[-1.0].ids[:, 0]).mean() >= 0.9
