"""Top-k inner-product search over a catalogue's item vectors, with items added and retired while serving.

Four kinds, one surface (``ItemIndex``: ``add``, ``remove``, ``search``):

* ``exact``: the whole float table times the query, then a partial sort. Exactly the library's scores
  (``textrec.serve.recommend.all_scores``) and its order (equal scores in id order). The default below
  ``AUTO_FAISS_ITEMS`` items.
* ``ivf``: a faiss ``IndexIVFFlat`` (inner product) for large catalogues: k-means cells, ``nprobe`` of them
  scanned per query. ``nprobe`` is chosen at build time as the smallest power of two whose recall@10 against
  exact search, on sample queries, reaches ``target_recall``; that recall is kept (``recall_at_10``) and shown
  in ``/metrics``. Deletions are removed from the index.
* ``hnsw``: a faiss ``IndexHNSWFlat`` graph (inner product); ``efSearch`` tuned the same way. A graph cannot
  drop a node, so retired items are filtered out at search time with an id selector.
* ``pq``: VQ-Rec's items scored straight from their codes, with no float table: per query, a lookup table of
  the query against every code embedding (D x M numbers), then each item's score is the sum of its D entries
  times its stored 1/(D ||v||) (VQ-Rec's item vector is the normalised mean of its code embeddings), as faiss'
  PQ scanners do. Exact up to float rounding.

Ids are the run's item ids (1..n_items; 0 is padding and never stored). A search excludes given ids per query
(the history) and never returns retired ones.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import numpy as np

from textrec.errors import ConfigError, TextrecError

log = logging.getLogger("textrec.serve.index")

INDEX_KINDS = ("auto", "exact", "ivf", "hnsw", "pq")
AUTO_FAISS_ITEMS = 100_000  # from this many items on, "auto" builds an IVF index instead of exact search
RECALL_QUERIES = 200  # sample queries used to measure (and tune for) recall@10 against exact search


@dataclass
class SearchResult:
    ids: list[int]  # best first
    scores: list[float]


def _top_k_exact(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (score, id) of ``scores`` over ``ids``: best first, equal scores in id order."""
    finite = np.isfinite(scores)
    n = int(finite.sum())
    k = min(k, n)
    if k == 0:
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
    if k < len(scores):
        part = np.argpartition(-scores, k - 1)[:k]
        # every item tied with the k-th score is a candidate, so the id tie-break is exact
        kth = scores[part].min()
        part = np.flatnonzero(scores >= kth)
    else:
        part = np.flatnonzero(finite)
    order = np.lexsort((ids[part], -scores[part]))[:k]
    return scores[part][order], ids[part][order]


