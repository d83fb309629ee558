"""Strict, typed run configuration: TOML files plus ``key=value`` overrides.

A run is configured by one nested config::

    [model]            # name selects the model; the other keys are that model's config dataclass
    name = "sasrec"
    hidden_size = 300
    [data]
    max_seq_len = 50
    [train]
    lr = 0.001
    [eval]
    ks = [10, 50]

``--config`` takes a TOML file or the short name of a config shipped with textrec (``textrec/configs/``,
e.g. ``recformer-reference``: Recformer fine-tuned as the reference does); a file of that name wins.

Overrides use dotted keys: ``train.lr=3e-3 model.hidden_size=64 eval.ks=[10,20]``; values are parsed as
TOML (so ``true``, ``[1, 2]`` and numbers work) and fall back to a plain string; a list may hold bare words
(``data.features=[feat1CLS,feat3CLS]``, as people type them on a command line). An unknown key or a value of
the wrong type is a ``ConfigError`` that names the nearest valid key (``train.lrr`` -> ``train.lr``,
``train.max_seq_len`` -> ``data.max_seq_len``) or lists the choices: a typo never silently becomes a default.

Settings come in layers, later ones winning: the generic defaults (the dataclasses below; for pre-training
``PRETRAIN_DEFAULTS`` over them), the model's reference recipe for the kind of run (``SPEC.recipe``, e.g.
Recformer's batch of 16 and learning rate 5e-5), the config file, the ``key=value`` overrides. What the recipe
set is kept in ``RunConfig.recipe``, printed in the run header and written to ``config.json``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from textrec.errors import ConfigError


@dataclass(frozen=True)
class DataConfig:
    max_seq_len: int = 50  # histories keep their last 50 items (the references' MAX_ITEM_LIST_LENGTH)
    embeddings: str = ""  # text models: name under DIR/embeddings ("" = the only one there)
    word_drop_embeddings: str = ""  # pre-training: word-drop view ("" = the model's name for it, UniSRec "<embeddings>-wd15")
    codes: str = ""  # code models: name under DIR/codes ("" = the only one there)
    features: tuple[str, ...] = ()  # item feature tables to read, under DIR/features ("" = those the model config names)
    long_sequences: Literal["exact", "chunked"] = "exact"  # targets past the first window: own rows (reference) or chunks
    # "auto": what the model declares for training (whole-sequence windows for causal models) and one row per
    # prefix for pre-training (user-diverse batches); "windows" is refused for models that are not causal
    train_rows: Literal["auto", "windows", "prefixes", "sampled"] = "auto"
    # pre-training on windows: at most this many loss positions per window per epoch, drawn anew each epoch, so
    # a batch spans >= batch_size / N users (0 = all); same-user rows are never negatives either way
    pretrain_targets_per_row: int = 8

    def __post_init__(self) -> None:
        _check(self.max_seq_len >= 1, "data.max_seq_len must be >= 1")
        _check(self.pretrain_targets_per_row >= 0, "data.pretrain_targets_per_row must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 300  # upper bound; early stopping usually ends the run much earlier (references: 300)
    batch_size: int = 2048  # next-item targets per batch, the references' unit (2048 prefix rows)
    lr: float = 1e-3  # references: Adam, learning_rate 0.001
    weight_decay: float = 0.0  # references: 0
    optimizer: Literal["adam", "adamw"] = "adam"  # references use Adam
    patience: int = 10  # evaluations without a better valid metric before stopping (references: 10)
    seed: int = 2020  # RecBole's default seed
    device: str = "auto"  # "auto" (CUDA when available), "cpu", "cuda" or "cuda:N"
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU, where fp32 is faster and exact ...
    # ... unless amp_cpu: bf16 autocast of the training forward on CPU too, for CPUs with bf16 instructions
    # (AVX512-BF16 / AMX: a MiniLM training step measured 1.6x faster); validation and test stay fp32
    amp_cpu: bool = False
    compile: bool = False  # torch.compile the training step (helps on GPU, costs start-up time)
    # how rows are grouped (textrec.data.batching); "auto": "bucket" for training, "stratified" (every batch
    # mixes the source domains in proportion, rows of similar length) for pre-training
    batching: Literal["auto", "bucket", "random", "stratified"] = "auto"
    grad_clip: float = 0.0  # max gradient norm; 0 disables clipping (references do not clip)
    grad_accum: int = 1  # batches whose gradients are summed before each optimiser step
    schedule: Literal["constant", "linear"] = "constant"  # learning rate: constant (references) or linear decay to 0
    warmup_steps: int = 0  # optimiser steps of linear warm-up from 0 (Recformer: 10000 in pre-training)
    no_decay_1d: bool = True  # with weight_decay > 0: biases and LayerNorm weights get none (HF/BERT convention)
    eval_every: int = 1  # evaluate on validation every N epochs (references: eval_step 1)
    tensorboard: bool = False  # also write TensorBoard event files (needs the tensorboard package)
    num_threads: int = 0  # CPU threads for torch; 0 keeps torch's default
    limit_batches: int = 0  # at most this many batches an epoch (0 = all): quick probes and scaling measurements

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "train.epochs must be >= 1")
        _check(self.batch_size >= 1, "train.batch_size must be >= 1")
        _check(self.lr > 0, "train.lr must be > 0")
        _check(self.patience >= 1, "train.patience must be >= 1")
        _check(self.eval_every >= 1, "train.eval_every must be >= 1")
        _check(self.grad_accum >= 1, "train.grad_accum must be >= 1")
        _check(self.warmup_steps >= 0, "train.warmup_steps must be >= 0")
        _check(self.weight_decay >= 0, "train.weight_decay must be >= 0")
        _check(self.grad_clip >= 0, "train.grad_clip must be >= 0")
        _check(self.num_threads >= 0, "train.num_threads must be >= 0")
        _check(self.limit_batches >= 0, "train.limit_batches must be >= 0 (0 = every batch)")
        _check(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            f"train.device must be auto, cpu, cuda or cuda:N, not {self.device!r}",
        )


@dataclass(frozen=True)
class EvalConfig:
    ks: tuple[int, ...] = (10, 50)  # cut-offs of Recall/NDCG/MRR (the papers report 10 and 50)
    select_metric: str = "ndcg@10"  # validation metric for early stopping and model selection (references)
    mask_history: bool = False  # references do not mask history items (REFERENCE_NOTES section 0)
    ties: Literal["pessimistic", "random"] = "pessimistic"  # tied candidates rank above the target, or expected rank
    batch_size: int = 256  # users per scoring batch (batches are length-sorted, so small ones trim more padding)
    item_chunk: int = 65536  # items per scoring chunk; bounds memory for large catalogues
    extra: tuple[str, ...] = ()  # optional metrics without cut-off: "mrr", "auc" (Recformer reports both)
    # validation (early stopping) on at most this many users, a fixed sample drawn with train.seed (0 = all);
    # the test split is always whole
    valid_users: int = 0

    def __post_init__(self) -> None:
        _check(len(self.ks) > 0 and all(k >= 1 for k in self.ks), "eval.ks must be positive integers")
        name, _, k = self.select_metric.partition("@")
        _check(
            name in ("recall", "ndcg", "mrr") and k.isdigit() and int(k) in self.ks,
            f"eval.select_metric must be recall@K, ndcg@K or mrr@K with K in eval.ks {list(self.ks)}, not {self.select_metric!r}",
        )
        _check(self.batch_size >= 1 and self.item_chunk >= 1, "eval.batch_size and eval.item_chunk must be >= 1")
        _check(self.valid_users >= 0, f"eval.valid_users must be >= 0 (0 = every user), not {self.valid_users}")
        bad = [m for m in self.extra if m not in ("mrr", "auc")]
        _check(not bad, f"eval.extra may hold mrr and auc, not {bad}")


@dataclass(frozen=True)
class RunConfig:
    model: str  # registry name
    model_config: Any  # the model's own config dataclass
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # "section.key" -> value: the settings the model's recipe (and the pre-training defaults) gave this run, i.e.
    # those the user's file and overrides left open; a record, already part of the sections above
    recipe: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict:
        return {
            "model": {"name": self.model, **dataclasses.asdict(self.model_config)},
            "data": dataclasses.asdict(self.data),
            "train": dataclasses.asdict(self.train),
            "eval": dataclasses.asdict(self.eval),
            "recipe": dict(self.recipe),
        }

    @classmethod
    def from_dict(cls, d: dict, registry: dict | None = None) -> RunConfig:
        """Build from nested dicts (a parsed TOML file or a saved config.json), strictly."""
        if registry is None:
            from textrec.models import MODELS as registry  # name -> function returning the model class
        d = dict(d)
        unknown = set(d) - {*SECTIONS, "recipe"}
        if unknown:
            raise ConfigError(f"unknown config section {sorted(unknown)[0]!r}{_nearest(sorted(unknown)[0], SECTIONS)} "
                              f"(valid: {', '.join(SECTIONS)})")
        model_section = dict(d.get("model", {}))
        name = model_section.pop("name", None)
        if name is None:
            raise ConfigError("no model given: set model.name in the config or pass --model")
        if name not in registry:
            raise ConfigError(f"unknown model {name!r} (valid: {', '.join(sorted(registry))})")
        config_cls = registry[name]().Config
        every = {s: [f.name for f in dataclasses.fields(c)] for s, c in
                 (("model", config_cls), ("data", DataConfig), ("train", TrainConfig), ("eval", EvalConfig))}
        every["model"].append("name")
        recipe = d.get("recipe") or {}
        if not isinstance(recipe, dict):
            raise ConfigError(f"recipe must be a table of section.key values, not {type(recipe).__name__}")
        return cls(
            model=name,
            model_config=from_dict(config_cls, model_section, "model", every),
            data=from_dict(DataConfig, d.get("data", {}), "data", every),
            train=from_dict(TrainConfig, d.get("train", {}), "train", every),
            eval=from_dict(EvalConfig, d.get("eval", {}), "eval", every),
            recipe=dict(recipe),
        )


SECTIONS = ("model", "data", "train", "eval")

# pre-training as the benchmarks run it: targets past a window's 50 items in chunks (MovieLens' long histories:
# one UniSRec epoch on Office + MovieLens-100K measured 5 min / 3.3 GB against 42 min / 9.1 GB with "exact"),
# ended by patience on the merged validation split rather than after the references' 300 epochs
# pre-training validates on a fixed sample of 20,000 users: ranking every user of a 4M-interaction corpus against
# its ~200k items would cost more than a training epoch, and 20,000 users (the u2000 sample's count) pick the epoch
PRETRAIN_DEFAULTS: dict[str, Any] = {"data.long_sequences": "chunked", "train.epochs": 20, "train.patience": 5,
                                     "eval.valid_users": 20_000}


def recipe_for(model_cls: type, kind: str) -> dict[str, Any]:
    """``"section.key" -> value`` defaults of a run of ``kind`` ("train", "pretrain", "finetune") of ``model_cls``:
    the generic pre-training defaults for "pretrain", then the model's own recipe (``SPEC.recipe``)."""
    from textrec.models.spec import spec_of

    base = dict(PRETRAIN_DEFAULTS) if kind == "pretrain" else {}
    return {**base, **spec_of(model_cls).recipe.for_kind(kind)}


