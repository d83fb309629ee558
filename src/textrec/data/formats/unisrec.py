"""UniSRec / RecBole atomic files, as published with UniSRec, VQ-Rec and MISSRec.

Files of one dataset share a prefix (``Scientific.train.inter`` ...):

* ``.train.inter`` / ``.valid.inter`` / ``.test.inter``: ``user_id:token<TAB>item_id_list:token_seq<TAB>item_id:token``
  with a header. Train holds one row per prefix of each user's training part (target p with history
  ``train[:p][-50:]``), valid and test one row per user (REFERENCE_NOTES section 0, step 4);
* ``.item2index`` / ``.user2index``: ``raw key<TAB>int`` without header, the ints used in ``.inter``;
* ``.text``: ``item_id:token<TAB>text:token_seq`` keyed by raw item key;
* optional ``.feat1CLS`` (text), ``.feat2CLS`` (word-drop text), ``.feat3CLS`` (image): raw float32,
  one row per item index.

Each user's full chronological sequence is reconstructed (training part + validation target + test
target) and then checked: regenerating the three files' rows from it must give exactly the rows in the
files (as a multiset for train), so the textrec split *is* the published split. Item ``i`` of
``.item2index`` becomes textrec item id ``i + 1``.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from textrec.data.dataset import Dataset
from textrec.data.formats.common import BadLines, PrepareOptions, iter_tsv
from textrec.errors import DataError
from textrec.log import warn

INTER_HEADER = ("user_id:token", "item_id_list:token_seq", "item_id:token")
TEXT_HEADER = ("item_id:token", "text:token_seq")
SPLITS = ("train", "valid", "test")


def find_prefix(source: str | Path, name: str | None = None) -> Path:
    """The ``<dir>/<Name>`` prefix of a dataset's files, from a directory or a prefix path."""
    source = Path(source)
    if source.is_dir():
        if name is not None and Path(f"{source / name}.train.inter").exists():
            return source / name
        found = sorted(p.name[: -len(".train.inter")] for p in source.glob("*.train.inter"))
        if not found:
            raise DataError(f"{source}: no <name>.train.inter file (expected UniSRec/RecBole atomic files)")
        if len(found) > 1:
            raise DataError(f"{source}: several datasets ({', '.join(found)}); pass --name to choose one")
        return source / found[0]
    if Path(f"{source}.train.inter").exists():
        return source
    raise DataError(f"{source}.train.inter: file not found")


def _read_index(path: Path, bad: BadLines) -> dict[str, str]:
    """``.item2index`` / ``.user2index``: int token -> raw key."""
    out: dict[str, str] = {}
    for n, (key, token) in iter_tsv(path, 2, bad):
        token = token.strip()
        if not token.lstrip("-").isdigit():
            bad(path, n, f"index {token!r} is not an integer")
            continue
        if token in out:
            bad(path, n, f"index {token} appears twice")
            continue
        out[token] = key
    return out


def _read_inter(path: Path, bad: BadLines) -> list[tuple[int, str, list[str], str]]:
    rows = []
    for n, (user, hist, target) in iter_tsv(path, 3, bad, header=INTER_HEADER):
        hist_tokens = hist.split()
        if not hist_tokens:
            bad(path, n, "empty item_id_list")
            continue
        rows.append((n, user.strip(), hist_tokens, target.strip()))
    if not rows:
        raise DataError(f"{path}: no interaction rows")
    return rows


def _raise_unknown_item(prefix: Path, rows: dict, known: dict[str, str]) -> None:
    """The first item token of the .inter files (in split, line order) that ``.item2index`` lacks."""
    for split in SPLITS:
        for line, _, hist, target in rows[split]:
            unknown = next((t for t in [*hist, target] if t not in known), None)
            if unknown is not None:
                raise DataError(f"{prefix}.{split}.inter:{line}: unknown item {unknown!r} (not in {prefix.name}.item2index)")


def _reconstruct(user: str, train_rows, valid_row, test_row, prefix: Path) -> list[str]:
    """A user's full sequence from their train/valid/test rows (see module doc)."""
    valid_hist, valid_target = valid_row[2], valid_row[3]
    n_train = len(train_rows) + 1  # one train row per target p = 1..n_train-1
    if len(valid_hist) == n_train:  # the valid history is the whole training part
        train_part = list(valid_hist)
    elif not train_rows:
        raise DataError(f"{prefix}.valid.inter:{valid_row[0]}: user {user} has a history of {len(valid_hist)} items "
                        f"but no rows in {prefix.name}.train.inter")
    else:  # it is truncated: chain the prefix rows, shortest first
        by_hist: dict[tuple[str, ...], list[str]] = defaultdict(list)
        for _, _, hist, target in reversed(train_rows):
            by_hist[tuple(hist)].append(target)
        train_part = list(min(train_rows, key=lambda r: len(r[2]))[2])
        window = max(len(r[2]) for r in train_rows)
        while len(train_part) < n_train:
            targets = by_hist.get(tuple(train_part[-window:]))
            if not targets:
                raise DataError(f"{prefix}.train.inter: rows of user {user} do not chain into one sequence")
            train_part.append(targets.pop(0))
    return train_part + [valid_target, test_row[3]]


def _check_user(user: str, seq: list[str], rows: dict, max_seq_len: int, prefix: Path) -> None:
    """Regenerate the user's rows from ``seq`` and compare them with the files' rows."""
    train_part = seq[:-2]
    expected = sorted((tuple(train_part[:p][-max_seq_len:]), train_part[p]) for p in range(1, len(train_part)))
    got = sorted((tuple(r[2]), r[3]) for r in rows["train"])
    if expected != got:
        raise DataError(f"{prefix}.train.inter: rows of user {user} are not the prefixes of one sequence")
    for split, hist in (("valid", train_part[-max_seq_len:]), ("test", seq[:-1][-max_seq_len:])):
        line, _, h, _ = rows[split]
        if h != hist:
            raise DataError(f"{prefix}.{split}.inter:{line}: history of user {user} disagrees with the other files")


