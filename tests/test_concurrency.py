"""Searches from many threads, and searches racing updates (copy-on-write snapshots)."""

from __future__ import annotations

import copy
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from genindex import GenerativeIndex


def same(a, b) -> bool:
    return np.array_equal(a.ids, b.ids) and np.array_equal(a.scores, b.scores)


def test_parallel_searches_equal_serial_ones(trained, data):
    x = data[0]
    batches = [x[i::7] for i in range(7)]
    serial = [trained.search(b, 6) for b in batches]
    filtered = trained.search(x[:9], 4, filter=np.arange(0, 200, 3))
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: trained.search(batches[i % 7], 6), range(56)))
        masked = list(pool.map(lambda _: trained.search(x[:9], 4, filter=np.arange(0, 200, 3)),
                               range(16)))
    assert all(same(r, serial[i % 7]) for i, r in enumerate(results))
    assert all(same(r, filtered) for r in masked)


UPDATES = [
    lambda ix, x: ix.add(x[:30] + 0.05),
    lambda ix, x: ix.remove_ids(np.arange(0, 120, 2)),
    lambda ix, x: ix.add_with_ids(x[30:40] - 0.05, np.arange(5000, 5010)),
    lambda ix, x: ix.refresh(steps=3),
    lambda ix, x: ix.remove_ids(np.arange(200, 215)),
    lambda ix, x: ix.reset(),
    lambda ix, x: ix.add(x[:50]),
]


def test_searches_during_updates_see_one_snapshot_or_the_next(trained, data):
    """Every result a racing search returns is the result of one of the states
    the updates pass through, computed serially beforehand: never a mix."""
    x = data[0]
    queries = x[::9]
    reference = copy.copy(trained)
    expected = [reference.search(queries, 8)]
    for update in UPDATES:
        update(reference, x)
        expected.append(reference.search(queries, 8))
    index = copy.copy(trained)
    seen: list[list] = [[] for _ in range(4)]
    done = threading.Event()

    def searcher(out: list) -> None:
        while not done.is_set():
            out.append(index.search(queries, 8))
        out.append(index.search(queries, 8))

    threads = [threading.Thread(target=searcher, args=(out,)) for out in seen]
    for thread in threads:
        thread.start()
    try:
        for update in UPDATES:
            update(index, x)
    finally:
        done.set()
        for thread in threads:
            thread.join()
    for out in seen:
        matches = [[j for j, e in enumerate(expected) if same(r, e)] for r in out]
        assert all(matches), "a search saw a state no update sequence passes through"
        assert len(matches[-1]) and matches[-1][-1] == len(UPDATES)  # the final state
    assert same(index.search(queries, 8), expected[-1])


def test_saves_during_updates_write_one_snapshot(trained, data, tmp_path):
    x = data[0]
    index = copy.copy(trained)
    states = [set(index.ids.tolist())]
    stop = threading.Event()
    saved: list[int] = []

    def saver() -> None:
        while not stop.is_set() or not saved:
            index.save(tmp_path / f"s{len(saved) % 2}")
            saved.append(len(saved))

    thread = threading.Thread(target=saver)
    thread.start()
    for step in range(6):
        index.add(x[step * 5:step * 5 + 5])
        states.append(set(index.ids.tolist()))
    stop.set()
    thread.join()
    for name in ("s0", "s1"):
        if (tmp_path / name).exists():
            assert set(GenerativeIndex.load(tmp_path / name).ids.tolist()) in states


def test_same_data_config_and_seed_give_identical_indexes(trained, data):
    """On the CPU: codes, weights and results are bitwise equal, refresh included."""
    x, labels = data
    again = GenerativeIndex.fit(x, labels, trained.config, device="cpu", progress=False)
    np.testing.assert_array_equal(trained.encode(x), again.encode(x))
    for a, b in zip(trained.tokenizer.state_dict().values(),
                    again.tokenizer.state_dict().values()):
        assert torch.equal(a, b)
    one, two = copy.copy(trained), copy.copy(again)
    for ix in (one, two):
        ix.add(x[:20] + 0.1)
        ix.refresh(labels[:20], ids=np.arange(200, 220), steps=5)
    for a, b in zip(one.decoder.state_dict().values(), two.decoder.state_dict().values()):
        assert torch.equal(a, b)
    assert same(one.search(x, 10), two.search(x, 10))


# ------------------------------------------- concurrent savers and a killed saver
def _states(trained, data, tmp_path, count):
    """``count`` indexes that differ in their items, each saved to its own file, and
    the results each gives on the first 20 rows of ``data``."""
    x, states = data[0], []
    for i in range(count):
        index = copy.copy(trained)
        index.remove_ids(np.arange(i * 20, i * 20 + 20))
        index.add(x[:5] + 0.01 * (i + 1))
        index.save(tmp_path / f"state{i}.gidx")
        states.append(index.search(x[:20], 5))
    return states


SAVER_SCRIPT = r"""
import sys
import torch
torch.set_num_threads(1)
from genindex import GenerativeIndex

target, rounds, sources = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
states = [GenerativeIndex.load(source, device="cpu") for source in sources]
print("ready", flush=True)
sys.stdin.readline()
for r in range(rounds):
    states[r % len(states)].save(target)
"""