def model_recipes() -> dict[str, dict]:
    """Every registered model's defaults: ``{"train" | "pretrain" | "finetune": {"section.key": value}, "source": ...,
    "extra": ...}`` (pre-training includes ``PRETRAIN_DEFAULTS``); a model whose optional package is missing gives
    ``{"missing": <the one-line reason>}``. What ``textrec info --models`` and ``textrec train --help`` show."""
    from textrec.errors import NotFoundError
    from textrec.models import MODELS
    from textrec.models.spec import spec_of

    out = {}
    for name, load in MODELS.items():
        try:
            cls = load()
        except NotFoundError as e:
            out[name] = {"missing": str(e)}
            continue
        spec = spec_of(cls)
        out[name] = {kind: recipe_for(cls, kind) for kind in ("train", "pretrain", "finetune")}
        out[name].update(source=spec.recipe.source, extra=spec.extra)
    return out


def format_setting(value) -> str:
    """A setting as it is typed in an override: ``eval.extra=[mrr,auc]``, ``train.amp=false``."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(format_setting, value)) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def with_recipe(d: dict, kind: str, registry: dict | None = None) -> RunConfig:
    """The config of nested dict ``d`` (file values and overrides applied), the model's recipe for runs of ``kind``
    filling every setting ``d`` leaves open; ``RunConfig.recipe`` records what it filled."""
    if registry is None:
        from textrec.models import MODELS as registry
    name = (d.get("model") or {}).get("name") if isinstance(d.get("model"), dict) else None
    if name not in registry:
        return RunConfig.from_dict(d, registry)  # the missing or unknown model is reported there
    filled = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    applied = {}
    for key, value in recipe_for(registry[name](), kind).items():
        section, _, field_name = key.partition(".")
        table = filled.setdefault(section, {})
        if isinstance(table, dict) and field_name not in table:
            table[field_name] = list(value) if isinstance(value, (list, tuple)) else value
            applied[key] = table[field_name]
    return RunConfig.from_dict({**filled, "recipe": applied}, registry)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


# ---- strict dataclass construction -------------------------------------------------------------


def _nearest(word: str, valid) -> str:
    """`` (did you mean X?)`` for the valid word nearest to ``word``, or "" when none is near."""
    close = difflib.get_close_matches(word, list(valid), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def from_dict(cls, values: dict, where: str, every: dict[str, list[str]] | None = None):
    """Instantiate dataclass ``cls`` from ``values``; unknown keys and wrong types raise ConfigError.

    ``every``: section -> valid keys of the whole config, so that a key given in the wrong section is pointed to
    the right one (``train.max_seq_len`` -> ``data.max_seq_len``).
    """
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a table of keys, not {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            elsewhere = [s for s, keys in (every or {}).items() if s != where and key in keys]
            hint = f" (did you mean {elsewhere[0]}.{key}?)" if elsewhere else _nearest(key, names).replace("mean ", f"mean {where}.")
            raise ConfigError(f"unknown config key {where}.{key}{hint}; valid keys: {', '.join(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value, tp, where: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {', '.join(map(str, args))}, not {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {tp}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, not {value!r}")
        elem = args[0] if args else Any
        items = [_coerce(v, elem, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, not {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, not {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, not {value!r}")
        if not math.isfinite(value):  # lr=inf trains to non-finite weights and all-zero metrics with exit 0
            raise ConfigError(f"{where} must be a finite number, not {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, not {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported config type {_type_name(tp)}")


# ---- files and overrides -----------------------------------------------------------------------


def parse_value(text: str):
    """Parse an override value as TOML (numbers, booleans, lists, quoted strings), else a bare string.

    A bracketed list that is not TOML is read item by item, so bare words work: ``[feat1CLS,feat3CLS]``.
    """
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    inner = text.strip()
    if inner.startswith("[") and inner.endswith("]") and "[" not in inner[1:-1] and "]" not in inner[1:-1]:
        items = [part.strip() for part in inner[1:-1].split(",")]
        if items and items[-1] == "":  # a trailing comma, as TOML allows
            items.pop()
        if all(items):
            return [parse_value(part) for part in items]
    return text


def apply_overrides(d: dict, overrides: list[str]) -> dict:
    """Return a copy of nested dict ``d`` with ``section.key=value`` overrides applied."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value (e.g. train.lr=0.003)")
        section, dot, name = key.strip().partition(".")
        if not dot or not name or "." in name:
            raise ConfigError(f"override key {key!r} must be section.key with section one of model, data, train, eval")
        if section not in SECTIONS:
            raise ConfigError(f"unknown config section {section!r} in {key!r}{_nearest(section, SECTIONS)} "
                              "(valid: model, data, train, eval)")
        out.setdefault(section, {})[name] = parse_value(value.strip())
    return out


