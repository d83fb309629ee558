"""Add brand-new items to a trained run's catalogue from their text and attributes, without retraining.

A text model scores an item from its text embedding (UniSRec) or from the codes of that embedding
(VQ-Rec), so a new item only needs: its text encoded with the *same* encoder the run's embeddings came
from (checked by encoder identity), and for VQ-Rec its codes from the *same* quantiser the run's codes came
from (the ``.index`` file saved next to them). A key-value model (Recformer) reads the item's attributes
as its sentence. The model is rebuilt with the extended item-side inputs and the trained weights; an
item-ID embedding (transductive mode) starts at zero for new items. SASRec scores item IDs and cannot score
an item it never saw.

The new-items file (``read_new_item_table``) gives each item a key and a text, attributes, or both:

* CSV (TSV for ``.tsv`` / ``.tab``): a header with ``item`` and ``text`` and/or attribute columns; every
  column other than ``item`` and ``text`` is an attribute (``title``, ``brand``, ``category``, any other),
  empty cells left out;
* JSON lines (``.jsonl`` / ``.ndjson``): one object per line, ``"item"`` and ``"text"`` and/or any other keys
  as attributes (a list value is joined by spaces, as the reference's category list).

An item without attributes gets those the run's dataset would derive from its text
(``textrec.data.sentences.text_attributes``: the UniSRec split of ``"title. category. brand. "``, the CSV
text column, else one ``text`` attribute). An item without a text gets the one ``textrec prepare`` builds
from such fields (``derived_text``): ``title``, ``category``, ``brand`` (the dataset's recorded text fields
when it has them) and then the other attributes in file order, each value cleaned and ending in one
period, then a space (``"Red hammer. Tools. Acme. "``), so a text model reads it as it read the catalogue.

Generic over models: which inputs to extend comes from the model's declaration (``item_input_kinds``: text
embeddings: encode the texts; codes: quantise those embeddings; feature tables: the new items have none, so
their rows are zero and masked as absent; attributes: the items' attributes). Trained weights carry over; a
state entry whose first dimension counts items is rebuilt from the extended inputs when it is a buffer
(e.g. a text table) and grows by zero rows when it is a parameter (e.g. an item-ID embedding).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from textrec.data.dataset import Dataset
from textrec.errors import DataError, TextrecError
from textrec.io import read_json
from textrec.models.spec import FeatureTable, ItemInputs, item_input_kinds
from textrec.train.inputs import build_model
from textrec.train.run import LoadedRun

TEXT_FIELDS = ("title", "category", "brand")  # textrec prepare's default text fields, in its order


@dataclass
class NewItems:
    """Brand-new items as a new-items file gives them."""

    keys: list[str]
    texts: list[str]  # "" where only attributes were given (``add_items`` derives one)
    attributes: list[dict[str, str]] = field(default_factory=list)  # {} where only a text was given

    def __post_init__(self) -> None:
        if not self.attributes:
            self.attributes = [{} for _ in self.keys]


def read_new_items(path: str | Path) -> tuple[list[str], list[str]]:
    """(keys, texts) of a new-items file; see ``read_new_item_table`` (a text is "" where only attributes are given)."""
    items = read_new_item_table(path)
    return items.keys, items.texts


def read_new_item_table(path: str | Path) -> NewItems:
    """The items of a CSV / TSV / JSON-lines file (module doc); errors name the file and line.

    Read as ``utf-8-sig``, so the byte-order mark of a spreadsheet's "CSV UTF-8" export is ignored. A key
    given twice is an error (it would add two items); so is an item with neither a text nor an attribute.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    rows = _json_lines(path, raw) if path.suffix in (".jsonl", ".ndjson") else _csv_rows(path, raw)
    items, first_line = NewItems([], []), {}
    for n, key, text, attrs in rows:
        if not key or not (text or attrs):
            raise DataError(f"{path}:{n}: empty item, or neither a text nor an attribute")
        if key in first_line:
            raise DataError(f"{path}:{n}: duplicate item {key!r} (first on line {first_line[key]})")
        first_line[key] = n
        items.keys.append(key)
        items.texts.append(text)
        items.attributes.append(attrs)
    if not items.keys:
        raise DataError(f"{path}: no items below the header" if path.suffix not in (".jsonl", ".ndjson") else f"{path}: no items")
    return items


