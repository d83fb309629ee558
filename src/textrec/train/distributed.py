"""Data-parallel training across processes: PyTorch DistributedDataParallel, launched by ``torchrun``.

``torchrun --nproc-per-node N -m textrec train DIR --model M --out RUN`` (and ``pretrain``, ``finetune``; several
machines with ``--nnodes``, ``--node-rank`` and ``--rdzv-endpoint``, or ``--master-addr``/``--master-port``)
starts N processes that join one process group by torchrun's environment variables (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): gloo on CPU, NCCL on CUDA (each process on GPU
``LOCAL_RANK``). Nothing here launches processes. Without those variables (or with ``WORLD_SIZE=1``)
every function below is the single-process behaviour.

What the loop (``textrec.train.loop``) does with it, and why the result is the single-process one:

* every rank builds the same batches from the same seeded generator (the *global* batch of
  ``train.batch_size`` targets; the learning rate and schedule are those of one process) and takes its
  contiguous slice of the batch's rows (``shard``);
* the models have no ``forward``: ``wrap`` puts the phase's loss in ``PhaseLoss``, a module whose
  ``forward(batch)`` is that loss, and wraps it in DDP, which averages gradients over ranks. It is rebuilt
  at each phase entry with the optimiser, since phases change which parameters train. The losses express
  their means over the global batch with ``textrec.collective`` (``global_mean``, ``gather_with_grad`` for
  in-batch negatives), so the averaged gradient is the single-process gradient over the global batch;
* epoch hooks that rebuild catalogue state (MISSRec's k-means, Recformer's item table) and a phase's ``enter``
  (VQ-Rec baking its permutation) run on every rank, then whatever they changed is broadcast from rank 0
  (``sync_changed``), so all ranks hold rank 0's result;
* validation ranks each example against the whole catalogue, exactly as in one process, with the
  examples' batches split over ranks and the ranks summed (``evaluate``); the early-stopping decision is
  rank 0's, broadcast;
* only rank 0 writes (log, checkpoints, metrics; cleanup of a failed start); ``state.pt`` holds every
  rank's random generator states (``rng_states``), so ``--resume`` with the same number of processes
  continues exactly. Resuming reads the run directory on every rank (a filesystem the nodes share).

Dropout masks and augmentation draws come from each rank's own generator (rank 0 keeps the seeded stream
of a single process, rank r > 0 is seeded from (seed, r)), so with dropout or augmentation on, a
distributed run is a different but equally valid random draw of the same training, not the same numbers.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import datetime
import os
import re
import signal
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from textrec.collective import rank, world_size
from textrec.data.batching import EvalBatcher, SeqBatch
from textrec.errors import TextrecError

__all__ = ["PhaseLoss", "barrier", "broadcast_flag", "evaluate", "failures", "is_writer", "launched", "mean_over_ranks",
           "rank", "changed", "rng_states", "seed_rank", "set_rng_states", "setup", "shard", "snapshot", "sync_changed", "world_size",
           "wrap"]


def launched() -> bool:
    """Whether this process was started by torchrun (or another env-variable launcher) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_writer() -> bool:
    """Whether this process writes the run's files (rank 0; the only process when not distributed)."""
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the process group torchrun describes (once); return the device this rank trains on.

    CUDA: GPU ``LOCAL_RANK`` and the NCCL backend; CPU: gloo. SIGTERM (torchrun stopping the other ranks
    when one fails) becomes a KeyboardInterrupt, so the run's cleanup runs and the error is one line.
    """
    if not launched():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        minutes = float(os.environ.get("TEXTREC_DIST_TIMEOUT_MIN", "30"))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://",
                                timeout=datetime.timedelta(minutes=minutes))
        atexit.register(_destroy)
        signal.signal(signal.SIGTERM, _interrupt)
    return device


def _interrupt(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the cleanup and the one-line message are not cut short
    raise KeyboardInterrupt


def _destroy() -> None:
    if dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


_PEER_FAILURE = ("gloo", "NCCL", "Connection reset", "Connection closed", "c10d")  # a collective failed: a rank is gone


@contextlib.contextmanager
def failures() -> Iterator[None]:
    """A collective that fails (another rank died or was stopped) -> one line ``TextrecError``."""
    try:
        yield
    except (dist.DistError, RuntimeError) as e:
        if world_size() == 1 or not (isinstance(e, dist.DistError) or any(w in str(e) for w in _PEER_FAILURE)):
            raise
        if launched():
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # torchrun stops the survivors: let this one clean up and say why
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        first = re.sub(r"^\[[^\]]*\]\s*", "", first).split(". ")[0]  # gloo: "[file.cc:537] Read error ...: Connection reset by peer. ..."
        raise TextrecError(f"rank {rank()} of {world_size()}: another process of the distributed run failed or stopped "
                           f"({first[:200]}); continue it with --resume") from None


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def seed_rank(seed: int) -> None:
    """Rank r > 0 draws its dropout and augmentation from its own stream; rank 0 keeps the single-process one."""
    if rank() > 0:
        torch.manual_seed(int(np.random.SeedSequence([seed, rank()]).generate_state(1)[0]))


# ---- training ------------------------------------------------------------------------------------


class PhaseLoss(nn.Module):
    """The module DDP wraps: its ``forward(batch)`` is the phase's loss of ``model`` (a bound method or function)."""

    def __init__(self, model: nn.Module, loss: Callable) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, batch):
        return self.loss(batch)


