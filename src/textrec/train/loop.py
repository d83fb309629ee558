"""The one training loop: epochs of next-item training, validation, early stopping, checkpoints, resume.

Every model trains through ``fit``, phase after phase as the model declares them (``textrec.models.spec.Phase``):
Adam/AdamW on the parameters that require gradients (AdamW without decay on biases and LayerNorm weights),
an optional learning-rate schedule (linear warm-up, linear decay), gradient accumulation and clipping,
bf16 autocast on CUDA, optional ``torch.compile``. After each ``eval_every`` epochs the validation split is
ranked against the whole catalogue (always in float32), the best model (by ``eval.select_metric``) is written
to ``model.safetensors``; a phase ends after its fixed number of epochs or after ``patience`` evaluations
without improvement (counted from the phase's start; ``max_epochs`` may cap such a phase), and the run ends
with its last phase or at ``train.epochs``. The best weights are restored and the test split is evaluated once.

Under ``torchrun`` the same loop runs in every process (``textrec.train.distributed``): each rank trains on its
slice of every global batch through DDP, validation is split over the ranks, and only rank 0 writes.

A run directory holds::

    config.json        the resolved config (written by the caller, see ``textrec.train.run``)
    model.safetensors  best weights so far
    state.pt           training state after the last finished epoch (model, optimiser, random
                       generators, early-stopping counters); ``resume=True`` continues from it and
                       reaches the same result as an uninterrupted run
    log.jsonl          one JSON object per epoch (on resume, trimmed to the restored epoch), with what the
                       phase's ``on_epoch_start`` hook reported for that epoch (e.g. MISSRec's
                       ``cluster_seconds``)
    metrics.json       best epoch, validation and test metrics, timings, the mean over epochs of each number
                       the epoch hooks reported (``epoch_hook_means``) (written at the end)
    checksums.json     sha256 of model.safetensors and state.pt, updated as each is written

``state.pt`` holds only tensors and plain values and is read with ``torch.load(weights_only=True)``, so
loading it never unpickles arbitrary objects. ``load_weights`` and ``--resume`` refuse a checkpoint whose
sha256 differs from the recorded one (flipped bits, a truncated copy, an edit) and turn an unreadable
file or one of other sizes than the config's into one line; runs written before checksums were kept load
unverified.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import pickle
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_model
from tqdm.auto import tqdm

from textrec.config import RunConfig, TrainConfig
from textrec.data.batching import EvalBatcher, TrainBatcher
from textrec.errors import CheckpointError, TextrecError
from textrec.io import atomic_path, checksummed_path, storage_failure, write_json
from textrec.log import ProgressLines, show_progress
from textrec.models.spec import Phase
from textrec.runs import _first_problem, load_weights, verify_checkpoint  # noqa: F401 (re-exported)
from textrec.runs import resolve_device as _resolve_device
from textrec.train import distributed

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    best_epoch: int  # 1-based epoch whose weights were kept
    epochs_run: int
    valid: dict[str, float]
    test: dict[str, float] | None
    train_seconds: list[float] = field(default_factory=list)  # per epoch, the epoch hook included
    epoch_hooks: list[dict] = field(default_factory=list)  # per epoch: what the phase's on_epoch_start returned ({}: nothing)
    eval_seconds: list[float] = field(default_factory=list)  # per validation pass
    test_eval_seconds: float = 0.0
    peak_memory_mb: float | None = None
    processes: int = 1  # data-parallel processes (torchrun), see textrec.train.distributed

    def hook_means(self) -> dict[str, float]:
        """Mean of every number the epoch hooks reported, over the epochs that reported it."""
        values: dict[str, list[float]] = {}
        for report in self.epoch_hooks:
            for k, v in report.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    values.setdefault(k, []).append(float(v))
        return {k: sum(v) / len(v) for k, v in values.items()}

    def to_dict(self) -> dict:
        n = len(self.train_seconds)
        hooks = {"epoch_hook_means": self.hook_means()} if any(self.epoch_hooks) else {}
        return {
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "valid": self.valid,
            "test": self.test,
            "seconds_per_epoch": sum(self.train_seconds) / n if n else None,
            "seconds_per_eval": sum(self.eval_seconds) / len(self.eval_seconds) if self.eval_seconds else None,
            "test_eval_seconds": self.test_eval_seconds,
            "train_seconds_total": sum(self.train_seconds),
            "peak_memory_mb": self.peak_memory_mb,
            **({"processes": self.processes} if self.processes > 1 else {}),
            **hooks,
        }


def resolve_device(name: str) -> torch.device:
    """The device ``train.device`` names (``textrec.runs.resolve_device``); under torchrun this process joins the
    process group and gets its GPU (``textrec.train.distributed.setup``)."""
    return distributed.setup(_resolve_device(name))


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam / AdamW over the parameters that require gradients; with weight decay, 1-d ones get none."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TextrecError("no trainable parameters")
    groups: list = params
    if cfg.weight_decay > 0 and cfg.no_decay_1d:
        groups = [{"params": [p for p in params if p.ndim >= 2]}, {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """Multiplier of ``train.lr`` at optimiser step ``step`` (0-based) of ``total_steps``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "linear":
        return max(0.0, (total_steps - step) / max(1, total_steps - cfg.warmup_steps))
    return 1.0


