"""Run directories and checkpoints: write a run, verify and load its weights, load a finished run back.

A run directory holds ``config.json`` (the full resolved config, with the dataset it was trained on and the
names and origins of its item-side inputs) and ``model.safetensors`` (checked against ``checksums.json``);
``textrec.train.loop`` documents the rest. ``writing_run`` creates one for a training start and undoes the
start if it fails before an epoch is saved (a missing optional package, a device error, an interruption), so
the corrected command needs no ``--overwrite``.

``load_run`` rebuilds the model of a finished run for evaluation and recommendation, on its own dataset or on
another one (``data_dir``): the same catalogue reloads the inputs the run recorded; another catalogue loads
the run zero-shot (``load_zero_shot``); ``resolve_run`` lets a shipped checkpoint's name (``textrec.pretrained``)
stand for its folder. ``load_pretrained`` copies a pre-trained run's transferable weights
into a model built for a new catalogue (fine-tuning and zero-shot). Loading is read-only: it never writes to the
run or to the dataset. A dataset that lacks the inputs a pre-trained run reads (a bare, freshly prepared one)
is completed by the separate step ``textrec.train.newcatalogue.complete_run_catalogue``, which the CLI runs and
reports before loading. ``key=value`` overrides of the run's data section name the inputs to read; where a
dataset holds several tables of a kind and none is named, those made like the run's own (its quantiser, its
encoder) are read, and the choice is logged (``choose_matching_inputs``).

This module imports nothing from the training loop, so serving a run (``textrec.serve``) never loads it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, load_model

from textrec.config import RunConfig
from textrec.data.dataset import Dataset, check_dataset_hash
from textrec.errors import CheckpointError, ConfigError, DataError, NotFoundError, TextrecError
from textrec.io import checksum_matches, locked, read_json, write_json
from textrec.models import model_class
from textrec.models.spec import ItemInputs, spec_of
from textrec.pretrained import shipped_dir
from textrec.train.inputs import build_model, load_item_inputs

log = logging.getLogger(__name__)


# ---- writing a run directory ----------------------------------------------------------------------


def dataset_record(ds: Dataset, path: Path) -> dict:
    return {
        "path": str(Path(path).resolve()),
        "name": ds.name,
        "content_hash": ds.meta.get("content_hash") or ds.content_hash(),
        "n_items": ds.n_items,
        "n_users": ds.n_users,
    }



def _comparable(config: dict) -> dict:
    """A config without what may change between an interrupted run and its resumption."""
    c = {k: v for k, v in config.items() if k not in ("textrec_version", "new_catalogue", "recipe")}
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
            if "dataset" in saved and "dataset" in config:
                check_dataset_hash(saved["dataset"].get("content_hash"), config["dataset"], out)
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
    from textrec.collective import rank

    if rank() != 0:  # under torchrun only rank 0 writes (and cleans up)
        yield
        return
    with locked(out):  # a second writer of the same run gets a one-line error
        for tmp in out.glob(".*.tmp") if out.is_dir() else ():
            tmp.unlink(missing_ok=True)  # a killed writer's: with the lock held no live one owns them
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


# ---- verifying and loading weights ---------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TextrecError(f"train.device={name} but CUDA is not available (use train.device=cpu)")
    return device



def verify_checkpoint(path: Path) -> bool | None:
    """Refuse ``path`` if it is not the file the run wrote; True if verified, None if no checksum was kept."""
    matches = checksum_matches(path)
    if matches is False:
        raise CheckpointError(f"{path} is damaged or was changed after training (checksum mismatch)")
    return matches


def _first_problem(e: Exception) -> str:
    """The first specific line of an error (load_state_dict lists every mismatched tensor on its own line)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    more = ""
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines, more = lines[1:], f"; and {len(lines) - 2} more" if len(lines) > 2 else ""
    line = lines[0].split(". ")[0].rstrip(".")
    head, _, keys = line.partition(": ")
    if keys.startswith('"'):  # Missing key(s) in state_dict: "a", "b", ... -> the first three
        names = [k.strip(' "') for k in keys.split(",")]
        line = f"{head}: {', '.join(names[:3])}" + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return line + more


def weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a safetensors file; a file safetensors cannot read is damaged."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is damaged or from another config ({_first_problem(e)})") from None