def read_unisrec(source: str | Path, opts: PrepareOptions = PrepareOptions()) -> Dataset:
    """Load UniSRec/RecBole atomic files into a ``Dataset`` with exactly the published split."""
    prefix = find_prefix(source, opts.name)
    bad = BadLines(opts.skip_bad_lines)
    rows = {split: _read_inter(Path(f"{prefix}.{split}.inter"), bad) for split in SPLITS}

    item_index_path = Path(f"{prefix}.item2index")
    item_keys_by_token = _read_index(item_index_path, bad) if item_index_path.exists() else {}
    user_index_path = Path(f"{prefix}.user2index")
    user_keys_by_token = _read_index(user_index_path, bad) if user_index_path.exists() else {}

    # Item tokens -> dense ids 1..n, in the numeric order of the tokens (= item2index order).
    tokens = set(item_keys_by_token)
    for split in SPLITS:
        for _, _, hist, target in rows[split]:
            tokens.update(hist)
            tokens.add(target)
    if item_keys_by_token and not tokens <= set(item_keys_by_token):
        _raise_unknown_item(prefix, rows, item_keys_by_token)
    order = sorted(tokens, key=lambda t: (0, int(t), t) if t.lstrip("-").isdigit() else (1, 0, t))
    item_id = {t: i + 1 for i, t in enumerate(order)}
    item_keys = [item_keys_by_token.get(t, t) for t in order]

    # Rows per user.
    per_user: dict[str, dict] = defaultdict(lambda: {"train": []})
    for row in rows["train"]:
        per_user[row[1]]["train"].append(row)
    for split in ("valid", "test"):
        path = f"{prefix}.{split}.inter"
        for row in rows[split]:
            if split in per_user[row[1]]:
                raise DataError(f"{path}:{row[0]}: second row for user {row[1]}")
            per_user[row[1]][split] = row
    max_seq_len = max(len(r[2]) for split in SPLITS for r in rows[split])

    user_tokens, sequences = [], []
    for user, urows in per_user.items():
        for split in ("valid", "test"):
            if split not in urows:
                raise DataError(f"{prefix}.{split}.inter: no row for user {user} (who appears in another split)")
        seq = _reconstruct(user, urows["train"], urows["valid"], urows["test"], prefix)
        _check_user(user, seq, urows, max_seq_len, prefix)
        user_tokens.append(user)
        sequences.append(np.array([item_id[t] for t in seq], dtype=np.int32))
    order_users = sorted(range(len(user_tokens)), key=lambda i: (0, int(user_tokens[i])) if user_tokens[i].isdigit() else (1, user_tokens[i]))
    user_keys = [user_keys_by_token.get(user_tokens[i], user_tokens[i]) for i in order_users]
    sequences = [sequences[i] for i in order_users]

    texts = _read_texts(Path(f"{prefix}.text"), item_keys, bad, opts.drop_items_without_text)
    features = _read_features(prefix, order, item_keys_by_token)
    meta = {
        "source": {"format": "unisrec", "path": str(Path(f"{prefix}").resolve()), "max_seq_len_in_files": max_seq_len},
        "filters": {"note": "as published (UniSRec process_amazon.py: 5-core, leave-one-out)"},
        **bad.report(),
    }
    return Dataset.from_sequences(
        opts.name or prefix.name, item_keys, texts, user_keys, sequences, meta=meta, features=features
    )


def _read_texts(path: Path, item_keys: list[str], bad: BadLines, require: bool = True) -> list[str]:
    """Item texts by key from ``.text``; without the file every text is empty, which only ``require=False`` allows."""
    if not path.exists():
        if require:
            raise DataError(f"{path}: file not found (it holds the item texts; pass --keep-items-without-text "
                            "to prepare the dataset without any text)")
        warn(f"{path} not found: every item text is empty, so `textrec encode` cannot embed them "
             "(SASRec still trains; text models need `textrec encode --attach`)")
        return [""] * len(item_keys)
    text_by_key: dict[str, str] = {}
    for _, (key, text) in iter_tsv(path, 2, bad, header=TEXT_HEADER):
        text_by_key[key] = text.strip()
    missing = sum(k not in text_by_key for k in item_keys)
    if missing:
        warn(f"{missing} item(s) have no row in {path}; their text is empty")
    return [text_by_key.get(k, "") for k in item_keys]


def _read_features(prefix: Path, order: list[str], item_keys_by_token: dict[str, str]) -> dict[str, np.ndarray]:
    """``<prefix>.feat*`` raw float32 files -> (n_items + 1, dim) arrays aligned with textrec ids."""
    features = {}
    n_rows = len(item_keys_by_token) or len(order)
    for path in sorted(prefix.parent.glob(prefix.name + ".feat*")):
        raw = np.fromfile(path, dtype=np.float32)
        if raw.size % n_rows:
            raise DataError(f"{path}: {raw.size} floats is not a multiple of {n_rows} items")
        table = raw.reshape(n_rows, -1)
        rows = np.array([int(t) for t in order])
        if rows.min() < 0 or rows.max() >= n_rows:
            raise DataError(f"{path}: item tokens do not index its {n_rows} rows")
        out = np.zeros((len(order) + 1, table.shape[1]), dtype=np.float32)
        out[1:] = table[rows]
        features[path.suffix.lstrip(".")] = out
    return features
