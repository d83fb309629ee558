"""Add brand-new items to a trained run's catalogue from their text, attributes and images, without retraining.

A text model scores an item from its text embedding (UniSRec) or from the codes of that embedding
(VQ-Rec), so a new item only needs: its text encoded with the *same* encoder the run's embeddings came
from (checked by encoder identity), and for VQ-Rec its codes from the *same* quantiser the run's codes came
from (the ``.index`` file saved next to them). A key-value model (Recformer) reads the item's attributes
as its sentence. A feature-table model (MISSRec) gets each table's rows from the encoder that made the
table (``new_feature_rows``). The model is rebuilt with the extended item-side inputs and the trained weights; an
item-ID embedding (transductive mode) starts at zero for new items. SASRec scores item IDs and cannot score
an item it never saw.

The new-items file (``read_new_item_table``) gives each item a key and a text, attributes, or both:

* CSV (TSV for ``.tsv`` / ``.tab``): a header with ``item`` and ``text`` and/or attribute columns, and
  optionally ``image``; every column other than ``item``, ``text`` and ``image`` is an attribute (``title``,
  ``brand``, ``category``, any other), empty cells left out;
* JSON lines (``.jsonl`` / ``.ndjson``): one object per line, ``"item"``, ``"text"`` and/or any other keys
  as attributes (a list value is joined by spaces, as the reference's category list), optionally ``"image"``.

``image`` is the path of the item's image file, relative to the new-items file's folder (or absolute); it is
not an attribute (a file name describes nothing), so it is in neither the sentence nor the derived text.

An item without attributes gets those the run's dataset would derive from its text
(``textrec.data.sentences.text_attributes``: the UniSRec split of ``"title. category. brand. "``, the CSV
text column, else one ``text`` attribute). An item without a text gets the one ``textrec prepare`` builds
from such fields (``derived_text``): ``title``, ``category``, ``brand`` (the dataset's recorded text fields
when it has them) and then the other attributes in file order, each value cleaned and ending in one
period, then a space (``"Red hammer. Tools. Acme. "``), so a text model reads it as it read the catalogue.

Generic over models: which inputs to extend comes from the model's declaration (``item_input_kinds``: text
embeddings: encode the texts; codes: quantise those embeddings; attributes: the items' attributes; feature
tables: each table the model was built with (``ItemInputs.features``), by its origin, the sidecar that
``textrec encode --images`` wrote next to it (``textrec.vision.encode.table_origin``):

* an image table: the new items' ``image`` files through the same encoder (the embedded EfficientNet-Lite0, or
  the recorded CLIP folder: an error if it is gone or changed), exactly as ``textrec encode --images`` encodes;
  an item without an image, or whose file is missing or unreadable, gets a zero row masked as absent, counted
  and named in the report, never a crash;
* a CLIP text table: the new items' texts (given or derived) through the same CLIP folder; no text, no row;
* a table of unknown origin (shipped with the dataset, e.g. UniSRec's ``feat1CLS`` / ``feat3CLS``, whose encoder
  is not at hand): zero rows masked as absent, and the report says so.

A new item may also bring its own vector for a feature table (``NewItems.features``, ``POST /items``' ``features``):
that row is taken as given (checked by ``given_feature_rows``: a table the model reads, its width, finite values),
not encoded, and marked present.

An item may then be given by its image (or its vectors) alone, unless the model reads texts (text embeddings, codes,
attributes). Trained weights carry over. A per-item state entry is rebuilt from the extended inputs (e.g. a
text table) or keeps its trained rows and grows by zero rows (e.g. an item-ID embedding), as the model's
``SPEC.item_state`` declares; every other entry is carried exactly as trained, its shape included (MISSRec's interest
centroids: the grown catalogue keeps the trained interests, and a new item gets its nearest one). A model that
declares nothing is read by shape: an entry whose shape changed is per item, a buffer rebuilt, a parameter
grown (``textrec.models.spec``). No trained state is drawn again, so no seed is needed: the same new items give
the same catalogue every time.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from textrec.data.dataset import Dataset
from textrec.errors import DataError, TextrecError
from textrec.io import read_json
from textrec.models.spec import FeatureTable, ItemInputs, item_input_kinds, spec_of
from textrec.runs import LoadedRun

log = logging.getLogger(__name__)

TEXT_FIELDS = ("title", "category", "brand")  # textrec prepare's default text fields, in its order
IMAGE_COLUMN = "image"  # the new-items file's image path column (as the items table's, textrec.vision.images)
NOT_ATTRIBUTES = ("item", "text", IMAGE_COLUMN)
READS_TEXT = {"text_embeddings", "codes", "attributes"}  # item input kinds made from an item's text or attributes


@dataclass
class NewItems:
    """Brand-new items as a new-items file gives them."""

    keys: list[str]
    texts: list[str]  # "" where only attributes were given (``add_items`` derives one)
    attributes: list[dict[str, str]] = field(default_factory=list)  # {} where only a text was given
    images: list[str] = field(default_factory=list)  # image file paths (read against the file's folder); "" = none
    features: list[dict[str, np.ndarray]] = field(default_factory=list)  # given rows by feature table; {} = none given

    def __post_init__(self) -> None:
        if not self.attributes:
            self.attributes = [{} for _ in self.keys]
        if not self.images:
            self.images = ["" for _ in self.keys]
        if not self.features:
            self.features = [{} for _ in self.keys]


class GivenFeatureError(DataError):
    """A given feature vector that does not fit the run (``given_feature_rows``); ``table``: the table it names."""

    def __init__(self, message: str, table: str) -> None:
        super().__init__(message)
        self.table = table


def feature_dims(run: LoadedRun) -> dict[str, int]:
    """{table: width} of the feature tables ``run``'s model reads; {} when it reads none (it cannot take vectors)."""
    if "features" not in item_input_kinds(type(run.model), run.cfg.model_config):
        return {}
    return {name: int(t.values.shape[1]) for name, t in run.inputs.features.items()}