def load_weights(model: torch.nn.Module, path: Path, device) -> bool | None:
    """Load the weights file ``path`` into ``model``, verified; one-line errors for damaged or foreign files.

    Returns what ``verify_checkpoint`` returns (None: the run kept no checksum for it).
    """
    verified = verify_checkpoint(path)
    own = model.state_dict()
    for key, shape in weight_shapes(path).items():
        if key not in own:
            raise CheckpointError(f"{path} is damaged or from another config (weight {key} does not belong to this model)")
        if tuple(own[key].shape) != shape:
            raise CheckpointError(f"{path} is damaged or from another config (weight {key} has shape {shape}, "
                                  f"this config needs {tuple(own[key].shape)})")
    try:
        load_model(model, str(path), device=str(device))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"{path} is damaged or from another config ({_first_problem(e)})") from None
    return verified


def load_pretrained(model: torch.nn.Module, init_dir: Path) -> list[str]:
    """Copy every transferable weight of ``init_dir`` into ``model``; return the keys left as initialised."""
    path = init_dir / "model.safetensors"
    if not path.exists():
        raise TextrecError(f"{init_dir}: no model.safetensors to fine-tune from")
    verified = verify_checkpoint(path)
    skip = spec_of(model).catalogue_keys
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
        log.warning("note: %s records no checksum of model.safetensors (made before textrec kept them); "
                    "its weights are not verified", init_dir)
    return [k for k in missing if not k.startswith(skip)]



# ---- loading a finished run -----------------------------------------------------------------------


@dataclass
class LoadedRun:
    model: torch.nn.Module
    cfg: RunConfig
    dataset: Dataset
    config: dict  # the raw config.json
    device: torch.device
    inputs: ItemInputs | None = None  # the item-side inputs the model was built from
    zero_shot: bool = False  # built for another catalogue than the run's, with no training on it (load_zero_shot)
    path: Path | None = None  # the run directory

    def build_model(self, inputs: ItemInputs) -> torch.nn.Module:
        """This run's model, freshly initialised, for ``inputs`` (another catalogue's); load weights into it."""
        return build_model(self.cfg, inputs)


def resolve_run(arg: str | Path) -> Path:
    """The run directory a command's RUN (or ``--init``) names: a path, or a shipped checkpoint's name
    (``textrec.pretrained``), verified against its checksums. An existing path wins over a name; a bare word that is
    neither is one line listing the shipped names; any other path is returned for the loader to report."""
    path = Path(arg)
    if path.exists() or len(path.parts) != 1:
        return path
    return shipped_dir(str(arg))


def read_run_config(run_dir: str | Path) -> tuple[RunConfig, dict]:
    run = Path(run_dir)
    if not (run / "config.json").exists():
        raise NotFoundError(f"{run}: not a textrec run directory (no config.json)")
    config = read_json(run / "config.json")
    return RunConfig.from_dict({k: v for k, v in config.items() if k in ("model", "data", "train", "eval")}), config


def load_run(run_dir: str | Path, data_dir: str | Path | None = None, device: str = "auto",
             overrides: list[str] | tuple = ()) -> LoadedRun:
    """Rebuild a trained model from ``run_dir`` (and its dataset, or ``data_dir`` instead).

    ``data_dir`` with another catalogue than the run's (other items, or a pre-training run's sources merged)
    loads the run zero-shot (``load_zero_shot``): the model is built for that catalogue from its item content.
    ``overrides``: ``key=value`` settings of the run's data section (``data.codes=NAME``, ...); an item input
    named there is read instead of the one the run recorded. Where ``data_dir`` holds several tables of a kind
    and none is named, the one from the run's own encoder or quantiser is read (``choose_matching_inputs``).
    """
    run = resolve_run(run_dir)
    cfg, config = read_run_config(run)
    cfg, chosen = data_overrides(cfg, overrides)
    if not (run / "model.safetensors").exists():
        raise NotFoundError(f"{run}: no model.safetensors yet (the run has not finished an evaluation)")
    if "dataset" not in config and data_dir is None:
        name = (config.get("shipped") or {}).get("name") or run  # a shipped checkpoint is named by its name
        raise NotFoundError(f"{name}: a pre-training run; fine-tune it on a dataset with `textrec finetune DIR --init {name}`, "
                            "or rank a dataset's items with it zero-shot with --data DIR")
    data_path = Path(data_dir) if data_dir is not None else Path(config["dataset"]["path"])
    ds = Dataset.load(data_path)
    dev = resolve_device(device)
    same_data = data_dir is None or ("dataset" in config and data_path.resolve() == Path(config["dataset"]["path"]).resolve())
    if same_data:  # re-prepared in place: its ids now name other items than the weights were trained for
        check_dataset_hash(config["dataset"].get("content_hash"), ds, run)
    if not same_data and not _same_catalogue(ds, config):
        return load_zero_shot(run, cfg, config, ds, data_path, dev, chosen)
    expected = config["dataset"]["n_items"]
    if ds.n_items != expected:
        raise DataError(f"{data_path}: {ds.n_items} items but the model in {run} was trained for {expected}")
    recorded = _unless_chosen(config.get("item_inputs"), chosen) if same_data else None
    if not same_data:
        cfg = choose_matching_inputs(_without_run_names(cfg, chosen), config, data_path)
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
        log.warning("note: %s records no checksum of model.safetensors (made before textrec kept them); "
                    "its weights are not verified", run)
    model.to(dev).eval()
    return LoadedRun(model, cfg, ds, config, dev, inputs, path=run)


