"""A trained run as a live recommendation service: the library behind ``textrec serve``'s HTTP handlers.

``Service`` holds a loaded run, an item index over its item table (``textrec.serve.index``) and a journal of
the items added or retired while serving (``textrec.serve.journal``). It answers in plain dicts, the shapes of
the library's results (``Recommendation.to_dict``), and raises ``TextrecError`` subclasses for bad input, so
the HTTP layer only maps them to status codes.

Item ids: the index speaks *serve ids* (1, 2, ... in the order items joined the service); the model speaks
its own item ids. For a run's trained catalogue and the items added to it they are the same; items padded in
for a benchmark (``pad_catalogue``) have a serve id but no model id (they can be recommended, not clicked).

New items go through ``textrec.serve.catalogue.grow_catalogue`` (encoded with the run's encoder, quantised
with the run's quantiser for VQ-Rec, model rebuilt with the trained weights): no retraining. An update (an
add of a key already served) retires the old version and adds the new one under the same key.

Memory while items are added: growing the catalogue allocates, and frees, tables the size of the whole catalogue
(the extended inputs, the rebuilt model, the item vectors). Done on whichever worker thread answered the request,
each thread allocates from its own glibc arena, and the space one thread freed is not reused by the next add on
another: the server's resident memory grew by about 100 KB per added item. Every growth therefore runs on one
writer thread (``_on_writer``), whose arena reuses what the previous add freed, and the service's own per-item
columns grow by doubling their capacity (``_Column``), not by copying the whole column per add.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from textrec.errors import DataError, NotFoundError, TextrecError
from textrec.models.spec import dot_score, spec_of
from textrec.serve.index import ItemIndex
from textrec.serve.journal import Journal

log = logging.getLogger("textrec.serve")

MAX_K = 1000
MAX_HISTORY = 200  # keys in one history (the model reads the last max_seq_len of them)
MAX_BATCH = 64  # histories in one /recommend/batch
MAX_CANDIDATES = 10_000  # items in one recommendation's filter
MAX_NEW_ITEMS = 100  # items in one POST /items
MAX_TEXT = 10_000  # characters of one item text
MAX_FEATURE_DIM = 4096  # numbers in one given feature vector (POST /items' features)


class ReadOnlyError(TextrecError):
    """A write to a service started read-only."""


class CannotAddError(TextrecError):
    """The model cannot score items it was not trained on."""


class FieldError(DataError):
    """Bad input in one field of a request; ``field`` names it as the API's errors do (``items[2].features.feat1CLS``)."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def load_run_for_serving(run_dir: str | Path, device: str = "cpu", data: str | Path | None = None):
    """The run, loaded read-only (``textrec.runs``); with ``data``, zero-shot on that dataset's catalogue (a
    pre-trained run or a shipped checkpoint)."""
    from textrec.runs import load_run

    return load_run(run_dir, data, device)


def default_journal(run_dir: str | Path, data: str | Path | None = None) -> Path:
    """Where added items are kept unless told: beside the run, or, serving a run on another dataset (``data``),
    in that dataset's ``serve/<run name>/`` folder: a shipped checkpoint's folder is never written to."""
    if data is None:
        return Path(run_dir) / "serve" / "journal.jsonl"
    return Path(data) / "serve" / Path(run_dir).name / "journal.jsonl"


@torch.inference_mode()
def sequence_vector(model, history: np.ndarray, max_seq_len: int) -> np.ndarray:
    """(D,) float32 sequence representation after ``history`` (model item ids), as ``all_scores`` computes it."""
    from textrec.data.batching import SeqBatch

    device = next(model.parameters()).device
    hist = torch.as_tensor(np.asarray(history, dtype=np.int64)[-max_seq_len:], device=device)
    batch = SeqBatch(hist[None, :], torch.tensor([hist.numel()], device=device))
    return model.encode(batch).float()[0].cpu().numpy()  # the model is in eval mode (load_run, grow_catalogue)


@torch.no_grad()
def item_table(model) -> np.ndarray:
    """(n_items + 1, D) float32 item vectors of the model (row 0 padding)."""
    model.eval()
    return model.item_embeddings().float().cpu().numpy()


