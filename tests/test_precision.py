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
