"""Batches built on the training device from tensors that stay there.

There is no DataLoader: the training rows and evaluation histories are copied to the device once, and a
batch is an index gather plus a trim of the padding columns no row in the batch uses. This is most of the
speed-up over the reference trainers (DESIGN.md, "Performance notes").

``batch_size`` counts **loss positions** (next-item targets), the unit the references batch in: a
RecBole batch of 2048 prefix rows is 2048 (history, target) pairs, and a textrec batch of 2048 holds
about 2048 such pairs spread over whole-sequence windows, so an epoch takes the same number of optimiser
steps. Ways to group rows:

* ``"bucket"`` (training default): rows shuffled, then stably sorted by length, cut into batches and the
  batches shuffled. Rows of a batch have similar lengths, so almost no padding is computed.
* ``"random"``: rows shuffled and cut in that order (every batch a uniform sample), padded to the
  longest row of the batch.
* ``"stratified"`` (pre-training default): within each source domain rows are shuffled, stably sorted by
  length and cut into as many consecutive slices as the epoch has batches; batch b joins slice b of every
  domain. Every batch therefore holds each domain in proportion to its share of the targets (the
  references' "mixed-domain negatives": their shuffled rows give this on average), rows of similar length
  within each domain (little padding), and, with one row per prefix, targets from many users.

``targets_per_row`` > 0 keeps at most that many loss positions of each row, drawn anew every epoch
(pre-training on whole-sequence windows: a batch of ``batch_size`` targets then spans at least
``batch_size / targets_per_row`` users, while each window is still encoded once for all its targets).

``sample_per_user`` keeps one randomly drawn row per user each epoch (models whose ``SPEC.training_rows`` is
``"sampled"``, e.g. one random target position per user per epoch as Recformer's fine-tuning does). Which
of a user's prefix rows the draw may pick is the cut rule (``SampledCut``, ``cut_mask``): ``"any"`` prefix,
or ``"reference"``, Recformer's pre-training pairs: the target position t of a training part of n items is
drawn from U[(n - 1) // 2, n - 1] (``collator.py`` ``sample_pairs``: ``randint((n - 1) // 2, n - 1)``), so the
history is at least about half the sequence. textrec's rows always hold at least one history item, so t >= 1
(the reference also draws t = 0, an empty history, when n <= 2). A model declares its rule with
``SPEC.sampled_cut(cfg, pretraining)``; ``textrec.train.run.make_batchers`` keeps only the rows it allows.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from textrec.data.split import EvalExamples, TrainWindows

Batching = Literal["bucket", "random", "stratified"]
SampledCut = Literal["any", "reference"]


def prefix_positions(windows: TrainWindows, max_seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(t, n) of every row of ``split.prefix_rows``: its target's position t >= 1 in the user's training part
    of n items. Rows of one user are consecutive with t = 1, 2, ..., n - 1 (checked against their lengths)."""
    users = np.asarray(windows.users)
    if users.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    first = np.ones(users.size, dtype=bool)
    first[1:] = users[1:] != users[:-1]
    starts = np.flatnonzero(first)
    counts = np.diff(np.append(starts, users.size))
    t = np.arange(users.size) - np.repeat(starts, counts) + 1
    if not np.array_equal(np.minimum(t, max_seq_len), windows.lengths):
        raise ValueError("prefix_positions needs prefix_rows' rows: each user's rows consecutive, one per prefix in order")
    return t, np.repeat(counts + 1, counts)


