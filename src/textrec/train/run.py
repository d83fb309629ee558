"""Runs: train a model on a dataset directory.

``train_run`` is what ``textrec train`` calls: it loads the dataset and the model's item-side inputs,
seeds, builds the model, its phases and the device-resident batchers — all before anything is written, so a
run that cannot start leaves no directory behind — then writes ``config.json`` (``textrec.runs.writing_run``)
and hands over to ``textrec.train.loop.fit``. Loading a finished run back is ``textrec.runs.load_run``.
Pre-training and fine-tuning are in ``textrec.train.transfer``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from textrec import __version__
from textrec.config import RunConfig, format_setting
from textrec.data.batching import EvalBatcher, TrainBatcher, cut_mask, keep_rows
from textrec.data.dataset import Dataset
from textrec.data.split import eval_examples, prefix_rows, sample_examples, train_windows
from textrec.errors import ConfigError
from textrec.models import model_class
from textrec.models.spec import Phase, spec_of
from textrec.runs import (  # noqa: F401 (load_run, LoadedRun, ... re-exported: their home was this module)
    LoadedRun,
    dataset_record,
    load_run,
    prepare_out_dir,
    read_run_config,
    trained_on,
    writing_run,
)
from textrec.train import distributed
from textrec.train.inputs import build_model, load_item_inputs
from textrec.train.loop import FitResult, fit, resolve_device, seed_everything

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    out_dir: Path
    fit: FitResult


def resolve_training_rows(cfg: RunConfig, pretraining: bool) -> tuple[str, str]:
    """(rows, batching) for this run: what the config asks, else what the model declares.

    A model that is not causal (``SPEC.causal``) can never train on windows.
    Pre-training batches are domain-stratified by default; on windows, each keeps at most
    ``data.pretrain_targets_per_row`` targets per epoch (``make_batchers``), so batches span many users at
    the cost of windows rather than of one row per prefix (``data.train_rows=prefixes``, the references'
    pairs: about 40x the tokens on Office + MovieLens, which does not fit a CPU).
    """
    spec = spec_of(model_class(cfg.model))
    declared = spec.training_rows
    rows = cfg.data.train_rows
    if rows == "auto":
        rows = declared
    if rows == "windows" and not spec.causal:
        raise ConfigError(f"model {cfg.model} is not causal, so it cannot train on whole-sequence windows; "
                          f"use data.train_rows={declared} (or auto)")
    batching = cfg.train.batching
    if batching == "auto":
        batching = "stratified" if pretraining else "bucket"
    return rows, batching


def sampled_cut(cfg: RunConfig, pretraining: bool) -> str:
    """Which prefix rows a per-user draw picks from: the model's ``SPEC.sampled_cut(cfg, pretraining)``."""
    return spec_of(model_class(cfg.model)).sampled_cut(cfg.model_config, pretraining)


def make_batchers(
    ds: Dataset, cfg: RunConfig, device, pretraining: bool = False, domains: np.ndarray | None = None, model=None
) -> tuple[TrainBatcher, EvalBatcher, EvalBatcher | None]:
    """Training rows as the model needs them, and the validation and test histories, on ``device`` (no test
    histories in pre-training, which never tests: on a million users they would hold 600 MB).

    ``domains`` (one per user row of ``ds``): the source domain of each user, for stratified batches.
    ``model`` with a ``row_sizes(item_seq, seq_len)`` method (Recformer: tokens per row): buckets sort by it.
    """
    L = cfg.data.max_seq_len
    rows_kind, batching = resolve_training_rows(cfg, pretraining)
    empty = spec_of(model_class(cfg.model)).empty_history_rows(cfg.model_config, pretraining)
    rows = train_windows(ds, L, cfg.data.long_sequences) if rows_kind == "windows" else prefix_rows(ds, L, empty)
    if rows_kind == "sampled":  # the rows the per-user draw may pick, as the model declares (e.g. Recformer's cut)
        rows = keep_rows(rows, cut_mask(rows, L, sampled_cut(cfg, pretraining)))
    row_domains = None if domains is None else domains[rows.users]
    cap = cfg.data.pretrain_targets_per_row if pretraining and rows_kind == "windows" else 0
    train_b = TrainBatcher(rows, cfg.train.batch_size, device, batching, seed=cfg.train.seed, domains=row_domains,
                           sample_per_user=rows_kind == "sampled", targets_per_row=cap)
    if model is not None and hasattr(model, "row_sizes"):
        train_b.bucket_by(model.row_sizes(train_b.inputs.long(), train_b.lengths.to(train_b.device)))
    all_valid = eval_examples(ds, "valid", L)
    valid = sample_examples(all_valid, cfg.eval.valid_users, cfg.train.seed)
    if len(valid.users) < len(all_valid.users) and distributed.is_writer():
        log.info(f"validation (early stopping) on a fixed sample of {len(valid.users):,} of {len(all_valid.users):,} users "
                 "(eval.valid_users; the test split is whole)")
    valid_b = EvalBatcher(valid, cfg.eval.batch_size, device)
    test_b = None if pretraining else EvalBatcher(eval_examples(ds, "test", L), cfg.eval.batch_size, device)
    return train_b, valid_b, test_b


def describe(what: str, cfg: RunConfig, ds: Dataset, model, train_b: TrainBatcher, device, out: Path) -> None:
    from textrec.train.distributed import is_writer, world_size

    if not is_writer():
        return
    if world_size() > 1:
        device = f"{world_size()} processes on {device.type}"
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        f"{what} {cfg.model} on {ds.name} ({ds.n_users:,} users, {ds.n_items:,} items, "
        f"{train_b.total_targets:,} training targets) on {device}, {n_params:,} parameters -> {out}"
    )
    if cfg.recipe:
        log.info(f"{cfg.model}'s recipe (under your config and overrides): "
                 + " ".join(f"{k}={format_setting(v)}" for k, v in cfg.recipe.items()))


def train_run(
    data_dir: str | Path, cfg: RunConfig, out_dir: str | Path, resume: bool = False, overwrite: bool = False, quiet: bool = False,
    phases: list[Phase] | None = None,
) -> RunResult:
    """Train ``cfg`` on the dataset at ``data_dir``; everything is written to ``out_dir``.

    ``phases`` replaces the model's own ``phases("train")`` (tests and ablations).
    """
    data_dir, out = Path(data_dir), Path(out_dir)
    ds = Dataset.load(data_dir)
    inputs, record = load_item_inputs(cfg, [data_dir])
    config = {"textrec_version": __version__, **cfg.to_dict(), "dataset": dataset_record(ds, data_dir), "item_inputs": record}
    device = resolve_device(cfg.train.device)
    seed_everything(cfg.train.seed)
    model = build_model(cfg, inputs).to(device)
    del inputs  # the model holds its own copy of the item tables: do not keep a second one through training
    phases = phases if phases is not None else model.phases("train")
    train_b, valid_b, test_b = make_batchers(ds, cfg, device, model=model)
    with writing_run(out, config, resume, overwrite):
        if not quiet:
            describe("training", cfg, ds, model, train_b, device, out)
        result = fit(model, train_b, valid_b, test_b, cfg, out, resume=resume, quiet=quiet, phases=phases)
    return RunResult(out, result)


