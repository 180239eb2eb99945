"""The benchmark runner end to end on a small real data set, and the ablations."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from benchmarks import ablations, common, metrics, run
from benchmarks.datasets import digits  # noqa: F401  (registers the loader)
from benchmarks.rows import Result
from genindex import IndexConfig

from .helpers import TINY


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(TINY.to_json())
    return path


def _by_hand(ids, db_labels, query_labels, ks=(1, 3, 10), mrr_ks=(1, 2, 4, 8), map_k=100):
    """The paper's metrics (section 4.1) from result ids, one query at a time."""
    sizes = {label: int((db_labels == label).sum()) for label in set(db_labels.tolist())}
    per_query = {"precision": {k: [] for k in ks}, "recall": {k: [] for k in ks},
                 "mrr": {k: [] for k in mrr_ks}, "map": {map_k: []}}
    for row, label in zip(ids.tolist(), query_labels.tolist()):
        rel = [i >= 0 and db_labels[i] == label for i in row]
        for k in ks:
            per_query["precision"][k].append(sum(rel[:k]) / k)
            per_query["recall"][k].append(float(any(rel[:k])))
        for k in mrr_ks:
            per_query["mrr"][k].append(next((1 / (r + 1) for r in range(k) if rel[r]), 0.0))
        found, ap = 0, 0.0
        for r in range(map_k):
            if rel[r]:
                found += 1
                ap += found / (r + 1)
        per_query["map"][map_k].append(ap / min(sizes.get(label, 0), map_k)
                                       if sizes.get(label) else 0.0)
    return {family: {k: float(np.mean(v)) for k, v in values.items()}
            for family, values in per_query.items()}


def test_runner_rows_are_the_metrics_of_the_ids_each_method_returned(
        tiny_vit, tiny_config, tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    monkeypatch.setattr(common, "get_backbone", lambda name: tiny_vit)
    built = []  # the genindex methods whose f_cls the f_cls rows search
    methods_of = run.embedding.methods
    monkeypatch.setattr(run.embedding, "methods",
                        lambda genindex, suffix="": built.append(genindex) or
                        methods_of(genindex, suffix))
    returned = []  # (row name, backbone label, ids) of every search the runner measured
    measure = run.measure

    def recording(method, name, label, *args):
        row, ids = measure(method, name, label, *args)
        returned.append((name, label, ids))
        return row, ids

    monkeypatch.setattr(run, "measure", recording)
    # the extra semantic-order row, as emoji has it (few candidates: the data is small)
    monkeypatch.setattr(run, "SEMANTIC_CANDIDATES", {"digits": {"beam_size": 8,
                                                                "k_factor": 2.0}})
    methods = ["linear", "ivfpq", "hnsw", "scann", "ncm", "classifier", "genindex"]
    if importlib.util.find_spec("diskannpy"):
        methods.insert(4, "diskann")
    out = tmp_path / "out"
    code = run.main(["--dataset", "digits", "--limit", "4", "--methods", ",".join(methods),
                     "--backbone", "tiny-vit", "--seeds", "2", "--wide",
                     "--config", str(tiny_config), "--beam-sizes", "1,4", "--out", str(out),
                     "--quiet"])
    assert code == 0
    result = Result.from_json((out / "results.json").read_text())
    assert result.split == "test"
    data = run.datasets.load("digits", limit=4)
    db_labels, query_labels = np.asarray(data.db_labels), np.asarray(data.query_labels)

    # every row, the genindex rows over both seeds, is the metrics of its returned ids
    names = [(row.method, row.backbone) for row in result.rows]
    assert len(names) == len(set(names)) == len({(n, b) for n, b, _ in returned})
    genindex = [row for row in result.rows if row.method.startswith("genindex")]
    assert [row.method for row in genindex] == ["genindex, feature ids",
                                                "genindex, feature ids, metric order",
                                                "genindex, feature ids, semantic order",
                                                "genindex, feature ids, semantic order, "
                                                "beam 8, k_factor 2"]
    assert all(row.seeds == 2 for row in genindex)
    # the decoder's ablation: the same builds' f_cls, searched flat, by HNSW and by ncm
    fcls = {row.method: row for row in result.rows if "f_cls" in row.method}
    assert list(fcls) == ["f_cls exact scan", "f_cls HNSW", "ncm on f_cls"]
    assert all(row.seeds == 2 and row.backbone == "tiny-vit" for row in fcls.values())
    assert fcls["f_cls HNSW"].note.startswith("efSearch ")
    linear_ids = {label: ids for name, label, ids in returned if name == "linear"}
    for row in result.rows:
        runs = [ids for name, label, ids in returned if (name, label) == (row.method,
                                                                          row.backbone)]
        assert len(runs) == (2 if row.seeds else 1)
        for ids in runs:
            assert ids.shape == (len(query_labels), 100) and ids.dtype == np.int64
            assert ((ids >= -1) & (ids < len(db_labels))).all()
            assert all(len(set(r[r >= 0])) == (r >= 0).sum() for r in ids)  # no id twice
        by_hand = [_by_hand(ids, db_labels, query_labels) for ids in runs]
        for family, values in by_hand[0].items():
            for k in values:
                found = [one[family][k] for one in by_hand]
                assert getattr(row.metrics, family)[k] == pytest.approx(np.mean(found))
                if row.seeds:
                    assert getattr(row.low, family)[k] == pytest.approx(min(found))
                    assert getattr(row.high, family)[k] == pytest.approx(max(found))
        exact = linear_ids[row.backbone][:, :10]
        assert row.exact_recall == pytest.approx(np.mean(
            [len(set(a[:10]) & set(b)) / 10 for ids in runs for a, b in zip(ids, exact)]))
        assert row.bytes > 0 and row.qps > 0 and len(row.pr_curve.recall) == 100
    assert result.rows[0].exact_recall == 1.0
    # FT rows: exact search, the in-memory ANN indexes and ncm on the FT features, not
    # diskann, classifier or genindex
    expanded = {"hnsw": ["hnsw, efSearch 128", "hnsw, efSearch 512"]}
    ft_rows = [name for m in methods if m not in ("diskann", "classifier", "genindex")
               for name in expanded.get(m, [m])]
    assert [n for n, b in names if b == "tiny-vit FT"] == ft_rows

    # linear scan's ids are exact L2 search over the same features, here by numpy in
    # float64 (Faiss computes in float32, so near-ties may order differently)
    db, queries = common.features(data, tiny_vit, "tiny-vit", progress=False)
    dist = ((queries[:, None].astype(np.float64) - db[None]) ** 2).sum(-1)
    truth = np.argsort(dist, axis=1, kind="stable")[:, :10]
    agree = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(linear_ids["tiny-vit"], truth)])
    assert agree > 0.98
    # each seed's f_cls exact scan: cosine search of that seed's own tokenizer's f_cls
    scans = [ids for name, label, ids in returned if name == "f_cls exact scan"]
    assert len(built) == len(scans) == 2 and built[0].config.seed != built[1].config.seed
    for genindex, ids in zip(built, scans):
        f_db, f_q = (f / np.linalg.norm(f, axis=1, keepdims=True)
                     for f in (genindex.f_cls(db), genindex.f_cls(queries)))
        truth = np.argsort(-(f_q.astype(np.float64) @ f_db.T), axis=1, kind="stable")[:, :10]
        assert np.mean([len(set(a[:10]) & set(b)) / 10 for a, b in zip(ids, truth)]) > 0.98

    sweep = result.beam_sweep
    assert [r.beam_size for r in sweep] == [1, 4]
    assert all(r.qps > 0 and r.decoder_s > 0 and r.trie_s > 0 for r in sweep)
    assert all(set(r.metrics.map) == {10} for r in sweep)  # 10 results: MAP@10, not @100
    tables = (out / "tables.md").read_text()
    assert tables.count("| linear |") >= 3 and "mean [min, max]" in tables
    assert (out / "precision_at_k.png").is_file() and (out / "beam_sweep.png").is_file()


