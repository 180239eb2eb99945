"""The benchmark runner end to end on a small real data set, and the ablations."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from benchmarks import ablations, metrics, run
from benchmarks.datasets import digits  # noqa: F401  (registers the loader)
from benchmarks.rows import Result

from .helpers import TINY


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(TINY.to_json())
    return path


def test_runner_writes_every_method_and_its_metrics_match_brute_force(
        tiny_vit, tiny_config, tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    monkeypatch.setattr(run, "get_backbone", lambda name: tiny_vit)
    methods = ["linear", "ivfpq", "scann", "genindex"]
    if importlib.util.find_spec("diskannpy"):
        methods.insert(3, "diskann")
    out = tmp_path / "out"
    code = run.main(["--dataset", "digits", "--limit", "4", "--methods", ",".join(methods),
                     "--backbone", "tiny-vit",
                     "--config", str(tiny_config), "--beam-sizes", "1,4", "--out", str(out),
                     "--quiet"])
    assert code == 0
    result = Result.from_json((out / "results.json").read_text())
    # every method on the backbone's features, then the baselines on the FT features
    # genindex gives two rows from one built index: the paper's order and the metric order
    assert [(row.method, row.backbone) for row in result.rows] == (
        [(m, "tiny-vit") for m in methods] + [("genindex, metric order", "tiny-vit")]
        + [(m, "tiny-vit FT") for m in methods[:-1]])
    generative, metric = result.rows[len(methods) - 1], result.rows[len(methods)]
    assert generative.build_s == metric.build_s and generative.bytes == metric.bytes
    for row in result.rows:
        quality = row.metrics
        assert (set(quality.precision) >= {1, 3} and 10 in quality.recall
                and 8 in quality.mrr and 100 in quality.map)
        assert all(0.0 <= v <= 1.0 for values in (quality.precision, quality.recall,
                                                  quality.mrr, quality.map)
                   for v in values.values())
        assert row.bytes > 0 and row.qps > 0 and len(row.pr_curve.recall) == 100
    sweep = result.beam_sweep
    assert [r.beam_size for r in sweep] == [1, 4]
    assert all(r.qps > 0 and r.decoder_s > 0 and r.trie_s > 0 for r in sweep)
    assert (out / "tables.md").read_text().count("| linear |") >= 3
    assert (out / "precision_at_k.png").is_file() and (out / "beam_sweep.png").is_file()

    # linear scan's row is exact L2 search over the same features, here by numpy in
    # float64 (Faiss computes in float32, so near-ties may order differently)
    data = run.datasets.load("digits", limit=4)
    db, queries = run.features(data, tiny_vit, "tiny-vit", progress=False)
    dist = ((queries[:, None].astype(np.float64) - db[None]) ** 2).sum(-1)
    ids = np.argsort(dist, axis=1, kind="stable")[:, :100]
    hits = metrics.relevance(ids, data.db_labels, data.query_labels)
    linear = result.rows[0].metrics
    assert linear.precision[3] == pytest.approx(metrics.precision_at_k(hits, 3), abs=0.02)
    assert linear.recall[10] == pytest.approx(metrics.recall_at_k(hits, 10), abs=0.02)


def test_runner_refuses_unknown_methods_and_ablations():
    for argv in (["--dataset", "digits", "--methods", "linear,annoy"],
                 ["--dataset", "digits", "--ablation", "colours"]):
        with pytest.raises(SystemExit) as error:
            run.parse_args(argv)
        assert error.value.code == 2


def test_hkm_ids_split_until_every_item_has_its_own_id():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    ids = ablations.hkm_ids(x, clusters=10)
    assert ids.dtype == np.int64 and ids.shape[0] == 300 and ids.shape[1] >= 3
    assert len({tuple(row) for row in ids}) == 300
    assert ids.min() >= 0 and ids.max() < 10


def test_random_ids_are_seeded_and_in_range():
    a, b = ablations.random_ids(50, 4, 16, seed=1), ablations.random_ids(50, 4, 16, seed=1)
    assert np.array_equal(a, b) and a.shape == (50, 4) and 0 <= a.min() and a.max() < 16


def test_identifier_ablation_variants_return_valid_ids(data):
    x, labels = data
    variants = ablations.ids_variants(x, labels, TINY, progress=False)
    assert list(variants) == ["random", "HKM_100", "HKM_200", "HKM_500", "ours"]
    for length, search in variants.values():
        found = search(x[:10], 5)
        assert found.shape == (10, 5) and length >= 1
        assert ((found >= 0) & (found < len(x))).all()
        assert all(len(set(row)) == 5 for row in found)  # no id twice


def test_run_reads_a_data_sets_tuned_config_unless_told_otherwise(tmp_path):
    from benchmarks.run import genindex_config

    config, name = genindex_config(None, "emoji")
    assert name == "benchmarks/configs/emoji.json"
    assert config.tokenizer.identifiers == "class" and config.tokenizer.head == "linear"
    assert genindex_config(None, "digits") == (None, "default")  # no tuned file
    assert genindex_config("default", "emoji") == (None, "default")
    own = tmp_path / "mine.json"
    own.write_text('{"seed": 3}')
    config, name = genindex_config(str(own), "emoji")
    assert config.seed == 3 and name == str(own)
    with pytest.raises(SystemExit, match="no such file"):
        genindex_config(str(tmp_path / "missing.json"), "emoji")
