"""An on-disk cache of text embeddings, so re-encoding a catalogue only encodes texts it has not seen.

The references re-encode every item on every run. Here each vector is stored under the SHA-1 of its
exact text, in a directory per (encoder identity, pooling, max_length)::

    $TEXTREC_CACHE_DIR/embeddings/      (default ~/.cache/textrec/embeddings, or $XDG_CACHE_HOME/textrec/...)
      <key>/key.json                    identity, pooling, max_length, dim: what the vectors are
      <key>/chunk-<time>-<pid>-<rand>.npz   sha1 (n, 20) uint8 + vectors (n, dim) float32

Chunks are only ever added, each written to a temporary name and renamed into place, so concurrent
writers never clash and a reader never sees half a chunk; when one key holds more than
``MAX_CHUNKS`` chunks they are merged into one (the merged chunk is written before the old ones go).
A hash present in several chunks (two processes encoding the same text) keeps its first vector.
A cache that cannot be written (read-only, full) is a warning, not an error: encoding goes on without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import time
from pathlib import Path

import numpy as np

from textrec.errors import DataError
from textrec.io import atomic_path, read_json, write_json

MAX_CHUNKS = 64
STALE_SECONDS = 86_400  # a chunk temporary this old belongs to no live writer
log = logging.getLogger("textrec.text.cache")
HASH_BYTES = 20  # SHA-1


def default_cache_dir() -> Path:
    """``$TEXTREC_CACHE_DIR/embeddings``, else ``$XDG_CACHE_HOME/textrec/embeddings``, else ``~/.cache/...``."""
    if os.environ.get("TEXTREC_CACHE_DIR"):
        return Path(os.environ["TEXTREC_CACHE_DIR"]).expanduser() / "embeddings"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "textrec" / "embeddings"


def text_hashes(texts: list[str]) -> np.ndarray:
    """(n, 20) uint8 SHA-1 digests of the UTF-8 texts."""
    out = np.empty((len(texts), HASH_BYTES), dtype=np.uint8)
    for i, text in enumerate(texts):
        out[i] = np.frombuffer(hashlib.sha1(text.encode("utf-8")).digest(), dtype=np.uint8)
    return out


class EmbeddingCache:
    """Vectors of one (encoder identity, pooling, max_length) key, looked up by text hash."""

    def __init__(self, identity: str, pooling: str, max_length: int, dim: int, root: str | Path | None = None) -> None:
        self.key_info = {"identity": identity, "pooling": pooling, "max_length": int(max_length), "dim": int(dim)}
        key = hashlib.sha1(json.dumps(self.key_info, sort_keys=True).encode()).hexdigest()[:24]
        self.dir = Path(root).expanduser() if root is not None else default_cache_dir()
        self.dir = self.dir / key
        self.dim = int(dim)
        self._rows: dict[bytes, int] | None = None
        self._vectors: list[np.ndarray] = []
        self._writable = True  # false after a failed write: then vectors are only kept in memory

    # ---- reading -----------------------------------------------------------------------------------
    def _chunks(self) -> list[Path]:
        return sorted(self.dir.glob("chunk-*.npz"))

    def _load(self) -> None:
        """Read every chunk once; later lookups use the in-memory index."""
        self._rows, self._vectors = {}, []
        if (self.dir / "key.json").exists() and read_json(self.dir / "key.json") != self.key_info:
            raise DataError(f"{self.dir}/key.json does not describe this cache key; remove the folder {self.dir}")
        for path in self._chunks():
            try:
                with np.load(path) as z:
                    hashes, vectors = z["sha1"], z["vectors"]
            except FileNotFoundError:  # merged away by a concurrent compaction; its rows live on in the merged chunk
                continue
            except (OSError, ValueError, KeyError) as e:
                raise DataError(f"{path}: unreadable cache chunk ({e}); delete it to re-encode those texts") from None
            if hashes.shape[1:] != (HASH_BYTES,) or vectors.shape != (len(hashes), self.dim):
                raise DataError(f"{path}: chunk shapes {hashes.shape}, {vectors.shape} do not fit dim {self.dim}; delete it")
            self._add_rows(hashes, vectors)

    def _add_rows(self, hashes: np.ndarray, vectors: np.ndarray) -> None:
        offset = sum(len(v) for v in self._vectors)
        self._vectors.append(np.asarray(vectors, dtype=np.float32))
        for i, h in enumerate(hashes):
            self._rows.setdefault(h.tobytes(), offset + i)

    def __len__(self) -> int:
        if self._rows is None:
            self._load()
        return len(self._rows)

    def get(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(vectors (n, dim) with zeros where missing, found (n,) bool) for (n, 20) hashes."""
        if self._rows is None:
            self._load()
        rows = np.array([self._rows.get(h.tobytes(), -1) for h in hashes], dtype=np.int64)
        found = rows >= 0
        out = np.zeros((len(hashes), self.dim), dtype=np.float32)
        if found.any():
            table = np.concatenate(self._vectors) if len(self._vectors) > 1 else self._vectors[0]
            self._vectors = [table]
            out[found] = table[rows[found]]
        return out, found

    # ---- writing -----------------------------------------------------------------------------------
    def put(self, hashes: np.ndarray, vectors: np.ndarray) -> None:
        """Append one chunk with these vectors (those already cached are skipped)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(hashes), self.dim):
            raise ValueError(f"vectors of shape {vectors.shape} for {len(hashes)} hashes of dim {self.dim}")
        if self._rows is None:
            self._load()
        new = np.array([h.tobytes() not in self._rows for h in hashes], dtype=bool)
        if not new.any():
            return
        if not self._writable:
            self._add_rows(hashes[new], vectors[new])
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            if not (self.dir / "key.json").exists():
                write_json(self.dir / "key.json", self.key_info)
            self._write_chunk(hashes[new], vectors[new])
            self._remove_stale_temporaries()
        except OSError as e:  # read-only or full: the cache only saves time, so encoding goes on without it
            self._writable = False
            log.warning("warning: cannot write the embedding cache %s (%s); encoding goes on without caching",
                        self.dir, e.strerror or e)
        self._add_rows(hashes[new], vectors[new])
        if self._writable and len(self._chunks()) > MAX_CHUNKS:
            self.compact()

    def _remove_stale_temporaries(self) -> None:
        """Chunk temporaries older than a day: left by a killed writer (a live one renames its own in seconds)."""
        for tmp in self.dir.glob(".chunk-*.tmp"):
            with contextlib.suppress(OSError):
                if time.time() - tmp.stat().st_mtime > STALE_SECONDS:
                    tmp.unlink()

    def _write_chunk(self, hashes: np.ndarray, vectors: np.ndarray) -> Path:
        path = self.dir / f"chunk-{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}.npz"
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, sha1=np.ascontiguousarray(hashes, dtype=np.uint8), vectors=vectors)
        return path

    def compact(self) -> None:
        """Merge all chunks into one; the merged chunk is in place before any old one is deleted."""
        old = self._chunks()
        self._load()
        if len(old) < 2:
            return
        hashes = np.array([np.frombuffer(h, dtype=np.uint8) for h in self._rows], dtype=np.uint8)
        table = np.concatenate(self._vectors) if self._vectors else np.zeros((0, self.dim), np.float32)
        self._write_chunk(hashes, table[np.fromiter(self._rows.values(), dtype=np.int64)])
        for path in old:
            path.unlink(missing_ok=True)
        self._load()
