"""The genindex command: every subcommand against the library, help texts, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import numpy as np
import pytest

from genindex import GenerativeIndex, metrics
from genindex.cli import main
from genindex.cli_inputs import read_config, read_items, read_label_file

from .helpers import TINY, clustered

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("build", "search", "add", "info", "eval")


def run(argv, capsys) -> tuple[int, str, str]:
    """``main(argv)`` as the shell runs it: (exit status, stdout, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse: --help, bad arguments
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Vectors, labels and queries on disk, and a tiny config as JSON."""
    folder = tmp_path_factory.mktemp("cli")
    x, y = clustered(num_classes=10, per_class=8, d=16)
    q = x[::4] + 0.05  # queries near known items: their classes are known
    yq = y[::4]
    paths = {}
    for name, array in {"x": x, "y": y, "q": q, "yq": yq}.items():
        paths[name] = folder / f"{name}.npy"
        np.save(paths[name], array)
    paths["config"] = folder / "tiny.json"
    paths["config"].write_text(TINY.to_json())
    return paths


@pytest.fixture(scope="module")
def built(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("built") / "ix"
    code = main(["build", "--vectors", str(files["x"]), "--labels", str(files["y"]),
                 "--out", str(out), "--config", str(files["config"]), "--device", "cpu",
                 "--id-map", "-q"])
    assert code == 0
    return out


def test_build_writes_the_index_the_library_builds(built, files):
    index = GenerativeIndex.load(built, device="cpu")
    x, y = np.load(files["x"]), np.load(files["y"])
    reference = GenerativeIndex.fit(x, y, TINY, id_map=True, device="cpu", progress=False)
    assert index.id_map and index.metric == "l2"
    assert index.ntotal == len(x) and index.d == x.shape[1]
    np.testing.assert_array_equal(index.encode(x), reference.encode(x))
    np.testing.assert_array_equal(index.search(x[:5], 3).ids, reference.search(x[:5], 3).ids)


def test_search_prints_what_index_search_returns(built, files, capsys):
    code, out, _ = run(["search", built, "--vectors", files["q"], "-k", 3, "--json",
                        "--device", "cpu", "--mmap"], capsys)
    assert code == 0
    result = json.loads(out)
    expected = GenerativeIndex.load(built, device="cpu").search(np.load(files["q"]), 3)
    np.testing.assert_array_equal(result["ids"], expected.ids)
    np.testing.assert_allclose(result["scores"], expected.scores, rtol=1e-6)
    code, table, _ = run(["search", built, "--vectors", files["q"], "-k", 2, "-q",
                          "--order", "generative"], capsys)
    rows = [line.split() for line in table.splitlines()[1:]]
    expected = GenerativeIndex.load(built).search(np.load(files["q"]), 2, order="generative")
    assert code == 0 and len(rows) == 2 * len(expected.ids)
    assert [int(r[2]) for r in rows[:2]] == expected.ids[0, :2].tolist()
    assert [float(r[3]) for r in rows[:2]] == pytest.approx(expected.scores[0, :2], abs=1e-4)


def test_add_then_info(built, files, tmp_path, capsys):
    x = np.load(files["x"])
    np.save(tmp_path / "ids.npy", np.array([1000, 1001], dtype=np.int64))
    out = tmp_path / "grown"
    code, text, _ = run(["add", built, "--vectors", files["q"], "--out", out, "-q"], capsys)
    assert code == 0 and "added 20 items" in text
    code, text, _ = run(["add", out, "--vectors", files["q"], "--ids", tmp_path / "ids.npy"],
                        capsys)
    assert code == 1 and "one entry per row" in _
    np.save(tmp_path / "two.npy", x[:2])
    code, _, _ = run(["add", out, "--vectors", tmp_path / "two.npy", "--ids",
                      tmp_path / "ids.npy", "-q"], capsys)
    assert code == 0
    code, text, _ = run(["info", out, "--json"], capsys)
    info = json.loads(text)
    assert code == 0 and info["ntotal"] == len(x) + 22 and info["d"] == 16
    assert info["num_codebooks"] == TINY.tokenizer.num_codebooks
    # x[0] is stored as 0 and 1000: the exact nearest of the generative top 20
    assert GenerativeIndex.load(out, device="cpu").search(x[:1], 1, k_factor=20).ids[0, 0] in (
        0, 1000)
    code, text, _ = run(["info", out], capsys)
    assert code == 0 and "ntotal:" in text and str(len(x) + 22) in text


def test_eval_matches_metrics_of_the_search(built, files, capsys):
    code, out, _ = run(["eval", built, "--vectors", files["q"], "--labels", files["yq"],
                        "--db-labels", files["y"], "-k", 1, 5, "--json", "-q"], capsys)
    assert code == 0
    result = json.loads(out)
    ids = GenerativeIndex.load(built, device="cpu").search(np.load(files["q"]), 5).ids
    y, yq = np.load(files["y"]), np.load(files["yq"])
    hits = np.array([[i >= 0 and y[i] == label for i in row] for row, label in zip(ids, yq)])
    assert result["precision@1"] == pytest.approx(hits[:, 0].mean())
    assert result["precision@5"] == pytest.approx(hits.mean())
    assert result["recall@5"] == pytest.approx(hits.any(axis=1).mean())
    assert result["queries"] == len(yq) and set(result) >= {"map@1", "map@5"}


def test_metrics_against_a_loop():
    rng = np.random.default_rng(0)
    db = rng.integers(0, 4, 30)
    queries = rng.integers(0, 5, 12)  # class 4 has no items: R = 0
    I = rng.integers(-1, 30, (12, 6))
    quality = metrics.evaluate(I, db, queries, (1, 6))
    aps = []
    for row, label in zip(I, queries):
        rel = [i >= 0 and db[i] == label for i in row]
        r = min(int((db == label).sum()), 6)
        aps.append(sum(np.mean(rel[:j + 1]) for j in range(6) if rel[j]) / r if r else 0.0)
    assert quality.map[6] == pytest.approx(np.mean(aps))
    assert quality.precision[1] == pytest.approx(np.mean(
        [row[0] >= 0 and db[row[0]] == label for row, label in zip(I, queries)]))
    with pytest.raises(ValueError, match="K=7"):
        metrics.evaluate(I, db, queries, (7,))


def test_help_explains_every_command(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and all(name in out for name in COMMANDS)
    for name in COMMANDS:
        code, out, _ = run([name, "--help"], capsys)
        assert code == 0 and f"usage: genindex {name}" in out and "--device" in out
        assert "--json" in out


@pytest.mark.parametrize("argv, status, fragment", [
    (["build", "--vectors", "x.npy"], 2, "required: --out"),
    (["search", "ix", "-k", "0"], 2, "positive integer"),
    (["frobnicate"], 2, "invalid choice"),
    ([], 2, "required"),
    (["build", "--vectors", "missing.npy", "--out", "o"], 1, "--vectors missing.npy"),
    (["info", "not-an-index"], 1, "missing or cannot be opened"),
    (["build", "--vectors", "x.npy", "--out", "o", "--config", "{bad json"], 1, "invalid JSON"),
    (["build", "--vectors", "x.npy", "--out", "o", "--config", '{"nope": 1}'], 1,
     "unknown fields"),
    (["build", "--vectors", "x.npy", "--out", "o", "--config", '{"betas": 5}'], 1,
     "--config: IndexConfig: betas must be two numbers"),
    (["build", "--vectors", "x.npy", "--out", "o", "--device", "bogus"], 1,
     "--device='bogus' is not a torch device"),
    (["build", "--vectors", "x.npy", "--out", "x.npy/sub"], 1, "--out x.npy/sub"),
])
def test_bad_arguments_give_one_line_and_a_nonzero_status(argv, status, fragment, capsys,
                                                         tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "x.npy", np.zeros((4, 2), np.float32))
    code, out, err = run(argv, capsys)
    assert code == status and out == ""
    assert err.count("\n") == 1 and fragment in err and "Traceback" not in err
    assert err.startswith("genindex")


def test_user_errors_from_the_library_are_one_line(built, files, tmp_path, capsys):
    np.save(tmp_path / "wrong.npy", np.zeros((3, 5), np.float32))
    code, _, err = run(["search", built, "--vectors", tmp_path / "wrong.npy"], capsys)
    assert code == 1 and err.count("\n") == 1 and "16 columns" in err
    code, _, err = run(["build", "--vectors", files["x"], "--labels", files["yq"], "--out",
                        tmp_path / "o"], capsys)
    assert code == 1 and "20 labels for 80 rows" in err
    code, _, err = run(["build", "--vectors", files["x"], "--out", built], capsys)
    assert code == 1 and "--force" in err
    code, _, err = run(["search", built], capsys)
    assert code == 1 and "one of them" in err
    code, _, err = run(["search", built, "--vectors", files["q"], "-k", 10**15], capsys)
    assert code == 1 and err.count("\n") == 1 and "GiB" in err and "lower k" in err


def test_out_is_a_file_replaced_only_when_told(built, files, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for argv in (["build", "--vectors", files["x"], "--out", notes],  # checked before training
                 ["add", built, "--vectors", files["q"], "--out", notes]):
        code, _, err = run(argv, capsys)
        assert code == 1 and err.count("\n") == 1 and "--force" in err and "--out" in err
        assert notes.read_text() == "mine"
    for argv in (["build", "--vectors", files["x"], "--out", tmp_path, "--force"],
                 ["add", built, "--vectors", files["q"], "--out", tmp_path, "--force"]):
        code, _, err = run(argv, capsys)  # a folder never, not even with --force
        assert code == 1 and "is a folder" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    before = GenerativeIndex.load(built).ntotal
    code, _, _ = run(["add", built, "--vectors", files["q"], "--out", notes, "--force", "-q"],
                     capsys)
    assert code == 0 and GenerativeIndex.load(notes).ntotal == before + 20
    code, _, _ = run(["add", notes, "--vectors", files["q"], "-q"], capsys)  # in place
    assert code == 0 and GenerativeIndex.load(notes).ntotal == before + 40


def test_only_build_runs_under_torchrun(built, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = run(["info", built], capsys)
    assert code == 1 and "only 'build' runs under torchrun" in err


def test_python_dash_m_and_the_console_script(tmp_path):
    done = subprocess.run([sys.executable, "-m", "genindex", "search", "--bogus"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("genindex search: error: ") and done.stderr.count("\n") == 1
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts["genindex"].partition(":")
    assert getattr(import_module(module), function) is main


def test_label_files(tmp_path):
    (tmp_path / "a.txt").write_text("cat\ndog\n\ncat\n")
    np.testing.assert_array_equal(read_label_file(str(tmp_path / "a.txt")).labels,
                                  ["cat", "dog", "cat"])
    (tmp_path / "b.txt").write_text("n01/x 1.JPEG 3\nn02/y.JPEG 7\n")
    parsed = read_label_file(str(tmp_path / "b.txt"))
    assert parsed.paths == ["n01/x 1.JPEG", "n02/y.JPEG"]
    assert parsed.labels.tolist() == [3, 7]
    (tmp_path / "c.csv").write_text("Path,Label\nu.png,1\nv.png,2\n")
    parsed = read_label_file(str(tmp_path / "c.csv"))
    assert parsed.paths == ["u.png", "v.png"] and parsed.labels.tolist() == [1, 2]
    (tmp_path / "d.txt").write_text("u.png 1\n2\n")
    with pytest.raises(ValueError, match="line 2"):
        read_label_file(str(tmp_path / "d.txt"))
    (tmp_path / "e.csv").write_text("path,class\nu.png,1\n")
    with pytest.raises(ValueError, match="'label' column"):
        read_label_file(str(tmp_path / "e.csv"))


def test_image_folders_and_configs(images, tmp_path):
    paths, labels = images
    folder = paths[0].parent
    items = read_items(None, str(folder), None, labels_from_dirs=False)
    assert items.paths == sorted(paths) and items.labels is None
    (tmp_path / "l.csv").write_text("file,label\n" + "".join(
        f"{p.name},c{y}\n" for p, y in zip(paths[::-1], labels[::-1])))
    items = read_items(None, str(folder), str(tmp_path / "l.csv"))
    assert items.paths == paths[::-1] and items.labels.tolist() == [f"c{y}" for y in
                                                                   labels[::-1]]
    (tmp_path / "places.txt").write_text("".join(f"/{p.name} {y}\n" for p, y in
                                                 zip(paths[:3], labels[:3])))
    items = read_items(None, str(folder), str(tmp_path / "places.txt"))  # "/" is under --images
    assert items.paths == paths[:3] and items.labels.tolist() == labels[:3].tolist()
    assert read_config("paper-large").decoder.n_layer == 24
    assert read_config("paper").decoder.n_layer == 12
    assert read_config('{"seed": 3}', seed=5).seed == 5


def test_images_with_classes_from_folders(images, tmp_path, capsys):
    paths, labels = images
    root = tmp_path / "photos"
    for path, label in zip(paths[::5], labels[::5]):  # 10 images, 2 of each of 5 classes
        (root / f"c{label}").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / f"c{label}" / path.name)
    out = tmp_path / "ix"
    code, text, err = run(["build", "--images", root, "--labels-from-dirs", "--out", out,
                           "--config", TINY.to_json(), "--device", "cpu", "-q", "--json"],
                          capsys)
    assert code == 0, err
    assert json.loads(text)["ntotal"] == 10
    code, text, _ = run(["search", out, root / "c1", "-k", 2, "--json", "-q"], capsys)
    result = json.loads(text)
    queries = sorted((root / "c1").iterdir())
    assert code == 0 and result["queries"] == [str(q) for q in queries]
    index = GenerativeIndex.load(out, device="cpu")
    ids = index.search(queries, 2).ids
    assert result["ids"] == ids.tolist()
    code, text, _ = run(["eval", out, "--images", root, "--labels-from-dirs", "--db-labels",
                         root, "-k", 1, "--json", "-q"], capsys)
    folders = np.array([p.parent.name for p in sorted(root.rglob("*.png"))])
    expected = (folders[index.search(sorted(root.rglob("*.png")), 1).ids[:, 0]] == folders)
    assert code == 0 and json.loads(text)["precision@1"] == pytest.approx(expected.mean())
