"""Full-ranking evaluation: every user's target is ranked against the whole catalogue.

Protocol (the references' RecBole ``mode: full``, REFERENCE_NOTES section 0):

* every item is a candidate; only the padding id 0 is excluded;
* history items are **not** masked by default (RecBole's ``FullSortEvalDataLoader`` gives sequential
  models no history index). ``mask_history=True`` removes every item the user interacted with before the
  target from the candidates, except the target itself;
* ties never favour the target: its rank counts every other candidate whose score is greater **or
  equal**, so a model that gives all items the same score ranks every target last. A NaN target score
  also ranks last. ``ties="random"`` reports instead the exact expectation under a uniformly random order
  of the tied candidates, for comparison with papers. RecBole ranks with ``torch.topk``, whose order among
  equal scores is implementation-defined (kernel and device), not uniformly random, so this expectation
  approximates what the papers' numbers correspond to rather than reproducing them; it only differs from
  the pessimistic rank when items share a representation, e.g. VQ-Rec items with identical codes;
* ties are exact: bitwise-identical item vectors are scored once (``unique_items``), because a BLAS
  matmul may round two identical columns differently; and each target's score is read from the very
  (B, chunk) score matrix its comparisons use, never recomputed with another shape. Scores of *distinct*
  vectors still depend on matmul shapes in the last bit, so two of them within about one ulp of each
  other may compare differently under another ``item_chunk`` or eval batch size;
* ranking is always float32: the item table and sequence representations are computed with autocast
  disabled (also inside a caller's autocast, e.g. training's bf16) and cast to float32, so validation
  during training and ``textrec evaluate`` give the same numbers;
* the item table is built once per evaluation, scores are chunked over users (the eval batch) and over
  distinct item vectors (``item_chunk``), so memory stays bounded for large catalogues. With more than
  one chunk, the targets' scores are read in a first pass; its score matrices are kept for the second while a
  batch's scores fit ``KEEP_SCORES`` (512 MB), else the chunks holding targets are scored twice.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from textrec.data.batching import EvalBatcher
from textrec.eval.metrics import EXTRA, compute_metrics
from textrec.models.spec import dot_score, score

TIES = ("pessimistic", "random")
KEEP_SCORES = 2**27  # scores of one eval batch kept between ranking's two passes (4 bytes each)


@dataclass
class EvalResult:
    metrics: dict[str, float]
    ranks: np.ndarray  # (U,) 0-based pessimistic rank of each user's target, in EvalExamples row order
    seconds: float
    ties: np.ndarray | None = None  # (U,) candidates tied exactly with the target (counted in ranks)
    n_candidates: np.ndarray | None = None  # (U,) the target plus the other candidates it was ranked against


class UniqueItems(NamedTuple):
    """Items 1..n with bitwise-identical vectors merged, so that identical items share one score."""

    vectors: Tensor  # (n_unique, D) float32, the distinct rows of item_table[1:]
    inverse: Tensor  # (n_items,) row of ``vectors`` of item id i at index i - 1
    counts: Tensor  # (n_unique,) int32, how many items share each row


class TargetRanks(NamedTuple):
    ahead: Tensor  # (B,) other candidates scoring >= the target: the 0-based pessimistic rank
    tied: Tensor  # (B,) of those, candidates scoring exactly the target's score
    n_candidates: Tensor  # (B,) the target plus the other candidates left after ``exclude``


def unique_items(item_table: Tensor) -> UniqueItems:
    """Merge identical rows of ``item_table`` (n_items + 1, D); the padding row 0 is dropped."""
    vectors, inverse, counts = torch.unique(item_table[1:].float(), dim=0, return_inverse=True, return_counts=True)
    return UniqueItems(vectors, inverse, counts.to(torch.int32))  # int32 keeps the (B, chunk) counts small


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


def _exclusions(exclude: tuple[Tensor, Tensor], targets: Tensor, n_rows: int) -> tuple[Tensor, Tensor]:
    """Distinct (row, item) pairs to remove, without the target and the padding id.

    Distinct, because a history may hold an item twice and each removal is subtracted from the counts.
    """
    rows, items = exclude
    keep = (items != targets[rows]) & (items > 0)
    key = torch.unique(rows[keep] * n_rows + items[keep])  # (P,)
    return key // n_rows, key % n_rows


def rank_targets(
    seq_repr: Tensor,
    items: Tensor | UniqueItems,
    targets: Tensor,
    item_chunk: int = 65536,
    exclude: tuple[Tensor, Tensor] | None = None,
    score_fn=None,
) -> TargetRanks:
    """Pessimistic 0-based rank of each target among items 1..n, its ties and its number of candidates.

    seq_repr (B, D); ``items`` is the item table (n_items + 1, D) or, to merge its duplicates once per
    evaluation, ``unique_items(item_table)``; targets (B,). ``exclude`` = (row, item) pairs removed from the
    candidates (never the target). ``score_fn(seq_repr, item_rows)`` overrides the inner product (``evaluate`` passes
    the model's rule, ``textrec.models.spec.score``); it must return (B, len(item_rows)) scores, each row scored on its own.
    """
    items = items if isinstance(items, UniqueItems) else unique_items(items)
    score_rows = score_fn or functools.partial(dot_score, None)
    seq_repr = seq_repr.float()
    device, n_batch, n_unique = seq_repr.device, seq_repr.shape[0], items.vectors.shape[0]
    n_items = items.inverse.shape[0]
    b = torch.arange(n_batch, device=device)
    target_u = items.inverse[targets - 1]  # (B,) row of each target in items.vectors
    cache: dict[int, Tensor] = {}
    # the first pass's score matrices are kept for the second while they hold at most KEEP_SCORES scores in all
    # (a batch of 256 users against 500k items: 512 MB); beyond that only the last one is, and the rest are scored again
    keep_all = n_batch * n_unique <= KEEP_SCORES

    def chunk_scores(lo: int) -> Tensor:
        if lo not in cache:
            if not keep_all:
                cache.clear()
            cache[lo] = score_rows(seq_repr, items.vectors[lo : lo + item_chunk]).float()  # (B, chunk)
        return cache[lo]

    # first pass: every target's score, read from the full-batch matrix of its chunk, i.e. the very
    # values the second pass compares against (a matmul over a subset of rows may round differently)
    target_score = torch.empty(n_batch, dtype=torch.float32, device=device)
    for c in torch.unique(target_u // item_chunk).tolist():
        sel = target_u // item_chunk == c
        target_score[sel] = chunk_scores(c * item_chunk)[b[sel], target_u[sel] - c * item_chunk]
    ex_rows, ex_items = (b[:0], b[:0]) if exclude is None else _exclusions(exclude, targets, n_items + 1)
    ex_u = items.inverse[ex_items - 1]  # (P,) rows of the excluded items in items.vectors
    ahead = torch.zeros(n_batch, dtype=torch.long, device=device)
    tied = torch.zeros_like(ahead)
    for lo in reversed(range(0, n_unique, item_chunk)):
        s, t = chunk_scores(lo), target_score[:, None]  # (B, chunk), (B, 1)
        counts = items.counts[lo : lo + item_chunk]  # (chunk,) items behind each score
        if bool((counts == 1).all()):  # no merged duplicates here: count the comparisons (half the time of weighing them)
            ahead += (s >= t).sum(dim=1)
            tied += (s == t).sum(dim=1)
        else:
            ahead += torch.where(s >= t, counts, 0).sum(dim=1)
            tied += torch.where(s == t, counts, 0).sum(dim=1)
        sel = (ex_u >= lo) & (ex_u < lo + item_chunk)
        rows, ex_s = ex_rows[sel], s[ex_rows[sel], ex_u[sel] - lo]  # (p,) the excluded pairs in this chunk
        ahead.index_add_(0, rows, -(ex_s >= target_score[rows]).long())
        tied.index_add_(0, rows, -(ex_s == target_score[rows]).long())
    ahead, tied = ahead - 1, tied - 1  # the target itself, counted above with its own score
    n_candidates = n_items - torch.bincount(ex_rows, minlength=n_batch)  # (B,)
    nan = torch.isnan(target_score)
    ahead[nan], tied[nan] = n_candidates[nan] - 1, 0  # a NaN target ranks last
    return TargetRanks(ahead, tied, n_candidates)


def count_ranks(
    seq_repr: Tensor,
    item_table: Tensor | UniqueItems,
    targets: Tensor,
    item_chunk: int = 65536,
    exclude: tuple[Tensor, Tensor] | None = None,
    score_fn=None,
    return_ties: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """``rank_targets``' ranks, or (ranks, ties) with ``return_ties``: the older interface."""
    r = rank_targets(seq_repr, item_table, targets, item_chunk, exclude, score_fn)
    return (r.ahead, r.tied) if return_ties else r.ahead


@torch.no_grad()
def evaluate(
    model,
    batcher: EvalBatcher,
    ks: tuple[int, ...] = (10, 50),
    mask_history: bool = False,
    item_chunk: int = 65536,
    ties: str = "pessimistic",
    extra: tuple[str, ...] = (),
) -> EvalResult:
    """Rank every example's target with ``model`` (the textrec model surface) and compute metrics.

    Always in float32, whatever autocast the caller has active (module doc). ``extra`` adds the
    cut-off-free ``"mrr"`` and ``"auc"`` (``textrec.eval.metrics``).
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {list(TIES)}, not {ties!r}")
    if set(extra) - set(EXTRA):  # fail before the ranking work, not after it
        raise ValueError(f"unknown extra metric(s) {sorted(set(extra) - set(EXTRA))}; valid: {list(EXTRA)}")
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    device = batcher.device
    ranks = torch.empty(len(batcher.order), dtype=torch.long, device=device)
    tied, n_candidates = torch.empty_like(ranks), torch.empty_like(ranks)
    # autocast off, not merely not requested: a caller's bf16 autocast would otherwise reach the model
    # and the score matmuls, and validation would disagree with ``textrec evaluate``
    with torch.autocast(device.type, enabled=False):
        items = unique_items(model.item_embeddings().float())  # from (n_items + 1, D), built once
        score_fn = functools.partial(score, model)
        for eb in batcher:
            seq_repr = model.encode(eb.batch).float()  # (B, D)
            exclude = _history_pairs(batcher, eb.rows) if mask_history else None
            r = rank_targets(seq_repr, items, eb.targets, item_chunk, exclude, score_fn)
            ranks[eb.rows], tied[eb.rows], n_candidates[eb.rows] = r.ahead, r.tied, r.n_candidates
    model.train(was_training)
    ranks_np, tied_np, n_candidates_np = ranks.cpu().numpy(), tied.cpu().numpy(), n_candidates.cpu().numpy()
    tie_counts = tied_np if ties == "random" else None
    metrics = compute_metrics(ranks_np, ks, ties=tie_counts, extra=tuple(extra), n_candidates=n_candidates_np)
    return EvalResult(metrics, ranks_np, time.perf_counter() - start, tied_np, n_candidates_np)
