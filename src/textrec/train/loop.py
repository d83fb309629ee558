"""The one training loop: epochs of next-item training, validation, early stopping, checkpoints, resume.

Every model trains through ``fit``: Adam/AdamW on the parameters that require gradients, bf16 autocast on
CUDA, optional ``torch.compile`` and gradient clipping; after each ``eval_every`` epochs the validation
split is ranked against the whole catalogue, the best model (by ``eval.select_metric``) is written to
``model.safetensors``, and training stops after ``patience`` evaluations without improvement. The best
weights are restored and the test split is evaluated once.

A run directory holds::

    config.json        the resolved config (written by the caller, see ``textrec.train.run``)
    model.safetensors  best weights so far
    state.pt           training state after the last finished epoch (model, optimiser, random
                       generators, early-stopping counters); ``resume=True`` continues from it and
                       reaches the same result as an uninterrupted run
    log.jsonl          one JSON object per epoch
    metrics.json       best epoch, validation and test metrics, timings (written at the end)

``state.pt`` holds only tensors and plain values and is read with ``torch.load(weights_only=True)``, so
loading it never unpickles arbitrary objects.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from tqdm.auto import tqdm

from textrec.config import RunConfig
from textrec.data.batching import EvalBatcher, TrainBatcher
from textrec.errors import TextrecError
from textrec.eval.ranking import evaluate
from textrec.io import atomic_path, write_json


@dataclass
class Stage:
    """A phase of training that starts at ``start_epoch``.

    ``enter(model)`` runs once when the phase begins (it may change weights, e.g. bake a learned
    permutation); ``trainable(model)`` sets ``requires_grad`` for the phase and runs again on resume.
    The optimiser is rebuilt at the start of every stage over the parameters that require gradients.
    """

    start_epoch: int
    trainable: Callable[[torch.nn.Module], None]
    enter: Callable[[torch.nn.Module], None] | None = None
    name: str = ""


@dataclass
class FitResult:
    best_epoch: int  # 1-based epoch whose weights were kept
    epochs_run: int
    valid: dict[str, float]
    test: dict[str, float] | None
    train_seconds: list[float] = field(default_factory=list)  # per epoch
    eval_seconds: list[float] = field(default_factory=list)  # per validation pass
    test_eval_seconds: float = 0.0
    peak_memory_mb: float | None = None

    def to_dict(self) -> dict:
        n = len(self.train_seconds)
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
        }


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TextrecError(f"train.device={name} but CUDA is not available (use train.device=cpu)")
    return device


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TextrecError("no trainable parameters")
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


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
            tqdm.write(
                f"epoch {record['epoch']:3d}  loss {record['loss']:.4f}  {record['train_seconds']:.1f}s{metric}{mark}",
                file=sys.stderr,
            )

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def fit(
    model: torch.nn.Module,
    train: TrainBatcher,
    valid: EvalBatcher,
    test: EvalBatcher | None,
    cfg: RunConfig,
    out_dir: str | Path | None = None,
    resume: bool = False,
    quiet: bool = False,
    stages: list[Stage] | None = None,
    loss_fn: Callable | None = None,
) -> FitResult:
    """Train ``model`` with early stopping on validation; return metrics of the best epoch.

    ``loss_fn(batch)`` defaults to ``model.loss``; pre-training passes ``model.pretrain_loss``.
    """
    tc, ec = cfg.train, cfg.eval
    out = Path(out_dir) if out_dir is not None else None
    device = train.device
    amp_dtype = torch.bfloat16 if (tc.amp and device.type == "cuda") else None
    if tc.num_threads > 0:
        torch.set_num_threads(tc.num_threads)
    stages = sorted(stages or [], key=lambda s: s.start_epoch)

    def stage_at(epoch: int) -> Stage | None:
        started = [s for s in stages if s.start_epoch <= epoch]
        return started[-1] if started else None

    start_epoch, best_score, best_epoch, bad_evals = 0, -math.inf, 0, 0
    result = FitResult(best_epoch=0, epochs_run=0, valid={}, test=None)
    state_path = out / "state.pt" if out else None
    current = None  # the stage whose trainable() is in effect
    if resume and state_path is not None and state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        start_epoch = state["epoch"]
        current = stage_at(start_epoch - 1)
        if current is not None:
            current.trainable(model)
        optimizer = make_optimizer(model, tc)
        optimizer.load_state_dict(state["optimizer"])
        train.generator.set_state(state["batch_rng"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        best_score, best_epoch, bad_evals = state["best_score"], state["best_epoch"], state["bad_evals"]
        result.train_seconds = list(state["train_seconds"])
        result.eval_seconds = list(state["eval_seconds"])
        if not quiet:
            tqdm.write(f"resuming {out} after epoch {start_epoch}", file=sys.stderr)
    else:
        optimizer = make_optimizer(model, tc) if stage_at(0) is None else None
        if out is not None:
            (out / "log.jsonl").unlink(missing_ok=True)

    step = loss_fn or model.loss
    if tc.compile:
        step = torch.compile(step, dynamic=True)
    logger = _Logger(out, tc.tensorboard, quiet)
    best_state = None
    epochs_done = start_epoch
    for epoch in range(start_epoch, tc.epochs):
        if bad_evals >= tc.patience:
            break
        stage = stage_at(epoch)
        if stage is not current:
            if stage.enter is not None:
                stage.enter(model)
            stage.trainable(model)
            optimizer = make_optimizer(model, tc)
            current = stage
        model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        n_batches = 0
        for batch in tqdm(train.epoch(), total=len(train), desc=f"epoch {epoch + 1}", leave=False, disable=quiet, file=sys.stderr):
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = step(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], tc.grad_clip)
            optimizer.step()
            loss_sum += loss.detach().float()
            n_batches += 1
        mean_loss = float(loss_sum) / max(n_batches, 1)
        if not math.isfinite(mean_loss):
            raise TextrecError(f"training diverged at epoch {epoch + 1} (loss {mean_loss}); try a smaller train.lr")
        result.train_seconds.append(time.perf_counter() - t0)
        epochs_done = epoch + 1
        record = {"epoch": epoch + 1, "loss": mean_loss, "train_seconds": result.train_seconds[-1]}
        if current is not None and current.name:
            record["stage"] = current.name
        if (epoch + 1) % tc.eval_every == 0 or epoch + 1 == tc.epochs:
            ev = evaluate(model, valid, ec.ks, ec.mask_history, ec.item_chunk, amp_dtype, ec.ties)
            result.eval_seconds.append(ev.seconds)
            record.update(valid=ev.metrics, eval_seconds=ev.seconds)
            score = ev.metrics[ec.select_metric]
            if score > best_score:
                best_score, best_epoch, bad_evals = score, epoch + 1, 0
                record["improved"] = True
                if out is not None:
                    with atomic_path(out / "model.safetensors") as tmp:
                        save_model(model, str(tmp))
                else:
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad_evals += 1
        logger.log(record)
        if state_path is not None:
            _save_state(state_path, model, optimizer, train, device, epoch + 1, best_score, best_epoch, bad_evals, result)
    logger.close()
    result.epochs_run = epochs_done
    if best_epoch == 0:
        raise TextrecError("no validation pass ran; lower train.eval_every or raise train.epochs")
    if out is not None:
        load_model(model, str(out / "model.safetensors"), device=str(device))
    elif best_state is not None:
        model.load_state_dict(best_state)
    result.best_epoch = best_epoch
    result.valid = evaluate(model, valid, ec.ks, ec.mask_history, ec.item_chunk, amp_dtype, ec.ties).metrics
    if test is not None:
        ev = evaluate(model, test, ec.ks, ec.mask_history, ec.item_chunk, amp_dtype, ec.ties)
        result.test, result.test_eval_seconds = ev.metrics, ev.seconds
    result.peak_memory_mb = _peak_memory_mb(device)
    if out is not None:
        write_json(out / "metrics.json", result.to_dict())
    return result


def _save_state(path, model, optimizer, train, device, epoch, best_score, best_epoch, bad_evals, result) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "batch_rng": train.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "epoch": epoch,
        "best_score": best_score,
        "best_epoch": best_epoch,
        "bad_evals": bad_evals,
        "train_seconds": result.train_seconds,
        "eval_seconds": result.eval_seconds,
    }
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
