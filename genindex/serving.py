"""Shards served over HTTP and Ray Serve handles.

    genindex serve shards/ [--address auto] [--host 0.0.0.0] [--port 8000]
    serve run genindex.serving:build folder=shards/      # Ray's own command

One Ray Serve deployment per shard file (the shard loaded with ``mmap=True``,
:class:`~genindex.shards.ShardServer`) and a router that answers
``POST /`` with the JSON ``{"x": [[...], ...], "k": 10}`` (and any of
``beam_size``, ``order``, ``k_factor``): it calls every shard at once and
merges their answers as :class:`~genindex.shards.ShardedIndex` does
(:func:`~genindex.shards.merge`), returning ``{"D": [[...]], "I": [[...]]}``;
a bad request gets status 400 and ``{"error": "..."}``. Through a handle,
``handle.search.remote(x, k, **query)`` returns the ``(D, I)`` arrays.

Serving is read-only: the shards are the files, and a replica that Ray Serve
restarts loads its file again, so it answers as before. To change the items,
update the files (:class:`~genindex.shards.ShardedIndex`, then ``save``) and
redeploy. Ray Serve is an optional dependency (``pip install 'genindex[ray]'``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import checks
from .shards import import_ray, merge, merged_values

QUERY_KEYS = ("beam_size", "order", "k_factor")


def shard_files(folder: str | os.PathLike) -> list[str]:
    """The shard files (``*.gidx``) of ``folder``, in name order."""
    paths = sorted(Path(folder).glob("*.gidx"))
    if not paths:
        raise FileNotFoundError(f"{folder}: no shard files (*.gidx)")
    return [os.fspath(p) for p in paths]


def app(paths: list[str], *, num_cpus: float = 0.0) -> Any:
    """The Ray Serve application: a deployment per shard file, bound to a router.
    ``num_cpus``: the CPUs each shard replica reserves (0: share the machine)."""
    serve = _import_serve()

    @serve.deployment(name="genindex_shard", ray_actor_options={"num_cpus": num_cpus})
    class Shard:
        def __init__(self, path: str) -> None:
            from genindex.shards import ShardServer

            self.server = ShardServer(path, mmap=True)

        def info(self) -> dict[str, Any]:
            return self.server.call("info")[1]

        def search(self, x, k: int, query: dict[str, Any]):
            return self.server.call("search", x, k, query)[1]

    @serve.deployment(name="genindex_router", ray_actor_options={"num_cpus": num_cpus})
    class Router:
        def __init__(self, *shards: Any) -> None:
            self.shards, self.info = shards, None

        async def search(self, x: Any, k: int, **query: Any):
            if self.info is None:  # the first shard's d and metric (all share one model)
                self.info = await self.shards[0].info.remote()
            x, k = checks.as_vectors(x, self.info["d"]), checks.as_k(k)
            merged = merged_values(query.get("order"), self.info["metric"])
            answers = [await response for response in
                       [shard.search.remote(x, k, query) for shard in self.shards]]
            return tuple(merge(answers, k, merged))

        async def __call__(self, request: Any) -> Any:
            from starlette.responses import JSONResponse

            try:
                body = await request.json()
                if not isinstance(body, dict) or "x" not in body:
                    raise ValueError('the body must be a JSON object {"x": [[...]], "k": 10}')
                unknown = set(body) - {"x", "k", *QUERY_KEYS}
                if unknown:
                    raise ValueError(f"unknown keys: {sorted(unknown)}")
                query = {key: body[key] for key in QUERY_KEYS if key in body}
                D, I = await self.search(body["x"], body.get("k", 10), **query)  # noqa: E741
            except (ValueError, TypeError) as error:
                return JSONResponse({"error": str(error)}, status_code=400)
            return {"D": D.tolist(), "I": I.tolist()}

    return Router.bind(*[Shard.options(name=f"genindex_shard_{s}").bind(path)
                         for s, path in enumerate(paths)])


def build(args: dict[str, str]) -> Any:
    """The application for ``serve run genindex.serving:build folder=shards/``."""
    if "folder" not in args:
        raise ValueError("serve run genindex.serving:build folder=<the shard folder>")
    return app(shard_files(args["folder"]), num_cpus=float(args.get("num_cpus", 0)))


def run(folder: str | os.PathLike, *, address: str | None = None, host: str = "127.0.0.1",
        port: int = 8000, num_cpus: float = 0.0, blocking: bool = True) -> Any:
    """Start the application on Ray (``address``: a running cluster, e.g. ``"auto"``;
    default: a local one) serving HTTP on ``host:port``; its handle."""
    ray, serve = import_ray(), _import_serve()
    paths = shard_files(folder)
    if not ray.is_initialized():
        ray.init(address=address)
    serve.start(http_options={"host": host, "port": port})
    return serve.run(app(paths, num_cpus=num_cpus), name="genindex", route_prefix="/",
                     blocking=blocking)


def _import_serve():
    import_ray()
    try:
        from ray import serve
    except ImportError as error:
        raise ImportError("serving needs Ray Serve: pip install 'genindex[ray]'") from error
    return serve
