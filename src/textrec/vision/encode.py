"""Image features of a dataset directory: find each item's image, encode through the cache, write feature tables.

Writes, next to any feature tables the dataset was prepared with::

    DIR/features/<name>.npy    (n_items + 1, dim) float32; row i = item id i; row 0 (padding) and every item
                               without a readable image are all-zero, which feature tables read as "absent"
    DIR/features/<name>.json   encoder and identity, image source, counts (with image, missing, unreadable,
                               distinct images encoded / served from the cache), the keys of missing and
                               unreadable items with the reason, the dataset's content hash, seconds

Names: ``efficientnet-lite0`` for the embedded encoder; a CLIP folder writes ``<name>-image`` and
``<name>-text`` (default ``clip-image`` / ``clip-text``), the text table from the item texts (an item with an
empty text gets a zero row). ``name`` overrides the default (for CLIP, the ``<name>`` part). A table of that
name that ``textrec prepare`` imported (e.g. UniSRec's ``feat3CLS``) is never overwritten.

The sidecar's ``encoder`` (name, identity, path: the weights file or the CLIP folder; a CLIP text table also
its pooling and max length) is the table's origin: ``table_origin`` reads it back and ``origin_encoder``
rebuilds that encoder, so items added later (``textrec recommend --new-items``) get rows made as the
catalogue's were. A table without such a sidecar (imported by ``textrec prepare``) has no known origin.

Caching is the text cache's (``textrec.text.cache``): vectors stored under the SHA-1 of the image file's bytes,
in a folder per (encoder identity incl. preprocessing, crop size, dim), so a rerun encodes only new or changed
images, and items with byte-identical images are encoded once. Vectors go into the cache ``CHUNK_IMAGES`` at a
time, so a killed run resumes where it stopped. Unreadable images are not cached: a fixed file is retried.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np

from textrec.errors import DataError, NotFoundError
from textrec.io import atomic_path, read_json, write_json, writing_files
from textrec.log import show_progress
from textrec.text.cache import EmbeddingCache
from textrec.text.encode import check_name, dataset_meta, encode_texts
from textrec.vision.encoders import CLIPTextEncoder, ImageEncoder, get_image_encoder
from textrec.vision.images import DEFAULT_COLUMN, ItemImages, hash_images, images_from_column, images_from_folder, load_pixels

FEATURES_DIR = "features"
CHUNK_IMAGES = 1024  # distinct images encoded between cache writes
KIND = "encoded_image_features"  # the sidecar "kind" of tables written here (others are never overwritten)


class EncodedImages(NamedTuple):
    vectors: np.ndarray  # (n, dim) float32 in the order of the paths; zeros where absent
    present: np.ndarray  # (n,) bool
    unreadable: dict[int, str]  # index -> why its file could not be read or decoded
    missing: dict[int, str]  # index -> why: its path names no file
    n_encoded: int  # distinct images that went through the encoder now
    n_cached: int  # distinct images served from the cache


class FeatureTable(NamedTuple):
    name: str
    modality: str  # "image" or "text"
    path: Path  # the written .npy
    dim: int
    n_present: int  # items with a non-zero row
    n_encoded: int  # distinct images / texts encoded now
    n_cached: int  # distinct images / texts served from the cache


class ImageEncodeResult(NamedTuple):
    tables: list[FeatureTable]  # the image table, then (CLIP) the text table
    n_items: int
    source: str
    missing: dict[str, str]  # item key -> why it has no image file
    unreadable: dict[str, str]  # item key -> why its file could not be read or decoded
    seconds: float


def _decode(path: Path, encoder: ImageEncoder) -> np.ndarray | str:
    try:
        return load_pixels(path, encoder.preprocess)
    except DataError as e:
        return str(e)


def _encode_distinct(encoder: ImageEncoder, files: list[Path], pool: ThreadPoolExecutor,
                     bar) -> tuple[np.ndarray, dict[int, str]]:
    """(vectors (n, dim), {row: reason} for files that would not decode) for distinct files, in batches.

    The next batch is decoded by the pool while the encoder runs on this one.
    """
    vectors = np.zeros((len(files), encoder.dim), dtype=np.float32)
    failed: dict[int, str] = {}
    starts = range(0, len(files), encoder.batch_size)
    submit = lambda s: [pool.submit(_decode, f, encoder) for f in files[s : s + encoder.batch_size]]  # noqa: E731
    pending = submit(0)
    for start in starts:
        decoded = [job.result() for job in pending]
        pending = submit(start + encoder.batch_size)  # empty after the last batch
        rows = [start + j for j, d in enumerate(decoded) if not isinstance(d, str)]
        failed.update({start + j: d for j, d in enumerate(decoded) if isinstance(d, str)})
        if rows:
            out = np.asarray(encoder.encode_pixels(np.stack([decoded[r - start] for r in rows])), dtype=np.float32)
            if out.shape != (len(rows), encoder.dim) or not np.isfinite(out).all():
                raise DataError(f"image encoder {encoder.name} returned shape {out.shape} or non-finite values "
                                f"(expected ({len(rows)}, {encoder.dim}), finite)")
            vectors[rows] = out
        if bar is not None:
            bar.update(len(decoded))
    return vectors, failed


def encode_images(encoder: ImageEncoder, paths: list[Path | None], cache: EmbeddingCache | None = None,
                  progress: bool = False, chunk_size: int | None = None) -> EncodedImages:
    """Vectors of the image files ``paths`` (None = no file); each distinct content is encoded once, only if uncached."""
    from tqdm.auto import tqdm

    chunk_size = chunk_size or CHUNK_IMAGES
    hashes, unreadable, missing = hash_images(paths)
    have = np.array([i for i, p in enumerate(paths) if p is not None and i not in unreadable and i not in missing],
                    dtype=np.int64)
    vectors = np.zeros((len(paths), encoder.dim), dtype=np.float32)
    present = np.zeros(len(paths), dtype=bool)
    if have.size == 0:
        return EncodedImages(vectors, present, unreadable, missing, 0, 0)
    uniq, first, inverse = np.unique(hashes[have], axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    if cache is not None:
        uniq_vectors, done = cache.get(uniq)
    else:
        uniq_vectors, done = np.zeros((len(uniq), encoder.dim), np.float32), np.zeros(len(uniq), dtype=bool)
    n_cached = int(done.sum())
    todo = np.flatnonzero(~done)
    failed: dict[int, str] = {}  # distinct row -> reason
    workers = max(1, min(4, os.cpu_count() or 1))  # Pillow decodes and resizes without holding the GIL
    with ThreadPoolExecutor(workers) as pool, tqdm(total=todo.size, unit="image", desc="encoding images",
                                                   disable=not show_progress(progress) or todo.size == 0) as bar:
        for start in range(0, todo.size, chunk_size):
            rows = todo[start : start + chunk_size]
            got, bad = _encode_distinct(encoder, [paths[have[first[r]]] for r in rows], pool, bar)
            ok = np.array([j not in bad for j in range(len(rows))], dtype=bool)
            uniq_vectors[rows[ok]] = got[ok]
            done[rows[ok]] = True
            failed.update({int(rows[j]): reason for j, reason in bad.items()})
            if cache is not None and ok.any():
                cache.put(uniq[rows[ok]], got[ok])
    vectors[have] = uniq_vectors[inverse]
    present[have] = done[inverse]
    for i, u in zip(have.tolist(), inverse.tolist()):
        if u in failed:  # every item whose file has these bytes
            unreadable[i] = failed[u] if paths[i] == paths[have[first[u]]] else f"{paths[i]}: same bytes as {failed[u]}"
    return EncodedImages(vectors, present, unreadable, missing, int(todo.size) - len(failed), n_cached)


def locate_images(data_dir: Path, ds, images: str | Path | None, root: str | Path | None) -> ItemImages:
    """An image folder, or the path column ``images`` (default ``image``) of the items table (module doc of images)."""
    if images is not None and Path(images).expanduser().is_dir():
        return images_from_folder(images, ds.item_keys)
    column = str(images) if images is not None else DEFAULT_COLUMN
    columns = {k for a in ds.item_attributes or [] for k in a}
    if images is not None and column not in columns:
        raise DataError(f"--images {images}: no such folder, nor a column of the items table of {data_dir} "
                        f"(columns: {', '.join(sorted(columns)) or 'none'})")
    if root is None:
        items_table = ((ds.meta.get("source") or {}).get("items")) if isinstance(ds.meta.get("source"), dict) else None
        root = Path(items_table).parent if items_table and Path(items_table).parent.is_dir() else data_dir
    return images_from_column(ds.item_attributes, column, root)


def _target(data_dir: Path, name: str) -> Path:
    """DIR/features/<name>.npy, refusing to replace a table this module did not write."""
    out = data_dir / FEATURES_DIR / f"{check_name(name, 'feature')}.npy"
    side = out.with_suffix(".json")
    if out.exists() and (not side.exists() or read_json(side).get("kind") != KIND):
        raise DataError(f"{out}: a feature table that came with the dataset; choose another --name")
    return out


def _write_table(out: Path, rows: np.ndarray, present: np.ndarray, info: dict) -> FeatureTable:
    table = np.zeros((len(rows) + 1, rows.shape[1]), dtype=np.float32)
    table[1:][present] = rows[present]
    with writing_files(out), atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.save(f, table)
    n_present = int((np.abs(table[1:]).sum(axis=1) > 0).sum())
    write_json(out.with_suffix(".json"), {"name": out.stem, "kind": KIND, **info, "dim": int(table.shape[1]),
                                          "items_present": n_present,
                                          "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    return FeatureTable(out.stem, info["modality"], out, int(table.shape[1]), n_present, info["n_encoded"], info["n_cached"])


def _store(identity: str, pooling: str, max_length: int, dim: int, cache: bool | str | Path) -> EmbeddingCache | None:
    if cache is False:
        return None
    return EmbeddingCache(identity, pooling, max_length, dim, None if cache is True else cache)


def _clip_text(data_dir: Path, ds, text_encoder: CLIPTextEncoder, name: str, cache, common: dict, t0: float) -> FeatureTable:
    out = _target(data_dir, name)
    with_text = np.array([bool(t.strip()) for t in ds.item_texts])
    rows = np.zeros((ds.n_items, text_encoder.dim), dtype=np.float32)
    store = _store(text_encoder.identity, text_encoder.pooling, text_encoder.max_length, text_encoder.dim, cache)
    enc = encode_texts(text_encoder, [t for t, w in zip(ds.item_texts, with_text) if w], store)
    rows[with_text] = enc.vectors
    encoder = {"name": text_encoder.name, "identity": text_encoder.identity, "path": str(text_encoder.clip.folder),
               "pooling": text_encoder.pooling, "max_length": text_encoder.max_length}
    info = {**common, "encoder": encoder, "modality": "text", "items_without_text": int((~with_text).sum()),
            "n_encoded": enc.n_encoded, "n_cached": enc.n_cached, "seconds": round(time.perf_counter() - t0, 3)}
    return _write_table(out, rows, with_text, info)


def encode_dataset_images(
    data_dir: str | Path,
    images: str | Path | None = None,
    encoder: str | Path | None = None,
    name: str | None = None,
    image_root: str | Path | None = None,
    batch_size: int = 64,
    device: str = "auto",
    cache: bool | str | Path = True,
    progress: bool = True,
) -> ImageEncodeResult:
    """Image features (and, for a CLIP folder, aligned text features) of ``data_dir`` (module doc).

    ``images``: a folder of ``<item key>.<ext>`` files, or the name of the items table's path column
    (default ``image``); ``image_root`` is where relative paths of that column start. ``encoder``:
    ``"efficientnet-lite0"`` (default) or a local CLIP folder. ``cache``: True = the default cache folder,
    a path = that folder, False = no cache.
    """
    from textrec.data.dataset import Dataset

    from textrec.extras import require

    require("PIL", "image features")
    t0 = time.perf_counter()
    data_dir = Path(data_dir)
    meta = dataset_meta(data_dir)
    ds = Dataset.load(data_dir, features=False)
    located = locate_images(data_dir, ds, images, image_root)
    image_encoder, text_encoder = get_image_encoder(encoder, batch_size, device, name)
    if text_encoder is not None:
        text_encoder.progress = progress
    image_name = image_encoder.name if text_encoder is not None or name is None else name
    out = _target(data_dir, image_name)  # both names checked before any encoding
    if text_encoder is not None:
        _target(data_dir, text_encoder.name)
    store = _store(image_encoder.identity, "image", image_encoder.preprocess.crop, image_encoder.dim, cache)
    enc = encode_images(image_encoder, located.paths, store, progress)
    missing = {ds.item_keys[i]: why for i, why in sorted({**located.missing_reason, **enc.missing}.items())}
    unreadable = {ds.item_keys[i]: why for i, why in sorted(enc.unreadable.items())}
    weights = image_encoder.clip.folder if text_encoder is not None else image_encoder.weights
    common = {"encoder": {"name": image_encoder.name, "identity": image_encoder.identity, "path": str(weights)},
              "n_items": ds.n_items, "dataset_content_hash": meta["content_hash"],
              "cache_dir": str(store.dir) if store is not None else None}
    info = {**common, "modality": "image", "source": located.source,
            "preprocess": image_encoder.preprocess._asdict(), "items_missing": len(missing),
            "items_unreadable": len(unreadable), "n_encoded": enc.n_encoded, "n_cached": enc.n_cached,
            "missing": missing, "unreadable": unreadable, "seconds": round(time.perf_counter() - t0, 3)}
    tables = [_write_table(out, enc.vectors, enc.present, info)]
    if text_encoder is not None:
        t1 = time.perf_counter()
        tables.append(_clip_text(data_dir, ds, text_encoder, text_encoder.name, cache, common, t1))
    seconds = time.perf_counter() - t0
    return ImageEncodeResult(tables, ds.n_items, located.source, missing, unreadable, seconds)


# ---- a table's origin, for items added later ------------------------------------------------------------


class TableOrigin(NamedTuple):
    """How a feature table was made, as its sidecar records it."""

    name: str
    modality: str  # "image" or "text"
    encoder: dict  # name, identity, path (the weights file or the CLIP folder)
    sidecar: Path


def table_origin(data_dir: str | Path, name: str) -> TableOrigin | None:
    """The origin of ``DIR/features/<name>.npy`` when this module wrote it; None when unknown (no sidecar of
    ours: a table ``textrec prepare`` imported, e.g. UniSRec's ``feat3CLS``, whose encoder is not at hand)."""
    side = Path(data_dir) / FEATURES_DIR / f"{name}.json"
    if not side.is_file():
        return None
    info = read_json(side)
    encoder = info.get("encoder")
    if info.get("kind") != KIND or info.get("modality") not in ("image", "text") or not isinstance(encoder, dict):
        return None
    return TableOrigin(name, info["modality"], encoder, side)


def origin_encoder(origin: TableOrigin, device: str = "auto", batch_size: int = 64) -> ImageEncoder | CLIPTextEncoder:
    """The encoder that made the table, again: an image encoder for an image table, CLIP's text encoder for a
    text table. Errors (one line) when the recorded CLIP folder is gone or its weights have changed since."""
    from textrec.vision.encoders import CLIPImageEncoder, CLIPModelFolder, EfficientNetLiteEncoder

    identity = str(origin.encoder.get("identity", ""))
    kind, _, rest = identity.partition(":")
    recorded = origin.encoder.get("path") or ""
    table = f"feature table {origin.name!r} ({origin.sidecar})"
    if kind == "efficientnet-lite0" and origin.modality == "image":
        weights = Path(recorded) if recorded and Path(recorded).is_file() else None  # else the packaged file
        encoder = EfficientNetLiteEncoder(batch_size, device, weights)
        if encoder.identity != identity:
            raise DataError(f"{table} was encoded by {identity}, but the EfficientNet-Lite0 here is {encoder.identity}; "
                            "re-encode the dataset (textrec encode DIR --images ...) and train again")
        return encoder
    if kind not in ("clip-image", "clip-text"):
        raise DataError(f"{table}: unknown encoder identity {identity!r}")
    folder = Path(recorded).expanduser()
    if not recorded or not folder.is_dir():
        raise NotFoundError(f"{table} was encoded by the CLIP folder {recorded or '(not recorded)'}, which is gone; "
                            "put that folder back to encode new items for it")
    clip = CLIPModelFolder(folder, device)
    digest = rest.partition(":")[0]
    if clip.digest != digest:
        raise DataError(f"{table}: the CLIP folder {folder} has changed since it made this table (weights {clip.digest}, "
                        f"the table's {digest}); restore it, or re-encode the dataset and train again")
    if origin.modality == "text":
        return CLIPTextEncoder(clip, batch_size)
    encoder = CLIPImageEncoder(clip, batch_size)
    if encoder.identity.partition(":")[2] != rest:
        raise DataError(f"{table}: the image preprocessing of {folder} has changed since it made this table "
                        f"({encoder.identity} against {identity}); restore preprocessor_config.json")
    return encoder
