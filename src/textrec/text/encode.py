"""Item text embeddings of a dataset directory: encode (through the cache), attach, load.

Reference: UniSRec's ``process_amazon.py`` writes ``<name>.feat1CLS`` (and ``.feat2CLS``, the word-drop
view) as raw float32 rows indexed by item token, re-encoding everything on every run. textrec writes::

    DIR/embeddings/<name>.npy    (n_items + 1, dim) float32; row i = item id i, row 0 (padding) = zeros
    DIR/embeddings/<name>.json   encoder name and identity, pooling, max_length, dim, the dataset's
                                 content hash, counts (distinct texts, encoded, served from the cache),
                                 word_drop and its seed, seconds

The default name is ``<encoder>-<pooling>`` (``minilm-mean``), with ``-wd15`` for a 0.15 word-drop view.
Counts are over *distinct* texts: items with identical text are encoded once. Vectors go into the cache
``CHUNK_TEXTS`` texts at a time as they are encoded, so a killed run resumes where it stopped. Loading
checks the content hash, so embeddings are never silently used with a changed dataset. Features imported
with the dataset (``DIR/features/<name>.npy``, e.g. UniSRec's ``feat1CLS``) are loadable under their own name.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from textrec.data.dataset import check_dataset_hash
from textrec.errors import DataError, NotFoundError
from textrec.io import atomic_path, read_json, write_json, writing_files
from textrec.log import show_progress
from textrec.text.augment import word_drop_texts
from textrec.text.cache import EmbeddingCache, text_hashes
from textrec.text.encoders import TextEncoder, get_encoder

EMBEDDINGS_DIR = "embeddings"
CHUNK_TEXTS = 4096  # texts encoded between cache writes: a killed run loses at most this many (~50 chunks for 200k)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class EncodedTexts(NamedTuple):
    vectors: np.ndarray  # (n, dim) float32 in the order of the texts
    n_encoded: int  # distinct texts that went through the encoder
    n_cached: int  # distinct texts served from the cache


class EncodeResult(NamedTuple):
    name: str
    path: Path  # the written .npy
    n_items: int
    n_encoded: int  # distinct texts encoded now
    n_cached: int  # distinct texts served from the cache
    seconds: float
    dim: int


def check_name(name: str, what: str = "embedding") -> str:
    if not _NAME.fullmatch(name):
        raise DataError(f"invalid {what} name {name!r}: use letters, digits, '.', '_' and '-' (not starting with '.')")
    return name


def dataset_meta(data_dir: str | Path) -> dict:
    """``meta.json`` of a dataset directory, with a clear error when it is not one."""
    path = Path(data_dir) / "meta.json"
    if not path.exists():
        raise DataError(f"{data_dir}: not a textrec dataset (no meta.json; create one with `textrec prepare`)")
    meta = read_json(path)
    if "content_hash" not in meta or "n_items" not in meta:
        raise DataError(f"{path}: no content_hash / n_items (re-create the dataset with `textrec prepare`)")
    return meta


def _encode_checked(encoder: TextEncoder, texts: list[str]) -> np.ndarray:
    new = np.asarray(encoder.encode(texts), dtype=np.float32)
    if new.shape != (len(texts), encoder.dim):
        raise DataError(f"encoder {encoder.name} returned shape {new.shape}, expected ({len(texts)}, {encoder.dim})")
    if not np.isfinite(new).all():
        raise DataError(f"encoder {encoder.name} returned NaN or infinite values")
    return new


@contextlib.contextmanager
def _one_bar(encoder: TextEncoder, total: int, chunk_size: int) -> Iterator:
    """One progress bar over all chunks in place of the encoder's own, which would restart at every chunk."""
    if total <= chunk_size or not show_progress(getattr(encoder, "progress", False)):
        yield None
        return
    from tqdm.auto import tqdm

    encoder.progress = False
    try:
        with tqdm(total=total, unit="text", desc="encoding") as bar:
            yield bar
    finally:
        encoder.progress = True


def encode_texts(encoder: TextEncoder, texts: list[str], cache: EmbeddingCache | None = None,
                 chunk_size: int | None = None) -> EncodedTexts:
    """Vectors for ``texts``; each distinct text is encoded once, and only when the cache lacks it.

    Missing texts are encoded ``chunk_size`` (default ``CHUNK_TEXTS``) at a time, and each finished chunk is
    put into the cache at once (one atomically written chunk file), so a run killed half-way keeps what it
    finished and the rerun encodes only the rest.
    """
    chunk_size = chunk_size or CHUNK_TEXTS
    hashes = text_hashes(texts)
    uniq, first, inverse = np.unique(hashes, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    if cache is not None:
        vectors, found = cache.get(uniq)
    else:
        vectors, found = np.zeros((len(uniq), encoder.dim), dtype=np.float32), np.zeros(len(uniq), dtype=bool)
    todo = np.flatnonzero(~found)
    with _one_bar(encoder, todo.size, chunk_size) as bar:
        for start in range(0, todo.size, chunk_size):
            rows = todo[start : start + chunk_size]
            vectors[rows] = _encode_checked(encoder, [texts[i] for i in first[rows]])
            if cache is not None:
                cache.put(uniq[rows], vectors[rows])
            if bar is not None:
                bar.update(len(rows))
    return EncodedTexts(vectors[inverse], int(todo.size), int(found.sum()))


def _write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array, dtype=np.float32))


