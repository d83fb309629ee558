"""Atomic file and directory writes: a reader never sees a half-written output.

Files are written to a temporary name in the same directory and moved into place with ``os.replace``
(atomic on POSIX). Directories are built under a temporary name and renamed; an existing directory is
replaced only after the new one is complete.

A directory being written is locked (``locked``: an ``fcntl`` lock on a hidden ``.<name>.lock`` next to it,
removed when done), so a second writer gets a one-line error instead of interleaving with the first; the
lock holder removes the temporary folders a killed writer left behind.

Files that must not change after they are written (a run's checkpoints) are written with
``checksummed_path``, which records their sha256 in ``checksums.json`` next to them; ``checksum_matches``
tells a reader whether a file is still what was written.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    from textrec.errors import DataError

    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on writing ``path`` while the block runs; a second writer gets ``TextrecError``.

    The lock is ``flock`` on ``.<name>.lock`` next to ``path``; the holder removes that file before
    releasing, and a waiter that locked a removed file tries again. The kernel drops the lock of a killed
    process, so a crash never leaves ``path`` locked.
    """
    from textrec.errors import TextrecError

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.parent / f".{path.name}.lock"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise TextrecError(f"{path}: another textrec command is writing it right now (lock {lock.name}); "
                               "wait for it to finish") from None
        try:
            current = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)  # locked a file its holder removed on release: lock the new one
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary siblings (``.<name>.XXXXXXXX.tmp|.old``) a killed writer of ``path`` left.

    Only safe while holding ``locked(path)``: then no live writer owns them. A writer killed between moving
    the old ``path`` aside and moving the new one in left ``path`` missing: the old one is put back first.
    """
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.[A-Za-z0-9_]{{8}}\.(tmp|old)$")
    removed = []
    if path.parent.is_dir():
        found = sorted(p for p in path.parent.iterdir() if pattern.match(p.name))
        for p in found:
            if p.suffix == ".old" and (p / "old").exists() and not path.exists():
                os.replace(p / "old", path)
        for p in found:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed


@contextlib.contextmanager
def writing_files(path: str | os.PathLike, suffixes: tuple[str, ...] = (".json",)) -> Iterator[None]:
    """``locked(path)``, with the temporaries a killed writer of ``path`` (and of its ``suffixes`` siblings) left removed."""
    path = Path(path)
    with locked(path):
        for p in (path, *(path.with_suffix(s) for s in suffixes)):
            remove_stale_temporaries(p)
        yield


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it replaces ``path``.

    Raises ``FileExistsError`` up front if ``path`` exists and ``overwrite`` is false, so no work is
    wasted. On failure the temporary directory is removed and ``path`` is left untouched. ``path`` is
    ``locked`` meanwhile, and temporaries of an earlier killed writer are removed first.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass --overwrite to replace it)")
    with locked(path):
        remove_stale_temporaries(path)
        with _atomic_dir_locked(path) as tmp:
            yield tmp


@contextlib.contextmanager
def _atomic_dir_locked(path: Path) -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if path.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, trash / "old")
            os.replace(tmp, path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def storage_failure(error: Exception, path: str | os.PathLike) -> Exception:
    """The ``OSError`` behind a serialiser's failure to write ``path``, else ``error`` itself.

    safetensors reports a full disk as ``SafetensorError(... IoError(Os { code: 28, ... }))`` and torch as
    ``RuntimeError(... file write failed)``; as ``OSError`` they reach the one-line storage error of the CLI.
    """
    code = re.search(r"\bcode: (\d+)", str(error))
    if code:
        return OSError(int(code[1]), os.strerror(int(code[1])), str(path))
    if isinstance(error, RuntimeError) and ("write failed" in str(error) or "unexpected pos" in str(error)):
        return OSError(None, "write failed (is the disk full?)", str(path))
    return error


CHECKSUMS = "checksums.json"


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_checksums(manifest: Path) -> dict:
    from textrec.errors import DataError

    sums = read_json(manifest) if manifest.exists() else {}
    if not isinstance(sums, dict):
        raise DataError(f"{manifest}: not a table of checksums")
    return sums


def _record_checksum(path: Path, digest: str, pending: bool) -> None:
    manifest = path.parent / CHECKSUMS
    sums = _read_checksums(manifest)
    if pending:  # the file about to be moved into place; the one in place stays valid until it is
        sums[path.name] = {"sha256": (sums.get(path.name) or {}).get("sha256"), "next_sha256": digest}
    else:
        sums[path.name] = {"sha256": digest}
    write_json(manifest, sums)


@contextlib.contextmanager
def checksummed_path(path: str | os.PathLike) -> Iterator[Path]:
    """``atomic_path`` that also records the new file's sha256 in ``checksums.json`` of its directory.

    The digest is recorded as pending before the file is moved into place and as final after, so a process
    killed at any moment leaves a ``checksums.json`` that accepts whichever file is in place.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        yield tmp
        digest = sha256_file(tmp)
        _record_checksum(path, digest, pending=True)
    _record_checksum(path, digest, pending=False)


def checksum_matches(path: str | os.PathLike) -> bool | None:
    """Whether ``path`` is the file ``checksummed_path`` wrote; None when no digest was recorded for it."""
    path = Path(path)
    manifest = path.parent / CHECKSUMS
    if not manifest.exists():
        return None
    entry = _read_checksums(manifest).get(path.name)
    accepted = {entry.get("sha256"), entry.get("next_sha256")} - {None} if isinstance(entry, dict) else set()
    if not accepted:
        return None
    return sha256_file(path) in accepted
