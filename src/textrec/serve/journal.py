"""The serving journal: items added, updated and retired over HTTP, kept beside the run so a restart keeps them.

One JSON object per line, appended with a single ``write`` and ``fsync`` before the request is answered:

    {"op": "add", "items": [{"key": "NEW-1", "text": "...", "attributes": {...}}, ...]}
    {"op": "delete", "key": "NEW-1"}

An ``add`` of a key already served is an update (the old version is retired). A record is either whole or,
after a crash in the middle of a write, a torn last line (no newline after it): replaying skips such a line
with a warning and the next append cuts it off first, so the file never holds half a change. The run's own files are never
written.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from textrec.errors import DataError

log = logging.getLogger("textrec.serve.journal")


class Journal:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def records(self) -> list[dict]:
        """Every whole record, oldest first; a torn last line is dropped (module doc), a bad line elsewhere is an error."""
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8").split("\n")
        out = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if n == len(lines):  # no newline after it: a write that did not finish
                    log.warning("%s:%d: dropped a torn last record (a write that did not finish)", self.path, n)
                    continue
                raise DataError(f"{self.path}:{n}: not a JSON record") from None
            if not isinstance(record, dict) or record.get("op") not in ("add", "delete"):
                raise DataError(f"{self.path}:{n}: not a journal record (needs op 'add' or 'delete')")
            out.append(record)
        return out

    def append(self, record: dict) -> None:
        """Write one record durably (one write, then fsync)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(record, ensure_ascii=False) + "\n"
        with open(self.path, "a+b") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a torn record at the end: cut it off before appending
                    f.seek(0)
                    whole = f.read().rfind(b"\n") + 1
                    f.truncate(whole)
                    log.warning("%s: cut off a torn last record (a write that did not finish)", self.path)
            f.write(data.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