def cut_mask(windows: TrainWindows, max_seq_len: int, cut: SampledCut) -> np.ndarray:
    """(R,) bool: the prefix rows the per-user draw may pick under ``cut`` (module doc)."""
    if cut == "any":
        return np.ones(len(windows.lengths), dtype=bool)
    if cut != "reference":
        raise ValueError(f"cut must be 'any' or 'reference', not {cut!r}")
    t, n = prefix_positions(windows, max_seq_len)
    return t >= np.maximum(1, (n - 1) // 2)  # the last row (t = n - 1) always qualifies: every user keeps a row


def keep_rows(windows: TrainWindows, mask: np.ndarray) -> TrainWindows:
    """The rows of ``windows`` where ``mask`` is True."""
    return TrainWindows(windows.inputs[mask], windows.targets[mask], windows.lengths[mask], windows.users[mask])


class SeqBatch(NamedTuple):
    """Right-padded item sequences; models read only what they need."""

    item_seq: Tensor  # (B, L) long item ids, 0 = padding
    seq_len: Tensor  # (B,) long number of real items per row
    targets: Tensor | None = None  # (B, L) long next item at each position, 0 = no loss (training only)
    domain: Tensor | None = None  # (B,) long source-domain index (multi-domain pre-training only)
    users: Tensor | None = None  # (B,) long user row of each sequence (training: rows of one user are not negatives)


class EvalBatch(NamedTuple):
    batch: SeqBatch  # histories
    targets: Tensor  # (B,) long target item per row
    rows: Tensor  # (B,) long rows of the EvalExamples these come from


class TrainBatcher:
    """Yields the batches of one epoch; its random state is a ``torch.Generator`` that checkpoints save."""

    def __init__(
        self,
        windows: TrainWindows,
        batch_size: int,
        device: torch.device | str = "cpu",
        batching: Batching = "bucket",
        seed: int = 0,
        domains: np.ndarray | None = None,
        sample_per_user: bool = False,
        targets_per_row: int = 0,
    ) -> None:
        if len(windows.lengths) == 0:
            from textrec.errors import DataError

            raise DataError("no training instances: every user's training part has fewer than 2 items")
        if batching not in ("bucket", "random", "stratified"):
            raise ValueError(f"batching must be 'bucket', 'random' or 'stratified', not {batching!r}")
        self.device = torch.device(device)
        # int32 on the device (half the memory of a million windows); each batch is widened to long
        self.inputs = torch.as_tensor(windows.inputs, dtype=torch.int32, device=self.device)
        self.targets = torch.as_tensor(windows.targets, dtype=torch.int32, device=self.device)
        self.lengths = torch.as_tensor(windows.lengths, dtype=torch.long)  # batch planning stays on CPU
        self.sizes = self.lengths  # what "bucket" sorts rows by (``bucket_by``: e.g. a text model's tokens per row)
        self.n_targets = torch.as_tensor(windows.n_targets, dtype=torch.long)
        self.targets_per_row = targets_per_row
        if targets_per_row > 0:  # batch planning counts the targets each row will keep
            self.n_targets = self.n_targets.clamp(max=targets_per_row)
        self.domains = None if domains is None else torch.as_tensor(domains, dtype=torch.long, device=self.device)
        self.row_domains = torch.zeros(len(windows.lengths), dtype=torch.long) if domains is None else torch.as_tensor(domains, dtype=torch.long)
        self.users_cpu = torch.as_tensor(windows.users, dtype=torch.long)
        self.users = self.users_cpu.to(self.device)
        self.batch_size = batch_size
        self.batching = batching
        self.sample_per_user = sample_per_user
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def n_rows(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def total_targets(self) -> int:
        """Next-item targets per epoch."""
        if self.sample_per_user:  # one row per user, each with its targets: rows here are one-target prefix rows
            return int(torch.unique(self.users_cpu).numel())
        return int(self.n_targets.sum())

    def __len__(self) -> int:
        """Batches per epoch (exact for bucket/random: boundaries depend only on the order's target counts)."""
        return max(1, -(-self.total_targets // self.batch_size))

    def bucket_by(self, sizes: Tensor) -> None:
        """Bucket rows by ``sizes`` (one number per row, e.g. the tokens a text model reads) instead of items."""
        if sizes.shape != self.lengths.shape:
            raise ValueError(f"bucket_by needs one size per training row ({self.n_rows}), not shape {tuple(sizes.shape)}")
        self.sizes = sizes.detach().to("cpu", torch.long)

    def _sampled_rows(self) -> Tensor:
        """One row per user, drawn uniformly among that user's rows, in random order."""
        perm = torch.randperm(self.n_rows, generator=self.generator)
        by_user = perm[torch.argsort(self.users_cpu[perm], stable=True)]  # users grouped, random order inside
        u = self.users_cpu[by_user]
        first = torch.ones_like(u, dtype=torch.bool)
        first[1:] = u[1:] != u[:-1]
        chosen = by_user[first]
        return chosen[torch.randperm(chosen.numel(), generator=self.generator)]

    def _stratified(self, order: Tensor) -> list[Tensor]:
        """Batch b = the b-th length slice of every domain (see module doc)."""
        n_batches = max(1, -(-int(self.n_targets[order].sum()) // self.batch_size))
        parts: list[list[Tensor]] = [[] for _ in range(n_batches)]
        for d in torch.unique(self.row_domains[order]).tolist():
            rows = order[self.row_domains[order] == d]
            rows = rows[torch.argsort(self.lengths[rows], stable=True)]
            cum = torch.cumsum(self.n_targets[rows], 0)
            slice_of_row = torch.div((cum - 1) * n_batches, cum[-1], rounding_mode="floor")
            counts = torch.bincount(slice_of_row, minlength=n_batches)
            for b, c in enumerate(torch.split(rows, counts.tolist())):
                if c.numel():
                    parts[b].append(c)
        return [torch.cat(p) for p in parts if p]

    def plan(self) -> list[Tensor]:
        """Row indices of each batch of the next epoch, in the order they will be used."""
        if self.sample_per_user:
            order = self._sampled_rows()
        else:
            order = torch.randperm(self.n_rows, generator=self.generator)
        if self.batching == "stratified":
            chunks = self._stratified(order)
        else:
            if self.batching == "bucket":
                order = order[torch.argsort(self.sizes[order], stable=True)]
            cum = torch.cumsum(self.n_targets[order], 0)
            batch_of_row = torch.div(cum - 1, self.batch_size, rounding_mode="floor")
            sizes = torch.bincount(batch_of_row)
            chunks = [c for c in torch.split(order, sizes.tolist()) if c.numel()]
        shuffle = torch.randperm(len(chunks), generator=self.generator)
        return [chunks[i] for i in shuffle.tolist()]

    def batch(self, rows: Tensor) -> SeqBatch:
        """The batch of training rows ``rows`` (CPU indices), trimmed to its longest row."""
        width = max(1, int(self.lengths[rows].max()))  # rows with an empty history keep their target in column 0
        rows_d = rows.to(self.device)
        targets = self.targets[rows_d, :width].long()
        if self.targets_per_row > 0 and width > self.targets_per_row:
            targets = self._subsample(targets)
        return SeqBatch(
            item_seq=self.inputs[rows_d, :width].long(),
            seq_len=self.lengths[rows].to(self.device),
            targets=targets,
            domain=None if self.domains is None else self.domains[rows_d],
            users=self.users[rows_d],
        )

    def _subsample(self, targets: Tensor) -> Tensor:
        """Keep ``targets_per_row`` uniformly drawn loss positions of each row (all of a row with fewer)."""
        noise = torch.rand(targets.shape, generator=self.generator).to(targets.device)  # (B, W)
        score = torch.where(targets > 0, noise, -1.0)
        kth = score.topk(self.targets_per_row, dim=1).values[:, -1:]  # (B, 1) the k-th largest per row
        return torch.where((score >= kth) & (targets > 0), targets, 0)

    def epoch(self) -> Iterator[SeqBatch]:
        for rows in self.plan():
            yield self.batch(rows)


class EvalBatcher:
    """Evaluation histories on the device, batched in order of length so padding is trimmed."""

    def __init__(self, examples: EvalExamples, batch_size: int = 256, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.examples = examples
        self.histories = torch.as_tensor(examples.histories, dtype=torch.long, device=self.device)
        self.lengths = torch.as_tensor(examples.lengths, dtype=torch.long, device=self.device)
        self.targets = torch.as_tensor(examples.targets, dtype=torch.long, device=self.device)
        self.order = torch.argsort(torch.as_tensor(examples.lengths), stable=True)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)

    def __iter__(self) -> Iterator[EvalBatch]:
        for rows in torch.split(self.order, self.batch_size):
            rows_d = rows.to(self.device)
            lengths = self.lengths[rows_d]
            width = int(self.examples.lengths[rows.numpy()].max())
            yield EvalBatch(SeqBatch(self.histories[rows_d, :width], lengths), self.targets[rows_d], rows_d)