SHIPPED_CONFIGS = Path(__file__).parent / "configs"  # package data: configs reachable by their short name


def shipped_configs() -> list[str]:
    """Short names of the configs shipped with textrec (``--config NAME``)."""
    return sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.toml"))


def config_path(path: str | Path) -> Path:
    """``path`` when that file exists, else the shipped config of that short name (``recformer-reference``)."""
    given = Path(path)
    if given.exists() or given.parent != Path("."):
        return given
    shipped = SHIPPED_CONFIGS / (given.name if given.suffix == ".toml" else f"{given.name}.toml")
    if shipped.exists():
        return shipped
    raise ConfigError(f"{path}: config file not found, nor a shipped config (shipped: {', '.join(shipped_configs()) or 'none'})")


def load_config(
    path: str | Path | None = None, overrides: list[str] = (), model: str | None = None, registry: dict | None = None,
    kind: Literal["train", "pretrain", "finetune"] = "train",
) -> RunConfig:
    """Config from an optional TOML file (or shipped config name), a model name and overrides (later ones win), over
    the model's recipe for runs of ``kind`` (``with_recipe``)."""
    d: dict = {}
    if path is not None:
        path = config_path(path)
        try:
            d = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except (IsADirectoryError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not a UTF-8 TOML file ({e.strerror if isinstance(e, OSError) else e.reason})") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML ({e})") from None
    if model is not None:
        d.setdefault("model", {})
        file_model = d["model"].get("name")
        if file_model is not None and file_model != model:
            raise ConfigError(f"--model {model} disagrees with model.name = {file_model!r} in {path}")
        d["model"]["name"] = model
    d = apply_overrides(d, list(overrides))
    try:
        return with_recipe(d, kind, registry)
    except ConfigError as e:  # a bad value from the file: name the file, as a TOML error does
        keys = [o.partition("=")[0].strip() for o in overrides]
        if path is None or str(path) in str(e) or any(k and k in str(e) for k in keys):
            raise
        raise ConfigError(f"{path}: {e}") from None
