"""Runs: train a model on a dataset directory, and load a finished run back.

``train_run`` is what ``textrec train`` calls: it loads the dataset and the model's item-side inputs,
seeds, builds the model, its phases and the device-resident batchers — all before anything is written, so a
run that cannot start leaves no directory behind — then writes ``config.json`` and hands over to
``textrec.train.loop.fit``. ``load_run`` rebuilds the model from a run directory's ``config.json`` and
``model.safetensors`` (checked against the run's ``checksums.json``) for evaluation and recommendation.
Pre-training and fine-tuning are in ``textrec.train.transfer``.

A start that fails before its first epoch is saved (a missing optional package, a device error, an
interruption) removes what it wrote (``writing_run``), so the corrected command needs no ``--overwrite``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from textrec import __version__
from textrec.config import RunConfig
from textrec.data.batching import EvalBatcher, TrainBatcher, cut_mask, keep_rows
from textrec.data.dataset import Dataset
from textrec.data.split import eval_examples, prefix_rows, train_windows
from textrec.errors import CheckpointError, ConfigError, DataError, NotFoundError, TextrecError
from textrec.io import read_json, write_json
from textrec.models import model_class
from textrec.models.spec import ItemInputs, Phase
from textrec.train.inputs import build_model, load_item_inputs
from textrec.train.loop import FitResult, fit, load_weights, resolve_device, seed_everything


def dataset_record(ds: Dataset, path: Path) -> dict:
    return {
        "path": str(Path(path).resolve()),
        "name": ds.name,
        "content_hash": ds.meta.get("content_hash") or ds.content_hash(),
        "n_items": ds.n_items,
        "n_users": ds.n_users,
    }


@dataclass
class RunResult:
    out_dir: Path
    fit: FitResult


def _comparable(config: dict) -> dict:
    """A config without what may change between an interrupted run and its resumption."""
    c = {k: v for k, v in config.items() if k not in ("textrec_version", "new_catalogue")}
    c.update(_with_defaults(c))
    c["train"] = {k: v for k, v in c.get("train", {}).items() if k != "epochs"}
    return c


def _with_defaults(config: dict) -> dict:
    """The model/data/train/eval sections as this version resolves them: a setting added since a run was
    written takes its default there, so the run still resumes (unchanged when they no longer parse)."""
    sections = {k: config[k] for k in ("model", "data", "train", "eval") if k in config}
    try:
        return json.loads(json.dumps(RunConfig.from_dict(sections).to_dict()))
    except TextrecError:
        return sections


def prepare_out_dir(out: Path, config: dict, resume: bool, overwrite: bool) -> None:
    """Create ``out`` and write ``config.json``; refuse to clobber or to resume a different config.

    Resuming may raise ``train.epochs`` (continue a finished run for more epochs), nothing else.
    """
    config = json.loads(json.dumps(config))  # tuples -> lists, as config.json holds them
    if out.exists() and any(out.iterdir()):
        if resume:
            if not (out / "config.json").exists():
                raise TextrecError(f"{out}: cannot resume, it holds no config.json (not a textrec run)")
            saved = read_json(out / "config.json")
            if _comparable(saved) != _comparable(config):
                raise TextrecError(f"{out}: cannot resume, its config.json differs from this run's config")
            if config["train"]["epochs"] < saved["train"]["epochs"]:
                raise TextrecError(f"{out}: cannot resume with fewer epochs ({config['train']['epochs']}) than it was started with "
                                   f"({saved['train']['epochs']})")
        elif not overwrite:
            raise TextrecError(f"{out} already exists and is not empty (pass --resume to continue it or --overwrite)")
        else:
            for f in _RUN_FILES:
                (out / f).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config)


_RUN_FILES = ("model.safetensors", "state.pt", "checksums.json", "log.jsonl", "metrics.json")


@contextlib.contextmanager
def writing_run(out: Path, config: dict, resume: bool, overwrite: bool) -> Iterator[None]:
    """``prepare_out_dir``, then run the block; if it fails before an epoch is saved, undo the start.

    Without ``state.pt`` nothing can be resumed, so the files of this start are removed (and ``out`` itself
    when this start created it): an existing empty directory is left empty, a missing one stays missing.
    """
    existed = out.exists()
    prepare_out_dir(out, config, resume, overwrite)
    try:
        yield
    except BaseException:
        if not (out / "state.pt").exists():
            for f in ("config.json", *_RUN_FILES):
                (out / f).unlink(missing_ok=True)
            for tmp in out.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
            shutil.rmtree(out / "tensorboard", ignore_errors=True)
            if not existed and not any(out.iterdir()):
                out.rmdir()
        raise


def resolve_training_rows(cfg: RunConfig, pretraining: bool) -> tuple[str, str]:
    """(rows, batching) for this run: what the config asks, else what the model declares.

    A model whose ``TRAINING_ROWS`` is not ``"windows"`` (not causal) can never train on windows.
    Pre-training batches are domain-stratified by default; on windows, each keeps at most
    ``data.pretrain_targets_per_row`` targets per epoch (``make_batchers``), so batches span many users at
    the cost of windows rather than of one row per prefix (``data.train_rows=prefixes``, the references'
    pairs: about 40x the tokens on Office + MovieLens, which does not fit a CPU).
    """
    declared = model_class(cfg.model).TRAINING_ROWS
    rows = cfg.data.train_rows
    if rows == "auto":
        rows = declared
    if rows == "windows" and declared != "windows":
        raise ConfigError(f"model {cfg.model} is not causal, so it cannot train on whole-sequence windows; "
                          f"use data.train_rows={declared} (or auto)")
    batching = cfg.train.batching
    if batching == "auto":
        batching = "stratified" if pretraining else "bucket"
    return rows, batching


def sampled_cut(cfg: RunConfig, pretraining: bool) -> str:
    """Which prefix rows a per-user draw picks from: the model's ``sampled_cut(cfg, pretraining)``, else any."""
    pick = getattr(model_class(cfg.model), "sampled_cut", None)
    return pick(cfg.model_config, pretraining) if pick is not None else "any"


