"""Ranking metrics as pure functions of the target's 0-based rank.

There is exactly one relevant item per user (leave-one-out), so with ``rank`` = number of candidates
ranked above the target:

* Recall@K = 1[rank < K]  (RecBole's HIT@K; equal to Recall@K with one target)
* NDCG@K  = 1[rank < K] / log2(rank + 2)  (the ideal DCG is 1)
* MRR@K   = 1[rank < K] / (rank + 1)

Optional, without cut-off (``extra``; Recformer reports both), with ``n_candidates`` = the target plus
every other candidate it was ranked against (``n_items``, fewer with history masking):

* MRR = 1 / (rank + 1) over the whole ranked list
* AUC = 1 - rank / (n_candidates - 1), the fraction of the other candidates ranked below the target
  (1 for a target with no other candidate)

Each metric is the mean over users.

Ties. ``ranks`` are pessimistic (every candidate scoring at least as high as the target counts), so a
constant-score model gets AUC 0. With ``ties`` (the number of *other* candidates scoring exactly the
target's score) the metrics are instead the exact expectation under a uniformly random order of the tied
items: the rank is uniform on ``ranks - ties .. ranks``; for AUC this counts each tied candidate as half
below the target (the usual Mann-Whitney convention), so a constant-score model gets 0.5. RecBole ranks
with ``torch.topk``, whose order among equal scores is implementation-defined rather than uniformly
random, so this expectation approximates what the references' numbers correspond to; it matters for
models whose items can share a representation (VQ-Rec items with identical codes).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

METRICS = ("recall", "ndcg", "mrr")
EXTRA = ("mrr", "auc")  # cut-off-free metrics, only on request


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    return float(np.mean(ranks < k))


def ndcg_at_k(ranks: np.ndarray, k: int) -> float:
    ranks = np.asarray(ranks, dtype=np.float64)
    return float(np.mean(np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)))


def mrr_at_k(ranks: np.ndarray, k: int) -> float:
    ranks = np.asarray(ranks, dtype=np.float64)
    return float(np.mean(np.where(ranks < k, 1.0 / (ranks + 1.0), 0.0)))


_FUNCTIONS = {"recall": recall_at_k, "ndcg": ndcg_at_k, "mrr": mrr_at_k}


def _expected(best: np.ndarray, n_tied: np.ndarray, k: int, gain) -> float:
    """Mean over users of E[gain(r) 1(r < k)] for r uniform on best .. best + n_tied."""
    cum = np.concatenate([[0.0], np.cumsum(gain(np.arange(k, dtype=np.float64)))])  # cum[n] = sum_{r<n} gain(r)
    hi = np.minimum(best + n_tied + 1, k)
    lo = np.minimum(best, k)
    return float(np.mean((cum[hi] - cum[lo]) / (n_tied + 1)))


_GAINS = {"recall": lambda r: np.ones_like(r), "ndcg": lambda r: 1.0 / np.log2(r + 2.0), "mrr": lambda r: 1.0 / (r + 1.0)}


def compute_metrics(
    ranks: np.ndarray,
    ks: Iterable[int] = (10, 50),
    metrics: Iterable[str] = METRICS,
    ties: np.ndarray | None = None,
    extra: tuple[str, ...] = (),
    n_candidates: int | np.ndarray | None = None,
) -> dict[str, float]:
    """``{"recall@10": ..., "ndcg@10": ..., ...}`` from 0-based pessimistic target ranks.

    With ``ties`` (tied candidates per user), the expectation under random tie-breaking (module doc).
    ``extra`` adds the cut-off-free ``"mrr"`` and ``"auc"`` (module doc); AUC needs ``n_candidates``, an int
    or one count per user.
    """
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise ValueError("no ranks to compute metrics from")
    unknown = sorted(set(extra) - set(EXTRA))
    if unknown:
        raise ValueError(f"unknown extra metric(s) {unknown}; valid: {list(EXTRA)}")
    ties_ = None if ties is None else np.asarray(ties, dtype=np.int64)
    out = {}
    for k in ks:
        for m in metrics:
            if ties_ is None:
                out[f"{m}@{k}"] = _FUNCTIONS[m](ranks, k)
            else:
                out[f"{m}@{k}"] = _expected(ranks - ties_, ties_, k, _GAINS[m])
    if "mrr" in extra:  # a cut-off past the worst rank makes MRR@K the full-list MRR
        past_worst = int(ranks.max()) + 1
        if ties_ is None:
            out["mrr"] = mrr_at_k(ranks, past_worst)
        else:
            out["mrr"] = _expected(ranks - ties_, ties_, past_worst, _GAINS["mrr"])
    if "auc" in extra:
        out["auc"] = auc(ranks, n_candidates, ties_)
    return out


def auc(ranks: np.ndarray, n_candidates: int | np.ndarray | None, ties: np.ndarray | None = None) -> float:
    """Mean over users of the fraction of the other candidates ranked below the target (module doc)."""
    if n_candidates is None:
        raise ValueError("AUC needs n_candidates (the target plus the candidates it was ranked against)")
    ranks = np.asarray(ranks, dtype=np.float64)
    n_others = np.broadcast_to(np.asarray(n_candidates, dtype=np.float64) - 1, ranks.shape)
    if np.any(ranks > n_others) or np.any(ranks < 0):
        raise ValueError("every rank must lie in 0 .. n_candidates - 1")
    # the expected rank under a uniformly random order of the ties is the midpoint of ranks - ties .. ranks
    expected_rank = ranks if ties is None else ranks - np.asarray(ties, dtype=np.float64) / 2
    # no other candidate: nothing is ranked above the target, as Recall@1 would say
    below = np.divide(n_others - expected_rank, n_others, out=np.ones_like(ranks), where=n_others > 0)
    return float(np.mean(below))