def _peak_memory_mb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    except ImportError:
        return None


class _Logger:
    """JSON lines to ``log.jsonl``, a readable line to stderr, optional TensorBoard scalars."""

    def __init__(self, out_dir: Path | None, tensorboard: bool, quiet: bool) -> None:
        self.path = out_dir / "log.jsonl" if out_dir else None
        self.quiet = quiet
        self.tb = None
        if tensorboard and out_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise TextrecError("train.tensorboard=true needs the tensorboard package (pip install tensorboard)") from e
            self.tb = SummaryWriter(str(out_dir / "tensorboard"))

    def log(self, record: dict) -> None:
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self.tb.add_scalar(k, v, record["epoch"])
            for k, v in record.get("valid", {}).items():
                self.tb.add_scalar(f"valid/{k}", v, record["epoch"])
        if not self.quiet:
            valid = record.get("valid")
            metric = "" if not valid else "  " + "  ".join(f"{k} {v:.4f}" for k, v in valid.items() if k.endswith("@10"))
            mark = " *" if record.get("improved") else ""
            log.info(f"epoch {record['epoch']:3d}  loss {record['loss']:.4f}  {record['train_seconds']:.1f}s{metric}{mark}")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


@dataclass
class _Progress:
    """Where training stands; everything here goes into state.pt."""

    epoch: int = 0  # epochs finished in the whole run
    phase: int = 0  # index of the current phase
    phase_epochs: int = 0  # epochs finished in the current phase
    optimizer_phase: int = 0  # the phase whose trainable() set the optimiser's parameters
    bad_evals: int = 0  # evaluations without improvement in the current phase
    best_score: float = -math.inf
    best_epoch: int = 0
    best_valid: dict = field(default_factory=dict)  # the best epoch's validation metrics (not re-evaluated at the end)
    opt_steps: int = 0  # optimiser steps of the current optimiser (the learning-rate schedule's clock)
    schedule_steps: int = 1  # length of the current schedule in optimiser steps


