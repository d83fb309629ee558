"""Add brand-new items to a trained run's catalogue from their text alone, without retraining.

A text model scores an item from its text embedding (UniSRec) or from the codes of that embedding
(VQ-Rec), so a new item only needs: its text encoded with the *same* encoder the run's embeddings came
from (checked by encoder identity), and for VQ-Rec its codes from the *same* quantiser the run's codes came
from (the ``.index`` file saved next to them). The model is rebuilt with the extended item-side inputs and
the trained weights; an item-ID embedding (transductive mode) starts at zero for new items. SASRec scores
item IDs and cannot score an item it never saw.

Generic over models: which inputs to extend comes from the model's declaration (``item_input_kinds``: text
embeddings: encode the texts; codes: quantise those embeddings; feature tables: the new items have none, so
their rows are zero and masked as absent; attributes: the text as one ``text`` attribute). Trained weights
carry over; a state entry whose first dimension counts items is rebuilt from the extended inputs when it is
a buffer (e.g. a text table) and grows by zero rows when it is a parameter (e.g. an item-ID embedding).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch

from textrec.data.dataset import Dataset
from textrec.errors import DataError, TextrecError
from textrec.io import read_json
from textrec.models.spec import FeatureTable, ItemInputs, item_input_kinds
from textrec.train.inputs import build_model
from textrec.train.run import LoadedRun


def read_new_items(path: str | Path) -> tuple[list[str], list[str]]:
    """A CSV (or TSV) with header columns ``item`` and ``text``; errors name the file and line.

    Read as ``utf-8-sig``, so the byte-order mark of a spreadsheet's "CSV UTF-8" export is ignored. A key
    given twice is an error (it would add two items).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    dialect = csv.excel_tab if path.suffix in (".tsv", ".tab") else csv.excel
    reader = csv.reader(io.StringIO(raw, newline=""), dialect=dialect)
    try:
        header = [h.strip() for h in next(reader, [])]
        if "item" not in header or "text" not in header:
            raise DataError(f"{path}:1: needs a header with columns 'item' and 'text' (found: {', '.join(header) or 'nothing'})")
        item_col, text_col = header.index("item"), header.index("text")
        keys, texts, first_line = [], [], {}
        for row in reader:
            if not any(f.strip() for f in row):
                continue
            n = reader.line_num
            key = row[item_col].strip() if item_col < len(row) else ""
            text = row[text_col].strip() if text_col < len(row) else ""
            if not key or not text:
                raise DataError(f"{path}:{n}: empty item or text")
            if key in first_line:
                raise DataError(f"{path}:{n}: duplicate item {key!r} (first on line {first_line[key]})")
            first_line[key] = n
            keys.append(key)
            texts.append(text)
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: {e}") from None
    if not keys:
        raise DataError(f"{path}: no items below the header")
    return keys, texts


def _encoder_for(data_dir: Path, emb_name: str, encoder: str | None):
    from textrec.text.encoders import get_encoder

    info_path = data_dir / "embeddings" / f"{emb_name}.json"
    if not info_path.exists():
        raise TextrecError(f"embeddings {emb_name!r} of {data_dir} were attached, not encoded: there is no encoder to embed new items")
    info = read_json(info_path)["encoder"]
    enc = get_encoder(encoder or info["name"], pooling=info["pooling"], max_length=info["max_length"])
    if enc.identity != info["identity"]:
        raise TextrecError(f"encoder {encoder or info['name']!r} is not the one that made {emb_name!r} ({info['identity']}); pass --encoder")
    return enc


