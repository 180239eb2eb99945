"""Shared fixtures: small data sets, a tiny trained index, a tiny open_clip ViT."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)  # tiny models: one thread is fastest and immune to a busy machine

from hypothesis import settings  # noqa: E402

from genindex import GenerativeIndex  # noqa: E402

from .helpers import TINY, TINY_VIT, TINY_VIT_CONFIG, clustered, write_images  # noqa: E402

# the same examples on every run: a test that fails, fails every time (no database)
settings.register_profile("deterministic", derandomize=True, database=None)
settings.load_profile("deterministic")


@pytest.fixture(scope="session", autouse=True)
def _feature_cache_in_tmp(tmp_path_factory):
    """No test writes the user's cache folder."""
    os.environ["GENINDEX_CACHE"] = str(tmp_path_factory.mktemp("genindex-cache"))


@pytest.fixture(scope="session")
def data() -> tuple[np.ndarray, np.ndarray]:
    return clustered()


@pytest.fixture(scope="session")
def trained(data) -> GenerativeIndex:
    """A tiny index fitted on ``data``, ids kept as given (``id_map=True``: do not mutate,
    copy it with copy.copy)."""
    x, labels = data
    return GenerativeIndex.fit(x, labels, TINY, id_map=True, device="cpu", progress=False)


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory):
    """A randomly initialised open_clip ViT registered under a custom config name."""
    open_clip = pytest.importorskip("open_clip")
    folder = tmp_path_factory.mktemp("open_clip_configs")
    (folder / f"{TINY_VIT}.json").write_text(json.dumps(TINY_VIT_CONFIG))
    open_clip.add_model_config(folder)
    from genindex.backbones import OpenClipBackbone

    torch.manual_seed(0)
    return OpenClipBackbone(TINY_VIT, pretrained=None)


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """50 small PNG files, 5 classes: (paths, labels)."""
    pytest.importorskip("PIL")
    return write_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def local_ray():
    """A local Ray of 2 CPUs, started once for the tests that need it."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()
