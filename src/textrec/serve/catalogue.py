"""Add brand-new items to a trained run's catalogue from their text alone, without retraining.

A text model scores an item from its text embedding (UniSRec) or from the codes of that embedding
(VQ-Rec), so a new item only needs: its text encoded with the *same* encoder the run's embeddings came
from (checked by encoder identity), and for VQ-Rec its codes from the *same* quantiser the run's codes came
from (the ``.index`` file saved next to them). The model is rebuilt with the extended item-side inputs and
the trained weights; an item-ID embedding (transductive mode) starts at zero for new items. SASRec scores
item IDs and cannot score an item it never saw.
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
from textrec.train.inputs import build_model
from textrec.train.run import LoadedRun


def read_new_items(path: str | Path) -> tuple[list[str], list[str]]:
    """A CSV (or TSV) with header columns ``item`` and ``text``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    raw = path.read_text(encoding="utf-8")
    dialect = csv.excel_tab if path.suffix in (".tsv", ".tab") else csv.excel
    rows = list(csv.DictReader(io.StringIO(raw), dialect=dialect))
    if not rows or not {"item", "text"} <= set(rows[0]):
        raise DataError(f"{path}: needs a header with columns 'item' and 'text'")
    keys, texts = [], []
    for n, row in enumerate(rows, 2):
        if not (row.get("item") or "").strip() or not (row.get("text") or "").strip():
            raise DataError(f"{path}:{n}: empty item or text")
        keys.append(row["item"].strip())
        texts.append(row["text"].strip())
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


def add_items(run: LoadedRun, keys: list[str], texts: list[str], encoder: str | None = None) -> LoadedRun:
    """A copy of ``run`` whose catalogue also holds the new items (ids n_items + 1, ...)."""
    if run.cfg.model not in ("unisrec", "vqrec"):
        raise TextrecError(f"{run.cfg.model} scores item IDs and cannot score new items; use a text model (unisrec, vqrec)")
    ds = run.dataset
    clash = set(keys) & set(ds.item_keys)
    if clash:
        raise DataError(f"new item {sorted(clash)[0]!r} is already in the catalogue")
    data_dir = Path(run.config["dataset"]["path"])
    record = run.config["item_inputs"]
    state = {k: v for k, v in run.model.state_dict().items()}
    if run.cfg.model == "unisrec":
        emb_name = record["embeddings"][0]
        vectors = _encoder_for(data_dir, emb_name, encoder).encode(texts)
        inputs = {"text_embeddings": np.concatenate([state.pop("text_table").cpu().numpy(), vectors])}
    else:
        from textrec.quant.codes import load_item_codes
        from textrec.quant.pq import ItemQuantizer

        codes, info = load_item_codes(data_dir, record["codes"][0])
        index = Path(info["path"]).with_suffix(".index")
        emb_name = (info.get("embeddings") or {}).get("name")
        if not emb_name or not index.exists():
            raise TextrecError(f"codes {record['codes'][0]!r} have no quantiser or embeddings to encode new items with")
        vectors = _encoder_for(data_dir, emb_name, encoder).encode(texts)
        new_codes = ItemQuantizer.load(index).encode(vectors).astype(np.int64)
        inputs = {"codes": np.concatenate([codes.astype(np.int64), new_codes]), "codebook_size": run.model.codebook_size}
        state.pop("code_index")
    model = build_model(run.cfg, ds.n_items + len(keys), inputs)
    if "item_id_emb.weight" in state:
        old = state["item_id_emb.weight"]
        state["item_id_emb.weight"] = torch.cat([old, old.new_zeros(len(keys), old.shape[1])])
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if k not in ("text_table", "code_index", "word_drop_table")]:
        raise TextrecError(f"cannot carry the trained weights over: missing {missing}, unexpected {unexpected}")
    model.to(run.device).eval()
    extended = Dataset(
        name=ds.name, item_keys=ds.item_keys + list(keys), item_texts=ds.item_texts + list(texts), user_keys=ds.user_keys,
        seq_offsets=ds.seq_offsets, seq_items=ds.seq_items, seq_times=ds.seq_times, meta=ds.meta,
    )
    return LoadedRun(model, run.cfg, extended, run.config, run.device)