def _extend_inputs(run: LoadedRun, keys: list[str], texts: list[str], encoder: str | None) -> ItemInputs:
    """The run's item inputs with rows for the new items appended, kind by kind."""
    data_dir = Path(run.config["dataset"]["path"])
    record = run.config.get("item_inputs", {})
    old, n_new = run.inputs, len(keys)
    new = ItemInputs(n_items=old.n_items + n_new, codebook_size=old.codebook_size)
    kinds = item_input_kinds(type(run.model), run.cfg.model_config)
    if "text_embeddings" in kinds:
        vectors = _encoder_for(data_dir, record["embeddings"][0], encoder).encode(texts)
        new.text_embeddings = torch.cat([old.text_embeddings, torch.as_tensor(vectors, dtype=torch.float32)])
    if "codes" in kinds:
        new.codes = torch.cat([old.codes, torch.as_tensor(_new_codes(data_dir, record["codes"][0], texts, encoder))])
    if "features" in kinds:
        new.features = {name: FeatureTable(torch.cat([t.values, t.values.new_zeros(n_new, t.values.shape[1])]),
                                           torch.cat([t.present, t.present.new_zeros(n_new)]))
                        for name, t in old.features.items()}
    if "attributes" in kinds:
        new.attributes = list(old.attributes) + [{"text": t} for t in texts]
    return new


def _new_codes(data_dir: Path, codes_name: str, texts: list[str], encoder: str | None) -> np.ndarray:
    from textrec.quant.codes import load_item_codes
    from textrec.quant.pq import ItemQuantizer

    _, info = load_item_codes(data_dir, codes_name)
    index = Path(info["path"]).with_suffix(".index")
    emb_name = (info.get("embeddings") or {}).get("name")
    if not emb_name or not index.exists():
        raise TextrecError(f"codes {codes_name!r} have no quantiser or embeddings to encode new items with")
    vectors = _encoder_for(data_dir, emb_name, encoder).encode(texts)
    return ItemQuantizer.load(index).encode(vectors).astype(np.int64)


def _carry_state(old_model: torch.nn.Module, new_model: torch.nn.Module, n_new: int) -> None:
    """Trained weights into the grown model (see module doc for entries whose size counts items)."""
    old_state = old_model.state_dict()
    buffers = {name for name, _ in new_model.named_buffers()}
    state = {}
    for key, value in new_model.state_dict().items():
        before = old_state[key]
        if before.shape == value.shape:
            state[key] = before
        elif key in buffers:
            state[key] = value  # built from the extended inputs
        elif before.shape[1:] == value.shape[1:] and before.shape[0] + n_new == value.shape[0]:
            state[key] = torch.cat([before, before.new_zeros(n_new, *before.shape[1:])])
        else:
            raise TextrecError(f"cannot carry the trained weight {key} {tuple(before.shape)} over to {tuple(value.shape)}")
    new_model.load_state_dict(state)


def add_items(run: LoadedRun, keys: list[str], texts: list[str], encoder: str | None = None) -> LoadedRun:
    """A copy of ``run`` whose catalogue also holds the new items (ids n_items + 1, ...)."""
    if not type(run.model).ITEM_INPUTS:
        from textrec.models import MODELS, model_class

        text_models = ", ".join(n for n in sorted(MODELS) if model_class(n).ITEM_INPUTS)
        raise TextrecError(f"{run.cfg.model} scores item IDs and cannot score new items; use a text model ({text_models})")
    ds = run.dataset
    clash = set(keys) & set(ds.item_keys)
    if clash:
        raise DataError(f"new item {sorted(clash)[0]!r} is already in the catalogue")
    if len(set(keys)) != len(keys):
        raise DataError(f"new item {next(k for k in keys if keys.count(k) > 1)!r} is given twice")
    inputs = _extend_inputs(run, keys, texts, encoder)
    model = build_model(run.cfg, inputs)
    _carry_state(run.model, model, len(keys))
    model.to(run.device).eval()
    extended = Dataset(
        name=ds.name, item_keys=ds.item_keys + list(keys), item_texts=ds.item_texts + list(texts), user_keys=ds.user_keys,
        seq_offsets=ds.seq_offsets, seq_items=ds.seq_items, seq_times=ds.seq_times, meta=ds.meta,
    )
    return LoadedRun(model, run.cfg, extended, run.config, run.device, inputs)