# data.<key> -> the keys of a run's recorded ``item_inputs`` that naming it replaces
_INPUT_KEYS = {"embeddings": ("embeddings", "encoder"), "word_drop_embeddings": ("word_drop_embeddings",),
               "codes": ("codes", "quantizer"), "features": ("features",)}


def data_overrides(cfg: RunConfig, overrides: list[str] | tuple) -> tuple[RunConfig, set[str]]:
    """(``cfg`` with ``key=value`` overrides of its data section, the item-input keys they name).

    Only ``data.*`` settings may change when a finished run is read: the others describe how it was trained.
    """
    from textrec.config import apply_overrides

    if not overrides:
        return cfg, set()
    bad = [o for o in overrides if not o.strip().startswith("data.")]
    if bad:
        raise ConfigError(f"{bad[0]}: only data.* settings can be set when reading a finished run (e.g. data.codes=NAME)")
    new = RunConfig.from_dict(apply_overrides(cfg.to_dict(), list(overrides)))
    if new.data.max_seq_len != cfg.data.max_seq_len:
        raise ConfigError(f"data.max_seq_len cannot change when reading a finished run (its model reads histories of at "
                          f"most {cfg.data.max_seq_len} items)")
    cfg = new
    return cfg, {o.strip().split("=", 1)[0].split(".", 1)[1].strip() for o in overrides} & set(_INPUT_KEYS)


def _unless_chosen(recorded: dict | None, chosen: set[str]) -> dict | None:
    """A run's recorded item inputs less those the user named in the data section (those are read instead)."""
    if recorded is None or not chosen:
        return recorded
    drop = {k for c in chosen for k in _INPUT_KEYS[c]}
    return {k: v for k, v in recorded.items() if k not in drop}


def _without_run_names(cfg: RunConfig, chosen: set[str]) -> RunConfig:
    """``cfg`` without the embeddings and codes names the run was trained with (they name another dataset's tables),
    except those named now (``chosen``)."""
    from dataclasses import replace

    names = {k: "" for k in ("embeddings", "codes") if k not in chosen and getattr(cfg.data, k)}
    return replace(cfg, data=replace(cfg.data, **names)) if names else cfg


def choose_matching_inputs(cfg: RunConfig, config: dict, data_dir: str | Path) -> RunConfig:
    """``cfg`` naming, for each kind of item input the model reads that ``data_dir`` holds several of and ``cfg``
    does not name, the one made like the run's (``config``): item codes from the run's quantiser (else, from
    embeddings of the run's encoder), text embeddings from the run's encoder. Says which on the ``textrec``
    logger; unchanged where nothing or more than one matches (the loader then asks for a name)."""
    from dataclasses import replace

    from textrec.models.spec import item_input_kinds
    from textrec.train.inputs import _WORD_DROP, _encoder_origin, _quantiser_identity, _quantizer_origin

    data_dir = Path(data_dir)
    trained = trained_inputs(config)
    kinds = item_input_kinds(model_class(cfg.model), cfg.model_config)
    chosen: dict[str, str] = {}
    if "codes" in kinds and not cfg.data.codes and trained.get("quantizer"):
        infos = _tables(data_dir / "codes")
        if len(infos) > 1:
            want = _quantiser_identity(trained["quantizer"])
            match = [n for n, i in infos.items() if _quantiser_identity(_quantizer_origin(i)) == want]
            why = "the run's quantiser"
            if not match and trained.get("encoder"):
                enc = _tables(data_dir / "embeddings")
                match = [n for n, i in infos.items() if (i.get("embeddings") or {}).get("name") in enc
                         and _encoder_origin(enc[i["embeddings"]["name"]]) == trained["encoder"]]
                why = "embeddings of the run's encoder"
            if len(match) == 1:
                chosen["codes"] = match[0]
                log.info("%s holds several item codes (%s); reading %r, made with %s", data_dir, ", ".join(infos), match[0], why)
    if "text_embeddings" in kinds and not cfg.data.embeddings and trained.get("encoder"):
        infos = {n: i for n, i in _tables(data_dir / "embeddings").items() if not _WORD_DROP.search(n)}
        if len(infos) > 1:
            match = [n for n, i in infos.items() if _encoder_origin(i) == trained["encoder"]]
            if len(match) > 1 and (trained.get("embeddings") or [None])[0] in match:
                match = [trained["embeddings"][0]]  # the run's own name among several of its encoder
            if len(match) == 1:
                chosen["embeddings"] = match[0]
                log.info("%s holds several text embeddings (%s); reading %r, made with the run's encoder",
                         data_dir, ", ".join(infos), match[0])
    return replace(cfg, data=replace(cfg.data, **chosen)) if chosen else cfg


