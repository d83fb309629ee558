"""Item codes of a dataset directory (VQ-Rec): fit, reuse or import an OPQ/PQ quantiser; write, load.

Reference (REFERENCE_NOTES section 2): ``pq.py`` fits ``OPQ32,IVF1,PQ32x8`` on the strict (training-split)
items and saves ``X.OPQ32,IVF1,PQ32x8.strict.index`` (index id j = j-th smallest strict item);
``VQRecDataset.load_index`` then ``index.add``s the ``.feat1CLS`` vectors of *every* item, so items
never seen in training get codes from the same quantiser; ``multi_pq.py`` fits one quantiser on the
concatenated strict items of several domains ("reuse the PQ index set" encodes a target with it).
textrec does the same and writes::

    DIR/codes/<name>.npy    (n_items + 1, n_codebooks) int16 codes in 0..codebook_size-1;
                            row 0 (padding) = PAD_CODE = -1, so ``codes + 1`` is VQ-Rec's 0 = padding
    DIR/codes/<name>.json   provenance (embeddings, quantiser source, seed), how each item got its codes,
                            collisions (items sharing all codes with another item), per-sub-space
                            codebook usage, reconstruction error
    DIR/codes/<name>.index  the quantiser as a faiss file in the reference layout: list 0 holds the
                            codes of this dataset's training items, id j = j-th smallest of them

Importing a released index (``from_index``): its codes are used for the training items as they are.
The reference codes the other items with BERT ``.feat1CLS`` vectors, which textrec cannot compute
offline. When the dataset has ``feat1CLS`` features of the index's dimension they are used, as in the
reference; otherwise (an approximation, reported in the JSON and on stderr) a least-squares linear map
is fitted from our embeddings of the training items to the index's reconstructions of them, and the
mapped embeddings of the missing items are encoded through the index.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from textrec.data.dataset import check_dataset_hash
from textrec.errors import DataError, NotFoundError
from textrec.io import atomic_path, read_json, write_json, writing_files
from textrec.quant.pq import ItemQuantizer
from textrec.text.encode import check_name, dataset_meta, load_item_embeddings

log = logging.getLogger(__name__)

CODES_DIR = "codes"
PAD_CODE = -1


class QuantizeResult(NamedTuple):
    name: str
    path: Path  # DIR/codes/<name>.npy
    index_path: Path  # DIR/codes/<name>.index
    n_items: int
    n_fit: int  # vectors the quantiser was fitted on now (0 when reused or imported)
    n_codebooks: int
    codebook_size: int
    collisions: int  # items whose full code row equals another item's
    codebook_usage: list[int]  # distinct codes used by the items, per sub-space
    encoded_by: dict[str, int]  # how many items got their codes which way
    seconds: float
    collision_groups: int  # distinct full codes shared by more than one item
    codebook_usage_mean: float  # mean of codebook_usage (codewords used per codebook)
    codebook_usage_min: int  # min of codebook_usage

    def summary(self) -> str:
        """One line in words: items, codebooks, collisions, codebook usage, time, where the codes went."""
        return (f"codes {self.name!r}: {self.n_items:,} items, {self.n_codebooks} codebooks x {self.codebook_size} codewords; "
                f"{self.collisions:,} items share their full code with another item (collisions); codebook usage: mean "
                f"{round(self.codebook_usage_mean, 1):g}/{self.codebook_size} codewords used per codebook (min {self.codebook_usage_min}); "
                f"{self.seconds:.1f} s; wrote {self.path}")


def _say(progress: bool, message: str) -> None:
    """A progress line on stderr for a step that can take minutes."""
    if progress:
        log.info(f"quantize: {message}")


def code_statistics(codes: np.ndarray, codebook_size: int) -> dict:
    """Collisions and per-sub-space codebook usage of (n_items, D) codes (padding row excluded)."""
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    shared = counts[inverse.reshape(-1)] > 1
    usage = [int(len(np.unique(codes[:, m]))) for m in range(codes.shape[1])]
    return {
        "collisions": int(shared.sum()),
        "collision_groups": int((counts > 1).sum()),
        "codebook_usage": usage,
        "codebook_usage_min": min(usage),
        "codebook_usage_mean": round(float(np.mean(usage)), 2),
        "codebook_size": codebook_size,
    }


def _file_sha1(path: Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def _rel_error(x: np.ndarray, x_hat: np.ndarray) -> float:
    """Relative squared reconstruction error sum ||x - x_hat||^2 / sum ||x||^2."""
    return round(float(((x - x_hat) ** 2).sum() / max((x**2).sum(), 1e-12)), 5)


def _embedding_summary(info: dict) -> dict:
    keys = ("name", "kind", "dim", "path")
    out = {k: info[k] for k in keys if k in info}
    if "encoder" in info:
        out["encoder_identity"] = info["encoder"]["identity"]
    return out


def _write_codes(data_dir: Path, name: str, codes: np.ndarray, quantizer: ItemQuantizer, train_ids: np.ndarray,
                 info: dict, t0: float) -> QuantizeResult:
    """Write codes/<name>.{npy,json,index}; ``codes`` is (n_items, D) for items 1..n_items."""
    meta = dataset_meta(data_dir)
    if codes.shape != (meta["n_items"], quantizer.n_codebooks):
        raise DataError(f"internal: {codes.shape} codes for {meta['n_items']} items")
    dtype = np.int16 if quantizer.codebook_size <= 32768 else np.int32
    table = np.full((meta["n_items"] + 1, quantizer.n_codebooks), PAD_CODE, dtype=dtype)
    table[1:] = codes
    out = data_dir / CODES_DIR / f"{name}.npy"
    with writing_files(out, (".json", ".index")):
        return _write_codes_locked(out, meta, table, codes, quantizer, train_ids, info, t0, dtype)


def _write_codes_locked(out: Path, meta: dict, table: np.ndarray, codes: np.ndarray, quantizer: ItemQuantizer,
                        train_ids: np.ndarray, info: dict, t0: float, dtype) -> QuantizeResult:
    name = out.stem
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.save(f, table)
    index_path = quantizer.save(out.with_suffix(".index"), codes[train_ids - 1])
    stats = code_statistics(codes, quantizer.codebook_size)
    seconds = time.perf_counter() - t0
    write_json(out.with_suffix(".json"), {
        "name": name,
        **info,
        "n_items": int(meta["n_items"]),
        "dataset_content_hash": meta["content_hash"],
        "n_codebooks": quantizer.n_codebooks,
        "codebook_size": quantizer.codebook_size,
        "dim": quantizer.dim,
        "dtype": np.dtype(dtype).name,
        "pad_code": PAD_CODE,
        "index_file": index_path.name,
        "index_ids": "id j = j-th smallest training-split item id",
        **stats,
        "seconds": round(seconds, 3),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    })
    return QuantizeResult(name, out, index_path, int(meta["n_items"]), int(info.get("n_fit", 0)), quantizer.n_codebooks,
                          quantizer.codebook_size, stats["collisions"], stats["codebook_usage"], info["encoded_by"],
                          round(seconds, 3), stats["collision_groups"], stats["codebook_usage_mean"], stats["codebook_usage_min"])


def _fit(x: np.ndarray, n_codebooks: int, codebook_size: int, opq_iterations: int, n_threads: int, seed: int,
         progress: bool) -> ItemQuantizer:
    how = "faiss" if len(x) >= x.shape[1] else "OPQ in numpy: fewer vectors than dimensions"
    _say(progress, f"training OPQ rotation and PQ codebooks ({n_codebooks} x {codebook_size}) on {len(x):,} vectors "
                   f"of {x.shape[1]} dims ({how}; {opq_iterations} OPQ iterations) ...")
    t0 = time.perf_counter()
    q = ItemQuantizer(x.shape[1], n_codebooks, codebook_size, opq_iterations, n_threads).fit(x, seed)
    _say(progress, f"trained in {time.perf_counter() - t0:.1f} s")
    return q


def _encode(q: ItemQuantizer, x: np.ndarray, what: str, progress: bool) -> np.ndarray:
    _say(progress, f"encoding {len(x):,} {what} ...")
    return q.encode(x)


def _load(data_dir: Path):
    from textrec.data.dataset import Dataset
    from textrec.data.split import training_item_ids

    ds = Dataset.load(data_dir)
    return ds, training_item_ids(ds)


def quantize_dataset(
    data_dir: str | Path,
    embeddings: str | None = None,
    n_codebooks: int = 32,
    codebook_size: int = 256,
    from_index: str | Path | None = None,
    seed: int = 2020,
    name: str | None = None,
    quantizer: str | Path | ItemQuantizer | None = None,
    opq_iterations: int = 50,
    n_threads: int = 1,
    progress: bool = False,
) -> QuantizeResult:
    """Item codes for every item of ``data_dir`` (see module doc).

    Default: fit a new quantiser on the training-split items' ``embeddings`` and encode all items.
    ``quantizer``: encode with an existing quantiser (a faiss file or object; "reuse the index set").
    ``from_index``: import a released index built on this dataset's training items. ``progress``: say
    on stderr which step is running.
    """
    data_dir, t0 = Path(data_dir), time.perf_counter()
    if from_index is not None and quantizer is not None:
        raise DataError("pass either from_index (import its codes) or quantizer (encode with it), not both")
    if from_index is not None:
        return _import_index(data_dir, Path(from_index), embeddings, name, t0, progress)
    table, emb_info = load_item_embeddings(data_dir, embeddings)
    ds, train_ids = _load(data_dir)
    x = table[1:]
    if quantizer is not None:
        q = quantizer if isinstance(quantizer, ItemQuantizer) else ItemQuantizer.load(quantizer)
        if q.dim != x.shape[1]:
            raise DataError(f"the quantizer works on {q.dim}-d vectors, embeddings {emb_info['name']!r} are {x.shape[1]}-d")
        stem = Path(quantizer).name.split(".")[0] if not isinstance(quantizer, ItemQuantizer) else "shared"
        default = f"{emb_info['name']}-opq{q.n_codebooks}x{q.codebook_size}-{stem}"
        info = {"kind": "quantizer", "n_fit": 0,
                "quantizer": None if isinstance(quantizer, ItemQuantizer) else str(Path(quantizer).resolve()),
                "quantizer_sha1": None if isinstance(quantizer, ItemQuantizer) else _file_sha1(Path(quantizer))}
    else:
        q = _fit(x[train_ids - 1], n_codebooks, codebook_size, opq_iterations, n_threads, seed, progress)
        default = f"{emb_info['name']}-opq{n_codebooks}x{codebook_size}"
        info = {"kind": "fit", "n_fit": len(train_ids), "seed": seed, "opq_iterations": opq_iterations, "n_threads": n_threads,
                "opq_method": q.opq_method,
                "fit_on": [{"dataset": ds.name, "dir": str(data_dir.resolve()), "n_train_items": len(train_ids)}]}
    name = check_name(name or default, "codes")
    codes = _encode(q, x, "items", progress)
    info.update(embeddings=_embedding_summary(emb_info), encoded_by={"quantizer": ds.n_items},
                n_unseen=ds.n_items - len(train_ids), reconstruction_rel_error=_rel_error(x, q.reconstruct(codes)))
    return _write_codes(data_dir, name, codes, q, train_ids, info, t0)


def _least_squares(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """argmin_w ||x w - y||^2: normal equations for well-conditioned tall x (fast), else SVD."""
    if len(x) >= 2 * x.shape[1]:
        gram = x.T @ x
        if np.linalg.cond(gram) < 1e10:
            return np.linalg.solve(gram, x.T @ y)
    return np.linalg.lstsq(x, y, rcond=None)[0]


def _lstsq_map(table: np.ndarray, train_ids: np.ndarray, train_codes: np.ndarray, q: ItemQuantizer,
               missing: np.ndarray) -> tuple[np.ndarray, dict]:
    """Map embeddings into the index's space by least squares on the training items (module doc)."""
    def design(ids):
        return np.hstack([table[ids].astype(np.float64), np.ones((len(ids), 1))])

    x, y = design(train_ids), q.reconstruct(train_codes).astype(np.float64)
    # Held-out check first (a fixed 10% of the training items), then the map from all of them.
    held = np.random.default_rng(0).random(len(train_ids)) < 0.1
    w_part = _least_squares(x[~held], y[~held])
    held_codes = q.encode((x[held] @ w_part).astype(np.float32))
    w = _least_squares(x, y)
    fit = x @ w
    r2 = 1.0 - ((y - fit) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
    report = {
        "method": "least-squares linear map (with bias) from our embeddings to the index's reconstructions "
                  "of the training items; missing items' mapped embeddings encoded through the index",
        "n_train": int(len(train_ids)),
        "r2_train": round(float(r2), 4),
        "heldout_items": int(held.sum()),
        "heldout_code_agreement": round(float((held_codes == train_codes[held]).mean()), 4),
        "heldout_rows_identical": round(float((held_codes == train_codes[held]).all(1).mean()), 4),
    }
    return (design(missing) @ w).astype(np.float32), report


def _import_index(data_dir: Path, index_path: Path, embeddings: str | None, name: str | None, t0: float,
                  progress: bool = False) -> QuantizeResult:
    """Codes from a released index: its own for the training items, the rest encoded through it."""
    q = ItemQuantizer.load(index_path)
    parts = q._require_fitted()
    ds, train_ids = _load(data_dir)
    n = len(parts.codes)
    if n != len(train_ids):
        raise DataError(f"{index_path}: holds codes of {n} items but {data_dir} has {len(train_ids)} training-split "
                        "items; an index can only be imported for the dataset it was built on")
    if not np.array_equal(np.sort(parts.ids), np.arange(n)):
        raise DataError(f"{index_path}: stored ids are not 0..{n - 1}, so they cannot be mapped to items")
    codes = np.full((ds.n_items, q.n_codebooks), PAD_CODE, dtype=np.int32)
    codes[train_ids[parts.ids] - 1] = parts.codes
    missing = np.setdiff1d(np.arange(1, ds.n_items + 1), train_ids)
    info = {"kind": "imported", "n_fit": 0, "index": str(index_path.resolve()), "index_sha1": _file_sha1(index_path),
            "encoded_by": {"index_codes": n}, "n_unseen": int(missing.size), "approximation": None, "embeddings": None}
    feat = ds.features.get("feat1CLS")
    if missing.size and feat is not None and feat.shape[1] == q.dim:
        # the reference's path: index.add(feat1CLS)
        codes[missing - 1] = _encode(q, np.asarray(feat)[missing], "items not in the index (their feat1CLS vectors)", progress)
        info["encoded_by"]["feat1CLS"] = int(missing.size)
    elif missing.size:
        table, emb_info = load_item_embeddings(data_dir, embeddings)
        mapped, info["approximation"] = _lstsq_map(table, train_ids, codes[train_ids - 1], q, missing)
        codes[missing - 1] = _encode(q, mapped, "items not in the index (mapped embeddings)", progress)
        info["encoded_by"]["lstsq_map"] = int(missing.size)
        info["embeddings"] = _embedding_summary(emb_info)
        log.warning(f"note: {missing.size} of {ds.n_items} items are not in {index_path.name}; their codes come from a "
                    f"least-squares map of {emb_info['name']!r} embeddings into the index's space (an approximation; "
                    f"held-out code agreement {info['approximation']['heldout_code_agreement']:.1%})")
    default = f"imported-opq{q.n_codebooks}x{q.codebook_size}"
    return _write_codes(data_dir, check_name(name or default, "codes"), codes, q, train_ids, info, t0)


def quantize_datasets(
    data_dirs: list[str | Path],
    embeddings: str | None = None,
    n_codebooks: int = 32,
    codebook_size: int = 256,
    seed: int = 2020,
    name: str | None = None,
    out_index: str | Path | None = None,
    opq_iterations: int = 50,
    n_threads: int = 1,
    progress: bool = False,
) -> list[QuantizeResult]:
    """One quantiser fitted on the training items of several datasets (multi-domain pre-training).

    Codes are written into each dataset; with ``out_index`` the quantiser is also saved there (list 0
    holds the training items of all datasets in the given order, described in ``<out_index>.json``), to
    encode a target dataset later with ``quantize_dataset(target, quantizer=out_index)``.
    """
    t0 = time.perf_counter()
    if not data_dirs:
        raise DataError("quantize_datasets needs at least one dataset directory")
    loaded = []
    for data_dir in map(Path, data_dirs):
        table, emb_info = load_item_embeddings(data_dir, embeddings)
        ds, train_ids = _load(data_dir)
        loaded.append((data_dir, ds, train_ids, table, emb_info))
    dims = {table.shape[1] for _, _, _, table, _ in loaded}
    identities = {info["encoder"]["identity"] for *_, info in loaded if "encoder" in info}
    if len(dims) > 1 or len(identities) > 1:
        raise DataError(f"the datasets' embeddings come from different encoders (dims {sorted(dims)}, "
                        f"identities {sorted(identities)}); encode them all with the same encoder")
    x_train = np.concatenate([table[train_ids] for _, _, train_ids, table, _ in loaded])
    q = _fit(x_train, n_codebooks, codebook_size, opq_iterations, n_threads, seed, progress)
    fit_on, offset = [], 0
    for data_dir, ds, train_ids, _, _ in loaded:
        fit_on.append({"dataset": ds.name, "dir": str(data_dir.resolve()), "n_train_items": len(train_ids),
                       "rows": [offset, offset + len(train_ids)]})
        offset += len(train_ids)
    if out_index is not None:
        q.save(out_index, _encode(q, x_train, "training items of all datasets for the shared index", progress))
        write_json(Path(out_index).with_suffix(".json"), {"n_codebooks": n_codebooks, "codebook_size": codebook_size,
                   "seed": seed, "fit_on": fit_on, "ids": "row r of list 0 = fit_on entry whose rows contain r; "
                   "within it the (r - start)-th smallest training-split item id"})
    results = []
    for data_dir, ds, train_ids, table, emb_info in loaded:
        x = table[1:]
        codes = _encode(q, x, f"items of {ds.name}", progress)
        info = {"kind": "joint_fit", "n_fit": len(x_train), "opq_method": q.opq_method, "seed": seed, "opq_iterations": opq_iterations,
                "n_threads": n_threads, "fit_on": fit_on, "shared_index": str(Path(out_index).resolve()) if out_index else None,
                "embeddings": _embedding_summary(emb_info), "encoded_by": {"quantizer": ds.n_items},
                "n_unseen": ds.n_items - len(train_ids), "reconstruction_rel_error": _rel_error(x, q.reconstruct(codes))}
        default = f"{emb_info['name']}-opq{n_codebooks}x{codebook_size}-joint"
        results.append(_write_codes(data_dir, check_name(name or default, "codes"), codes, q, train_ids, info, t0))
    return results


def load_item_codes(data_dir: str | Path, name: str | None = None) -> tuple[np.ndarray, dict]:
    """((n_items + 1, n_codebooks) integer codes with row 0 = PAD_CODE, info) of codes ``name``.

    ``name=None`` picks the only codes in ``DIR/codes``; several raise an error listing them.
    """
    data_dir = Path(data_dir)
    meta = dataset_meta(data_dir)
    names = sorted(p.stem for p in (data_dir / CODES_DIR).glob("*.npy"))
    if name is None and len(names) == 1:
        name = names[0]
    if name is None or name not in names:
        if not names:
            raise NotFoundError(f"{data_dir}: no item codes; run `textrec quantize {data_dir}` first")
        if name is None:
            raise NotFoundError(f"several item codes in {data_dir} ({', '.join(names)}); choose one with data.codes=NAME")
        raise NotFoundError(f"{data_dir}: no item codes named {name!r} (available: {', '.join(names)})")
    path = data_dir / CODES_DIR / f"{name}.npy"
    info = read_json(path.with_suffix(".json")) if path.with_suffix(".json").exists() else {}
    check_dataset_hash(info.get("dataset_content_hash", "none recorded"), meta, path)
    codes = np.load(path, mmap_mode="r")  # read-only, paged in as used
    if codes.ndim != 2 or codes.shape[0] != meta["n_items"] + 1:
        raise DataError(f"{path}: shape {codes.shape}, expected ({meta['n_items'] + 1}, n_codebooks)")
    return codes, {**info, "path": str(path)}


def random_codes(data_dir: str | Path, n_codebooks: int = 32, codebook_size: int = 256, seed: int = 2020,
                 name: str | None = None) -> Path:
    """Uniformly random item codes (the paper's "Random Code" ablation): text plays no part.

    Written like fitted codes (``DIR/codes/<name>.npy`` + ``.json``) but without a quantiser, so new items
    cannot be coded from text.
    """
    data_dir = Path(data_dir)
    meta = dataset_meta(data_dir)
    name = check_name(name or f"random-{n_codebooks}x{codebook_size}", "codes")
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, codebook_size, size=(meta["n_items"], n_codebooks))
    table = np.full((meta["n_items"] + 1, n_codebooks), PAD_CODE, dtype=np.int16 if codebook_size <= 32768 else np.int32)
    table[1:] = codes
    out = data_dir / CODES_DIR / f"{name}.npy"
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.save(f, table)
    write_json(out.with_suffix(".json"), {
        "name": name, "kind": "random", "seed": seed, "n_items": int(meta["n_items"]),
        "dataset_content_hash": meta["content_hash"], "n_codebooks": n_codebooks, "codebook_size": codebook_size,
        "pad_code": PAD_CODE, "encoded_by": {"random": int(meta["n_items"])}, **code_statistics(codes, codebook_size),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    })
    return out