def given_feature_rows(dims: dict[str, int], features) -> dict[str, np.ndarray]:
    """One item's given vectors ({table: numbers}) as float32 rows, checked against ``dims`` (``feature_dims``).

    Raises ``GivenFeatureError`` naming the table: one the model does not read, a vector of the wrong length,
    or a value that is not a finite float32 (NaN, infinite, or beyond float32's range).
    """
    rows = {}
    for name, values in features.items():
        if name not in dims:
            raise GivenFeatureError(f"unknown feature table {name!r} (the model reads: {', '.join(sorted(dims)) or 'none'})", name)
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                row = np.asarray(values, dtype=np.float32)
        except (TypeError, ValueError):
            raise GivenFeatureError(f"feature table {name!r} needs a list of numbers", name) from None
        if row.shape != (dims[name],):
            got = f"{row.shape[0]} values" if row.ndim == 1 else f"shape {row.shape}"
            raise GivenFeatureError(f"feature table {name!r} is {dims[name]}-d, got {got}", name)
        if not np.isfinite(row).all():
            bad = int(np.flatnonzero(~np.isfinite(row))[0])
            raise GivenFeatureError(f"feature table {name!r}: value {bad} is not a finite float32 ({values[bad]!r})", name)
        rows[name] = row
    return rows


def read_new_items(path: str | Path) -> tuple[list[str], list[str]]:
    """(keys, texts) of a new-items file; see ``read_new_item_table`` (a text is "" where only attributes are given)."""
    items = read_new_item_table(path)
    return items.keys, items.texts