def code_table(model) -> tuple[np.ndarray, np.ndarray] | None:
    """VQ-Rec's (codes (n_items + 1, D), code embeddings (D, M, h)) when its items are exactly the normalised mean
    of their code embeddings (no item-ID term, no permutation running); else None."""
    if not hasattr(model, "code_index") or getattr(model, "item_id_emb", None) is not None or bool(getattr(model, "permuting", False)):
        return None
    D, M = model.n_codebooks, model.codebook_size
    offsets = torch.arange(D, device=model.code_index.device) * (M + 1) + 1
    codes = (model.code_index - offsets).cpu().numpy()
    table = model.code_emb.weight.detach().float().view(D, M + 1, -1)[:, 1:].cpu().numpy()
    return codes[1:], table


class _Column:
    """A growing int64 column: appends write into spare capacity, which doubles when full, so n appends copy
    O(n) numbers in all rather than the whole column each time. ``values`` is a view of the filled part."""

    def __init__(self, values: np.ndarray) -> None:
        self._buf = np.asarray(values, dtype=np.int64).copy()
        self.n = len(self._buf)

    @property
    def values(self) -> np.ndarray:
        return self._buf[: self.n]

    def append(self, values: np.ndarray) -> None:
        need = self.n + len(values)
        if need > len(self._buf):
            buf = np.zeros(max(need, 2 * len(self._buf), 16), dtype=np.int64)
            buf[: self.n] = self._buf[: self.n]
            self._buf = buf
        self._buf[self.n : need] = values
        self.n = need


@dataclass
class Stats:
    adds: int = 0
    deletes: int = 0


