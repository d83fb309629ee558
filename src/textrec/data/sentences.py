"""Item sentences: an item's key-value attributes, flattened into tokens (Recformer, Li et al., KDD 2023).

Reference: ``AaronHeee/RecFormer`` @26b00a5 ``recformer/tokenization.py`` (REFERENCE_NOTES section 4). An item
is its first ``max_attr_num`` (3) attributes; each contributes the tokens of its key followed by the tokens of
its value, the two cut together to ``max_attr_length`` (32) tokens, with token type 1 for key tokens and 2 for
value tokens. The reference's attribute order is ``title, brand, category`` (the order its meta processing
builds the dict in); here those three come first whenever present and any other attribute follows in its
stored order. Values are flattened as the reference builds them (a list is joined with spaces, as its
``' '.join(category)``); empty values are left out, so they never take one of the ``max_attr_num`` places.

Where the attributes come from (``item_attributes``):

* datasets that store attributes (Amazon 2018 / 2023, MovieLens, CSV / Parquet item tables) use them; the
  CSV / Parquet readers keep the text column out of the attributes, so it comes first under its column name
  (``title`` for the SeqRecBench tables), followed by the other columns;
* UniSRec ``.text`` datasets hold one flat text, ``"title. categories. brand. "`` (UniSRec's
  ``process_amazon.py`` writes each present field, cleaned and ending in exactly one period, then a space).
  ``split_flat_text`` recovers the fields, see there;
* anything else is one ``text`` attribute holding the item text.

``tokenize_items`` turns every item's attributes into one flat token table built once per catalogue (the
fast tokenizer of the backbone, batched over all values); the model gathers sequences from it on the device.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

KEY_ORDER = ("title", "brand", "category")  # the reference's attribute order
KEY_TYPE, VALUE_TYPE = 1, 2  # token types of key and value tokens (<s> is 0, padding 3)
_SEGMENT_END = re.compile(r"\.\s+")


# ---- attributes ----------------------------------------------------------------------------------
def flat_value(value: Any) -> str:
    """An attribute value as one string: lists joined by spaces (the reference's category), None -> ''."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(flat_value(v) for v in value if flat_value(v))
    return str(value).strip()


def ordered_attributes(attrs: Mapping[str, Any], max_attr_num: int | None = None) -> list[tuple[str, str]]:
    """(key, value) pairs: title, brand, category first when present, then the rest; empty values dropped."""
    keys = [k for k in KEY_ORDER if k in attrs] + [k for k in attrs if k not in KEY_ORDER]
    pairs = [(k, flat_value(attrs[k])) for k in keys]
    pairs = [(k, v) for k, v in pairs if v]
    return pairs if max_attr_num is None else pairs[:max_attr_num]


def sentence(attrs: Mapping[str, Any], max_attr_num: int | None = 3) -> str:
    """The item as Recformer reads it, before tokenisation: ``"title ... brand ... category ..."``."""
    return " ".join(f"{k} {v}" for k, v in ordered_attributes(attrs, max_attr_num))


def infer_root_category(texts: Sequence[str], max_words: int = 6) -> str | None:
    """The words every category of a UniSRec catalogue starts with (e.g. ``Industrial & Scientific``).

    Amazon category paths start with the domain's top category. Among texts that split into exactly three
    segments (the unambiguous ones), the longest word prefix of the middle segment shared by 90% of them is
    that root; None when no prefix is that common (too few clean texts).
    """
    middles = [parts[1].split() for parts in (_segments(t) for t in texts) if len(parts) == 3]
    if len(middles) < 2:
        return None
    root = None
    for n in range(1, max_words + 1):
        counts = Counter(tuple(m[:n]) for m in middles if len(m) >= n)
        if not counts:
            break
        prefix, count = counts.most_common(1)[0]
        if count < 0.9 * len(middles):
            break
        root = " ".join(prefix)
    return root


def _segments(text: str) -> list[str]:
    """A flat text cut at every period followed by white space (and its final period)."""
    t = text.strip()
    if t.endswith("."):
        t = t[:-1]
    return [s.strip() for s in _SEGMENT_END.split(t)] if t else []


def _starts_with_words(segment: str, root: str) -> bool:
    return segment == root or segment.startswith(root + " ")


def split_flat_text(text: str, root: str | None) -> dict[str, str]:
    """Title, category and brand of a UniSRec text ``"title. categories. brand. "``.

    The text is cut at every ``". "``. Titles and brands may themselves hold ``". "`` ("24 Oz. Sprayer
    Bottles", "J.V. Converting"), so the category is found by its ``root`` (``infer_root_category``): the
    first segment after the first that starts with the root words, or is empty (an item without categories
    is written ``"title. . brand. "``), is the category; the segments before it form the title and those
    after it the brand. Without such a segment: three segments are title,
    category, brand in that order (the writer's order); two are title and brand; one is the title; more than
    three cannot be attributed and the whole text stays one ``text`` attribute.
    """
    parts = _segments(text)
    if not parts:
        return {"text": text.strip()} if text.strip() else {}
    at = next((i for i in range(1, len(parts)) if not parts[i] or (root and _starts_with_words(parts[i], root))), None)
    if at is not None:
        fields = {"title": ". ".join(parts[:at]), "category": parts[at], "brand": ". ".join(parts[at + 1 :])}
    elif len(parts) == 3:
        fields = {"title": parts[0], "category": parts[1], "brand": parts[2]}
    elif len(parts) == 2:
        fields = {"title": parts[0], "brand": parts[1]}
    elif len(parts) == 1:
        fields = {"title": parts[0]}
    else:
        return {"text": text.strip()}
    return {k: v for k, v in fields.items() if v}


def item_attributes(ds) -> list[dict[str, str]]:
    """Per item 1..n_items (list index i is item i + 1) the key -> value attributes Recformer reads.

    ``ds`` is a ``textrec.data.dataset.Dataset``; see the module doc for the three sources.
    """
    source = ds.meta.get("source") or {}
    if source.get("format") == "unisrec" and not ds.item_attributes:
        root = infer_root_category(ds.item_texts)
        return [split_flat_text(t, root) or {"text": t} for t in ds.item_texts]
    stored = ds.item_attributes or [{} for _ in range(ds.n_items)]
    text_key = (source.get("columns") or {}).get("text")  # CSV / Parquet: the text column is not an attribute
    out = []
    for attrs, text in zip(stored, ds.item_texts):
        attrs = {k: flat_value(v) for k, v in attrs.items()}
        if text_key and text_key not in attrs and text:
            attrs = {text_key: text, **attrs}
        out.append({k: v for k, v in attrs.items() if v} or {"text": text})
    return out


def text_attributes(ds, texts: Sequence[str]) -> list[dict[str, str]]:
    """The attributes ``item_attributes`` would give items of ``ds`` that have only these texts (new items
    added by text: the UniSRec split, the CSV / Parquet text column, else one ``text`` attribute)."""
    source = ds.meta.get("source") or {}
    if source.get("format") == "unisrec" and not ds.item_attributes:
        root = infer_root_category(ds.item_texts)
        return [split_flat_text(t, root) or {"text": t} for t in texts]
    key = (source.get("columns") or {}).get("text") or "text"
    return [{key: t} for t in texts]


# ---- tokens --------------------------------------------------------------------------------------
@dataclass
class ItemTokens:
    """Every item's tokens in one flat table; item i's are ``[offsets[i], offsets[i + 1])`` (item 0 has none)."""

    token_ids: np.ndarray  # (N,) int32 token ids (key and value tokens, attribute after attribute)
    token_types: np.ndarray  # (N,) int8 KEY_TYPE or VALUE_TYPE
    word_starts: np.ndarray  # (N,) bool: the token begins a word (whole-word masking)
    offsets: np.ndarray  # (n_items + 2,) int64; row 0 is the padding item

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)  # (n_items + 1,)

    def item(self, i: int) -> tuple[list[int], list[int]]:
        """(token ids, token types) of item id ``i``."""
        s = slice(self.offsets[i], self.offsets[i + 1])
        return self.token_ids[s].tolist(), self.token_types[s].tolist()