@dataclass
class ItemIndex:
    """Item vectors (or codes) by item id; see the module doc. Thread-safe: one lock around changes and searches."""

    kind: str
    dim: int
    recall_at_10: float | None = None  # against exact search on sample queries; None for the exact kinds
    params: dict = field(default_factory=dict)  # nprobe / efSearch / nlist as built
    _vectors: np.ndarray | None = None  # (capacity, dim) float32, row = item id (exact)
    _alive: np.ndarray = field(default_factory=lambda: np.zeros(1, dtype=bool))  # (capacity,) by item id
    _faiss: object = None
    _lut_table: np.ndarray | None = None  # pq: (D, M, dim) code embeddings
    _codes: np.ndarray | None = None  # pq: (capacity, D) int
    _scale: np.ndarray | None = None  # pq: (capacity,) 1 / (D * ||v||)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # ---- building ------------------------------------------------------------------------------
    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, kind: str = "auto", queries: np.ndarray | None = None,
              target_recall: float = 0.95, seed: int = 0) -> ItemIndex:
        """An index of ``vectors`` (n, dim) under item ``ids`` (n,). ``queries`` (q, dim): sample queries for the
        recall of an approximate kind (default: a sample of the items themselves)."""
        if kind not in INDEX_KINDS or kind == "pq":
            raise ConfigError(f"index kind must be one of {', '.join(k for k in INDEX_KINDS if k != 'pq')} for a float table, not {kind!r}")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.asarray(ids, dtype=np.int64)
        if kind == "auto":
            kind = "ivf" if len(ids) >= AUTO_FAISS_ITEMS else "exact"
        index = cls(kind=kind, dim=vectors.shape[1])
        index._grow(int(ids.max(initial=0)) + 1)
        index._vectors = np.zeros((len(index._alive), index.dim), dtype=np.float32)
        index._vectors[ids] = vectors
        index._alive[ids] = True
        if kind != "exact":
            index._build_faiss(ids, vectors, queries, target_recall, seed)
        return index

    @classmethod
    def from_codes(cls, ids: np.ndarray, codes: np.ndarray, code_table: np.ndarray) -> ItemIndex:
        """A ``pq`` index: ``codes`` (n, D) in 0..M-1, ``code_table`` (D, M, dim) the code embeddings."""
        index = cls(kind="pq", dim=code_table.shape[2])
        index._lut_table = np.ascontiguousarray(code_table, dtype=np.float32)
        index._grow(int(np.max(ids, initial=0)) + 1)
        index._codes = np.zeros((len(index._alive), code_table.shape[0]), dtype=np.int64)
        index._scale = np.zeros(len(index._alive), dtype=np.float32)
        index._put_codes(np.asarray(ids, dtype=np.int64), np.asarray(codes, dtype=np.int64))
        return index

    def _put_codes(self, ids: np.ndarray, codes: np.ndarray) -> None:
        D = self._lut_table.shape[0]
        mean = self._lut_table[np.arange(D), codes].sum(axis=1) / D  # (n, dim)
        norm = np.maximum(np.linalg.norm(mean, axis=1), 1e-12)  # F.normalize's eps
        self._codes[ids] = codes
        self._scale[ids] = 1.0 / (D * norm)
        self._alive[ids] = True

    def _build_faiss(self, ids, vectors, queries, target_recall: float, seed: int) -> None:
        import faiss

        n = len(ids)
        if self.kind == "ivf":
            nlist = int(max(1, min(np.sqrt(n), n // 39)))  # sqrt(n) cells; faiss wants >= 39 training points per cell
            quantizer = faiss.IndexFlatIP(self.dim)
            ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(seed)
            train = vectors[rng.choice(n, size=min(n, nlist * 50), replace=False)]
            ivf.cp.seed = seed
            ivf.train(train)
            ivf.add_with_ids(vectors, ids)
            self._faiss, self.params = ivf, {"nlist": nlist}
            knobs = [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if p <= nlist] or [nlist]
        elif self.kind == "hnsw":
            hnsw = faiss.IndexHNSWFlat(self.dim, 32, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = 64
            self._faiss, self.params = faiss.IndexIDMap2(hnsw), {"M": 32}
            self._faiss.add_with_ids(vectors, ids)
            knobs = [16, 32, 64, 128, 256, 512]
        else:
            raise ConfigError(f"unknown faiss index kind {self.kind!r}")
        if queries is None:
            rng = np.random.default_rng(seed + 1)
            queries = vectors[rng.choice(n, size=min(n, RECALL_QUERIES), replace=False)]
        queries = np.ascontiguousarray(queries[:RECALL_QUERIES], dtype=np.float32)
        truth = [set(self._exact_search(q, 10, ()).ids) for q in queries]
        for knob in knobs:
            self._set_knob(knob)
            got = [set(self._faiss_search(q, 10, ()).ids) for q in queries]
            self.recall_at_10 = float(np.mean([len(g & t) / max(len(t), 1) for g, t in zip(got, truth)]))
            if self.recall_at_10 >= target_recall:
                break
        log.info("built a %s index of %d items (%s): recall@10 %.4f against exact search on %d queries",
                 self.kind, n, self.params, self.recall_at_10, len(queries))

    def _set_knob(self, knob: int) -> None:
        if self.kind == "ivf":
            self._faiss.nprobe = knob
            self.params["nprobe"] = knob
        else:
            import faiss

            faiss.downcast_index(self._faiss.index).hnsw.efSearch = knob
            self.params["efSearch"] = knob

    # ---- changes -------------------------------------------------------------------------------
    def _grow(self, size: int) -> None:
        if size <= len(self._alive):
            return
        cap = max(size, 2 * len(self._alive))
        alive = np.zeros(cap, dtype=bool)
        alive[: len(self._alive)] = self._alive
        self._alive = alive
        for name in ("_vectors", "_codes", "_scale"):
            old = getattr(self, name)
            if old is not None:
                new = np.zeros((cap, *old.shape[1:]), dtype=old.dtype)
                new[: len(old)] = old
                setattr(self, name, new)

    def add(self, ids: np.ndarray, vectors: np.ndarray | None = None, codes: np.ndarray | None = None) -> None:
        """Insert items (new ids) by their vectors, or by their codes for a ``pq`` index."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return
        with self._lock:
            self._grow(int(ids.max()) + 1)
            if self.kind == "pq":
                if codes is None:
                    raise TextrecError("a pq index takes new items by their codes")
                self._put_codes(ids, np.asarray(codes, dtype=np.int64))
                return
            vectors = np.ascontiguousarray(vectors, dtype=np.float32)
            self._vectors[ids] = vectors
            self._alive[ids] = True
            if self._faiss is not None:
                self._faiss.add_with_ids(vectors, ids)

    def remove(self, ids) -> None:
        """Retire items: they are never returned again."""
        ids = np.asarray(list(ids), dtype=np.int64)
        with self._lock:
            ids = ids[(ids > 0) & (ids < len(self._alive))]
            self._alive[ids] = False
            if self.kind == "ivf" and len(ids):
                import faiss

                self._faiss.remove_ids(faiss.IDSelectorBatch(ids))

    def __len__(self) -> int:
        return int(self._alive.sum())

    def is_alive(self, item_id: int) -> bool:
        return 0 < item_id < len(self._alive) and bool(self._alive[item_id])

    # ---- search --------------------------------------------------------------------------------
    def search(self, query: np.ndarray, k: int, exclude=()) -> SearchResult:
        """The ``k`` best live items for ``query`` (dim,), leaving out the ids in ``exclude``."""
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
        with self._lock:
            if self._faiss is not None:
                return self._faiss_search(query, k, exclude)
            return self._exact_search(query, k, exclude)

    def score(self, query: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Exact scores of the live items ``ids`` for ``query`` (-inf for a retired or unknown id)."""
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
        ids = np.asarray(ids, dtype=np.int64)
        with self._lock:
            ok = (ids > 0) & (ids < len(self._alive))
            ok[ok] = self._alive[ids[ok]]
            safe = np.where(ok, ids, 0)
            if self.kind == "pq":
                lut = self._lut_table @ query  # (D, M)
                scores = lut[np.arange(lut.shape[0]), self._codes[safe]].sum(axis=1) * self._scale[safe]
            else:
                scores = self._vectors[safe] @ query
        return np.where(ok, scores, -np.inf).astype(np.float32)

    def _exact_search(self, query: np.ndarray, k: int, exclude) -> SearchResult:
        if self.kind == "pq":
            lut = self._lut_table @ query  # (D, M)
            D = lut.shape[0]
            scores = lut[np.arange(D), self._codes].sum(axis=1) * self._scale  # (capacity,)
        else:
            scores = self._vectors @ query  # (capacity,)
        scores = scores.astype(np.float32)
        scores[~self._alive] = -np.inf
        excl = np.asarray([i for i in exclude if 0 <= i < len(scores)], dtype=np.int64)
        scores[excl] = -np.inf
        top_s, top_i = _top_k_exact(scores, np.arange(len(scores), dtype=np.int64), k)
        return SearchResult(top_i.tolist(), top_s.tolist())

    def _faiss_search(self, query: np.ndarray, k: int, exclude) -> SearchResult:
        excl = {int(i) for i in exclude}
        fetch = k + len(excl)
        params = None
        if self.kind == "hnsw":
            import faiss

            dead = np.flatnonzero(~self._alive[1:]) + 1
            dead = dead[self._vectors_known(dead)]
            if len(dead):
                sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(dead.astype(np.int64)))
                params = faiss.SearchParametersHNSW(sel=sel, efSearch=max(self.params["efSearch"], fetch))
        scores, ids = self._faiss.search(query[None, :], fetch, params=params) if params else self._faiss.search(query[None, :], fetch)
        out_i, out_s = [], []
        for s, i in zip(scores[0].tolist(), ids[0].tolist()):
            if i < 0 or i in excl or not self._alive[i]:
                continue
            out_i.append(int(i))
            out_s.append(float(s))
            if len(out_i) == k:
                break
        return SearchResult(out_i, out_s)

    def _vectors_known(self, ids: np.ndarray) -> np.ndarray:
        """Which of ``ids`` were ever added (a never-used id need not be excluded)."""
        return np.abs(self._vectors[ids]).sum(axis=1) > 0

    def describe(self) -> dict:
        return {"kind": self.kind, "items": len(self), "dim": self.dim, "recall_at_10": self.recall_at_10, **self.params}
