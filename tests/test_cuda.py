"""On a machine with a GPU: the same index trains and searches on CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genindex import GenerativeIndex

from .helpers import TINY

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_cpu_trained_index_searches_the_same_on_cuda(trained, data, tmp_path):
    x, _ = data
    trained.save(tmp_path / "ix")
    on_gpu = GenerativeIndex.load(tmp_path / "ix", device="cuda")
    cpu, gpu = trained.search(x, 10), on_gpu.search(x, 10)
    assert gpu.ids.dtype == np.int64 and gpu.scores.dtype == np.float32
    assert (cpu.ids == gpu.ids).mean() > 0.95  # float rounding may swap near-ties
    np.testing.assert_allclose(cpu.scores, gpu.scores, atol=1e-3)


def test_fit_add_search_on_cuda(data, tmp_path):
    x, labels = data
    index = GenerativeIndex.fit(x, labels, TINY, device="cuda", progress=False)
    assert next(index.decoder.parameters()).is_cuda
    index.add_with_ids(x[:5], np.arange(1000, 1005))
    D, I = index.search(x[::10], 5)
    assert (labels[np.where(I < 1000, I, 0)] == labels[::10, None]).mean() > 0.8
    index.save(tmp_path / "gpu")
    back = GenerativeIndex.load(tmp_path / "gpu")
    assert np.isin(np.arange(1000, 1005), back.ids).all()
