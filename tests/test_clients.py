"""Client code's own flows over a default GenerativeIndex: no config, no labels, no search
argument. Each store runs on easy data (every query's class items are its nearest
neighbours, so ``faiss.IndexFlatL2`` / ``IndexFlatIP`` return exactly them) and each
answer is judged by the classes of what came back, not by comparison with Faiss."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from genindex import GenerativeIndex, faiss_compat

faiss = pytest.importorskip("faiss")

CLASSES, PER_CLASS, D = 60, 6, 32  # 360 items: enough to train models (L = 256)


@pytest.fixture(scope="module")
def easy():
    """Unit vectors in tight classes: (items, labels, one query per class)."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((CLASSES, D))
    labels = np.repeat(np.arange(CLASSES), PER_CLASS)
    x = centres[labels] + 0.05 * rng.standard_normal((len(labels), D))
    q = centres + 0.05 * rng.standard_normal((CLASSES, D))
    return _unit(x), labels, _unit(q)


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def test_the_easy_data_is_easy_for_exact_search(easy):
    x, labels, q = easy
    for metric in (faiss.IndexFlatL2(D), faiss.IndexFlatIP(D)):
        metric.add(x)
        found = labels[metric.search(q, PER_CLASS)[1]]
        assert (found == np.arange(CLASSES)[:, None]).all()


@pytest.fixture(scope="module")
def default_index(easy):
    """What client code builds: GenerativeIndex(d), train(x) without labels, empty."""
    index = GenerativeIndex(D)
    index.train(easy[0], progress=False)
    assert not index.is_flat and index.config.tokenizer.num_codebooks == 1  # the preset
    return index


def test_a_default_index_finds_every_class_item_with_default_search(default_index, easy):
    x, labels, q = easy
    index = copy.copy(default_index)
    index.add(x)
    D_, I = index.search(q, PER_CLASS)
    assert (labels[I] == np.arange(CLASSES)[:, None]).all()
    assert (np.diff(D_, axis=1) >= 0).all()


class _Embeddings:
    """Texts to their rows of the test data (LangChain's Embeddings interface)."""

    def __init__(self, table: dict) -> None:
        self.table = table

    def embed_documents(self, texts):
        return [self.table[t] for t in texts]

    def embed_query(self, text):
        return self.table[text]


def _classes(docs) -> list[int]:
    return [doc.metadata["cls"] for doc in docs]


def test_langchain_faiss_store_over_a_default_index(default_index, easy, tmp_path):
    pytest.importorskip("langchain_community")
    from langchain_community.docstore.in_memory import InMemoryDocstore
    from langchain_community.vectorstores import FAISS
    from langchain_core.embeddings import Embeddings

    x, labels, q = easy
    texts = [f"doc {i}" for i in range(len(x))]
    table = dict(zip(texts + [f"query {c}" for c in range(CLASSES)], np.concatenate(
        [x, q]).tolist()))
    embeddings = type("TableEmbeddings", (_Embeddings, Embeddings), {})(table)
    store = FAISS(embeddings, copy.copy(default_index), InMemoryDocstore(), {})
    store.add_texts(texts, [{"cls": int(c)} for c in labels],
                    ids=[f"t{i}" for i in range(len(x))])
    for c in (0, 5, 31):
        assert _classes(store.similarity_search(f"query {c}", k=PER_CLASS)) == [c] * PER_CLASS
        hits = store.similarity_search_with_score_by_vector(q[c].tolist(), k=8,
                                                            filter={"cls": c})  # fetch_k 20
        assert len(hits) == PER_CLASS and {doc.metadata["cls"] for doc, _ in hits} == {c}
        mmr = store.max_marginal_relevance_search(f"query {c}", k=4, fetch_k=PER_CLASS)
        assert _classes(mmr) == [c] * 4
    store.delete(ids=["t0", "t1"])  # two of class 0: the other four come first
    assert _classes(store.similarity_search("query 0", k=PER_CLASS - 2)) == [0] * 4
    faiss_compat.install()  # save_local and load_local call faiss.write_index / read_index
    try:
        store.save_local(str(tmp_path / "store"))
        loaded = FAISS.load_local(str(tmp_path / "store"), embeddings,
                                  allow_dangerous_deserialization=True)
    finally:
        faiss_compat.uninstall()
    assert isinstance(loaded.index, GenerativeIndex)
    for c in (0, 17):
        expected = PER_CLASS - 2 if c == 0 else PER_CLASS
        assert _classes(loaded.similarity_search(f"query {c}", k=expected)) == [c] * expected


