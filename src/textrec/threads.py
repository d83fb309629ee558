"""CPU threads: one bound for torch's and faiss' OpenMP pools, and no spin-waiting on a busy machine.

torch and faiss each keep an OpenMP thread pool (the faiss wheel ships its own OpenMP runtime). Left alone,
each sizes its pool to every core, and GNU OpenMP threads spin at every barrier before they sleep: beside
other work (another job, the other ranks of a torchrun launch) the spinning threads take the cores the working
ones need, and a run slows far beyond its share of the CPU. ``prepare`` therefore, before torch or faiss
is imported (an OpenMP runtime reads its environment once, when it loads):

* sets ``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep at once) unless it is set already;
* sets ``OMP_NUM_THREADS`` to the thread count (``--threads N``, else what it already is, else the cores this
  process may run on divided by the processes torchrun started on this machine), so both pools start
  bounded by the same number;

and ``apply`` sets torch's intra-op and inter-op pools and faiss' pool to that number once torch is loaded.
``textrec`` (the CLI) calls both for every command; a library user may call them before importing torch.
"""

from __future__ import annotations

import os
import sys


def available_cores() -> int:
    """The cores this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when set, else the available cores shared among this machine's torchrun processes."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, available_cores() // max(1, local))


def prepare(threads: int | None = None) -> int:
    """Set the OpenMP environment for ``threads`` (None: ``default_threads()``) before torch or faiss loads; return it.

    Where torch is already imported, its pool is set instead (``apply``); the wait policy then stays as loaded.
    """
    n = threads if threads and threads > 0 else default_threads()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ.setdefault("MKL_NUM_THREADS", str(n))
    if "torch" in sys.modules:
        apply(n)
    return n


def apply(n: int) -> None:
    """torch's intra-op and inter-op pools and (if loaded) faiss' pool at ``n`` threads."""
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # only settable before the first inter-op work; the default then stays
        pass
    faiss = sys.modules.get("faiss")
    if faiss is not None:
        faiss.omp_set_num_threads(n)