def encode_dataset(
    data_dir: str | Path,
    encoder: TextEncoder | str | Path | None = None,
    pooling: str = "mean",
    max_length: int = 512,
    batch_size: int = 64,
    device: str = "auto",
    word_drop: float = 0.0,
    name: str | None = None,
    cache: bool | str | Path = True,
    progress: bool = True,
    seed: int = 2020,
    dtype=None,
    normalize: bool = False,
) -> EncodeResult:
    """Encode every item text of ``data_dir`` into ``DIR/embeddings/<name>.npy`` (see module doc).

    ``encoder``: an encoder object, or a name/path for ``get_encoder`` (then ``pooling``, ``max_length``,
    ``batch_size``, ``device``, ``dtype``, ``normalize`` configure it). ``cache``: True = the default
    cache folder, a path = that folder, False = no cache. ``word_drop`` > 0 encodes a word-drop view
    drawn with ``seed``.
    """
    from textrec.data.dataset import Dataset

    t0 = time.perf_counter()
    meta = dataset_meta(data_dir)
    ds = Dataset.load(data_dir, features=False)
    if not any(t.strip() for t in ds.item_texts):
        raise DataError(f"{data_dir}: every item text is empty, so there is nothing to encode (attach precomputed "
                        f"features instead: `textrec encode {data_dir} --attach FILE --name NAME`)")
    if not isinstance(encoder, TextEncoder):
        encoder = get_encoder(encoder, pooling, max_length, batch_size, device, dtype, normalize, progress)
    name = check_name(name or default_name(encoder, word_drop))
    texts = list(ds.item_texts)
    if word_drop > 0:
        texts = word_drop_texts(texts, word_drop, seed)
    store = None
    if cache is not False:
        root = None if cache is True else cache
        store = EmbeddingCache(encoder.identity, encoder.pooling, encoder.max_length, encoder.dim, root)
    out = Path(data_dir) / EMBEDDINGS_DIR / f"{name}.npy"
    with writing_files(out):  # a second encoder of the same name gets one line; a killed one's temporaries go
        return _encode_into(out, ds, meta, encoder, texts, store, word_drop, seed, t0)


def _encode_into(out: Path, ds, meta: dict, encoder: TextEncoder, texts: list[str], store: EmbeddingCache | None,
                 word_drop: float, seed: int, t0: float) -> EncodeResult:
    enc = encode_texts(encoder, texts, store)
    table = np.zeros((ds.n_items + 1, encoder.dim), dtype=np.float32)
    table[1:] = enc.vectors
    name = out.stem
    _write_npy(out, table)
    seconds = time.perf_counter() - t0
    write_json(out.with_suffix(".json"), {
        "name": name,
        "kind": "encoded",
        "encoder": {"name": encoder.name, "identity": encoder.identity, "pooling": encoder.pooling,
                    "max_length": encoder.max_length, "dim": encoder.dim},
        "dim": encoder.dim,
        "n_items": ds.n_items,
        "dataset_content_hash": meta["content_hash"],
        "distinct_texts": enc.n_encoded + enc.n_cached,
        "n_encoded": enc.n_encoded,
        "n_cached": enc.n_cached,
        "cache_dir": str(store.dir) if store is not None else None,
        "word_drop": word_drop,
        "seed": seed if word_drop > 0 else None,
        "seconds": round(seconds, 3),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    })
    return EncodeResult(name, out, ds.n_items, enc.n_encoded, enc.n_cached, seconds, encoder.dim)


def default_name(encoder: TextEncoder, word_drop: float = 0.0) -> str:
    """``<encoder name>-<pooling>``, plus ``-wd<percent>`` for a word-drop view."""
    suffix = f"-wd{round(word_drop * 100)}" if word_drop > 0 else ""
    return f"{encoder.name}-{encoder.pooling}{suffix}"


def list_item_embeddings(data_dir: str | Path) -> tuple[list[str], list[str]]:
    """(names in DIR/embeddings, names of dataset features in DIR/features), each sorted."""
    data_dir = Path(data_dir)
    encoded = sorted(p.stem for p in (data_dir / EMBEDDINGS_DIR).glob("*.npy"))
    features = sorted(p.stem for p in (data_dir / "features").glob("*.npy"))
    return encoded, features


