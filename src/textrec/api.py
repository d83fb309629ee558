"""The results of ``textrec evaluate`` and ``textrec recommend``, as library calls returning plain data.

``evaluate_run`` and ``recommend`` take a run directory (or a run already loaded with ``textrec.runs.load_run``)
and return a dataclass whose ``to_dict()`` is exactly the JSON object the command prints with ``--json``; the
CLI only parses its arguments, calls them and formats the result, and an HTTP handler can call them the same
way. Both are read-only: a dataset given with ``data`` that lacks what a pre-trained run reads (a bare,
freshly prepared one) is completed first by ``textrec.train.newcatalogue.complete_run_catalogue``, as the CLI
does. ``overrides`` are ``key=value`` settings of the run's data section (``data.codes=NAME``, ...).

    >>> import textrec
    >>> res = textrec.evaluate_run("runs/sasrec", split="test")
    >>> res.metrics["ndcg@10"]
    >>> recs = textrec.recommend("runs/sasrec", user="A1SWWHE1L3XR3V", k=5)
    >>> [r.item_key for r in recs.recommendations]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from textrec.errors import TextrecError
from textrec.runs import LoadedRun, load_run, trained_on
from textrec.serve.recommend import Recommendation


def _loaded(run: str | Path | LoadedRun, data, device: str, overrides) -> tuple[LoadedRun, str]:
    """(the loaded run, the run as the result names it: the path as given)."""
    if isinstance(run, LoadedRun):
        if data is not None or overrides:
            raise TextrecError("data and overrides apply when loading a run: give the run directory, not a loaded run")
        return run, str(run.path)
    return load_run(run, data, device, overrides=overrides), str(run)


# ---- evaluate ----------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """Full-ranking metrics of a run on one split (``evaluate_run``)."""

    run: str
    data: str  # the dataset directory ranked (the run's own, or ``data``)
    zero_shot: bool
    split: str
    mask_history: bool
    ties: str
    users: int
    targets_with_ties: int
    seconds: float
    metrics: dict[str, float]  # recall@K, ndcg@K, mrr@K for the run's (or the given) cut-offs
    groups: dict[str, dict] = field(default_factory=dict)  # a ``textrec holdout`` eval dataset: held_out / seen
    # for a human report (not in to_dict)
    model: str = ""
    ks: tuple[int, ...] = ()
    n_items: int = 0
    dataset: str = ""  # the dataset's name
    trained_on: str = ""  # a zero-shot run's own catalogue, in words

    def to_dict(self) -> dict:
        return {"run": self.run, "data": self.data, "zero_shot": self.zero_shot, "split": self.split,
                "mask_history": self.mask_history, "ties": self.ties, "users": self.users,
                "targets_with_ties": self.targets_with_ties, "seconds": self.seconds, **self.metrics, **self.groups}


def evaluate_run(
    run: str | Path | LoadedRun, data: str | Path | None = None, split: str = "test", ks: tuple[int, ...] | None = None,
    mask_history: bool | None = None, ties: str | None = None, device: str = "auto", overrides: list[str] | tuple = (),
) -> Evaluation:
    """Full-ranking metrics of ``run`` on ``split`` of its dataset, or of ``data`` (zero-shot for another catalogue).

    ``ks``, ``mask_history`` and ``ties`` default to the run's ``eval`` settings. On a ``textrec holdout``
    evaluation dataset the result also holds the metrics of the users whose target was held out and of the rest.
    """
    from textrec.data.batching import EvalBatcher
    from textrec.data.split import eval_examples
    from textrec.eval.ranking import evaluate

    if split not in ("valid", "test"):
        raise TextrecError(f"split must be 'valid' or 'test', not {split!r}")
    loaded, name = _loaded(run, data, device, overrides)
    ec = loaded.cfg.eval
    ks = tuple(ks) if ks else ec.ks
    if min(ks) < 1:
        raise TextrecError(f"--ks must be cut-offs of at least 1, not {min(ks)}")
    mask = mask_history if mask_history is not None else ec.mask_history
    ties = ties or ec.ties
    examples = eval_examples(loaded.dataset, split, loaded.cfg.data.max_seq_len)
    batcher = EvalBatcher(examples, ec.batch_size, loaded.device)
    res = evaluate(loaded.model, batcher, ks, mask, ec.item_chunk, ties=ties)
    groups = _holdout_groups(loaded.dataset, examples.targets, res, ks, ties)
    zero = loaded.config.get("zero_shot") or {}
    return Evaluation(
        run=name, data=loaded.config["dataset"]["path"], zero_shot=loaded.zero_shot, split=split, mask_history=mask,
        ties=ties, users=len(res.ranks), targets_with_ties=int((res.ties > 0).sum()), seconds=res.seconds,
        metrics=res.metrics, groups=groups, model=loaded.cfg.model, ks=ks, n_items=loaded.dataset.n_items,
        dataset=loaded.dataset.name, trained_on=zero.get("trained_on") or trained_on(loaded.config),
    )


def _holdout_groups(ds, targets, res, ks, ties: str) -> dict:
    """On a ``textrec holdout`` eval dataset: metrics of the users whose target was held out, and of the rest."""
    from textrec.data.holdout import held_out_ids
    from textrec.eval.metrics import compute_metrics

    held = held_out_ids(ds)
    if held is None:
        return {}
    cold = np.isin(np.asarray(targets), held)
    out = {}
    for name, mask in (("held_out", cold), ("seen", ~cold)):
        n = int(mask.sum())
        tied = res.ties[mask] if ties == "random" else None
        out[name] = {"users": n, **(compute_metrics(res.ranks[mask], ks, ties=tied) if n else {})}
    out["held_out"].update({f"chance_recall@{k}": k / ds.n_items for k in ks})  # a random ranking of the catalogue
    return out


# ---- recommend ---------------------------------------------------------------------------------


@dataclass
class Recommendations:
    """Top-k items after a user's history or a given one (``recommend``)."""

    run: str
    user: str | None  # the user key, or None for a given item history
    history: list[dict]  # {"item", "text"} of every history item, oldest first
    recommendations: list[Recommendation]
    max_seq_len: int  # how much of the history the model reads (the JSON lists that much)
    new_items: list[dict] | None = None  # with new items: {"item", "rank", "score"} of each (rank None: in the history)
    candidates: int = 0  # items ranked (the catalogue less the history unless it is included)
    new_item_features: list = field(default_factory=list)  # NewFeatureRows: how each feature table got new rows

    def to_dict(self) -> dict:
        extra = {"new_items": self.new_items, "candidates": self.candidates} if self.new_items is not None else {}
        if self.new_item_features:
            extra["new_item_features"] = [r.to_dict() for r in self.new_item_features]
        return {"run": self.run, "user": self.user, "history": self.history[-self.max_seq_len:],
                "recommendations": [r.to_dict() for r in self.recommendations], **extra}