def read_new_item_table(path: str | Path) -> NewItems:
    """The items of a CSV / TSV / JSON-lines file (module doc); errors name the file and line.

    Read as ``utf-8-sig``, so the byte-order mark of a spreadsheet's "CSV UTF-8" export is ignored. A key
    given twice is an error (it would add two items); so is an item with neither a text, an attribute nor an
    image. A relative ``image`` path is made relative to the file's folder; a URL is kept (never fetched).
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
    for n, key, text, attrs, image in rows:
        if not key or not (text or attrs or image):
            raise DataError(f"{path}:{n}: empty item, or neither a text nor an attribute nor an image")
        if key in first_line:
            raise DataError(f"{path}:{n}: duplicate item {key!r} (first on line {first_line[key]})")
        first_line[key] = n
        items.keys.append(key)
        items.texts.append(text)
        items.attributes.append(attrs)
        items.images.append(_beside(path, image))
    if not items.keys:
        raise DataError(f"{path}: no items below the header" if path.suffix not in (".jsonl", ".ndjson") else f"{path}: no items")
    return items


def _beside(path: Path, image: str) -> str:
    """An image path of the new-items file ``path`` as a path to open: relative ones start at the file's folder."""
    if not image or "://" in image:
        return image
    given = Path(image).expanduser()
    return str(given if given.is_absolute() else path.parent / given)


def _csv_rows(path: Path, raw: str):
    """(line, key, text, attributes, image) of each non-blank CSV / TSV row."""
    dialect = csv.excel_tab if path.suffix in (".tsv", ".tab") else csv.excel
    reader = csv.reader(io.StringIO(raw, newline=""), dialect=dialect)
    try:
        header = [h.strip() for h in next(reader, [])]
        if "item" not in header or not set(header) - {"item", ""}:
            raise DataError(f"{path}:1: needs a header with columns 'item' and 'text' and/or attribute columns "
                            f"(title, brand, category, ...) and/or 'image' (found: {', '.join(header) or 'nothing'})")
        seen = [h for i, h in enumerate(header) if h and h in header[:i]]
        if seen:
            raise DataError(f"{path}:1: column {seen[0]!r} is given twice")
        for row in reader:
            if not any(f.strip() for f in row):
                continue
            cells = {h: (row[i].strip() if i < len(row) else "") for i, h in enumerate(header) if h}
            attrs = {k: v for k, v in cells.items() if k not in NOT_ATTRIBUTES and v}
            yield reader.line_num, cells["item"], cells.get("text", ""), attrs, cells.get(IMAGE_COLUMN, "")
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: {e}") from None


def _json_lines(path: Path, raw: str):
    """(line, key, text, attributes, image) of each non-blank JSON line."""
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
        if isinstance(obj.get(IMAGE_COLUMN), list):
            raise DataError(f"{path}:{n}: {IMAGE_COLUMN!r} must be one path (a string), not a list")
        key, text, image = flat_value(obj.get("item")), flat_value(obj.get("text")), flat_value(obj.get(IMAGE_COLUMN))
        attrs = {k: flat_value(v) for k, v in obj.items() if k not in NOT_ATTRIBUTES and flat_value(v)}
        yield n, key, text, attrs, image


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


class NewFeatureRows(NamedTuple):
    """How the new items got their rows of one feature table (``new_feature_rows``)."""

    table: str
    modality: str | None  # "image" or "text"; None: unknown origin
    origin: str | None  # what made the rows, e.g. "images through efficientnet-lite0"; None: unknown origin
    n_new: int
    encoded: list[str]  # keys of the new items that got a row
    missing: dict[str, str]  # key -> why it has no image (or no text) to encode: masked as absent
    unreadable: dict[str, str]  # key -> why its image file could not be read or decoded: masked as absent
    given: tuple[str, ...] = ()  # keys of the new items whose row was given as a vector (not encoded)

    def line(self) -> str:
        """One line for stderr."""
        if self.given:
            rest = self._replace(n_new=self.n_new - len(self.given), given=())
            line = f"feature table {self.table!r}: {len(self.given)} of {self.n_new} new item(s) given as vectors"
            return line if rest.n_new == 0 else f"{line}; the other {rest.n_new}: {rest.line()}"
        if self.origin is None:
            return (f"note: feature table {self.table!r} has no record of the encoder that made it (e.g. it came with the "
                    f"dataset), so the {self.n_new} new item(s) get no {self.table!r} row: masked as absent")
        line = f"feature table {self.table!r}: {len(self.encoded)} of {self.n_new} new item(s) encoded from their {self.origin}"
        absent = len(self.missing) + len(self.unreadable)
        if absent:
            shown = "; ".join(f"{k} ({why})" for k, why in [*self.unreadable.items(), *self.missing.items()][:3])
            line += (f"; {absent} masked as absent ({len(self.missing)} missing, {len(self.unreadable)} unreadable): "
                     f"{shown}{' ...' if absent > 3 else ''}")
        return line

    def to_dict(self) -> dict:
        return {"table": self.table, "modality": self.modality, "origin": self.origin, "new_items": self.n_new,
                "encoded": len(self.encoded),
                "missing": self.missing, "unreadable": self.unreadable}


