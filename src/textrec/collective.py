"""Collective operations the models' losses call; each is the identity (or the plain reduction) in one process.

Under ``torchrun`` every rank holds a shard of the global batch (``textrec.train.distributed``) and
DistributedDataParallel averages the ranks' gradients. These helpers make a loss computed on a shard give the
gradient of the single-process loss over the global batch:

* ``gather_with_grad(x)``: the concatenation over ranks (in rank order) of a tensor whose first dimension may
  differ per rank. Gradients flow back to every rank's own rows: the backward sums the gradient over ranks and
  returns each rank its slice. A loss computed identically on every rank from gathered tensors (an in-batch
  contrastive loss over the global batch) then receives exactly its single-process gradient after DDP's average.
* ``global_mean(values)``: the mean of per-row values over the global batch, expressed as this rank's share
  (``sum(values) * world / n_global``), so that DDP's average over ranks is the global mean. Use it for a
  loss that is a mean over this rank's rows (a full-softmax cross-entropy) when the shards differ in size;
  ``global_sum(value)`` for a term that sums over this rank's rows (MISSRec's interest regulariser).

Models import this file, never the training code. Nothing here starts a process group: without one (one
process) every helper is the identity or the plain reduction.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    """Processes in the run (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _all_sizes(n: int, device: torch.device) -> list[int]:
    sizes = torch.tensor([n], dtype=torch.long, device=device)
    out = [torch.zeros_like(sizes) for _ in range(world_size())]
    dist.all_gather(out, sizes)
    return [int(s) for s in out]


def _gather_padded(x: Tensor, sizes: list[int]) -> Tensor:
    """all_gather of tensors whose first dimension is ``sizes[rank]``: padded to the largest, then cut."""
    top = max(sizes)
    padded = x.new_zeros((top, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        sizes = _all_sizes(x.shape[0], x.device)
        ctx.sizes, ctx.rank = sizes, rank()
        return _gather_padded(x, sizes)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every rank's loss depends on this rank's rows: their gradients add up
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]]


def gather_with_grad(x: Tensor | None) -> Tensor | None:
    """(n_rank, ...) on each rank -> (sum of n_rank, ...) on every rank, rank order, differentiable (module doc).

    Integer tensors (ids, groups) are gathered without a gradient. None stays None; one process: ``x`` itself.
    """
    if x is None or world_size() == 1:
        return x
    if not (x.is_floating_point() and x.requires_grad):
        return _gather_padded(x, _all_sizes(x.shape[0], x.device))
    return _GatherWithGrad.apply(x)


def global_sum(value: Tensor) -> Tensor:
    """A sum over this rank's rows as this rank's share of the sum over the global batch (DDP averages ranks)."""
    return value * world_size()


def global_mean(values: Tensor) -> Tensor:
    """``values.mean()`` over the global batch, as this rank's share (module doc); one process: the plain mean."""
    if world_size() == 1:
        return values.sum() / max(values.numel(), 1)  # the mean; 0 (on the graph) for no values
    n = torch.tensor([values.numel()], dtype=torch.float64, device=values.device)
    dist.all_reduce(n)
    return values.sum() * (world_size() / n.clamp(min=1).to(values.dtype)).squeeze(0)