def test_concurrent_savers_leave_one_complete_index_and_readers_never_fail(trained, data,
                                                                          tmp_path):
    """4 threads and 2 processes save 3 indexes to one path, 200 rounds each, while 4
    threads load and search it: every load succeeds and gives one saved state's results."""
    import subprocess
    import sys
    from pathlib import Path

    rounds, x = 200, data[0]
    expected = _states(trained, data, tmp_path, 3)
    sources = [tmp_path / f"state{i}.gidx" for i in range(3)]
    states = [GenerativeIndex.load(source, device="cpu") for source in sources]
    target = tmp_path / "served" / "index.gidx"
    states[0].save(target)
    root = Path(__file__).resolve().parents[1]
    processes = [subprocess.Popen([sys.executable, "-c", SAVER_SCRIPT, str(target), str(rounds),
                                   *map(str, sources[i:] + sources[:i])], cwd=root,
                                  env={**os.environ, "PYTHONPATH": str(root)}, text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                 for i in range(2)]
    for process in processes:
        assert process.stdout.readline() == "ready\n"
    errors, matched = [], []

    def save(offset: int) -> None:
        for r in range(rounds):
            states[(r + offset) % 3].save(target)

    def load() -> None:
        for _ in range(rounds):
            try:
                result = GenerativeIndex.load(target, device="cpu").search(x[:20], 5)
            except Exception as error:  # noqa: BLE001 - every failure is reported below
                errors.append(repr(error))
                continue
            matched.append([i for i, e in enumerate(expected) if same(result, e)])

    threads = [threading.Thread(target=save, args=(i,)) for i in range(4)]
    threads += [threading.Thread(target=load) for _ in range(4)]
    for process in processes:
        process.stdin.write("go\n")
        process.stdin.flush()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for process in processes:
        assert process.wait(timeout=300) == 0
    assert not errors, errors[:3]
    assert len(matched) == 4 * rounds and all(len(m) == 1 for m in matched)
    assert len({m[0] for m in matched}) > 1  # the loads did see the saves
    final = GenerativeIndex.load(target, device="cpu").search(x[:20], 5)
    assert any(same(final, e) for e in expected)
    assert [p.name for p in target.parent.iterdir()] == ["index.gidx"]  # no staging left


KILL_SCRIPT = r"""
import json, os, random, signal, sys, time
import torch
torch.set_num_threads(1)
from genindex import GenerativeIndex

target, runs, sources = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
states = [GenerativeIndex.load(source, device="cpu") for source in sources]
keys = [sorted(state.ids.tolist()) for state in states]
states[0].save(target)


def saver(state, report=None):  # a child that saves ``state``; it may be killed anywhere
    pid = os.fork()
    if pid == 0:
        started = time.perf_counter()
        states[state].save(target)
        if report is not None:
            os.write(report, str(time.perf_counter() - started).encode())
        os._exit(0)
    return pid


read, write = os.pipe()
took = []
for state in (1, 0, 1, 0):  # how long a save runs in a forked child
    os.waitpid(saver(state, write), 0)
    took.append(float(os.read(read, 64)))
took = max(took)
rng, outcomes = random.Random(0), []
# at least `runs` saves, more (up to 4x) until half of them were killed mid-save: on a
# loaded machine a save's time varies, and a kill that lands after it tests nothing
while len(outcomes) < runs or (sum(o["killed"] for o in outcomes) < runs // 2
                               and len(outcomes) < 4 * runs):
    before = keys.index(sorted(GenerativeIndex.load(target, device="cpu").ids.tolist()))
    pid = saver(1 - before)
    time.sleep(rng.uniform(0, 1.5 * took))
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    outcomes.append({"killed": os.WIFSIGNALED(status), "before": before,
                     "after": sorted(GenerativeIndex.load(target, device="cpu").ids.tolist())})
print(json.dumps({"outcomes": outcomes, "keys": keys, "save_seconds": took}))
"""


def test_a_save_killed_at_a_random_point_leaves_the_old_or_the_new_index(trained, data,
                                                                        tmp_path):
    """At least 50 saves killed with SIGKILL at random moments (more until half of them
    landed mid-save): the file always loads and holds the old contents or the new
    ones (the check runs in the script after every kill)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    expected = _states(trained, data, tmp_path, 2)
    target = tmp_path / "served" / "index.gidx"
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(target), "50",
                           str(tmp_path / "state0.gidx"), str(tmp_path / "state1.gidx")],
                          cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    outcomes, keys = report["outcomes"], report["keys"]
    assert 50 <= len(outcomes) <= 200
    for outcome in outcomes:  # a torn file would have raised in the script
        assert outcome["after"] in keys
    killed = sum(o["killed"] for o in outcomes)
    old = sum(o["killed"] and o["after"] == keys[o["before"]] for o in outcomes)
    new = sum(o["after"] != keys[o["before"]] for o in outcomes)
    assert killed >= 25 and old >= 5 and new >= 1, (killed, old, new, report["save_seconds"])
    final = GenerativeIndex.load(target, device="cpu").search(data[0][:20], 5)
    assert any(same(final, e) for e in expected)
    left = {p.name for p in target.parent.iterdir()} - {"index.gidx"}
    assert all(name.startswith(".genindex-") and name.endswith(".tmp") for name in left)