def _image_files(images: list[str]) -> tuple[list[Path | None], dict[int, str]]:
    """(a file per new item, None where there is none; {index: why} for those)."""
    paths: list[Path | None] = []
    missing: dict[int, str] = {}
    for i, image in enumerate(images):
        if not image or "://" in image:
            missing[i] = f"{image} is a URL; images are read from local files only" if image else "no image given"
            paths.append(None)
        else:
            paths.append(Path(image))
    return paths, missing


def new_feature_rows(data_dir: Path, name: str, dim: int, items: NewItems,
                     device: str = "auto") -> tuple[np.ndarray, np.ndarray, NewFeatureRows]:
    """(rows (n_new, dim) float32, present (n_new,) bool, report) of feature table ``name`` of ``data_dir`` for the
    new items, made by the table's own encoder (module doc)."""
    from textrec.vision.encode import encode_images, origin_encoder, table_origin

    keys, n_new = items.keys, len(items.keys)
    rows, present = np.zeros((n_new, dim), dtype=np.float32), np.zeros(n_new, dtype=bool)
    origin = table_origin(data_dir, name)
    if origin is None:
        return rows, present, NewFeatureRows(name, None, None, n_new, [], {}, {})
    encoder = origin_encoder(origin, device)
    if encoder.dim != dim:
        raise DataError(f"feature table {name!r} of {data_dir} is {dim}-d, but the encoder its sidecar records gives "
                        f"{encoder.dim}-d vectors ({origin.sidecar})")
    if origin.modality == "image":
        paths, missing = _image_files(items.images)
        got = encode_images(encoder, paths)
        rows, present = got.vectors, got.present
        missing.update(got.missing)
        unreadable = {keys[i]: why for i, why in sorted(got.unreadable.items())}
        what = f"images through {origin.encoder.get('name')}"
    else:
        present = np.array([bool(t.strip()) for t in items.texts], dtype=bool)
        if present.any():
            rows[present] = encoder.encode([t for t, p in zip(items.texts, present) if p])
        missing, unreadable = {i: "no text" for i in np.flatnonzero(~present).tolist()}, {}
        what = f"texts through the CLIP folder {origin.encoder.get('path')}"
    encoded = [k for k, p in zip(keys, present) if p]
    missing_keys = {keys[i]: why for i, why in sorted(missing.items())}
    return rows, present, NewFeatureRows(name, origin.modality, what, n_new, encoded, missing_keys, unreadable)


def _device_name(device) -> str:
    return "cpu" if torch.device(device).type == "cpu" else str(device)


def _table_rows(data_dir: Path, name: str, dim: int, items: NewItems, device: str) -> tuple[np.ndarray, np.ndarray, NewFeatureRows]:
    """``new_feature_rows`` for the new items without a given vector of table ``name``; the given ones as given."""
    given = [i for i, f in enumerate(items.features) if name in f]
    if not given:
        return new_feature_rows(data_dir, name, dim, items, device)
    n_new = len(items.keys)
    rows, present = np.zeros((n_new, dim), dtype=np.float32), np.zeros(n_new, dtype=bool)
    rest = sorted(set(range(n_new)) - set(given))
    report = NewFeatureRows(name, None, None, 0, [], {}, {})
    if rest:
        sub = NewItems(*([values[i] for i in rest] for values in (items.keys, items.texts, items.attributes, items.images)))
        rows[rest], present[rest], report = new_feature_rows(data_dir, name, dim, sub, device)
    for i in given:
        rows[i], present[i] = items.features[i][name], True
    keys = [items.keys[i] for i in given]
    return rows, present, report._replace(n_new=n_new, encoded=[*report.encoded, *keys], given=tuple(keys))


