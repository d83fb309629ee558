"""Full-ranking evaluation: every user's target is ranked against the whole catalogue.

Protocol (the references' RecBole ``mode: full``, REFERENCE_NOTES section 0):

* every item is a candidate; only the padding id 0 is excluded;
* history items are **not** masked by default (RecBole's ``FullSortEvalDataLoader`` gives sequential
  models no history index). ``mask_history=True`` removes every item the user interacted with before the
  target from the candidates, except the target itself;
* ties never favour the target: its rank counts every other candidate whose score is greater **or
  equal**, so a model that gives all items the same score ranks every target last. A NaN target score
  also ranks last. ``ties="random"`` reports instead the exact expectation under a random order of the
  tied candidates (what ``torch.topk`` in RecBole gives on average), for comparison with papers; it only
  differs when items share a representation, e.g. VQ-Rec items with identical codes;
* scores are computed in float32 against the item table built once per evaluation, chunked over users
  (the eval batch) and over items (``item_chunk``), so memory stays bounded for large catalogues.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from textrec.data.batching import EvalBatcher
from textrec.eval.metrics import compute_metrics


@dataclass
class EvalResult:
    metrics: dict[str, float]
    ranks: np.ndarray  # (U,) 0-based pessimistic rank of each user's target, in EvalExamples row order
    seconds: float
    ties: np.ndarray | None = None  # (U,) candidates tied exactly with the target (counted in ranks)


def _history_pairs(batcher: EvalBatcher, rows: Tensor) -> tuple[Tensor, Tensor]:
    """(row-in-batch, item) pairs of every pre-target item of the users in ``rows``."""
    ex = batcher.examples
    rows_np = rows.cpu().numpy()
    starts, ends = ex.full_offsets[rows_np], ex.full_offsets[rows_np + 1]
    counts = ends - starts
    which = np.repeat(np.arange(len(rows_np)), counts)
    pos = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(starts, counts)
    device = rows.device
    return torch.as_tensor(which, device=device), torch.as_tensor(ex.full_items[pos].astype(np.int64), device=device)


def count_ranks(
    seq_repr: Tensor,
    item_table: Tensor,
    targets: Tensor,
    item_chunk: int = 65536,
    exclude: tuple[Tensor, Tensor] | None = None,
    score_fn=None,
    return_ties: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """0-based rank of each target among items 1..n (pessimistic on ties).

    seq_repr (B, D), item_table (n_items + 1, D), targets (B,). ``exclude`` = (row, item) pairs removed
    from the candidates (never the target). ``score_fn(seq_repr, item_rows)`` overrides the inner product
    for models whose score is not one; it must return (B, len(item_rows)) scores. With ``return_ties``
    also returns how many of the counted candidates tie exactly with the target.
    """
    score = score_fn or (lambda s, items: s @ items.T)
    seq_repr = seq_repr.float()
    n_rows = item_table.shape[0]
    b = torch.arange(seq_repr.shape[0], device=seq_repr.device)
    chunks = [(lo, min(lo + item_chunk, n_rows)) for lo in range(1, n_rows, item_chunk)]
    cached = None
    if len(chunks) == 1:  # the common case: one pass, target scores read from the same matrix
        cached = score(seq_repr, item_table[1:].float())  # (B, n_items)
        target_score = cached[b, targets - 1]
    else:  # target scores first, through the same scoring function so that ties are exact
        target_score = torch.empty(seq_repr.shape[0], device=seq_repr.device)
        for lo, hi in chunks:
            sel = (targets >= lo) & (targets < hi)
            if sel.any():
                s = score(seq_repr[sel], item_table[lo:hi].float())
                target_score[sel] = s[torch.arange(s.shape[0], device=s.device), targets[sel] - lo]
    ahead = torch.zeros(seq_repr.shape[0], dtype=torch.long, device=seq_repr.device)
    tied = torch.zeros_like(ahead)
    for lo, hi in chunks:
        s = cached if cached is not None else score(seq_repr, item_table[lo:hi].float())  # (B, chunk)
        not_below = s >= target_score[:, None]
        sel = (targets >= lo) & (targets < hi)
        not_below[b[sel], targets[sel] - lo] = False  # the target itself
        if exclude is not None:
            rows, items = exclude
            drop = (items >= lo) & (items < hi) & (items != targets[rows])
            not_below[rows[drop], items[drop] - lo] = False
        ahead += not_below.sum(dim=1)
        tied += (not_below & (s == target_score[:, None])).sum(dim=1)
    nan = torch.isnan(target_score)
    ahead[nan], tied[nan] = n_rows - 2, 0  # a NaN target ranks last
    return (ahead, tied) if return_ties else ahead


@torch.no_grad()
def evaluate(
    model,
    batcher: EvalBatcher,
    ks: tuple[int, ...] = (10, 50),
    mask_history: bool = False,
    item_chunk: int = 65536,
    autocast_dtype: torch.dtype | None = None,
    ties: str = "pessimistic",
) -> EvalResult:
    """Rank every example's target with ``model`` (the textrec model surface) and compute metrics."""
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    device = batcher.device
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        item_table = model.item_embeddings()  # (n_items + 1, D), built once
    score_fn = getattr(model, "score_items", None)
    if ties not in ("pessimistic", "random"):
        raise ValueError(f"ties must be 'pessimistic' or 'random', not {ties!r}")
    ranks = torch.empty(len(batcher.order), dtype=torch.long, device=device)
    tied = torch.empty_like(ranks)
    for eb in batcher:
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            seq_repr = model.encode(eb.batch)  # (B, D)
        exclude = _history_pairs(batcher, eb.rows) if mask_history else None
        ranks[eb.rows], tied[eb.rows] = count_ranks(seq_repr, item_table, eb.targets, item_chunk, exclude, score_fn, return_ties=True)
    model.train(was_training)
    ranks_np, tied_np = ranks.cpu().numpy(), tied.cpu().numpy()
    metrics = compute_metrics(ranks_np, ks, ties=tied_np if ties == "random" else None)
    return EvalResult(metrics, ranks_np, time.perf_counter() - start, tied_np)
