"""Transfer: multi-domain pre-training and fine-tuning a pre-trained model on a target dataset.

``pretrain_run`` merges the source datasets into one catalogue (``merge_domains``), reads and merges their
item-side inputs (refusing inputs of different origin), and trains through the model's ``phases("pretrain")``
on one row per (prefix, next item) in domain-stratified batches (``train.batching="stratified"``): every
batch mixes the domains in proportion and holds targets of many users — the references' mixed-domain
negatives — and rows of one user are never each other's negatives. Unlike the references, which pre-train for a fixed 300 epochs with no
validation, textrec monitors the merged validation split (full ranking over the merged catalogue) and
keeps the best epoch with the usual patience; ``train.patience`` larger than ``train.epochs`` recovers the
fixed-length behaviour.

``finetune_run`` builds the model for the target dataset (its own text embeddings or codes), loads every
pre-trained weight except the catalogue-specific ones (the model's ``SPEC.catalogue_keys``), and trains through
the model's ``phases("finetune")`` (e.g. VQ-Rec's permutation phase; what ``freeze_encoder`` freezes is
the model's own declaration).
"""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

from textrec import __version__
from textrec.config import RunConfig, apply_overrides, config_path, with_recipe
from textrec.data.dataset import Dataset
from textrec.data.multidomain import domain_of_rows, merge_domains
from textrec.errors import ConfigError, TextrecError
from textrec.models import model_class
from textrec.models.spec import spec_of
from textrec.runs import (
    choose_matching_inputs,
    dataset_record,
    load_pretrained,  # noqa: F401 (re-exported: its home was this module)
    read_run_config,
    writing_run,
)
from textrec.train import distributed, newcatalogue
from textrec.train.inputs import build_model, load_item_inputs
from textrec.train.loop import fit, resolve_device, seed_everything
from textrec.train.run import RunResult, describe, make_batchers

log = logging.getLogger(__name__)


def pretrain_run(
    data_dirs: list[str | Path], cfg: RunConfig, out_dir: str | Path, resume: bool = False, overwrite: bool = False, quiet: bool = False
) -> RunResult:
    """Pre-train ``cfg.model`` on the union of ``data_dirs`` with its pre-training loss."""
    dirs = [Path(d) for d in data_dirs]
    if not dirs:
        raise TextrecError("pretrain needs at least one dataset directory")
    datasets = [Dataset.load(d) for d in dirs]
    merged, offsets = merge_domains(datasets)
    inputs, record = load_item_inputs(cfg, dirs, pretraining=True)
    config = {
        "textrec_version": __version__,
        **cfg.to_dict(),
        "pretrain": {"datasets": [dataset_record(d, p) for d, p in zip(datasets, dirs)], "item_offsets": offsets.tolist()},
        "item_inputs": record,
        "new_catalogue": newcatalogue.describe(dirs[0], record),  # what another catalogue needs to be read by this run
    }
    out = Path(out_dir)
    device = resolve_device(cfg.train.device)
    seed_everything(cfg.train.seed)
    model = build_model(cfg, inputs).to(device)
    del inputs  # the model holds its own copy of the item tables: do not keep a second one through training
    phases = model.phases("pretrain")
    train_b, valid_b, _ = make_batchers(merged, cfg, device, pretraining=True, domains=domain_of_rows(datasets))
    with writing_run(out, config, resume, overwrite):
        if distributed.is_writer():
            newcatalogue.bundle_quantizer(config["new_catalogue"], out)  # a self-contained checkpoint: its quantiser inside
        if not quiet:
            describe("pre-training", cfg, merged, model, train_b, device, out)
        result = fit(model, train_b, valid_b, None, cfg, out, resume=resume, quiet=quiet, phases=phases)
    return RunResult(out, result)


def finetune_config(init_dir: str | Path, overrides: list[str], config: str | Path | None = None) -> RunConfig:
    """The pre-trained run's model config with default data/train/eval settings and the model's fine-tuning recipe,
    then the values of the ``config`` file (TOML, or a shipped config's short name such as ``recformer-reference``), then ``overrides``.

    Pre-training settings (epochs, batch size, ...) are not inherited; the model architecture must not change,
    nor the model (a ``model.name`` in the file must be the pre-trained run's).
    """
    init_cfg, _ = read_run_config(init_dir)
    d = {"model": init_cfg.to_dict()["model"]}
    if config is not None:
        path, values = _config_file(config)
        named = (values.get("model") or {}).get("name") if isinstance(values.get("model"), dict) else None
        if named is not None and named != init_cfg.model:
            raise ConfigError(f"{path}: model.name = {named!r}, but {init_dir} is a pre-trained {init_cfg.model} run")
        for section, table in values.items():
            d[section] = {**d.get(section, {}), **table} if isinstance(table, dict) else table
    cfg = with_recipe(apply_overrides(d, overrides), "finetune")
    for key in spec_of(model_class(cfg.model)).architecture_keys:
        if getattr(cfg.model_config, key) != getattr(init_cfg.model_config, key):
            raise TextrecError(f"model.{key} cannot change when fine-tuning (the pre-trained weights have {getattr(init_cfg.model_config, key)})")
    return cfg


def _config_file(config: str | Path) -> tuple[Path, dict]:
    """(path, parsed values) of a config file or a shipped config's short name."""
    path = config_path(config)
    try:
        return path, tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML ({e})") from None


def finetune_run(
    data_dir: str | Path, init_dir: str | Path, cfg: RunConfig, out_dir: str | Path, resume: bool = False, overwrite: bool = False,
    quiet: bool = False,
) -> RunResult:
    """Fine-tune the pre-trained run ``init_dir`` on the dataset at ``data_dir``."""
    data_dir, init_dir, out = Path(data_dir), Path(init_dir), Path(out_dir)
    ds = Dataset.load(data_dir)
    init_config = read_run_config(init_dir)[1]
    newcatalogue.complete_new_catalogue(init_dir, init_config, cfg, data_dir, finetune=True)
    cfg = choose_matching_inputs(cfg, init_config, data_dir)  # of several codes / embeddings, those like the run's
    inputs, record = load_item_inputs(cfg, [data_dir])
    config = {
        "textrec_version": __version__,
        **cfg.to_dict(),
        "dataset": dataset_record(ds, data_dir),
        "item_inputs": record,
        "init": str(init_dir.resolve()),
    }
    device = resolve_device(cfg.train.device)
    seed_everything(cfg.train.seed)
    model = build_model(cfg, inputs)
    del inputs  # the model holds its own copy of the item tables: do not keep a second one through training
    phases = model.phases("finetune")
    fresh = load_pretrained(model, init_dir)
    model.to(device)
    train_b, valid_b, test_b = make_batchers(ds, cfg, device, model=model)
    with writing_run(out, config, resume, overwrite):
        if not quiet:
            describe("fine-tuning", cfg, ds, model, train_b, device, out)
            if fresh:
                log.info(f"newly initialised (not in the pre-trained run): {', '.join(sorted({k.split('.')[0] for k in fresh}))}")
        result = fit(model, train_b, valid_b, test_b, cfg, out, resume=resume, quiet=quiet, phases=phases)
    return RunResult(out, result)
