"""Frozen-backbone inference through ONNX Runtime, where it is installed.

On CPU, ONNX Runtime runs EfficientNet-Lite0 at about four times torch's
images/s (its depthwise convolutions are where torch is slow;
``benchmarks/studies/extract_speed.py`` measures both). :func:`feature_function` gives
the function :func:`genindex.inputs.extract_features` calls on each batch of
uint8 pixels: a session of the backbone exported to ONNX (in memory, once per
process and backbone weights) when the backbone allows it
(``Backbone.onnx_export``), the device is the CPU, ``onnx`` and
``onnxruntime`` import and ``$GENINDEX_ONNX`` is not ``0``; otherwise the
backbone's own forward. Both give the same features to float32 rounding
(the feature cache does not tell them apart).
"""

from __future__ import annotations

import io
import logging
import os
import threading
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .backbones import Backbone

log = logging.getLogger(__name__)

FeatureFunction = Callable[[torch.Tensor], np.ndarray]  # uint8 (B, 3, S, S) -> (B, d)
_SESSIONS: dict[str, object] = {}  # backbone cache key -> ONNX Runtime session
_LOCK = threading.Lock()


class _GlobalFeature(nn.Module):
    """What is exported: uint8 pixels -> the backbone's global feature, float32."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.backbone(pixels).global_feature.float()


def feature_function(backbone: Backbone, device: torch.device) -> FeatureFunction:
    """Global features of a batch of pixels: ONNX Runtime where it applies, else torch."""
    session = _session(backbone) if _applies(backbone, device) else None
    if session is None:
        return lambda pixels: backbone(pixels.to(device)).global_feature.float().cpu().numpy()
    name = session.get_inputs()[0].name
    return lambda pixels: session.run(None, {name: pixels.numpy()})[0]


def _applies(backbone: Backbone, device: torch.device) -> bool:
    if device.type != "cpu" or not getattr(backbone, "onnx_export", False):
        return False
    if os.environ.get("GENINDEX_ONNX", "1") == "0" or backbone.training:
        return False
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _session(backbone: Backbone):
    """The backbone's session, exported on first use; None (logged) if export fails."""
    key = backbone.cache_key()
    with _LOCK:
        if key not in _SESSIONS:
            _SESSIONS[key] = _export(backbone)
        return _SESSIONS[key]


def _export(backbone: Backbone):
    import onnxruntime as ort

    size = backbone.image_size
    example = torch.zeros(2, 3, size, size, dtype=torch.uint8)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(_GlobalFeature(backbone).eval(), (example,), buffer,
                              input_names=["pixels"], output_names=["feature"],
                              dynamic_axes={"pixels": {0: "batch"}}, dynamo=False)
    except Exception as error:  # an op the exporter lacks: torch's own forward serves
        log.warning("ONNX export of %s failed (%s); features come from torch",
                    type(backbone).__name__, error)
        return None
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3
    return ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