def _extend_inputs(run: LoadedRun, items: NewItems, encoder: str | None) -> tuple[ItemInputs, list[NewFeatureRows]]:
    """The run's item inputs with rows for the new items appended, kind by kind, and how each feature table got them."""
    data_dir = Path(run.config["dataset"]["path"])
    record = run.config.get("item_inputs", {})
    old, n_new, texts = run.inputs, len(items.keys), items.texts
    new = ItemInputs(n_items=old.n_items + n_new, codebook_size=old.codebook_size)
    reports: list[NewFeatureRows] = []
    kinds = item_input_kinds(type(run.model), run.cfg.model_config)
    if "text_embeddings" in kinds:
        vectors = _encoder_for(data_dir, record["embeddings"][0], encoder).encode(texts)
        new.text_embeddings = torch.cat([old.text_embeddings, torch.as_tensor(vectors, dtype=torch.float32)])
    if "codes" in kinds:
        new.codes = torch.cat([old.codes, torch.as_tensor(_new_codes(data_dir, record["codes"][0], texts, encoder))])
    if "features" in kinds:
        for name, t in old.features.items():
            rows, present, report = _table_rows(data_dir, name, t.values.shape[1], items, _device_name(run.device))
            new.features[name] = FeatureTable(torch.cat([t.values, torch.from_numpy(rows).to(t.values)]),
                                              torch.cat([t.present, torch.from_numpy(present).to(t.present)]))
            reports.append(report)
    if "attributes" in kinds:
        from textrec.data.sentences import text_attributes

        from_text = iter(text_attributes(run.dataset, [t for t, a in zip(texts, items.attributes) if not a]))
        new.attributes = list(old.attributes) + [a or next(from_text) for a in items.attributes]
    return new, reports


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


def _item_state_fill(declared: dict[str, str] | None, key: str, same_shape: bool, is_buffer: bool) -> str | None:
    """How the grown model fills state entry ``key``: "inputs", "grow", or None when the entry is not per item.

    ``declared``: the model's ``SPEC.item_state``; without one, the shape rule (``textrec.models.spec``).
    """
    if declared is not None:
        return next((fill for prefix, fill in declared.items() if key.startswith(prefix)), None)
    if same_shape:
        return None
    return "inputs" if is_buffer else "grow"


def _carry_state(old_model: torch.nn.Module, new_model: torch.nn.Module, n_new: int) -> None:
    """Trained weights into the grown model: per-item entries rebuilt or grown, every other one exactly as trained."""
    old_state = old_model.state_dict()
    buffers = {name for name, _ in new_model.named_buffers()}
    declared = spec_of(new_model).item_state
    state = {}
    for key, value in new_model.state_dict().items():
        before = old_state[key]
        fill = _item_state_fill(declared, key, before.shape == value.shape, key in buffers)
        if fill is None and before.shape == value.shape:
            state[key] = before
        elif fill is None and key in buffers:  # sized from the catalogue, not per item: the checkpoint's shape wins
            owner, _, name = key.rpartition(".")
            new_model.get_submodule(owner).register_buffer(name, before.detach().clone().to(value.device))
            state[key] = before
        elif fill == "inputs":
            state[key] = value  # built from the extended inputs
        elif fill == "grow" and before.dim() > 0 and (before.shape[0] + n_new, *before.shape[1:]) == value.shape:
            state[key] = torch.cat([before, before.new_zeros(n_new, *before.shape[1:])])
        else:
            raise TextrecError(f"cannot carry the trained weight {key} {tuple(before.shape)} over to {tuple(value.shape)}")
    new_model.load_state_dict(state)


