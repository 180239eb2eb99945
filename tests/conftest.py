"""Shared fixtures: a small clustered data set and a tiny trained index."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

from genindex import GenerativeIndex  # noqa: E402

from .helpers import TINY, clustered  # noqa: E402


@pytest.fixture(scope="session")
def data() -> tuple[np.ndarray, np.ndarray]:
    return clustered()


@pytest.fixture(scope="session")
def trained(data) -> GenerativeIndex:
    """A tiny index fitted on ``data`` (do not mutate: copy it with save/load)."""
    x, labels = data
    return GenerativeIndex.fit(x, labels, TINY, progress=False)