def recommend(
    run: str | Path | LoadedRun, history: list[str] | None = None, user: str | None = None, k: int = 10,
    new_items=None, include_history: bool = False, data: str | Path | None = None, encoder: str | None = None,
    device: str = "auto", overrides: list[str] | tuple = (),
) -> Recommendations:
    """The ``k`` best items for ``user`` (a user key of the dataset: its whole sequence is the history) or after
    ``history`` (item keys, oldest first); exactly one of the two.

    ``new_items``: items to add to the catalogue without retraining (a content model), as a new-items file's path
    (``textrec.serve.catalogue.read_new_item_table``) or a ``NewItems``; ``encoder`` the text encoder for them
    when it is not the embedded one. Items of the history are not recommended unless ``include_history``.
    """
    from textrec.serve.recommend import all_scores, item_ids, item_ranks, top_k, user_history

    if (user is None) == (history is None):
        raise TextrecError("give exactly one of a user or an item history")
    if k < 1:
        raise TextrecError(f"k must be >= 1, not {k}")
    loaded, name = _loaded(run, data, device, overrides)
    n_old = loaded.dataset.n_items
    feature_rows: list = []
    if new_items is not None:
        loaded, feature_rows = _add_new_items(loaded, new_items, encoder)
    ds = loaded.dataset
    ids = user_history(ds, user) if user is not None else item_ids(ds, list(history))
    scores = all_scores(loaded.model, ids, loaded.cfg.data.max_seq_len, exclude_history=not include_history)
    recs = top_k(ds, scores, k)
    new_ids = list(range(n_old + 1, ds.n_items + 1))
    new = [{"item": ds.item_keys[i - 1], "rank": r, "score": s if r else None}
           for i, r, s in zip(new_ids, item_ranks(scores, new_ids), scores[new_ids].tolist())]
    hist = [{"item": ds.item_keys[i - 1], "text": ds.item_texts[i - 1]} for i in ids]
    return Recommendations(name, user, hist, recs, loaded.cfg.data.max_seq_len, new if new_items is not None else None,
                           int(scores.isfinite().sum()), feature_rows)


def _add_new_items(run: LoadedRun, new_items, encoder: str | None):
    """The run with ``new_items`` in its catalogue, and how each feature table got their rows; says what was added."""
    import logging

    from textrec.serve.catalogue import NewItems, grow_catalogue, read_new_item_table

    log = logging.getLogger("textrec.api")
    source = None if isinstance(new_items, NewItems) else new_items
    items = new_items if isinstance(new_items, NewItems) else read_new_item_table(new_items)
    grown, feature_rows = grow_catalogue(run, items, encoder)
    reads_images = any(r.modality == "image" for r in feature_rows)
    given = [w for w, has in (("text", any(items.texts)), ("attributes", any(items.attributes)),
                              ("images", reads_images and any(items.images))) if has]
    log.info("added %d new item(s) to the catalogue from their %s", len(items.keys), " and ".join(given) or "keys alone")
    for report in feature_rows:  # a masked new item is worth a look
        log.info("%s", report.line())
    if any(items.images) and not reads_images:
        log.info("note: %s reads no image feature table here, so the image column of %s is not read",
                 run.cfg.model, source if source is not None else "the new items")
    return grown, feature_rows