def make_batchers(
    ds: Dataset, cfg: RunConfig, device, pretraining: bool = False, domains: np.ndarray | None = None, model=None
) -> tuple[TrainBatcher, EvalBatcher, EvalBatcher]:
    """Training rows as the model needs them, and the validation and test histories, on ``device``.

    ``domains`` (one per user row of ``ds``): the source domain of each user, for stratified batches.
    ``model`` with a ``row_sizes(item_seq, seq_len)`` method (Recformer: tokens per row): buckets sort by it.
    """
    L = cfg.data.max_seq_len
    rows_kind, batching = resolve_training_rows(cfg, pretraining)
    empty = getattr(model_class(cfg.model), "empty_history_rows", lambda c, p: False)(cfg.model_config, pretraining)
    rows = train_windows(ds, L, cfg.data.long_sequences) if rows_kind == "windows" else prefix_rows(ds, L, empty)
    if rows_kind == "sampled":  # the rows the per-user draw may pick, as the model declares (e.g. Recformer's cut)
        rows = keep_rows(rows, cut_mask(rows, L, sampled_cut(cfg, pretraining)))
    row_domains = None if domains is None else domains[rows.users]
    cap = cfg.data.pretrain_targets_per_row if pretraining and rows_kind == "windows" else 0
    train_b = TrainBatcher(rows, cfg.train.batch_size, device, batching, seed=cfg.train.seed, domains=row_domains,
                           sample_per_user=rows_kind == "sampled", targets_per_row=cap)
    if model is not None and hasattr(model, "row_sizes"):
        train_b.bucket_by(model.row_sizes(train_b.inputs, train_b.lengths.to(train_b.device)))
    valid_b = EvalBatcher(eval_examples(ds, "valid", L), cfg.eval.batch_size, device)
    test_b = EvalBatcher(eval_examples(ds, "test", L), cfg.eval.batch_size, device)
    return train_b, valid_b, test_b


def describe(what: str, cfg: RunConfig, ds: Dataset, model, train_b: TrainBatcher, device, out: Path) -> None:
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"{what} {cfg.model} on {ds.name} ({ds.n_users:,} users, {ds.n_items:,} items, "
        f"{train_b.total_targets:,} training targets) on {device}, {n_params:,} parameters -> {out}",
        file=sys.stderr,
    )


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
    phases = phases if phases is not None else model.phases("train")
    train_b, valid_b, test_b = make_batchers(ds, cfg, device, model=model)
    with writing_run(out, config, resume, overwrite):
        if not quiet:
            describe("training", cfg, ds, model, train_b, device, out)
        result = fit(model, train_b, valid_b, test_b, cfg, out, resume=resume, quiet=quiet, phases=phases)
    return RunResult(out, result)