def _choose(data_dir: Path, name: str | None) -> str:
    encoded, features = list_item_embeddings(data_dir)
    if name is not None:
        if name in encoded or name in features:
            return name
    elif len(encoded) == 1:
        return encoded[0]
    elif not encoded and "feat1CLS" in features:
        return "feat1CLS"
    available = ", ".join(encoded + [f"{f} (dataset feature)" for f in features]) or "none"
    if name is None and not encoded:
        raise NotFoundError(f"{data_dir}: no item embeddings; run `textrec encode {data_dir}` first")
    if name is None:
        raise NotFoundError(f"several item embeddings in {data_dir} ({available}); choose one with data.embeddings=NAME "
                            "(textrec quantize: --embeddings NAME)")
    raise NotFoundError(f"{data_dir}: no embeddings named {name!r} (available: {available})")


def load_item_embeddings(data_dir: str | Path, name: str | None = None) -> tuple[np.ndarray, dict]:
    """((n_items + 1, dim) float32 with row 0 = padding, info dict) of embeddings ``name``.

    ``name=None`` picks the only one in ``DIR/embeddings`` (or the dataset's ``feat1CLS`` when there is
    none); several raise an error listing them. A dataset feature of that name is used when no encoded
    embeddings carry it.
    """
    data_dir = Path(data_dir)
    meta = dataset_meta(data_dir)
    name = _choose(data_dir, name)
    path = data_dir / EMBEDDINGS_DIR / f"{name}.npy"
    if path.exists():
        info = read_json(path.with_suffix(".json")) if path.with_suffix(".json").exists() else {}
        check_dataset_hash(info.get("dataset_content_hash", "none recorded"), meta, path)
    else:
        path = data_dir / "features" / f"{name}.npy"
        info = {"name": name, "kind": "dataset_feature", "source": str(path)}
    try:
        table = np.load(path, mmap_mode="r")  # read-only, paged in as used: merging or the model copies what it keeps
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read embeddings ({e})") from None
    if table.ndim != 2 or table.shape[0] != meta["n_items"] + 1:
        raise DataError(f"{path}: shape {table.shape}, expected ({meta['n_items'] + 1}, dim)")
    info = {**info, "name": name, "path": str(path), "dim": int(table.shape[1])}
    return np.asarray(table, dtype=np.float32), info


def _read_source(source: Path, n_items: int) -> np.ndarray:
    """A ``.npy`` with n_items or n_items + 1 rows, or a raw float32 file with n_items rows."""
    if source.suffix == ".npy":
        try:
            arr = np.load(source)
        except (OSError, ValueError) as e:
            raise DataError(f"{source}: cannot read .npy ({e})") from None
        if arr.ndim != 2 or arr.shape[0] not in (n_items, n_items + 1):
            raise DataError(f"{source}: shape {arr.shape}, expected ({n_items}, dim) or ({n_items + 1}, dim)")
        return arr[1:] if arr.shape[0] == n_items + 1 else arr
    raw = np.fromfile(source, dtype=np.float32)
    if raw.size == 0 or raw.size % n_items:
        raise DataError(f"{source}: {raw.size} float32 values is not a multiple of {n_items} items")
    return raw.reshape(n_items, -1)


def attach_embeddings(data_dir: str | Path, source_path: str | Path, name: str) -> Path:
    """Store precomputed item features as embeddings ``name``; return the written ``.npy``.

    ``source_path``: a ``.npy`` of shape (n_items, dim) or (n_items + 1, dim) (row 0 is reset to zeros),
    a raw float32 file with one row per item (``.feat1CLS`` style: row i = item id i + 1, i.e. the order
    of the UniSRec ``.item2index`` tokens), or the name of a feature already in ``DIR/features``.
    """
    data_dir = Path(data_dir)
    meta = dataset_meta(data_dir)
    check_name(name)
    n_items = int(meta["n_items"])
    source = Path(source_path).expanduser()
    if source.is_file():
        rows = _read_source(source, n_items)
        digest = hashlib.sha1(source.read_bytes()).hexdigest()
    elif (data_dir / "features" / f"{source_path}.npy").is_file():
        source = data_dir / "features" / f"{source_path}.npy"
        rows, digest = np.load(source)[1:], None
    else:
        _, features = list_item_embeddings(data_dir)
        raise NotFoundError(f"{source_path}: no such file, nor a feature of {data_dir} (features: {', '.join(features) or 'none'})")
    if not np.isfinite(rows).all():
        raise DataError(f"{source}: contains NaN or infinite values")
    table = np.zeros((n_items + 1, rows.shape[1]), dtype=np.float32)
    table[1:] = rows
    out = data_dir / EMBEDDINGS_DIR / f"{name}.npy"
    _write_npy(out, table)
    write_json(out.with_suffix(".json"), {
        "name": name,
        "kind": "attached",
        "source": str(source.resolve()),
        "source_sha1": digest,
        "dim": int(table.shape[1]),
        "n_items": n_items,
        "dataset_content_hash": meta["content_hash"],
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    })
    return out
