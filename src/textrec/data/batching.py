"""Batches built on the training device from tensors that stay there.

There is no DataLoader: the training rows and evaluation histories are copied to the device once, and a
batch is an index gather plus a trim of the padding columns no row in the batch uses. This is most of the
speed-up over the reference trainers (DESIGN.md, "Performance notes").

``batch_size`` counts **loss positions** (next-item targets), the unit the references batch in: a
RecBole batch of 2048 prefix rows is 2048 (history, target) pairs, and a textrec batch of 2048 holds
about 2048 such pairs spread over whole-sequence windows, so an epoch takes the same number of optimiser
steps. Two ways to group rows:

* ``"bucket"`` (default): rows shuffled, then stably sorted by length, cut into batches and the batches
  shuffled. Rows of a batch have similar lengths, so almost no padding is computed.
* ``"random"``: rows shuffled and cut in that order (every batch a uniform sample), padded to the
  longest row of the batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from textrec.data.split import EvalExamples, TrainWindows

Batching = Literal["bucket", "random"]


class SeqBatch(NamedTuple):
    """Right-padded item sequences; models read only what they need."""

    item_seq: Tensor  # (B, L) long item ids, 0 = padding
    seq_len: Tensor  # (B,) long number of real items per row
    targets: Tensor | None = None  # (B, L) long next item at each position, 0 = no loss (training only)
    domain: Tensor | None = None  # (B,) long source-domain index (multi-domain pre-training only)


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
    ) -> None:
        if len(windows.lengths) == 0:
            from textrec.errors import DataError

            raise DataError("no training instances: every user's training part has fewer than 2 items")
        if batching not in ("bucket", "random"):
            raise ValueError(f"batching must be 'bucket' or 'random', not {batching!r}")
        self.device = torch.device(device)
        self.inputs = torch.as_tensor(windows.inputs, dtype=torch.long, device=self.device)
        self.targets = torch.as_tensor(windows.targets, dtype=torch.long, device=self.device)
        self.lengths = torch.as_tensor(windows.lengths, dtype=torch.long)  # batch planning stays on CPU
        self.n_targets = torch.as_tensor(windows.n_targets, dtype=torch.long)
        self.domains = None if domains is None else torch.as_tensor(domains, dtype=torch.long, device=self.device)
        self.batch_size = batch_size
        self.batching = batching
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def n_rows(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def total_targets(self) -> int:
        return int(self.n_targets.sum())

    def __len__(self) -> int:
        """Batches per epoch (exact for every epoch: boundaries depend only on the order's target counts)."""
        return max(1, -(-self.total_targets // self.batch_size))

    def plan(self) -> list[Tensor]:
        """Row indices of each batch of the next epoch, in the order they will be used."""
        order = torch.randperm(self.n_rows, generator=self.generator)
        if self.batching == "bucket":
            order = order[torch.argsort(self.lengths[order], stable=True)]
        cum = torch.cumsum(self.n_targets[order], 0)
        batch_of_row = torch.div(cum - 1, self.batch_size, rounding_mode="floor")
        sizes = torch.bincount(batch_of_row)
        chunks = [c for c in torch.split(order, sizes.tolist()) if c.numel()]
        shuffle = torch.randperm(len(chunks), generator=self.generator)
        return [chunks[i] for i in shuffle.tolist()]

    def epoch(self) -> Iterator[SeqBatch]:
        for rows in self.plan():
            width = int(self.lengths[rows].max())
            rows_d = rows.to(self.device)
            yield SeqBatch(
                item_seq=self.inputs[rows_d, :width],
                seq_len=self.lengths[rows].to(self.device),
                targets=self.targets[rows_d, :width],
                domain=None if self.domains is None else self.domains[rows_d],
            )


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
