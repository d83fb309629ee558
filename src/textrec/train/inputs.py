"""Item-side inputs of a model, read from dataset directories, and the model builder.

A model never reads a dataset. It declares the kinds of item-side input it needs (``SPEC.item_inputs``, and the
optional ``SPEC.pretrain_inputs``; see ``textrec.models.spec``); ``load_item_inputs`` reads those kinds from one
or several dataset directories — several are merged in order, as ``textrec.data.multidomain.merge_domains``
merges their items — and ``build_model`` passes them to the constructor as one ``ItemInputs``.

Merged inputs must share their origin: embeddings from one encoder (identity, pooling, max length) and codes
from one quantiser; anything else is refused, since vectors from different encoders or codes from different
codebooks do not live in one space. Each loaded input's name and origin go to the run's config.json
(``item_inputs``), and a finished run reloads exactly those names (``recorded``), whatever else was added to
the dataset since.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import torch

from textrec.config import RunConfig
from textrec.data.multidomain import merge_item_arrays
from textrec.errors import DataError, NotFoundError
from textrec.models import model_class
from textrec.models.spec import FeatureTable, ItemInputs, item_input_kinds, spec_of

_WORD_DROP = re.compile(r"-wd\d+$")


def _embedding_name(data_dir: Path, name: str) -> str | None:
    """``name``, or the only non-word-drop embeddings of ``data_dir`` (None lets the loader decide)."""
    if name:
        return name
    from textrec.text.encode import list_item_embeddings

    encoded, _ = list_item_embeddings(data_dir)
    plain = [n for n in encoded if not _WORD_DROP.search(n)]
    return plain[0] if len(plain) == 1 else None


def _encoder_origin(info: dict) -> str:
    """What makes two embedding tables comparable: the encoder identity, pooling and max length."""
    enc = info.get("encoder")
    if isinstance(enc, dict):
        return f"{enc.get('identity', enc.get('name'))} pooling={enc.get('pooling')} max_length={enc.get('max_length')}"
    return f"attached:{info.get('source', info.get('name'))}"  # attached features: only the same file matches


def _quantizer_origin(info: dict) -> str:
    """What makes two code tables comparable: the same quantiser (codebooks) produced both."""
    kind = info.get("kind")
    if kind == "joint_fit":
        return f"joint:{info.get('shared_index') or info.get('fit_on')}:{info.get('seed')}"
    if kind == "quantizer":
        return f"quantizer:{info.get('quantizer_sha1')}"
    if kind == "imported":
        return f"index:{info.get('index_sha1')}"
    return f"{kind}:{info.get('path')}"  # fitted on one dataset alone (or random): unique to it


def _quantiser_identity(origin: str) -> str:
    """A quantiser origin as the quantiser file itself where it can be found: codes fitted on one dataset (their
    ``.index`` next to them) or jointly with a shared index then match codes encoded with that file (``--quantizer``)."""
    from textrec.quant.codes import _file_sha1

    kind, _, rest = origin.partition(":")
    path = {"fit": lambda: Path(rest).with_suffix(".index"), "joint": lambda: Path(rest.rpartition(":")[0])}.get(kind)
    if path is not None and path().is_file():
        return f"quantizer:{_file_sha1(path())}"
    return origin.replace("index:", "quantizer:", 1) if kind == "index" else origin


def same_origin_problem(trained: dict, new: dict) -> str | None:
    """Why item inputs recorded as ``new`` (``load_item_inputs``' provenance) do not live in the space a run
    trained on inputs recorded as ``trained`` learned (None: they do, or nothing says otherwise)."""
    if trained.get("encoder") and new.get("encoder") and trained["encoder"] != new["encoder"]:
        return (f"its embeddings {', '.join(map(repr, new.get('embeddings') or []))} come from {new['encoder']}, the run's "
                f"from {trained['encoder']}; encode it with the run's encoder, pooling and max length (textrec encode DIR --encoder ...)")
    if trained.get("quantizer") and new.get("quantizer"):
        if _quantiser_identity(trained["quantizer"]) != _quantiser_identity(new["quantizer"]):
            return (f"its item codes come from {new['quantizer']}, the run's from {trained['quantizer']}; code its items "
                    "with the run's quantiser (textrec quantize DIR --quantizer THE_RUN'S_INDEX)")
    return None


def _same_origin(what: str, dirs: list[Path], origins: list[str]) -> None:
    if len(set(origins)) > 1:
        pairs = "; ".join(f"{d}: {o}" for d, o in zip(dirs, origins))
        raise DataError(f"the {what} of these datasets come from different sources and cannot be merged ({pairs}); "
                        f"make them with one {'encoder' if what == 'embeddings' else 'joint quantiser (textrec quantize DIR DIR ...)'}")


def _load_embeddings(dirs, names, record, cfg, pretraining):
    from textrec.text.encode import load_item_embeddings

    tables, infos = zip(*(load_item_embeddings(d, n) for d, n in zip(dirs, names)))
    _same_origin("embeddings", dirs, [_encoder_origin(i) for i in infos])
    record.update(embeddings=[i.get("name") for i in infos], encoder=_encoder_origin(infos[0]))
    return torch.from_numpy(merge_item_arrays(list(tables))), infos


def _load_word_drop(dirs, record, cfg, view: str, recorded):
    """The word-drop view: the recorded name, ``data.word_drop_embeddings``, else the model's name for it (``view``)."""
    from textrec.text.encode import load_item_embeddings

    name = (recorded or {}).get("word_drop_embeddings") or cfg.data.word_drop_embeddings or view
    try:
        tables, infos = zip(*(load_item_embeddings(d, name) for d in dirs))
    except NotFoundError:
        if cfg.data.word_drop_embeddings:
            raise
        logging.getLogger(__name__).warning(f"note: no word-drop view {name!r} in every source (textrec encode DIR "
                                            "--word-drop 0.15 makes it); UniSRec pre-training augments by item drop only")
        record["word_drop_embeddings"] = None
        return None
    _same_origin("embeddings", dirs, [_encoder_origin(i) for i in infos])
    record["word_drop_embeddings"] = name
    return torch.from_numpy(merge_item_arrays(list(tables)))


def _load_codes(dirs, names, record):
    from textrec.quant.codes import load_item_codes

    codes, infos = zip(*(load_item_codes(d, n) for d, n in zip(dirs, names)))
    sizes = {int(i.get("codebook_size", 256)) for i in infos}
    if len(sizes) != 1:
        raise DataError(f"item codes of {', '.join(map(str, dirs))} have different codebook sizes {sorted(sizes)}")
    _same_origin("item codes", dirs, [_quantizer_origin(i) for i in infos])
    record.update(codes=[i.get("name") for i in infos], quantizer=_quantizer_origin(infos[0]))
    return torch.from_numpy(merge_item_arrays([np.asarray(c, dtype=np.int64) for c in codes])), sizes.pop()


def _load_features(dirs, names: tuple[str, ...], record) -> dict[str, FeatureTable]:
    from textrec.data.dataset import Dataset

    if not names:
        raise DataError("this model reads item feature tables: name them with data.features=[NAME, ...] "
                        "(see `textrec info DIR`)")
    out = {}
    datasets = [Dataset.load(d) for d in dirs]
    for name in names:
        tables = []
        for d, ds in zip(dirs, datasets):
            if name not in ds.features:
                raise NotFoundError(f"{d}: no item feature table {name!r} (has: {', '.join(sorted(ds.features)) or 'none'})")
            tables.append(np.asarray(ds.features[name], dtype=np.float32))
        values = merge_item_arrays(tables)
        present = np.abs(values).sum(axis=1) > 0  # the reference files mark a missing modality by an all-zero row
        present[0] = False
        out[name] = FeatureTable(torch.from_numpy(values), torch.from_numpy(present))
    record["features"] = list(names)
    return out


def _load_attributes(dirs) -> list[dict[str, str]]:
    from textrec.data.dataset import Dataset
    from textrec.data.sentences import item_attributes

    return [a for d in dirs for a in item_attributes(Dataset.load(d, features=False))]


def load_item_inputs(
    cfg: RunConfig, data_dirs: list[str | Path], pretraining: bool = False, recorded: dict | None = None
) -> tuple[ItemInputs, dict]:
    """(inputs for the model constructor, provenance for config.json) for ``cfg.model``.

    ``recorded``: the ``item_inputs`` of a run's config.json; the same names are loaded again.
    """
    dirs = [Path(d) for d in data_dirs]
    cls = model_class(cfg.model)
    spec = spec_of(cls)
    kinds = list(item_input_kinds(cls, cfg.model_config)) + (list(spec.pretrain_inputs) if pretraining else [])
    n_items = _total_items(dirs)
    inputs, record = ItemInputs(n_items=n_items), {}
    rec = recorded or {}
    if "text_embeddings" in kinds:
        names = rec.get("embeddings") or [_embedding_name(d, cfg.data.embeddings) for d in dirs]
        inputs.text_embeddings, infos = _load_embeddings(dirs, _per_dir(names, dirs), record, cfg, pretraining)
        if "word_drop_embeddings" in kinds:
            inputs.word_drop_embeddings = _load_word_drop(dirs, record, cfg, spec.word_drop_view(infos[0]["name"]), recorded)
    if "codes" in kinds:
        names = rec.get("codes") or [cfg.data.codes or None for _ in dirs]
        inputs.codes, inputs.codebook_size = _load_codes(dirs, _per_dir(names, dirs), record)
    if "features" in kinds:
        names = tuple(rec.get("features") or cfg.data.features or spec.feature_tables(cfg.model_config))
        inputs.features = _load_features(dirs, names, record)
    if "attributes" in kinds:
        inputs.attributes = _load_attributes(dirs)
    return inputs, record


def _per_dir(names: list, dirs: list[Path]) -> list:
    """Recorded names of a one-dataset run apply to the dataset it is evaluated on (``--data``)."""
    return list(names) if len(names) == len(dirs) else [names[0]] * len(dirs)


def _total_items(dirs: list[Path]) -> int:
    from textrec.text.encode import dataset_meta

    return sum(int(dataset_meta(d)["n_items"]) for d in dirs)


def build_model(cfg: RunConfig, inputs: ItemInputs) -> torch.nn.Module:
    """Instantiate ``cfg.model`` with its item-side inputs (every model takes the same arguments)."""
    return model_class(cfg.model)(cfg.model_config, inputs, cfg.data.max_seq_len)