def wrap(model: nn.Module, loss: Callable) -> Callable:
    """The training step's loss function: ``loss`` itself in one process, else DDP over ``PhaseLoss``.

    Built after the phase set ``requires_grad`` (DDP synchronises exactly the parameters that train then).
    Parameters a batch does not reach (a modality absent from it) are allowed; buffers are not broadcast
    on every step (catalogue-sized tables would be); ``sync_changed`` sends what an epoch hook changed.
    """
    if world_size() == 1:
        return loss
    device = next(model.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    with warnings.catch_warnings():  # broadcast_buffers=False: no buffer traffic per step (its successor still syncs at init)
        warnings.simplefilter("ignore", FutureWarning)
        return nn.parallel.DistributedDataParallel(PhaseLoss(model, loss), device_ids=ids, broadcast_buffers=False,
                                                   find_unused_parameters=True)


def shard(batch: SeqBatch) -> SeqBatch:
    """This rank's contiguous slice of a global batch's rows, trimmed to its own longest row."""
    W = world_size()
    if W == 1:
        return batch
    n = batch.item_seq.shape[0]
    lo, hi = rank() * n // W, (rank() + 1) * n // W
    fields = {k: (None if v is None else v[lo:hi]) for k, v in batch._asdict().items()}
    if hi > lo:
        width = int(fields["seq_len"].max())
        fields["item_seq"] = fields["item_seq"][:, :width]
        if fields["targets"] is not None:
            fields["targets"] = fields["targets"][:, :width]
    return SeqBatch(**fields)


def mean_over_ranks(value: float, device: torch.device) -> float:
    """The mean of a number over ranks (each rank's loss is its share of the global mean: this is the global loss)."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / world_size()


def _tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [*model.named_parameters(), *model.named_buffers()]


def snapshot(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Which tensor object each parameter and buffer is, and its in-place version: what ``sync_changed`` compares."""
    return {name: (id(t), t._version) for name, t in _tensors(model)}


def changed(model: nn.Module, before: dict[str, tuple[int, int]]) -> list[str]:
    """Names of the parameters and buffers replaced or written in place since ``snapshot`` gave ``before``."""
    return [name for name, t in _tensors(model) if before.get(name) != (id(t), t._version)]


def sync_changed(model: nn.Module, before: dict[str, tuple[int, int]]) -> None:
    """The parameters and buffers changed since ``before`` (replaced or written in place) as rank 0 holds them.

    After an epoch hook or a phase's ``enter`` that ran on every rank: k-means seeded from each rank's own
    generator, a noisy permutation sample, may differ per rank; every rank continues with rank 0's result.
    Unchanged catalogue tables (text embeddings, feature tables) are not sent.
    """
    if world_size() == 1:
        return
    names = set(changed(model, before))
    with torch.no_grad():
        for name, t in _tensors(model):
            if name in names:
                dist.broadcast(t.data, 0)


def broadcast_flag(value: bool, device: torch.device) -> bool:
    """Rank 0's ``value`` on every rank."""
    if world_size() == 1:
        return value
    t = torch.tensor([int(value)], device=device)
    dist.broadcast(t, 0)
    return bool(t)


def rng_states(device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Every rank's torch (and CUDA) generator state, in rank order, on every rank."""
    own = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        own["cuda"] = torch.cuda.get_rng_state(device)
    if world_size() == 1:
        return [own]
    out: list = [None] * world_size()
    dist.all_gather_object(out, own)
    return out


def set_rng_states(states: list[dict[str, torch.Tensor]], device: torch.device) -> None:
    """Restore this rank's generators from ``rng_states``' list; refuse another number of processes."""
    if len(states) != world_size():
        raise TextrecError(f"state.pt was written by a run of {len(states)} process(es); resume it with as many "
                           f"(this run has {world_size()})")
    own = states[rank()]
    torch.set_rng_state(own["torch"].cpu())
    if device.type == "cuda" and "cuda" in own:
        torch.cuda.set_rng_state(own["cuda"].cpu(), device)


# ---- evaluation ----------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model, batcher: EvalBatcher, ks, mask_history: bool, item_chunk: int, ties: str = "pessimistic", extra=()):
    """``textrec.eval.ranking.evaluate`` with the batches split over ranks (every W-th batch to one rank): each
    example is ranked against the whole catalogue exactly as in one process; the ranks are summed, the
    metrics computed on every rank from all of them."""
    import time

    from textrec.eval.metrics import compute_metrics
    from textrec.eval.ranking import EvalResult, _history_pairs, rank_targets, unique_items
    from textrec.eval.ranking import evaluate as evaluate_all
    from textrec.models.spec import score

    if world_size() == 1:
        return evaluate_all(model, batcher, ks, mask_history, item_chunk, ties=ties, extra=extra)
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    device = batcher.device
    out = torch.zeros(3, len(batcher.order), dtype=torch.long, device=device)  # ranks, ties, candidates; 0 = another rank's
    with torch.autocast(device.type, enabled=False):
        items = unique_items(model.item_embeddings().float())
        score_fn = functools.partial(score, model)  # the model's declared rule, as ``evaluate_all``
        for i, eb in enumerate(batcher):
            if i % world_size() != rank():
                continue
            exclude = _history_pairs(batcher, eb.rows) if mask_history else None
            r = rank_targets(model.encode(eb.batch).float(), items, eb.targets, item_chunk, exclude, score_fn)
            out[0, eb.rows], out[1, eb.rows], out[2, eb.rows] = r.ahead, r.tied, r.n_candidates
    model.train(was_training)
    dist.all_reduce(out)
    ranks, tied, n_candidates = (a.cpu().numpy() for a in out)
    metrics = compute_metrics(ranks, ks, ties=tied if ties == "random" else None, extra=tuple(extra), n_candidates=n_candidates)
    seconds = torch.tensor([time.perf_counter() - start], dtype=torch.float64, device=device)
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    return EvalResult(metrics, ranks, float(seconds), tied, n_candidates)