@dataclass
class LoadedRun:
    model: torch.nn.Module
    cfg: RunConfig
    dataset: Dataset
    config: dict  # the raw config.json
    device: torch.device
    inputs: ItemInputs | None = None  # the item-side inputs the model was built from
    zero_shot: bool = False  # built for another catalogue than the run's, with no training on it (load_zero_shot)


def read_run_config(run_dir: str | Path) -> tuple[RunConfig, dict]:
    run = Path(run_dir)
    if not (run / "config.json").exists():
        raise NotFoundError(f"{run}: not a textrec run directory (no config.json)")
    config = read_json(run / "config.json")
    return RunConfig.from_dict({k: v for k, v in config.items() if k in ("model", "data", "train", "eval")}), config


def load_run(run_dir: str | Path, data_dir: str | Path | None = None, device: str = "auto") -> LoadedRun:
    """Rebuild a trained model from ``run_dir`` (and its dataset, or ``data_dir`` instead).

    ``data_dir`` with another catalogue than the run's (other items, or a pre-training run's sources merged)
    loads the run zero-shot (``load_zero_shot``): the model is built for that catalogue from its item content.
    """
    run = Path(run_dir)
    cfg, config = read_run_config(run)
    if not (run / "model.safetensors").exists():
        raise NotFoundError(f"{run}: no model.safetensors yet (the run has not finished an evaluation)")
    if "dataset" not in config and data_dir is None:
        raise NotFoundError(f"{run}: a pre-training run; fine-tune it on a dataset with `textrec finetune DIR --init {run}`, "
                            "or rank a dataset's items with it zero-shot with --data DIR")
    data_path = Path(data_dir) if data_dir is not None else Path(config["dataset"]["path"])
    ds = Dataset.load(data_path)
    dev = resolve_device(device)
    same_data = data_dir is None or ("dataset" in config and data_path.resolve() == Path(config["dataset"]["path"]).resolve())
    if not same_data and not _same_catalogue(ds, config):
        return load_zero_shot(run, cfg, config, ds, data_path, dev)
    expected = config["dataset"]["n_items"]
    if ds.n_items != expected:
        raise DataError(f"{data_path}: {ds.n_items} items but the model in {run} was trained for {expected}")
    recorded = config.get("item_inputs") if same_data else None
    try:
        inputs, _ = load_item_inputs(cfg, [data_path], recorded=recorded)
    except NotFoundError as e:
        trained_with = _recorded_inputs(recorded)
        if not trained_with:
            raise
        raise NotFoundError(f"{e}; {run} was trained with {trained_with} "
                            "(make them again under that name, or train again)") from None
    model = build_model(cfg, inputs)
    if load_weights(model, run / "model.safetensors", dev) is None:
        print(f"note: {run} records no checksum of model.safetensors (made before textrec kept them); "
              "its weights are not verified", file=sys.stderr)
    model.to(dev).eval()
    return LoadedRun(model, cfg, ds, config, dev, inputs)


def _same_catalogue(ds: Dataset, config: dict) -> bool:
    """Whether ``ds`` holds the items (keys, texts, attributes, in id order) the run was trained on."""
    rec = config.get("dataset")
    if rec is None or ds.n_items != rec["n_items"]:
        return False
    if (ds.meta.get("content_hash") or ds.content_hash()) == rec.get("content_hash"):
        return True
    try:
        trained = Dataset.load(rec["path"], features=False)
    except (TextrecError, OSError):
        print(f"note: {rec['path']}, the run's dataset, cannot be read to compare catalogues; {ds.n_items:,} items "
              "each, so they are taken to be the same", file=sys.stderr)
        return True
    return (trained.item_keys, trained.item_texts, trained.item_attributes) == (ds.item_keys, ds.item_texts, ds.item_attributes)


