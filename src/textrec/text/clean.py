"""Item text cleaning exactly as UniSRec's ``process_amazon.py`` does it (REFERENCE_NOTES section 0, step 3).

``clean_text(value)``: a list becomes its elements joined by spaces, a dict its ``str``; HTML entities are
unescaped; double quotes, newlines and carriage returns are deleted; trailing periods are stripped and
exactly one period appended (surrounding whitespace is kept, as in the reference); a result of
``max_chars`` (2000) characters or more becomes ``""``.

``item_text(record, fields)`` concatenates ``clean_text(record[f]) + " "`` for every field present in
``record``, in the given order, as the reference does (so an empty category list contributes ". ").
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from typing import Any

MAX_CHARS = 2000


def clean_text(value: Any, max_chars: int = MAX_CHARS) -> str:
    if isinstance(value, list):
        value = " ".join(str(v) for v in value)
    elif isinstance(value, dict):
        value = str(value)
    text = html.unescape(str(value))
    text = text.replace('"', "").replace("\n", "").replace("\r", "")
    end = len(text)
    while end > 1 and text[end - 1] == ".":  # the reference never strips the first character
        end -= 1
    text = text[:end] + "."
    if len(text) >= max_chars:
        return ""
    return text


def item_text(record: Mapping[str, Any], fields: Iterable[str], max_chars: int = MAX_CHARS) -> str:
    """``clean_text(record[f]) + ' '`` for each field f present (and not null) in ``record``, in order."""
    return "".join(clean_text(record[f], max_chars) + " " for f in fields if record.get(f) is not None)