def test_llama_index_faiss_vector_store_over_a_default_index(default_index, easy, tmp_path):
    pytest.importorskip("llama_index.vector_stores.faiss")
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores import VectorStoreQuery
    from llama_index.vector_stores.faiss import FaissVectorStore

    x, labels, q = easy
    store = FaissVectorStore(faiss_index=copy.copy(default_index))
    nodes = [TextNode(text=f"doc {i}", id_=f"n{i}", embedding=x[i].tolist(),
                      metadata={"cls": int(c)}) for i, c in enumerate(labels)]
    store.add(nodes)

    def found(vector_store, c: int) -> list[int]:
        result = vector_store.query(VectorStoreQuery(query_embedding=q[c].tolist(),
                                                     similarity_top_k=PER_CLASS))
        return [int(labels[int(i)]) for i in result.ids]

    for c in (0, 5, 31):
        assert found(store, c) == [c] * PER_CLASS
    faiss_compat.install()
    try:
        store.persist(str(tmp_path / "llama" / "default__vector_store.json"))
        loaded = FaissVectorStore.from_persist_dir(str(tmp_path / "llama"))
    finally:
        faiss_compat.uninstall()
    assert isinstance(loaded._faiss_index, GenerativeIndex)
    for c in (0, 44):
        assert found(loaded, c) == [c] * PER_CLASS


class OwnedStore:
    """A vector store that owns its index, as some stores do (``faiss.index_factory(d,
    "IDMap,Flat", METRIC_INNER_PRODUCT)``, here a GenerativeIndex): it builds and trains
    a fresh index without labels on the first texts it holds, and on an upsert into an
    empty store, then adds with its own ids."""

    def __init__(self, d: int) -> None:
        self.d, self.index = d, None

    def upsert(self, ids, vectors) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        if self.index is None or self.index.ntotal == 0:
            self.index = GenerativeIndex(self.d, metric="ip", id_map=True)
            self.index.train(vectors, progress=False)
        present = np.asarray(ids)[np.isin(ids, self.index.ids)]
        self.index.remove_ids(present)
        self.index.add_with_ids(vectors, np.asarray(ids, dtype=np.int64))

    def delete(self, ids) -> None:
        self.index.remove_ids(np.asarray(ids, dtype=np.int64))

    def query(self, vector, k: int) -> np.ndarray:
        return self.index.search(np.asarray(vector, dtype=np.float32)[None], k).ids[0]


@pytest.mark.parametrize("items", [CLASSES * PER_CLASS, 240])
def test_a_store_that_trains_its_own_index_without_labels(easy, items):
    x, labels, q = easy
    x, labels = x[:items], labels[:items]  # 240 items: fewer than L, a flat index
    store = OwnedStore(D)
    store.upsert(np.arange(1000, 1000 + len(x)), x)
    assert store.index.is_flat == (items < 256)
    classes = dict(zip(range(1000, 1000 + len(x)), labels))
    for c in range(0, len(x) // PER_CLASS, 7):
        assert [classes[i] for i in store.query(q[c], PER_CLASS)] == [c] * PER_CLASS
    store.delete([1000, 1001])  # two items of class 0
    assert [classes[i] for i in store.query(q[0], 4)] == [0] * 4
    single = OwnedStore(D)  # one text upserted into a new store: trains on one item
    single.upsert([7], x[:1])
    assert single.index.is_flat and single.query(q[0], 3).tolist() == [7, -1, -1]


def test_faiss_calls_that_need_a_faiss_index_fail_as_documented(default_index):
    index = default_index  # docs/migrating.md: Faiss's own TypeError, nothing half-done
    assert not isinstance(index, faiss.Index) and not isinstance(index, faiss.IndexIDMap)
    calls = {"IndexRefineFlat": lambda: faiss.IndexRefineFlat(index),
             "IndexShards.add_shard": lambda: faiss.IndexShards(D).add_shard(index),
             "extract_index_ivf": lambda: faiss.extract_index_ivf(index),
             "IndexIDMap": lambda: faiss.IndexIDMap(index),
             "clone_index": lambda: faiss.clone_index(index)}
    for call in calls.values():
        with pytest.raises(TypeError):
            call()
