"""Ranking metrics as pure functions of the target's 0-based rank.

There is exactly one relevant item per user (leave-one-out), so with ``rank`` = number of candidates
ranked above the target:

* Recall@K = 1[rank < K]  (RecBole's HIT@K; equal to Recall@K with one target)
* NDCG@K  = 1[rank < K] / log2(rank + 2)  (the ideal DCG is 1)
* MRR@K   = 1[rank < K] / (rank + 1)

Each metric is the mean over users.

Ties. ``ranks`` are pessimistic (every candidate scoring at least as high as the target counts). With
``ties`` (the number of *other* candidates scoring exactly the target's score) the metrics are instead the
exact expectation under a uniformly random order of the tied items: the rank is uniform on
``ranks - ties .. ranks``. That is what a top-k routine with arbitrary tie order gives on average (RecBole
uses ``torch.topk``), and it matters for models whose items can share a representation (VQ-Rec items with
identical codes).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

METRICS = ("recall", "ndcg", "mrr")


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
    ranks: np.ndarray, ks: Iterable[int] = (10, 50), metrics: Iterable[str] = METRICS, ties: np.ndarray | None = None
) -> dict[str, float]:
    """``{"recall@10": ..., "ndcg@10": ..., ...}`` from 0-based pessimistic target ranks.

    With ``ties`` (tied candidates per user), the expectation under random tie-breaking (module doc).
    """
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise ValueError("no ranks to compute metrics from")
    out = {}
    for k in ks:
        for m in metrics:
            if ties is None:
                out[f"{m}@{k}"] = _FUNCTIONS[m](ranks, k)
            else:
                ties_ = np.asarray(ties, dtype=np.int64)
                out[f"{m}@{k}"] = _expected(ranks - ties_, ties_, k, _GAINS[m])
    return out