def _tokens_with_word_starts(tokenizer, texts: list[str]) -> list[tuple[list[int], list[bool]]]:
    """Batched fast-tokenizer ids of ``texts`` (no special tokens) and which of them start a word."""
    if not texts:
        return []
    enc = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False)
    out = []
    for i, ids in enumerate(enc["input_ids"]):
        words = enc.word_ids(i)
        out.append((ids, [j == 0 or words[j] != words[j - 1] for j in range(len(ids))]))
    return out


def tokenize_items(attributes: Sequence[Mapping[str, Any]], tokenizer, max_attr_num: int = 3, max_attr_length: int = 32,
                   block: int = 16384) -> ItemTokens:
    """The token table of items 1..len(attributes) (reference ``encode_item``, see the module doc).

    Items are tokenised ``block`` at a time (one batched tokenizer call each) and each block's tokens turned
    into arrays at once, so the Python lists never hold more than one block (a million items tokenise in
    bounded memory).
    """
    key_tokens: dict[str, tuple[list[int], list[bool]]] = {}
    ids, types, starts, lengths = [], [], [], [np.zeros(1, dtype=np.int64)]
    for first in range(0, len(attributes), block):
        pairs = [ordered_attributes(a, max_attr_num) for a in attributes[first : first + block]]
        new_keys = sorted({k for p in pairs for k, _ in p} - key_tokens.keys())
        key_tokens.update(zip(new_keys, _tokens_with_word_starts(tokenizer, new_keys)))
        values = iter(_tokens_with_word_starts(tokenizer, [v for p in pairs for _, v in p]))
        b_ids, b_types, b_starts, b_lengths = [], [], [], []
        for p in pairs:
            n = 0
            for key, _ in p:
                (k_ids, k_starts), (v_ids, v_starts) = key_tokens[key], next(values)
                kept = (k_ids + v_ids)[:max_attr_length]
                b_ids += kept
                b_types += ([KEY_TYPE] * len(k_ids) + [VALUE_TYPE] * len(v_ids))[:max_attr_length]
                b_starts += (k_starts + v_starts)[:max_attr_length]
                n += len(kept)
            b_lengths.append(n)
        ids.append(np.asarray(b_ids, dtype=np.int32))
        types.append(np.asarray(b_types, dtype=np.int8))
        starts.append(np.asarray(b_starts, dtype=bool))
        lengths.append(np.asarray(b_lengths, dtype=np.int64))
    empty = [np.zeros(0, dtype=t) for t in (np.int32, np.int8, bool)]
    return ItemTokens(
        token_ids=np.concatenate(ids or empty[:1]),
        token_types=np.concatenate(types or empty[1:2]),
        word_starts=np.concatenate(starts or empty[2:]),
        offsets=np.concatenate([[0], np.cumsum(np.concatenate(lengths))]).astype(np.int64),
    )