def _csv_rows(path: Path, raw: str):
    """(line, key, text, attributes) of each non-blank CSV / TSV row."""
    dialect = csv.excel_tab if path.suffix in (".tsv", ".tab") else csv.excel
    reader = csv.reader(io.StringIO(raw, newline=""), dialect=dialect)
    try:
        header = [h.strip() for h in next(reader, [])]
        if "item" not in header or not set(header) - {"item", ""}:
            raise DataError(f"{path}:1: needs a header with columns 'item' and 'text' and/or attribute columns "
                            f"(title, brand, category, ...) (found: {', '.join(header) or 'nothing'})")
        seen = [h for i, h in enumerate(header) if h and h in header[:i]]
        if seen:
            raise DataError(f"{path}:1: column {seen[0]!r} is given twice")
        for row in reader:
            if not any(f.strip() for f in row):
                continue
            cells = {h: (row[i].strip() if i < len(row) else "") for i, h in enumerate(header) if h}
            attrs = {k: v for k, v in cells.items() if k not in ("item", "text") and v}
            yield reader.line_num, cells["item"], cells.get("text", ""), attrs
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: {e}") from None


def _json_lines(path: Path, raw: str):
    """(line, key, text, attributes) of each non-blank JSON line."""
    from textrec.data.sentences import flat_value

    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{n}: not a JSON object with an 'item' key")
        bad = next((k for k, v in obj.items() if not _plain(v)), None)
        if bad is not None:
            raise DataError(f"{path}:{n}: {bad!r} must be a string, a number or a list of them")
        key, text = flat_value(obj.get("item")), flat_value(obj.get("text"))
        attrs = {k: flat_value(v) for k, v in obj.items() if k not in ("item", "text") and flat_value(v)}
        yield n, key, text, attrs


def _plain(value) -> bool:
    scalar = (str, int, float, bool, type(None))
    return isinstance(value, scalar) or (isinstance(value, list) and all(isinstance(v, scalar) for v in value))


def derived_text(attrs: dict[str, str], text_fields: tuple[str, ...] = TEXT_FIELDS) -> str:
    """The item text ``textrec prepare`` would build from these attributes (module doc)."""
    from textrec.text.clean import item_text

    order = [f for f in text_fields if f in attrs] + [k for k in attrs if k not in text_fields]
    return item_text(attrs, order)


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


def _extend_inputs(run: LoadedRun, items: NewItems, encoder: str | None) -> ItemInputs:
    """The run's item inputs with rows for the new items appended, kind by kind."""
    data_dir = Path(run.config["dataset"]["path"])
    record = run.config.get("item_inputs", {})
    old, n_new, texts = run.inputs, len(items.keys), items.texts
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
        from textrec.data.sentences import text_attributes

        from_text = iter(text_attributes(run.dataset, [t for t, a in zip(texts, items.attributes) if not a]))
        new.attributes = list(old.attributes) + [a or next(from_text) for a in items.attributes]
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


def add_items(run: LoadedRun, keys: list[str], texts: list[str], encoder: str | None = None,
              attributes: list[dict[str, str]] | None = None) -> LoadedRun:
    """A copy of ``run`` whose catalogue also holds the new items (ids n_items + 1, ...).

    ``attributes`` (one dict per item, {} for none): what a key-value model reads; an item's text may then be
    "" and is derived from them (``derived_text``). Items without attributes get them from their text.
    """
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
    attributes = [dict(a) for a in attributes] if attributes is not None else [{} for _ in keys]
    if len(attributes) != len(keys) or len(texts) != len(keys):
        raise DataError(f"{len(keys)} new items but {len(texts)} texts and {len(attributes)} attribute sets")
    fields = tuple((ds.meta.get("source") or {}).get("text_fields") or TEXT_FIELDS)
    texts = [t or derived_text(a, fields) for t, a in zip(texts, attributes)]
    missing = next((k for k, t in zip(keys, texts) if not t), None)
    if missing is not None:
        raise DataError(f"new item {missing!r} has neither a text nor an attribute")
    items = NewItems(list(keys), texts, attributes)
    inputs = _extend_inputs(run, items, encoder)
    model = build_model(run.cfg, inputs)
    _carry_state(run.model, model, len(keys))
    model.to(run.device).eval()
    stored = None if ds.item_attributes is None and not any(attributes) else (ds.item_attributes or [{} for _ in ds.item_keys]) + attributes
    extended = Dataset(
        name=ds.name, item_keys=ds.item_keys + list(keys), item_texts=ds.item_texts + texts, user_keys=ds.user_keys,
        seq_offsets=ds.seq_offsets, seq_items=ds.seq_items, seq_times=ds.seq_times, meta=ds.meta, item_attributes=stored,
    )
    return LoadedRun(model, run.cfg, extended, run.config, run.device, inputs, zero_shot=run.zero_shot)
