"""Writes tests/data/format_v1 and format_v1_expected.npz; it ran once, at commit 63b2a71,
the last whose save wrote folders: ``python tests/data/make_format_v1.py tests/data/format_v1``
(then ``mv tests/data/format_v1.expected.npz tests/data/format_v1_expected.npz``)."""

import sys

import numpy as np
import torch

from genindex import GenerativeIndex
from tests.helpers import TINY, clustered

torch.set_num_threads(1)
x, labels = clustered()
index = GenerativeIndex.fit(x, labels, TINY, device="cpu", progress=False)
index.remove_ids(np.arange(5))
index.add(x[:3] + 0.05)
out = sys.argv[1]
index.save(out)
result = index.search(x[::4], 5)
np.savez(out + ".expected.npz", ids=result.ids, scores=result.scores, queries=x[::4])