def trained_on(config: dict) -> str:
    """What a run's catalogue was, in words: ``tools (30 items)`` or ``tools + kitchen (60 items)``."""
    if "dataset" in config:
        return f"{config['dataset']['name']} ({config['dataset']['n_items']:,} items)"
    sources = (config.get("pretrain") or {}).get("datasets") or []
    return f"{' + '.join(d['name'] for d in sources)} ({sum(d['n_items'] for d in sources):,} items)"


def load_zero_shot(run: Path, cfg: RunConfig, config: dict, ds: Dataset, data_path: Path, dev) -> LoadedRun:
    """The run's model for the catalogue of ``ds``, with no training on it.

    Generic over models: the item-side inputs the model declares are read from ``data_path``, the model is
    built for that catalogue and every weight of the run except its ``CATALOGUE_KEYS`` is loaded (as
    fine-tuning does); the catalogue-sized state is then what the model computes from the new items' content
    (a text table, item codes, Recformer's sentences encoded on first use). Refused for a model that scores
    item IDs, one that learned a weight per item (a transductive mode), and inputs of another origin than
    the run's (another text encoder, another quantiser), which would not live in the space the run learned.
    The returned run's ``config`` describes the new dataset (``dataset``, ``item_inputs``) and keeps the
    run's own under ``zero_shot``; nothing is written to ``run``.
    """
    from textrec.models.spec import item_input_kinds
    from textrec.train.inputs import same_origin_problem
    from textrec.train.newcatalogue import complete_new_catalogue, trained_inputs
    from textrec.train.transfer import load_pretrained

    cls = model_class(cfg.model)
    where = f"{data_path} ({ds.n_items:,} items) is another catalogue than the one {run} was trained on ({trained_on(config)})"
    if not item_input_kinds(cls, cfg.model_config):
        raise TextrecError(f"{where}; {cfg.model} scores the item IDs it was trained on, so it cannot rank another "
                           f"catalogue's items (zero-shot needs a model that reads item content: {_content_models()})")
    complete_new_catalogue(run, config, cfg, data_path)  # a pre-trained run encodes / codes a bare dataset itself
    try:
        inputs, record = load_item_inputs(cfg, [data_path], recorded=config.get("item_inputs"))
    except NotFoundError:  # the run's input names do not exist there: the dataset's own choice
        inputs, record = load_item_inputs(cfg, [data_path])
    problem = same_origin_problem(trained_inputs(config), record)
    if problem:
        raise DataError(f"{where}; {problem}")
    model = build_model(cfg, inputs)
    skip = tuple(getattr(cls, "CATALOGUE_KEYS", ()))
    per_item = [n for n, p in model.named_parameters() if n.startswith(skip) and p.shape[:1] == (inputs.n_items + 1,)]
    if per_item:
        raise TextrecError(f"{where}; {cfg.model} learned a weight per item of its catalogue ({per_item[0]}, a transductive "
                           "model), which the new items do not have: zero-shot needs a run trained inductively")
    fresh = load_pretrained(model, run)
    if fresh:
        raise CheckpointError(f"{run}/model.safetensors has no weights for {', '.join(fresh[:3])}: it cannot rank {data_path} as it is")
    model.to(dev).eval()
    zero_shot = {"trained_on": trained_on(config), "run_dataset": config.get("dataset"), "run_item_inputs": config.get("item_inputs"),
                 "pretrain": config.get("pretrain")}
    described = {**config, "dataset": dataset_record(ds, data_path), "item_inputs": record, "zero_shot": zero_shot}
    return LoadedRun(model, cfg, ds, described, dev, inputs, zero_shot=True)


def _content_models() -> str:
    from textrec.models import MODELS

    return ", ".join(n for n in sorted(MODELS) if model_class(n).ITEM_INPUTS)


def _recorded_inputs(recorded: dict | None) -> str:
    """The item-side inputs a run's config.json names, e.g. ``item codes 'opq-32x256'``."""
    labels = {"embeddings": "embeddings", "word_drop_embeddings": "word-drop embeddings", "codes": "item codes",
              "features": "feature tables"}
    parts = []
    for key, label in labels.items():
        names = (recorded or {}).get(key)
        names = [names] if isinstance(names, str) else names or []
        if names:
            parts.append(f"{label} {', '.join(repr(n) for n in dict.fromkeys(names))}")
    return " and ".join(parts)
