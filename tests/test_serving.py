"""A folder of shards served by Ray Serve answers as the sharded index does."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import numpy as np
import pytest

from genindex.shards import ShardedIndex

from .test_shards import EVERYTHING, open_shards


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_served_shards_answer_http_and_handles_as_the_sharded_index(data, trained, tmp_path,
                                                                    local_ray):
    pytest.importorskip("ray.serve")
    from ray import serve

    from genindex.serving import run

    x, _ = data
    open_shards(trained, x, tmp_path, "threads").close()
    with ShardedIndex(sorted(tmp_path.glob("*.gidx"))) as sharded:
        expected = sharded.search(x[:8], 5, **EVERYTHING)
        default = sharded.search(x[:8], 5)
    port = free_port()
    try:
        handle = run(tmp_path, port=port, blocking=False)
        D, I = handle.search.remote(x[:8], 5, **EVERYTHING).result()
        np.testing.assert_array_equal(I, expected.ids)
        np.testing.assert_allclose(D, expected.scores, rtol=1e-6)
        status, body = post(port, {"x": x[:8].tolist(), "k": 5})
        assert status == 200
        np.testing.assert_array_equal(body["I"], default.ids)
        np.testing.assert_allclose(body["D"], default.scores, rtol=1e-6)
        for bad, message in (({"x": x[:2, :3].tolist()}, "columns"),
                             ({"x": x[:2].tolist(), "k": 0}, "k"),
                             ({"x": x[:2].tolist(), "order": "generative"}, "log-prob"),
                             ({"x": x[:2].tolist(), "nprobe": 3}, "unknown keys"),
                             ([1, 2], "JSON object")):
            status, body = post(port, bad)
            assert status == 400 and message in body["error"], (bad, body)
    finally:
        serve.shutdown()
