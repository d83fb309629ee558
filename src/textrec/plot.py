"""Training curves of a run, read from its ``log.jsonl`` and drawn to a PNG (``textrec plot RUN``).

``log.jsonl`` holds one JSON object per epoch (``textrec.train.loop``): ``epoch``, the training ``loss``,
``valid`` metrics on evaluated epochs, ``improved`` when that epoch became the best, and ``phase`` for models
with several training phases (VQ-Rec's permutation phase, Recformer's two stages). ``read_curves`` turns it
into plain data; ``plot_curves`` draws the loss on the left and the validation metrics on the right, marks
the best epoch and shades each phase. matplotlib is imported only here (``pip install matplotlib``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from textrec.errors import DataError, NotFoundError

logger = logging.getLogger("textrec.plot")


@dataclass
class Curves:
    """One run's per-epoch history."""

    run: str
    epochs: list[int] = field(default_factory=list)  # every logged epoch
    loss: list[float] = field(default_factory=list)  # training loss of each epoch in ``epochs``
    valid_epochs: list[int] = field(default_factory=list)  # epochs that were evaluated on validation
    valid: dict[str, list[float]] = field(default_factory=dict)  # metric -> values at ``valid_epochs``
    phases: list[tuple[str, int, int]] = field(default_factory=list)  # (name, first epoch, last epoch)
    best_epoch: int | None = None  # the last epoch marked ``improved`` (the one whose weights were kept)


def read_curves(run: str | Path) -> Curves:
    """Parse ``RUN/log.jsonl`` (or a log file given directly); a malformed line is an error naming it."""
    path = Path(run)
    log = path / "log.jsonl" if path.is_dir() else path
    if not log.exists():
        raise NotFoundError(f"{log}: no training log (is {path} a run directory written by textrec train/pretrain/finetune?)")
    curves = Curves(run=str(path))
    for n, line in enumerate(log.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            epoch = int(rec["epoch"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise DataError(f"{log}:{n}: not an epoch record ({e})") from None
        curves.epochs.append(epoch)
        curves.loss.append(float(rec.get("loss", float("nan"))))
        if rec.get("valid"):
            curves.valid_epochs.append(epoch)
            for metric, value in rec["valid"].items():
                curves.valid.setdefault(metric, []).append(float(value))
        if rec.get("improved"):
            curves.best_epoch = epoch
        phase = rec.get("phase")
        if phase is not None:
            if curves.phases and curves.phases[-1][0] == phase:
                curves.phases[-1] = (phase, curves.phases[-1][1], epoch)
            else:
                curves.phases.append((phase, epoch, epoch))
    if not curves.epochs:
        raise DataError(f"{log}: the log holds no epoch yet")
    return curves


def plot_curves(run: str | Path, out: str | Path | None = None, metrics: tuple[str, ...] = ("recall@10", "ndcg@10")) -> Path:
    """Draw a run's loss and validation ``metrics`` by epoch to ``out`` (default ``RUN/curves.png``); return it."""
    curves = read_curves(run)
    missing = [m for m in metrics if curves.valid and m not in curves.valid]
    if missing:
        raise DataError(f"{curves.run}: no validation metric {missing[0]} in the log (logged: {', '.join(curves.valid)})")
    run_dir = Path(run) if Path(run).is_dir() else Path(run).parent
    out = Path(out) if out is not None else run_dir / "curves.png"
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(curves.epochs, curves.loss, "o-", markersize=3, color="tab:gray")
    left.set(xlabel="epoch", ylabel="training loss", title="loss")
    for metric in metrics:
        if metric in curves.valid:
            right.plot(curves.valid_epochs, curves.valid[metric], "o-", markersize=3, label=f"validation {metric}")
    right.set(xlabel="epoch", title="validation")
    for ax in (left, right):
        for i, (name, first, last) in enumerate(curves.phases if len(curves.phases) > 1 else []):
            ax.axvspan(first - 0.5, last + 0.5, color=f"C{i}", alpha=0.08, label=name if ax is right else None)
        if curves.best_epoch is not None:
            ax.axvline(curves.best_epoch, color="black", linestyle=":", linewidth=1,
                       label=f"best epoch {curves.best_epoch}" if ax is right else None)
    if right.lines or right.patches:
        right.legend(fontsize=8)
    fig.suptitle(Path(curves.run).name or curves.run, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    logger.info("wrote %s", out)
    return out
