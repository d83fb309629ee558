"""Ranking metrics as pure functions of the target's 0-based rank.

There is exactly one relevant item per user (leave-one-out), so with ``rank`` = number of candidates
ranked above the target:

* Recall@K = 1[rank < K]  (RecBole's HIT@K; equal to Recall@K with one target)
* NDCG@K  = 1[rank < K] / log2(rank + 2)  (the ideal DCG is 1)
* MRR@K   = 1[rank < K] / (rank + 1)

Each metric is the mean over users.
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


def compute_metrics(ranks: np.ndarray, ks: Iterable[int] = (10, 50), metrics: Iterable[str] = METRICS) -> dict[str, float]:
    """``{"recall@10": ..., "ndcg@10": ..., ...}`` from 0-based target ranks."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise ValueError("no ranks to compute metrics from")
    out = {}
    for k in ks:
        for m in metrics:
            out[f"{m}@{k}"] = _FUNCTIONS[m](ranks, k)
    return out
