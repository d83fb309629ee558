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
pre-trained weight except the catalogue-specific ones (the model's ``CATALOGUE_KEYS``), and trains through
the model's ``phases("finetune")`` (e.g. VQ-Rec's permutation phase; what ``freeze_encoder`` freezes is
the model's own declaration).
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from textrec import __version__
from textrec.config import RunConfig, apply_overrides, config_path
from textrec.data.dataset import Dataset
from textrec.data.multidomain import domain_of_rows, merge_domains
from textrec.errors import CheckpointError, ConfigError, TextrecError
from textrec.train import newcatalogue
from textrec.train.inputs import build_model, load_item_inputs
from textrec.train.loop import fit, resolve_device, seed_everything, verify_checkpoint
from textrec.train.run import RunResult, dataset_record, describe, make_batchers, read_run_config, writing_run


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
    phases = model.phases("pretrain")
    train_b, valid_b, _ = make_batchers(merged, cfg, device, pretraining=True, domains=domain_of_rows(datasets))
    with writing_run(out, config, resume, overwrite):
        newcatalogue.bundle_quantizer(config["new_catalogue"], out)  # a self-contained checkpoint: its quantiser inside
        if not quiet:
            describe("pre-training", cfg, merged, model, train_b, device, out)
        result = fit(model, train_b, valid_b, None, cfg, out, resume=resume, quiet=quiet, phases=phases)
    return RunResult(out, result)


def finetune_config(init_dir: str | Path, overrides: list[str], config: str | Path | None = None) -> RunConfig:
    """The pre-trained run's model config with default data/train/eval settings, then the values of the ``config``
    file (TOML, or a shipped config's short name such as ``recformer-reference``), then ``overrides``.

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
    cfg = RunConfig.from_dict(apply_overrides(d, overrides))
    for key in ("hidden_size", "n_layers", "n_heads", "inner_size"):
        if getattr(cfg.model_config, key, None) != getattr(init_cfg.model_config, key, None):
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


def load_pretrained(model: torch.nn.Module, init_dir: Path) -> list[str]:
    """Copy every transferable weight of ``init_dir`` into ``model``; return the keys left as initialised."""
    path = init_dir / "model.safetensors"
    if not path.exists():
        raise TextrecError(f"{init_dir}: no model.safetensors to fine-tune from")
    verified = verify_checkpoint(path)
    skip = tuple(getattr(model, "CATALOGUE_KEYS", ()))
    try:
        state = {k: v for k, v in load_file(str(path)).items() if not k.startswith(skip)}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is damaged or from another config ({e})") from None
    own = model.state_dict()
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise CheckpointError(f"{path} is damaged or from another config (weight {bad[0]} has shape "
                              f"{tuple(state[bad[0]].shape)}, this model needs {tuple(own[bad[0]].shape)})")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise CheckpointError(f"{path} is damaged or from another config (weights {unexpected[:3]} do not belong to this model)")
    if verified is None:
        print(f"note: {init_dir} records no checksum of model.safetensors (made before textrec kept them); "
              "its weights are not verified", file=sys.stderr)
    return [k for k in missing if not k.startswith(skip)]


def finetune_run(
    data_dir: str | Path, init_dir: str | Path, cfg: RunConfig, out_dir: str | Path, resume: bool = False, overwrite: bool = False,
    quiet: bool = False,
) -> RunResult:
    """Fine-tune the pre-trained run ``init_dir`` on the dataset at ``data_dir``."""
    data_dir, init_dir, out = Path(data_dir), Path(init_dir), Path(out_dir)
    ds = Dataset.load(data_dir)
    newcatalogue.complete_new_catalogue(init_dir, read_run_config(init_dir)[1], cfg, data_dir, finetune=True)
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
    phases = model.phases("finetune")
    fresh = load_pretrained(model, init_dir)
    model.to(device)
    train_b, valid_b, test_b = make_batchers(ds, cfg, device, model=model)
    with writing_run(out, config, resume, overwrite):
        if not quiet:
            describe("fine-tuning", cfg, ds, model, train_b, device, out)
            if fresh:
                print(f"newly initialised (not in the pre-trained run): {', '.join(sorted({k.split('.')[0] for k in fresh}))}",
                      file=sys.stderr)
        result = fit(model, train_b, valid_b, test_b, cfg, out, resume=resume, quiet=quiet, phases=phases)
    return RunResult(out, result)