def add_items(run: LoadedRun, keys: list[str], texts: list[str], encoder: str | None = None,
              attributes: list[dict[str, str]] | None = None, images: list[str | Path] | None = None,
              quiet: bool = False) -> LoadedRun:
    """A copy of ``run`` whose catalogue also holds the new items (ids n_items + 1, ...).

    ``attributes`` (one dict per item, {} for none): what a key-value model reads; an item's text may then be
    "" and is derived from them (``derived_text``). Items without attributes get them from their text.
    ``images`` (one path per item, "" for none; relative to the working directory): what an image feature
    table's encoder reads. How each feature table got its rows is logged, one line each (not ``quiet``).
    """
    items = NewItems(list(keys), list(texts), [dict(a) for a in attributes] if attributes is not None else [],
                     [str(i) if i else "" for i in images] if images is not None else [])
    grown, reports = grow_catalogue(run, items, encoder)
    if not quiet:
        for report in reports:
            log.info("%s", report.line())
    return grown


def _checked_features(run: LoadedRun, keys: list[str], features: list[dict]) -> list[dict[str, np.ndarray]]:
    """The new items' given vectors as checked float32 rows (``given_feature_rows``); errors name the item."""
    dims, out = feature_dims(run), []
    for key, given in zip(keys, features):
        if given and not dims:
            raise DataError(f"new item {key!r}: {run.cfg.model} (in this configuration) reads no feature tables, so it takes no vectors")
        try:
            out.append(given_feature_rows(dims, given))
        except GivenFeatureError as e:
            raise DataError(f"new item {key!r}: {e}") from None
    return out


def grow_catalogue(run: LoadedRun, items: NewItems, encoder: str | None = None) -> tuple[LoadedRun, list[NewFeatureRows]]:
    """``add_items`` for a ``NewItems`` (``read_new_item_table``), with how each feature table got its rows."""
    if not spec_of(run.model).item_inputs:
        from textrec.models import MODELS, model_class

        text_models = ", ".join(n for n in sorted(MODELS) if spec_of(model_class(n)).item_inputs)
        raise TextrecError(f"{run.cfg.model} scores item IDs and cannot score new items; use a text model ({text_models})")
    ds, keys, attributes = run.dataset, items.keys, items.attributes
    clash = set(keys) & set(ds.item_keys)
    if clash:
        raise DataError(f"new item {sorted(clash)[0]!r} is already in the catalogue")
    if len(set(keys)) != len(keys):
        raise DataError(f"new item {next(k for k in keys if keys.count(k) > 1)!r} is given twice")
    features = items.features or [{} for _ in keys]  # a NewItems filled after it was made (read_new_item_table) has none
    if not len(attributes) == len(items.texts) == len(items.images) == len(features) == len(keys):
        raise DataError(f"{len(keys)} new items but {len(items.texts)} texts, {len(attributes)} attribute sets, "
                        f"{len(items.images)} images and {len(features)} feature sets")
    fields = tuple((ds.meta.get("source") or {}).get("text_fields") or TEXT_FIELDS)
    texts = [t or derived_text(a, fields) for t, a in zip(items.texts, attributes)]
    kinds = item_input_kinds(type(run.model), run.cfg.model_config)
    given = _checked_features(run, keys, features)
    missing = next((k for k, t, i, f in zip(keys, texts, items.images, given)
                    if not t and (not (i or f) or READS_TEXT & set(kinds))), None)
    if missing is not None:
        reads = f" ({run.cfg.model} reads item texts)" if READS_TEXT & set(kinds) else ""
        raise DataError(f"new item {missing!r} has neither a text nor an attribute{reads}")
    items = NewItems(list(keys), texts, attributes, items.images, given)
    inputs, reports = _extend_inputs(run, items, encoder)
    model = run.build_model(inputs)  # its random initial weights are all replaced by the carried state
    _carry_state(run.model, model, len(keys))
    model.to(run.device).eval()
    stored = None if ds.item_attributes is None and not any(attributes) else (ds.item_attributes or [{} for _ in ds.item_keys]) + attributes
    extended = Dataset(
        name=ds.name, item_keys=ds.item_keys + list(keys), item_texts=ds.item_texts + texts, user_keys=ds.user_keys,
        seq_offsets=ds.seq_offsets, seq_items=ds.seq_items, seq_times=ds.seq_times, meta=ds.meta, item_attributes=stored,
    )
    return LoadedRun(model, run.cfg, extended, run.config, run.device, inputs, zero_shot=run.zero_shot, path=run.path), reports
