"""Top-k recommendations from a trained run, for a known user or an explicit item history.

The history is the user's whole sequence (training, validation and test items: everything known), cut to
the model's ``max_seq_len``. Items already in the history are left out of the recommendations by default
(``exclude_history``), which is what a product wants; evaluation follows the papers' protocol instead
(see ``textrec.eval.ranking``). Equal scores are listed in item-id order, so ``item_ranks`` agrees with
the order of ``recommend`` for every item, whether or not it reaches the top k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from textrec.data.batching import SeqBatch
from textrec.errors import NotFoundError, TextrecError
from textrec.models.spec import score


@dataclass
class Recommendation:
    rank: int
    item_id: int
    item_key: str
    score: float
    text: str

    def to_dict(self) -> dict:
        return {"rank": self.rank, "item": self.item_key, "item_id": self.item_id, "score": self.score, "text": self.text}


def user_history(ds, user_key: str) -> np.ndarray:
    """All item ids of user ``user_key``, oldest first."""
    rows = ds.user_index()
    if user_key not in rows:
        example = ", ".join(ds.user_keys[:3])
        raise NotFoundError(f"unknown user {user_key!r} in dataset {ds.name!r} (users look like: {example}, ...)")
    return ds.sequence(rows[user_key])


def item_ids(ds, item_keys: list[str]) -> np.ndarray:
    """Item ids of original item keys; an unknown key is an error naming it."""
    index = ds.item_index()
    missing = [k for k in item_keys if k not in index]
    if missing:
        example = ", ".join(ds.item_keys[:3])
        raise NotFoundError(f"unknown item {missing[0]!r} in dataset {ds.name!r} (items look like: {example}, ...)")
    return np.array([index[k] for k in item_keys], dtype=np.int64)


@torch.no_grad()
def all_scores(model, history: np.ndarray, max_seq_len: int = 50, exclude_history: bool = True) -> torch.Tensor:
    """(n_items + 1,) float scores of every item after ``history``; padding (and history items) are -inf."""
    if len(history) == 0:
        raise TextrecError("the history is empty: give at least one item")
    device = next(model.parameters()).device
    hist = torch.as_tensor(np.asarray(history, dtype=np.int64)[-max_seq_len:], device=device)
    batch = SeqBatch(hist[None, :], torch.tensor([hist.numel()], device=device))
    model.eval()
    seq_repr = model.encode(batch).float()  # (1, D)
    items = model.item_embeddings().float()
    scores = score(model, seq_repr, items)[0]  # (n_items + 1,)
    scores[0] = float("-inf")
    if exclude_history:
        scores[torch.as_tensor(np.asarray(history, dtype=np.int64), device=device)] = float("-inf")
    return scores


def ranking(scores: torch.Tensor) -> torch.Tensor:
    """Item ids of the finite (candidate) scores, best first; equal scores in id order."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[: int(torch.isfinite(scores).sum())]


def item_ranks(scores: torch.Tensor, ids: np.ndarray) -> list[int | None]:
    """1-based rank of each item id among the candidates, as ``ranking`` orders them; None for a non-candidate."""
    position = torch.full_like(scores, -1, dtype=torch.long)
    order = ranking(scores)
    position[order] = torch.arange(1, len(order) + 1, device=scores.device)
    wanted = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=scores.device)
    return [int(r) if r > 0 else None for r in position[wanted].tolist()]


def top_k(ds, scores: torch.Tensor, k: int = 10) -> list[Recommendation]:
    """The ``k`` best candidates of ``scores`` (from ``all_scores``) with their keys and texts."""
    if k < 1:
        raise TextrecError(f"k must be >= 1, not {k}")
    top = ranking(scores)[:k]
    return [Recommendation(r + 1, i, ds.item_keys[i - 1], s, ds.item_texts[i - 1])
            for r, (i, s) in enumerate(zip(top.tolist(), scores[top].tolist()))]


def recommend(model, ds, history: np.ndarray, k: int = 10, max_seq_len: int = 50, exclude_history: bool = True) -> list[Recommendation]:
    """The ``k`` best items after ``history`` (item ids, oldest first)."""
    if k < 1:
        raise TextrecError(f"k must be >= 1, not {k}")
    return top_k(ds, all_scores(model, history, max_seq_len, exclude_history), k)
