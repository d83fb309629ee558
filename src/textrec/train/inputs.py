"""Item-side inputs of a model, read from dataset directories, and the model builder.

A model never reads a dataset: ``load_item_inputs`` reads what the configured model needs (text
embeddings, a word-drop view, item codes) from one or several dataset directories — several are merged in
order, like ``textrec.data.multidomain.merge_domains`` merges their items — and ``build_model`` passes
them to the constructor.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from textrec.config import RunConfig
from textrec.data.multidomain import merge_item_arrays
from textrec.errors import DataError, NotFoundError
from textrec.models import model_entry

TEXT_MODELS = ("unisrec",)
CODE_MODELS = ("vqrec",)
_WORD_DROP = re.compile(r"-wd\d+$")


def _embedding_name(data_dir: Path, name: str) -> str | None:
    """``name``, or the only non-word-drop embeddings of ``data_dir`` (None lets the loader decide)."""
    if name:
        return name
    from textrec.text.encode import list_item_embeddings

    encoded, _ = list_item_embeddings(data_dir)
    plain = [n for n in encoded if not _WORD_DROP.search(n)]
    return plain[0] if len(plain) == 1 else None


def load_item_inputs(cfg: RunConfig, data_dirs: list[str | Path], pretraining: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays for the model constructor, provenance for config.json) for ``cfg.model``."""
    dirs = [Path(d) for d in data_dirs]
    if cfg.model in TEXT_MODELS:
        from textrec.text.encode import load_item_embeddings

        tables, infos = zip(*(load_item_embeddings(d, _embedding_name(d, cfg.data.embeddings)) for d in dirs))
        inputs = {"text_embeddings": merge_item_arrays(list(tables))}
        record = {"embeddings": [i.get("name") for i in infos], "encoder": infos[0].get("encoder", infos[0].get("name"))}
        if pretraining:
            wd_name = cfg.data.word_drop_embeddings or f"{infos[0]['name']}-wd15"
            try:
                wd = [load_item_embeddings(d, wd_name)[0] for d in dirs]
                inputs["word_drop_embeddings"] = merge_item_arrays(wd)
                record["word_drop_embeddings"] = wd_name
            except NotFoundError:
                if cfg.data.word_drop_embeddings:
                    raise
                record["word_drop_embeddings"] = None  # item-drop augmentation only
        return inputs, record
    if cfg.model in CODE_MODELS:
        from textrec.quant.codes import load_item_codes

        codes, infos = zip(*(load_item_codes(d, cfg.data.codes or None) for d in dirs))
        sizes = {int(i.get("codebook_size", 256)) for i in infos}
        if len(sizes) != 1:
            raise DataError(f"item codes of {', '.join(map(str, dirs))} have different codebook sizes {sorted(sizes)}")
        return {"codes": merge_item_arrays(list(codes)), "codebook_size": sizes.pop()}, {"codes": [i.get("name") for i in infos]}
    return {}, {}


def build_model(cfg: RunConfig, n_items: int, inputs: dict) -> torch.nn.Module:
    """Instantiate ``cfg.model`` with its item-side inputs."""
    _, model_cls = model_entry(cfg.model)
    mc, L = cfg.model_config, cfg.data.max_seq_len
    if cfg.model == "sasrec":
        return model_cls(mc, n_items=n_items, max_seq_len=L)
    if cfg.model == "unisrec":
        wd = inputs.get("word_drop_embeddings")
        return model_cls(mc, torch.from_numpy(inputs["text_embeddings"]), L, None if wd is None else torch.from_numpy(wd))
    if cfg.model == "vqrec":
        return model_cls(mc, torch.from_numpy(np.asarray(inputs["codes"], dtype=np.int64)), inputs["codebook_size"], L)
    raise NotFoundError(f"no builder for model {cfg.model!r}")