class _Trainer:
    """The state of one ``fit`` call: model, batches, optimiser, phases and their progress."""

    def __init__(self, model, train: TrainBatcher, cfg: RunConfig, out: Path | None, phases: list[Phase], quiet: bool) -> None:
        self.model, self.train, self.cfg, self.out, self.phases, self.quiet = model, train, cfg, out, phases, quiet
        self.tc = cfg.train
        self.device = train.device
        on = self.tc.amp and (self.device.type == "cuda" or (self.device.type == "cpu" and self.tc.amp_cpu))
        self.amp_dtype = torch.bfloat16 if on else None
        self.progress = _Progress()
        self.writer = distributed.is_writer()  # only rank 0 writes the run's files
        self.optimizer: torch.optim.Optimizer | None = None
        self.best_state: dict | None = None
        self._steps: dict[int, Callable] = {}

    # ---- phases ------------------------------------------------------------------------------
    def phase_done(self) -> bool:
        ph, pr = self.phases[self.progress.phase], self.progress
        if ph.epochs is not None:
            return pr.phase_epochs >= ph.epochs
        if ph.max_epochs is not None and pr.phase_epochs >= ph.max_epochs:
            return True
        return pr.bad_evals >= (ph.patience or self.tc.patience)

    def enter(self, index: int, fresh: bool) -> None:
        """Start phase ``index`` (``fresh``: for the first time, not on resume)."""
        ph, pr = self.phases[index], self.progress
        if fresh:
            if ph.reload_best and pr.best_epoch > 0:
                self.restore_best()
            if ph.enter is not None:
                before = distributed.snapshot(self.model)
                ph.enter(self.model)
                distributed.sync_changed(self.model, before)  # what enter changed, as rank 0 has it
            pr.phase, pr.phase_epochs, pr.bad_evals = index, 0, 0
        self._steps.clear()  # the DDP wrapper is rebuilt with the optimiser: phases change what trains
        if ph.optimizer == "rebuild" or self.optimizer is None:
            ph.trainable(self.model)
            self.optimizer = make_optimizer(self.model, self.tc)
            if fresh:
                pr.optimizer_phase, pr.opt_steps = index, 0
                epochs = ph.epochs if ph.epochs is not None else self.tc.epochs - pr.epoch
                pr.schedule_steps = max(1, min(epochs, self.tc.epochs - pr.epoch) * -(-self.epoch_batches() // self.tc.grad_accum))
        ph.trainable(self.model)
        if ph.optimizer == "keep":
            held = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
            new = [n for n, p in self.model.named_parameters() if p.requires_grad and id(p) not in held]
            if new:
                raise TextrecError(f"phase {ph.name!r} keeps the optimiser of phase {self.phases[pr.optimizer_phase].name!r}, "
                                   f"which does not hold parameters this phase trains ({', '.join(new[:3])}, ...): "
                                   "make them trainable there, or rebuild the optimiser")

    def resume(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.progress = _Progress(**state["progress"])
        pr = self.progress
        self.phases[pr.optimizer_phase].trainable(self.model)  # the optimiser's parameter list, as saved
        self.optimizer = make_optimizer(self.model, self.tc)
        self.optimizer.load_state_dict(state["optimizer"])
        self.phases[pr.phase].trainable(self.model)
        self.train.generator.set_state(state["batch_rng"])
        if "rank_rngs" in state:  # a distributed run: every rank's generators
            distributed.set_rng_states(state["rank_rngs"], self.device)
        else:
            distributed.set_rng_states([{"torch": state["torch_rng"], **({"cuda": state["cuda_rng"]} if "cuda_rng" in state else {})}],
                                       self.device)
        self._steps.clear()

    def restore_best(self) -> None:
        if self.out is not None:
            distributed.barrier()  # rank 0 wrote the file every rank reads
            load_weights(self.model, self.out / "model.safetensors", self.device)
        elif self.best_state is not None:
            self.model.load_state_dict(self.best_state)

    # ---- one epoch ---------------------------------------------------------------------------
    def step_fn(self) -> Callable:
        index = self.progress.phase
        if index not in self._steps:
            fn = distributed.wrap(self.model, self.phases[index].loss or self.model.loss)
            self._steps[index] = torch.compile(fn, dynamic=True) if self.tc.compile else fn
        return self._steps[index]

    def epoch_batches(self) -> int:
        """Batches in one epoch: all of the plan, or at most ``train.limit_batches``."""
        return min(len(self.train), self.tc.limit_batches) if self.tc.limit_batches > 0 else len(self.train)

    def train_epoch(self, epoch: int) -> tuple[float, dict]:
        """One epoch of the current phase: (mean loss, what the phase's epoch hook reported)."""
        ph, pr, tc = self.phases[self.progress.phase], self.progress, self.tc
        report = {}
        if ph.on_epoch_start is not None:
            before = distributed.snapshot(self.model)
            report = _hook_report(ph, ph.on_epoch_start(self.model, epoch))
            distributed.sync_changed(self.model, before)  # every rank holds rank 0's rebuilt catalogue state
        self.model.train()
        step, opt = self.step_fn(), self.optimizer
        params = [p for p in self.model.parameters() if p.requires_grad]
        loss_sum, n_batches = torch.zeros((), device=self.device), 0
        batches = self.train.plan()[: self.epoch_batches()]
        opt.zero_grad(set_to_none=True)
        lines = ProgressLines(f"epoch {epoch + 1}", len(batches), enabled=not self.quiet and self.writer)
        for i, rows in enumerate(tqdm(batches, desc=f"epoch {epoch + 1}", leave=False, disable=not show_progress(not self.quiet), file=sys.stderr)):
            lines.update(i)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                loss = step(distributed.shard(self.train.batch(rows)))
            (loss if tc.grad_accum == 1 else loss / tc.grad_accum).backward()
            if (i + 1) % tc.grad_accum == 0 or i + 1 == len(batches):
                if tc.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
                factor = lr_factor(tc, pr.opt_steps, pr.schedule_steps)
                for group in opt.param_groups:
                    group["lr"] = tc.lr * factor
                opt.step()
                opt.zero_grad(set_to_none=True)
                pr.opt_steps += 1
            loss_sum += loss.detach().float()
            n_batches += 1
        return distributed.mean_over_ranks(float(loss_sum) / max(n_batches, 1), self.device), report

    def save_state(self, path: Path, result: FitResult) -> None:
        rngs = distributed.rng_states(self.device)  # a collective: every rank takes part, rank 0 writes
        if not self.writer:
            return
        state = {
            "train_seconds": result.train_seconds,  # so that a resumed run reports the whole run's timings
            "eval_seconds": result.eval_seconds,
            "epoch_hooks": result.epoch_hooks,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "batch_rng": self.train.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "progress": dataclasses.asdict(self.progress),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        if len(rngs) > 1:
            state["rank_rngs"] = rngs
        with checksummed_path(path) as tmp:
            try:
                torch.save(state, tmp)
            except RuntimeError as e:  # a full disk: one line naming the file, the last state kept
                raise storage_failure(e, path) from None


def fit(
    model: torch.nn.Module,
    train: TrainBatcher,
    valid: EvalBatcher,
    test: EvalBatcher | None,
    cfg: RunConfig,
    out_dir: str | Path | None = None,
    resume: bool = False,
    quiet: bool = False,
    phases: list[Phase] | None = None,
) -> FitResult:
    """Train ``model`` through ``phases`` (default: its ``"train"`` phases) with early stopping on validation."""
    tc = cfg.train
    out = Path(out_dir) if out_dir is not None else None
    if tc.num_threads > 0:
        torch.set_num_threads(tc.num_threads)
    phases = list(phases if phases is not None else model.phases("train"))
    if not phases:
        raise TextrecError("the model declares no training phases")
    distributed.seed_rank(tc.seed)
    quiet = quiet or not distributed.is_writer()
    trainer = _Trainer(model, train, cfg, out, phases, quiet)
    result = FitResult(best_epoch=0, epochs_run=0, valid={}, test=None, processes=distributed.world_size())
    with distributed.failures():
        _fit(trainer, train, valid, test, result, resume)
    return result


def _fit(trainer: _Trainer, train: TrainBatcher, valid: EvalBatcher, test: EvalBatcher | None, result: FitResult, resume: bool) -> None:
    model, cfg, out, quiet = trainer.model, trainer.cfg, trainer.out, trainer.quiet
    ec = cfg.eval
    state_path = out / "state.pt" if out else None
    if resume and state_path is not None and state_path.exists():
        state = _load_state(state_path, train.device)
        try:
            trainer.resume(state)
        except (RuntimeError, KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{state_path} is damaged or from another config ({_first_problem(e)})") from None
        result.train_seconds, result.eval_seconds = list(state["train_seconds"]), list(state["eval_seconds"])
        result.epoch_hooks = [dict(r) for r in state.get("epoch_hooks", [])]  # absent in states written before hooks reported
        if trainer.writer:
            _trim_log(out, trainer.progress.epoch)
        if not quiet:
            log.info(f"resuming {out} after epoch {trainer.progress.epoch}")
    else:
        trainer.enter(0, fresh=True)
        if out is not None and trainer.writer:
            (out / "log.jsonl").unlink(missing_ok=True)
    if out is not None and trainer.writer:
        _remove_temp_files(out)
    _run_epochs(trainer, valid, result, state_path)
    pr = trainer.progress
    result.epochs_run = pr.epoch
    if pr.best_epoch == 0:
        raise TextrecError("no validation pass ran; lower train.eval_every or raise train.epochs")
    trainer.restore_best()
    result.best_epoch = pr.best_epoch
    # the restored weights are the best epoch's, so its validation pass stands (states saved before it was kept: again)
    result.valid = dict(pr.best_valid) if pr.best_valid else _evaluate(model, valid, ec).metrics
    if test is not None:
        ev = _evaluate(model, test, ec)
        result.test, result.test_eval_seconds = ev.metrics, ev.seconds
    result.peak_memory_mb = _peak_memory_mb(train.device)
    if out is not None and trainer.writer:
        write_json(out / "metrics.json", result.to_dict())


def _evaluate(model, batcher: EvalBatcher, ec):
    return distributed.evaluate(model, batcher, ec.ks, ec.mask_history, ec.item_chunk, ties=ec.ties, extra=ec.extra)


def _run_epochs(trainer: _Trainer, valid: EvalBatcher, result: FitResult, state_path: Path | None) -> None:
    tc, ec, pr = trainer.tc, trainer.cfg.eval, trainer.progress
    logger = _Logger(trainer.out if trainer.writer else None, tc.tensorboard and trainer.writer, trainer.quiet)
    while pr.epoch < tc.epochs:
        if trainer.phase_done():
            if pr.phase + 1 == len(trainer.phases):
                break
            trainer.enter(pr.phase + 1, fresh=True)
            continue
        t0 = time.perf_counter()
        mean_loss, report = trainer.train_epoch(pr.epoch)
        if not math.isfinite(mean_loss):
            raise TextrecError(f"training diverged at epoch {pr.epoch + 1} (loss {mean_loss}); try a smaller train.lr")
        result.train_seconds.append(time.perf_counter() - t0)
        result.epoch_hooks.append(report)
        pr.epoch += 1
        pr.phase_epochs += 1
        record = {"epoch": pr.epoch, "loss": mean_loss, "train_seconds": result.train_seconds[-1], **report}
        if len(trainer.phases) > 1:
            record["phase"] = trainer.phases[pr.phase].name
        every = trainer.phases[pr.phase].eval_every
        if (pr.phase_epochs % every == 0 if every else pr.epoch % tc.eval_every == 0) or pr.epoch == tc.epochs:
            ev = _evaluate(trainer.model, valid, ec)
            result.eval_seconds.append(ev.seconds)
            record.update(valid=ev.metrics, eval_seconds=ev.seconds)
            score = ev.metrics[ec.select_metric]
            if distributed.broadcast_flag(score > pr.best_score, trainer.device):  # rank 0 decides for all
                pr.best_score, pr.best_epoch, pr.bad_evals = score, pr.epoch, 0
                pr.best_valid = dict(ev.metrics)
                record["improved"] = True
                _save_best(trainer)
            else:
                pr.bad_evals += 1
        record["peak_memory_mb"] = _peak_memory_mb(trainer.device)  # so far: resident set (CPU), allocated (CUDA)
        logger.log(record)
        if state_path is not None:
            trainer.save_state(state_path, result)
    logger.close()


_RECORD_KEYS = frozenset({"epoch", "loss", "train_seconds", "phase", "valid", "eval_seconds", "improved", "peak_memory_mb"})


def _hook_report(phase: Phase, report) -> dict:
    """What an ``on_epoch_start`` hook returned, checked: None, or a dict of plain values for the epoch's log record."""
    if report is None:
        return {}
    if not isinstance(report, dict):
        raise TextrecError(f"phase {phase.name!r}: on_epoch_start returned {type(report).__name__}; it returns None or a dict")
    for k, v in report.items():
        if not isinstance(k, str) or k in _RECORD_KEYS:
            raise TextrecError(f"phase {phase.name!r}: on_epoch_start reported key {k!r}, which the epoch record uses itself "
                               f"({', '.join(sorted(_RECORD_KEYS))}) or is not a string")
        if not isinstance(v, (int, float, str, bool)):
            raise TextrecError(f"phase {phase.name!r}: on_epoch_start reported {k}={type(v).__name__}; "
                               "values are numbers, strings or booleans")
    return dict(report)


def _save_best(trainer: _Trainer) -> None:
    if trainer.out is not None:
        if not trainer.writer:
            return
        with checksummed_path(trainer.out / "model.safetensors") as tmp:
            try:
                save_model(trainer.model, str(tmp))
            except SafetensorError as e:  # a full disk: one line naming the file, the last weights kept
                raise storage_failure(e, trainer.out / "model.safetensors") from None
    else:
        trainer.best_state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


# ---- checkpoints ---------------------------------------------------------------------------------


def _load_state(state_path: Path, device) -> dict:
    """``state.pt`` for resuming, after checking it and the best weights against the recorded checksums."""
    verify_checkpoint(state_path)
    if (state_path.parent / "model.safetensors").exists():
        verify_checkpoint(state_path.parent / "model.safetensors")
    try:
        return torch.load(state_path, map_location=device, weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, ValueError) as e:
        raise CheckpointError(f"{state_path} is damaged ({_first_problem(e)})") from None


def _trim_log(out: Path, epoch: int) -> None:
    """Keep the log lines of epochs 1..epoch: a redone epoch must not appear twice."""
    path = out / "log.jsonl"
    if not path.exists():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip() and json.loads(line)["epoch"] <= epoch]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _remove_temp_files(out: Path) -> None:
    """Temporary files of an interrupted write (``.NAME.*.tmp``, see textrec.io.atomic_path)."""
    for tmp in out.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