class Service:
    def __init__(self, run_dir: str | Path, index_kind: str = "auto", read_only: bool = False,
                 journal: str | Path | None = None, device: str = "cpu", replay: bool = True,
                 data: str | Path | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.run = load_run_for_serving(run_dir, device, data)
        self.run.model.eval()
        self.read_only = read_only
        self.index_kind = index_kind
        self.journal = Journal(journal if journal is not None else default_journal(run_dir, data))
        self.lock = threading.RLock()  # held briefly: reads, and swapping in a grown catalogue
        self.write_lock = threading.Lock()  # one write at a time; encoding new items happens outside ``lock``
        self.stats = Stats()
        ds = self.run.dataset
        self.keys: list[str] = list(ds.item_keys)  # serve id - 1 -> key
        self.texts: list[str] = list(ds.item_texts)
        self.attributes: list[dict] = list(ds.item_attributes or [{} for _ in ds.item_keys])
        self._model_ids = _Column(np.arange(1, ds.n_items + 1))  # serve id - 1 -> model id (0: none)
        self._serve_ids = _Column(np.arange(0, ds.n_items + 1))  # model id -> serve id
        self._writer: ThreadPoolExecutor | None = None  # the one thread that grows the catalogue (module doc)
        self.live: dict[str, int] = {k: i + 1 for i, k in enumerate(self.keys)}  # key -> serve id
        self.added: set[int] = set()
        self.n_model_keys = 0  # internal keys handed to grow_catalogue for updates
        self.index = self._build_index()
        if replay:
            self._replay()

    # ---- the index -----------------------------------------------------------------------------
    @property
    def model(self):
        return self.run.model

    @property
    def model_ids(self) -> np.ndarray:
        """(items served or retired,) the model id of each serve id - 1 (0: an item no model knows)."""
        return self._model_ids.values

    @property
    def serve_ids(self) -> np.ndarray:
        """(model items + 1,) the serve id of each model id."""
        return self._serve_ids.values

    @property
    def can_add(self) -> bool:
        return bool(spec_of(self.model).item_inputs)

    def _uses_index(self) -> bool:
        return spec_of(self.model).score is dot_score  # a model with its own score rule ranks through the library

    def _build_index(self) -> ItemIndex | None:
        if not self._uses_index():
            return None
        started = time.perf_counter()
        ids = np.arange(1, self.run.dataset.n_items + 1, dtype=np.int64)
        if self.index_kind == "pq":
            coded = code_table(self.model)
            if coded is None:
                raise TextrecError(f"--index pq scores items from VQ-Rec codes; {self.run.cfg.model} (in this mode) has none")
            index = ItemIndex.from_codes(ids, coded[0], coded[1])
        else:
            table = item_table(self.model)[1:]
            index = ItemIndex.build(ids, table, self.index_kind, queries=self._sample_queries())
        log.info("item index: %s in %.1f s", index.describe(), time.perf_counter() - started)
        return index

    def _sample_queries(self, n: int = 200) -> np.ndarray | None:
        """Sequence vectors of up to ``n`` users' histories: the queries the index's recall is measured on."""
        ds = self.run.dataset
        if ds.n_users == 0:
            return None
        users = np.random.default_rng(0).choice(ds.n_users, size=min(n, ds.n_users), replace=False)
        L = self.run.cfg.data.max_seq_len
        return np.stack([sequence_vector(self.model, ds.sequence(int(u)), L) for u in users])

    def pad_catalogue(self, vectors: np.ndarray, prefix: str = "synthetic-") -> None:
        """Rebuild the index with ``vectors`` (n, D) appended as extra items (keys ``prefix0000001``...), which no
        model knows: for measuring search over catalogues larger than the run's (benchmarks)."""
        with self.lock:
            start = len(self.keys)
            n = len(vectors)
            self.keys += [f"{prefix}{i:07d}" for i in range(1, n + 1)]
            self.texts += [f"synthetic item {i}" for i in range(1, n + 1)]
            self.attributes += [{} for _ in range(n)]
            self._model_ids.append(np.zeros(n, dtype=np.int64))
            self.live.update({k: start + i + 1 for i, k in enumerate(self.keys[start:])})
            table = np.zeros((len(self.keys), vectors.shape[1]), dtype=np.float32)  # by serve id - 1
            known = self.model_ids > 0
            table[known] = item_table(self.model)[self.model_ids[known]]
            table[start:] = vectors
            ids = np.array(sorted(self.live.values()), dtype=np.int64)
            self.index = ItemIndex.build(ids, table[ids - 1], self.index_kind, queries=self._sample_queries())

    # ---- lookups -------------------------------------------------------------------------------
    def item(self, key: str) -> dict:
        sid = self.live.get(key)
        if sid is None:
            raise NotFoundError(f"unknown item {key!r}")
        return self._item_dict(sid)

    def _item_dict(self, sid: int) -> dict:
        out = {"item": self.keys[sid - 1], "item_id": sid, "text": self.texts[sid - 1], "added": sid in self.added}
        if self.attributes[sid - 1]:
            out["attributes"] = self.attributes[sid - 1]
        return out

    def search_items(self, q: str, limit: int = 20) -> list[dict]:
        """Live items whose key or text contains every word of ``q`` (case-insensitive), in id order; newest added
        first when ``q`` is empty."""
        words = q.lower().split()
        out = []
        sids = sorted(self.added, reverse=True) + list(range(1, len(self.keys) + 1)) if not words else range(1, len(self.keys) + 1)
        seen = set()
        for sid in sids:
            key = self.keys[sid - 1]
            if sid in seen or self.live.get(key) != sid:
                continue
            seen.add(sid)
            hay = f"{key} {self.texts[sid - 1]}".lower()
            if all(w in hay for w in words):
                out.append(self._item_dict(sid))
                if len(out) >= limit:
                    break
        return out

    def stats_dict(self) -> dict:
        return {"run": self.run_dir.name, "model": self.run.cfg.model, "dataset": self.run.dataset.name, "items": len(self.live), "added": len(self.added),
                "read_only": self.read_only, "can_add_items": self.can_add,
                "index": self.index.describe() if self.index is not None else {"kind": "model", "items": len(self.live)}}

    # ---- recommendations -----------------------------------------------------------------------
    def history_ids(self, items: list[str] | None, user: str | None) -> tuple[list[int], list[str]]:
        """(serve ids of the history, unknown keys). A user's history is their whole sequence."""
        if user is not None:
            from textrec.serve.recommend import user_history

            return [int(self.serve_ids[i]) for i in user_history(self.run.dataset, user)], []
        known, unknown = [], []
        for key in items or []:
            sid = self.live.get(key)
            if sid is None or self.model_ids[sid - 1] == 0:
                unknown.append(key)
            else:
                known.append(sid)
        return known, unknown

    def recommend(self, items: list[str] | None = None, user: str | None = None, k: int = 10,
                  exclude_history: bool = True, only: list[str] | None = None) -> dict:
        """Top-k after a history of item keys (or a known user's), with the keys the catalogue does not know.

        ``only``: rank just these item keys (e.g. what is in stock), scored exactly; unknown ones are listed in
        ``unknown_candidates``.
        """
        if (items is None) == (user is None):
            raise DataError("give exactly one of 'items' or 'user'")
        with self.lock:
            history, unknown = self.history_ids(items, user)
            if not history:
                where = "user" if user is not None else "items"
                raise NotFoundError(f"{where}: none of the given items is in the catalogue ({', '.join(map(repr, unknown[:5]))})")
            model_hist = self.model_ids[np.asarray(history) - 1]
            exclude = set(history) if exclude_history else set()
            extra = {}
            if only is not None:
                cands = [self.live.get(key) for key in only]
                extra["unknown_candidates"] = [key for key, sid in zip(only, cands) if sid is None]
                cands = np.array(sorted({sid for sid in cands if sid is not None} - exclude), dtype=np.int64)
                ranked = self._rank_candidates(model_hist, cands, k)
            elif self.index is not None:
                q = sequence_vector(self.model, model_hist, self.run.cfg.data.max_seq_len)
                found = self.index.search(q, k, exclude)
                ranked = list(zip(found.ids, found.scores))
            else:
                ranked = self._library_ranking(model_hist, k, exclude_history)
            recs = [{"rank": r + 1, "item": self.keys[sid - 1], "item_id": sid, "score": float(s), "text": self.texts[sid - 1]}
                    for r, (sid, s) in enumerate(ranked)]
            hist = [self.keys[sid - 1] for sid in history]
        return {"history": hist, "unknown": unknown, **extra, "recommendations": recs}

    def _rank_candidates(self, model_hist: np.ndarray, cands: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The k best of the serve ids ``cands`` (sorted), scored exactly; equal scores in id order."""
        if len(cands) == 0:
            return []
        if self.index is not None:
            q = sequence_vector(self.model, model_hist, self.run.cfg.data.max_seq_len)
            scores = self.index.score(q, cands)
        else:
            from textrec.serve.recommend import all_scores

            every = all_scores(self.model, model_hist, self.run.cfg.data.max_seq_len, exclude_history=False).cpu().numpy()
            scores = every[self.model_ids[cands - 1]]
        order = np.lexsort((cands, -scores))[:k]
        return [(int(cands[i]), float(scores[i])) for i in order if np.isfinite(scores[i])]

    def _library_ranking(self, model_hist: np.ndarray, k: int, exclude_history: bool) -> list[tuple[int, float]]:
        from textrec.serve.recommend import all_scores, ranking

        scores = all_scores(self.model, model_hist, self.run.cfg.data.max_seq_len, exclude_history)
        retired = [m for m in range(1, len(self.serve_ids)) if self.live.get(self.keys[self.serve_ids[m] - 1]) != self.serve_ids[m]]
        scores[retired] = float("-inf")
        top = ranking(scores)[:k].tolist()
        return [(int(self.serve_ids[m]), float(scores[m])) for m in top]

    # ---- changes -------------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyError("this service was started with --read-only: items cannot be added or retired")
        if not self.can_add:
            from textrec.models import MODELS, model_class

            text_models = ", ".join(n for n in sorted(MODELS) if spec_of(model_class(n)).item_inputs)
            raise CannotAddError(f"{self.run.cfg.model} scores the item IDs it was trained on and cannot score new items; "
                                 f"serve a text model ({text_models}) to add items")

    def add_items(self, items: list[dict]) -> dict:
        """Add or update items ({key, text?, attributes?, features?}); they are recommendable by the next request. A
        key given twice is added once, as its last version (as if sent in two requests). ``features``: {table:
        numbers}, the item's row of each feature table named, for a model that reads feature tables."""
        self._check_writable()
        self._check_features(items)
        items = list({it["key"]: it for it in items}.values())
        with self.write_lock:
            added = self._apply_add(items)
            self.journal.append({"op": "add", "items": items})
        return {"added": [self._item_dict(sid) for sid in added], "items": len(self.live)}

    def _check_features(self, items: list[dict]) -> None:
        """Every given vector fits the model (a table it reads, its width, finite), before anything is written."""
        from textrec.serve.catalogue import GivenFeatureError, feature_dims, given_feature_rows

        dims = feature_dims(self.run)
        for i, it in enumerate(items):
            if "features" not in it:
                continue
            if not dims:
                from textrec.models import MODELS, model_class

                takers = ", ".join(n for n in sorted(MODELS) if "features" in spec_of(model_class(n)).item_inputs)
                raise FieldError(f"{self.run.cfg.model} (in this run's configuration) reads no feature tables, so it takes "
                                 f"no vectors: give the item a text or attributes (feature tables: {takers})", f"items[{i}].features")
            try:
                given_feature_rows(dims, it["features"])
            except GivenFeatureError as e:
                raise FieldError(str(e), f"items[{i}].features.{e.table}") from None

    def delete_item(self, key: str) -> dict:
        self._check_writable()
        with self.write_lock:
            if key not in self.live:
                raise NotFoundError(f"unknown item {key!r}")
            with self.lock:
                self._apply_delete(key)
            self.journal.append({"op": "delete", "key": key})
        return {"deleted": key, "items": len(self.live)}

    def _apply_add(self, items: list[dict]) -> list[int]:
        grown = self._on_writer(self._grow, items)  # the slow part (encoding, rebuilding), while reads go on
        with self.lock:
            sids = self._append_rows(*grown)
            for key, sid in zip((it["key"] for it in items), sids):
                self._go_live(key, sid)
            return sids

    def _on_writer(self, fn, *args):
        """``fn(*args)`` on the service's one writer thread (module doc: memory while items are added)."""
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="textrec-catalogue")
        return self._writer.submit(fn, *args).result()

    def _grow(self, items: list[dict]) -> tuple:
        """The run grown by ``items`` (several versions of one key allowed, each its own row), and the new rows."""
        from textrec.serve.catalogue import NewItems, grow_catalogue

        taken = set(self.run.dataset.item_keys)
        model_keys = []
        for it in items:  # an update re-adds the key: the model's catalogue needs a fresh internal key
            key = it["key"]
            while key in taken:
                self.n_model_keys += 1
                key = f"{it['key']}#v{self.n_model_keys}"
            taken.add(key)
            model_keys.append(key)
        new = NewItems(model_keys, [it.get("text") or "" for it in items], [dict(it.get("attributes") or {}) for it in items],
                       features=[dict(it.get("features") or {}) for it in items])
        n_old = self.run.dataset.n_items
        grown, _ = grow_catalogue(self.run, new)
        texts = grown.dataset.item_texts[n_old:]  # derived from attributes where no text was given
        new_rows = {}
        if self.index is not None and self.index.kind == "pq":
            new_rows = {"codes": code_table(grown.model)[0][n_old:]}
        elif self.index is not None:
            new_rows = {"vectors": item_table(grown.model)[n_old + 1:]}
        return grown, [it["key"] for it in items], texts, new.attributes, n_old, new_rows

    def _append_rows(self, grown, keys: list[str], texts: list[str], attributes: list[dict], n_old: int, new_rows: dict,
                     to_index: bool = True) -> list[int]:
        """Serve ids for the grown run's new rows (in the index unless ``to_index`` is false; not live yet)."""
        start = len(self.keys)
        sids = np.arange(start + 1, start + len(keys) + 1, dtype=np.int64)
        self.keys += keys
        self.texts += texts
        self.attributes += attributes
        self._model_ids.append(np.arange(n_old + 1, n_old + len(keys) + 1))
        self._serve_ids.append(sids)
        self.run = grown
        if self.index is not None and to_index:
            self.index.add(sids, **new_rows)
        return sids.tolist()

    def _go_live(self, key: str, sid: int) -> None:
        """Serve ``sid`` under ``key``, retiring the version served before."""
        if key in self.live:
            self._apply_delete(key)
        self.live[key] = sid
        self.added.add(sid)
        self.stats.adds += 1

    def _apply_delete(self, key: str) -> None:
        sid = self.live.pop(key)
        self.added.discard(sid)
        if self.index is not None:
            self.index.remove([sid])
        self.stats.deletes += 1

    def _replay(self) -> None:
        """Apply the journal's records: every version ever added grown in at once, so each gets the serve id it had
        (no encoding between records: a long journal replays in one growth), then the adds, updates and deletes
        in order; the versions still served at the end go into the index."""
        records = self.journal.records()
        versions = [it for record in records if record["op"] == "add" for it in record["items"]]
        sids: list[int] = []
        if versions:
            grown = self._on_writer(self._grow, versions)
            sids = self._append_rows(*grown, to_index=False)
        order = iter(sids)
        for record in records:
            if record["op"] == "add":
                for it in record["items"]:
                    self._go_live(it["key"], next(order))
            elif record["key"] in self.live:
                self._apply_delete(record["key"])
        if self.index is not None and sids:
            live = np.array([i for i, sid in enumerate(sids) if self.live.get(self.keys[sid - 1]) == sid], dtype=np.int64)
            self.index.add(np.asarray(sids, dtype=np.int64)[live], **{name: rows[live] for name, rows in grown[5].items()})
        if records:
            log.info("replayed %d journal record(s) from %s: %d items served, %d added", len(records), self.journal.path,
                     len(self.live), len(self.added))
