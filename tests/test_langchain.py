"""LangChain's FAISS vector store over a GenerativeIndex gives what it gives over
faiss.IndexFlatL2: every flow runs on both, on the same class-clustered vectors, and
the same documents (and scores) come back. The GenerativeIndex ranks all candidates
exactly here (nprobe = identifiers, k_factor = items), so both are exact."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from genindex import faiss_compat

faiss = pytest.importorskip("faiss")
pytest.importorskip("langchain_community")
from langchain_community.docstore.in_memory import InMemoryDocstore  # noqa: E402
from langchain_community.vectorstores import FAISS  # noqa: E402
from langchain_core.embeddings import Embeddings  # noqa: E402


class TableEmbeddings(Embeddings):
    """Deterministic embeddings: each known text has its row of the test data."""

    def __init__(self, texts: list[str], vectors: np.ndarray) -> None:
        self.table = dict(zip(texts, vectors.tolist()))

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self.table[t] for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self.table[text]


@pytest.fixture(scope="module")
def corpus(data):
    x, labels = data
    texts = [f"doc {i} of class {c}" for i, c in enumerate(labels)]
    queries = {f"query {i}": x[i] + 0.05 for i in range(0, len(x), 23)}
    table = TableEmbeddings(texts + list(queries), np.concatenate([x, np.stack(list(
        queries.values()))]))
    return texts, [{"cls": int(c)} for c in labels], x, list(queries), table


@pytest.fixture(scope="module")
def empty_generative(data):
    """A trained index of positions (LangChain's ids assume faiss.IndexFlat's), empty,
    that ranks every item exactly."""
    from genindex import GenerativeIndex

    from .helpers import TINY

    index = GenerativeIndex.fit(*data, TINY, device="cpu", progress=False)
    index.reset()
    index.nprobe = 2**20  # cut to the identifiers there are: every one
    index.k_factor = 2**20
    return index


@pytest.fixture(autouse=True)
def _faiss_functions():
    faiss_compat.install()
    yield
    faiss_compat.uninstall()


def flows(make_index, corpus, tmp_path) -> dict:
    """Every call of the issue's list, on a store over ``make_index()``; what came back."""
    texts, metadatas, x, queries, table = corpus
    store = FAISS(table, make_index(), InMemoryDocstore(), {})
    ids = store.add_texts(texts[:120], metadatas[:120], ids=[f"t{i}" for i in range(120)])
    store.add_embeddings(list(zip(texts[120:], x[120:].tolist())), metadatas[120:],
                         ids=[f"t{i}" for i in range(120, len(texts))])
    vector = table.embed_query(queries[0])
    out = {"ids": ids, "by_vector": _pairs(store.similarity_search_with_score_by_vector(
        vector, k=6))}
    out["threshold"] = _pairs(store.similarity_search_with_score_by_vector(
        vector, k=20, score_threshold=1.5))
    out["relevance"] = _pairs(store.similarity_search_with_relevance_scores(queries[1], k=4))
    out["filter"] = _names(store.similarity_search(queries[2], k=4, filter={"cls": 3},
                                                   fetch_k=200))
    out["mmr"] = _names(store.max_marginal_relevance_search(queries[3], k=4, fetch_k=12))
    store.delete(ids=["t0", "t1", "t50", "t199"])
    out["after_delete"] = [_names(store.similarity_search(q, k=5)) for q in queries]
    store.save_local(str(tmp_path / "store"))
    loaded = FAISS.load_local(str(tmp_path / "store"), table,
                              allow_dangerous_deserialization=True)
    out["loaded"] = [_names(loaded.similarity_search(q, k=5)) for q in queries]
    again = FAISS.deserialize_from_bytes(store.serialize_to_bytes(), table,
                                         allow_dangerous_deserialization=True)
    out["bytes"] = [_names(again.similarity_search(q, k=5)) for q in queries]
    other = FAISS(table, make_index(), InMemoryDocstore(), {})
    other.add_texts(texts[:40], metadatas[:40], ids=[f"u{i}" for i in range(40)])
    store.merge_from(other)
    out["merged"] = [_pairs(store.similarity_search_with_score(q, k=5)) for q in queries]
    out["index_type"] = type(loaded.index).__name__
    return out


def _pairs(results) -> list:
    return [(doc.page_content, round(float(score), 3)) for doc, score in results]


def _names(docs) -> list:
    return [doc.page_content for doc in docs]


def test_every_flow_gives_what_index_flat_l2_gives(corpus, empty_generative, tmp_path):
    d = corpus[2].shape[1]
    exact = flows(lambda: faiss.IndexFlatL2(d), corpus, tmp_path / "flat")
    ours = flows(lambda: copy.copy(empty_generative), corpus, tmp_path / "genindex")
    assert exact.pop("index_type") == "IndexFlatL2"
    assert ours.pop("index_type") == "GenerativeIndex"  # load_local gave ours back
    for flow, expected in exact.items():
        assert ours[flow] == expected, flow
    assert len(exact["threshold"]) not in (0, 20)  # the threshold did select