def _tables(folder: Path) -> dict[str, dict]:
    """name -> sidecar JSON of each ``.npy`` table in ``folder`` (embeddings/ or codes/)."""
    return {p.stem: (read_json(p.with_suffix(".json")) if p.with_suffix(".json").exists() else {})
            for p in sorted(folder.glob("*.npy"))}


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
        log.warning("note: %s, the run's dataset, cannot be read to compare catalogues; %s items each, so they are "
                    "taken to be the same", rec["path"], f"{ds.n_items:,}")
        return True
    return (trained.item_keys, trained.item_texts, trained.item_attributes) == (ds.item_keys, ds.item_texts, ds.item_attributes)


def trained_on(config: dict) -> str:
    """What a run's catalogue was, in words: ``tools (30 items)`` or ``tools + kitchen (60 items)``."""
    if "dataset" in config:
        return f"{config['dataset']['name']} ({config['dataset']['n_items']:,} items)"
    sources = (config.get("pretrain") or {}).get("datasets") or []
    return f"{' + '.join(d['name'] for d in sources)} ({sum(d['n_items'] for d in sources):,} items)"


def load_zero_shot(run: Path, cfg: RunConfig, config: dict, ds: Dataset, data_path: Path, dev,
                   chosen: set[str] = frozenset()) -> LoadedRun:
    """The run's model for the catalogue of ``ds``, with no training on it.

    Generic over models: the item-side inputs the model declares are read from ``data_path``, the model is
    built for that catalogue and every weight of the run except its ``SPEC.catalogue_keys`` is loaded (as
    fine-tuning does); the catalogue-sized state is then what the model computes from the new items' content
    (a text table, item codes, Recformer's sentences encoded on first use). Refused for a model that scores
    item IDs, one that learned a weight per item (a transductive mode), and inputs of another origin than
    the run's (another text encoder, another quantiser), which would not live in the space the run learned.
    The returned run's ``config`` describes the new dataset (``dataset``, ``item_inputs``) and keeps the
    run's own under ``zero_shot``; nothing is written to ``run`` or to ``data_path``: a bare dataset is
    completed first by ``textrec.train.newcatalogue.complete_new_catalogue``.
    """
    from textrec.models.spec import item_input_kinds
    from textrec.train.inputs import same_origin_problem

    cls = model_class(cfg.model)
    where = f"{data_path} ({ds.n_items:,} items) is another catalogue than the one {run} was trained on ({trained_on(config)})"
    if not item_input_kinds(cls, cfg.model_config):
        raise TextrecError(f"{where}; {cfg.model} scores the item IDs it was trained on, so it cannot rank another "
                           f"catalogue's items (zero-shot needs a model that reads item content: {_content_models()})")
    try:
        inputs, record = load_item_inputs(cfg, [data_path], recorded=_unless_chosen(config.get("item_inputs"), set(chosen)))
    except NotFoundError:  # the run's input names do not exist there: the dataset's own (matching) choice
        cfg = choose_matching_inputs(_without_run_names(cfg, chosen), config, data_path)
        inputs, record = load_item_inputs(cfg, [data_path])
    problem = same_origin_problem(trained_inputs(config), record)
    if problem:
        raise DataError(f"{where}; {problem}")
    model = build_model(cfg, inputs)
    skip = spec_of(cls).catalogue_keys
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
    return LoadedRun(model, cfg, ds, described, dev, inputs, zero_shot=True, path=run)


def _content_models() -> str:
    from textrec.models import MODELS

    return ", ".join(n for n in sorted(MODELS) if spec_of(model_class(n)).item_inputs)


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


def trained_inputs(config: dict) -> dict:
    """The run's ``item_inputs`` with its quantiser named by the recorded sha1, so codes made with the bundled
    copy match it even where the original file is gone."""
    rec = dict(config.get("item_inputs") or {})
    sha1 = (config.get("new_catalogue") or {}).get("quantizer_sha1")
    if sha1 and rec.get("quantizer"):
        rec["quantizer"] = f"quantizer:{sha1}"
    return rec