def test_runner_refuses_unknown_methods_ablations_and_bad_numbers():
    for argv in (["--dataset", "digits", "--methods", "linear,annoy"],
                 ["--dataset", "digits", "--ablation", "colours"],
                 ["--dataset", "digits", "--ft-batch-size", "0"]):
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
    from benchmarks.common import genindex_config

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


def test_configs_that_share_identifiers_get_rows_of_their_own():
    from benchmarks.run import genindex_labels

    feature = IndexConfig.from_dict({"tokenizer": {"identifiers": "feature"}})
    klass = IndexConfig.from_dict({"tokenizer": {"identifiers": "class"}})
    assert genindex_labels([(feature, "a.json"), (klass, "b.json")]) == [
        "genindex, feature ids", "genindex, class ids"]
    # two class-id configs: one label each, or their rows would be averaged as seeds
    assert genindex_labels([(klass, "b.json"), (klass, "c.json"), (None, "default")]) == [
        "genindex, class ids (b.json)", "genindex, class ids (c.json)",
        "genindex, feature ids"]


def test_runner_without_the_data_says_where_it_comes_from_and_exits_2(tmp_path, capsys):
    code = run.main(["--dataset", "cub200", "--data-root", str(tmp_path / "nowhere"),
                     "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    first, *layout = err.splitlines()
    assert first.startswith("run.py: error: the cub200 data set was not found")
    assert any("vision.caltech.edu" in line for line in layout)
    assert any("train_test_split.txt" in line for line in layout)


HITS = np.array([[0, 1, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=bool)


def test_mrr_at_k_by_hand():
    # first hits at ranks 2, 1 and never: 1/2, 1, 0
    assert metrics.mrr_at_k(HITS, 1) == pytest.approx((0 + 1 + 0) / 3)
    assert metrics.mrr_at_k(HITS, 2) == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert metrics.mrr_at_k(HITS, 4) == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_pr_curve_by_hand():
    precision, recall = metrics.pr_curve(HITS, np.array([2, 1, 3]))
    # precision after each rank, per query: [0, 1/2, 1/3, 2/4], [1, 1/2, 1/3, 1/4], zeros
    np.testing.assert_allclose(precision, [1 / 3, 1 / 3, 2 / 9, 1 / 4])
    # recall: found / relevant: [0, 1/2, 1/2, 1], [1, 1, 1, 1], zeros
    np.testing.assert_allclose(recall, [1 / 3, 1 / 2, 1 / 2, 2 / 3])


def test_headline_by_hand():
    # database classes by id: 0 0 1 1 1; queries of class 0 and 1; -1 is no result
    db_labels, q_labels = np.array([0, 0, 1, 1, 1]), np.array([0, 1])
    ids = np.array([[2, 0, 1, -1], [2, 0, 3, 4]])
    p1, p3, map4 = metrics.headline(ids, db_labels, q_labels, k=4)
    assert p1 == pytest.approx(100 * (0 + 1) / 2)
    assert p3 == pytest.approx(100 * (2 / 3 + 2 / 3) / 2)
    # AP@4: query 0 hits at ranks 2, 3 of R = 2: (1/2 + 2/3) / 2; query 1 at 1, 3, 4 of
    # R = 3: (1 + 2/3 + 3/4) / 3
    assert map4 == pytest.approx(100 * ((1 / 2 + 2 / 3) / 2 + (1 + 2 / 3 + 3 / 4) / 3) / 2)


@pytest.mark.parametrize("new_classes", [0.0, 0.2])
def test_fresh_split_holds_out_whole_classes_and_half_of_the_others(new_classes):
    from benchmarks.fresh import split

    labels = np.repeat(np.arange(10), [4, 5, 4, 5, 4, 5, 4, 5, 2, 3])
    old, new = split(labels, seed=0, new_classes=new_classes)
    assert sorted(np.concatenate([old, new]).tolist()) == list(range(len(labels)))
    unseen = np.setdiff1d(np.arange(10), labels[old])
    assert len(unseen) == round(10 * new_classes)
    for c in range(10):
        size, kept = (labels == c).sum(), (labels[old] == c).sum()
        assert kept == 0 if c in unseen else kept in (size // 2, size - size // 2)


def test_curves_settings_change_one_field_each():
    from benchmarks.studies.curves import changed
    from genindex import IndexConfig

    config = changed(IndexConfig(), ["decoder.n_layer=2", "tokenizer.patience=0",
                                     "index.holdout=0.1", 'tokenizer.identifiers="class"'])
    assert (config.decoder.n_layer, config.tokenizer.patience, config.holdout,
            config.tokenizer.identifiers) == (2, 0, 0.1, "class")
    assert config.decoder.n_embd == IndexConfig().decoder.n_embd
    with pytest.raises(SystemExit, match="expected"):
        changed(IndexConfig(), ["n_layer=2"])


def test_fresh_unseen_measures_by_hand():
    """own ids: items whose identifier no trained item has; unseen P@1: the first hits of
    the queries of held-out classes, from the ids the index returned."""
    from types import SimpleNamespace

    from benchmarks import fresh

    held = np.array([[0, 0], [0, 1], [5, 5], [0, 0], [2, 2], [5, 5], [7, 0]])  # by id
    index = SimpleNamespace(ids=np.arange(7), identifiers=lambda ids: held[ids])
    assert fresh.own_ids(index, np.arange(3), np.arange(3, 7)) == pytest.approx(2 / 4)
    index.ids = np.arange(5)  # items 5 and 6 not added yet: nothing to measure
    assert fresh.own_ids(index, np.arange(3), np.arange(3, 7)) is None

    db_labels = np.array([0, 0, 1, 1, 2, 2])
    query_labels = np.array([0, 2, 2])
    returned = np.full((3, fresh.MAP_K), -1)
    returned[:, :2] = [[0, 2], [4, 0], [1, 5]]  # query 2 of class 2 misses at rank 1
    index = SimpleNamespace(search=lambda q, k, order: SimpleNamespace(ids=returned))
    _, _, _, unseen_p1 = fresh.evaluate(index, np.zeros((3, 4)), np.arange(6), db_labels,
                                        query_labels, np.zeros(6, bool),
                                        np.array([False, True, True]))
    assert unseen_p1 == pytest.approx(1 / 2)
    assert fresh.evaluate(index, np.zeros((3, 4)), np.arange(6), db_labels, query_labels,
                          np.zeros(6, bool), np.zeros(3, bool))[3] is None


def test_novelty_auroc_against_hand_computed_values():
    from benchmarks.studies.novelty import auroc
    novel = np.array([True, True, False, False])
    # novel items should score low: all below the known ones is perfect separation
    assert auroc(np.array([0.1, 0.2, 0.8, 0.9]), novel) == pytest.approx(1.0)
    assert auroc(np.array([0.8, 0.9, 0.1, 0.2]), novel) == pytest.approx(0.0)
    # one of the four (novel, known) pairs is ordered wrongly: 3 / 4
    assert auroc(np.array([0.1, 0.5, 0.4, 0.9]), novel) == pytest.approx(0.75)
