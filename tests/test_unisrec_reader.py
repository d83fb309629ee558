"""The UniSRec/RecBole atomic reader reproduces the published split exactly."""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import requires_shared
from textrec.cli import main
from textrec.data.formats import read_dataset
from textrec.data.formats.common import PrepareOptions
from textrec.data.formats.unisrec import read_unisrec
from textrec.data.split import eval_examples, prefix_rows
from textrec.errors import DataError

HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token\n"


def _write_atomic(folder: Path, sequences: dict[int, list[int]], n_items: int, max_len: int = 50, shuffle=False, name="Toy"):
    """Write sequences exactly as UniSRec's process_amazon.py does (train rows longest prefix first)."""
    train, valid, test = [], [], []
    for u, seq in sequences.items():
        tr = seq[:-2]
        for target_idx in range(1, len(tr)):
            hist = tr[:-target_idx][-max_len:]
            train.append(f"{u}\t{' '.join(map(str, hist))}\t{tr[-target_idx]}\n")
        valid.append(f"{u}\t{' '.join(map(str, tr[-max_len:]))}\t{seq[-2]}\n")
        test.append(f"{u}\t{' '.join(map(str, (tr + [seq[-2]])[-max_len:]))}\t{seq[-1]}\n")
    if shuffle:
        random.Random(0).shuffle(train)
    (folder / f"{name}.train.inter").write_text(HEADER + "".join(train))
    (folder / f"{name}.valid.inter").write_text(HEADER + "".join(valid))
    (folder / f"{name}.test.inter").write_text(HEADER + "".join(test))
    (folder / f"{name}.item2index").write_text("".join(f"ASIN{i:03d}\t{i}\n" for i in range(n_items)))
    (folder / f"{name}.user2index").write_text("".join(f"USER{u}\t{u}\n" for u in sequences))
    text = "item_id:token\ttext:token_seq\n" + "".join(f"ASIN{i:03d}\tItem {i}. Cat. Brand. \n" for i in range(n_items))
    (folder / f"{name}.text").write_text(text)


@pytest.fixture()
def toy(tmp_path):
    rng = np.random.default_rng(0)
    seqs = {u: rng.integers(0, 30, size=int(rng.integers(5, 12))).tolist() for u in range(6)}
    seqs[6] = rng.integers(0, 30, size=70).tolist()  # longer than max_seq_len + 1: histories truncated
    seqs[7] = [3, 3, 3, 3, 3, 3, 3, 4]  # repeated items
    return tmp_path, seqs


@pytest.mark.parametrize("shuffle", [False, True])
def test_reconstructs_sequences(toy, shuffle):
    folder, seqs = toy
    _write_atomic(folder, seqs, 30, max_len=5, shuffle=shuffle)
    ds = read_unisrec(folder)
    assert ds.n_items == 30 and ds.n_users == len(seqs)
    assert ds.user_keys == [f"USER{u}" for u in seqs]
    assert ds.item_keys[0] == "ASIN000" and ds.item_texts[4] == "Item 4. Cat. Brand."
    for row, (u, seq) in enumerate(seqs.items()):
        assert ds.sequence(row).tolist() == [i + 1 for i in seq], f"user {u}"


def test_feature_files_are_aligned(toy):
    folder, seqs = toy
    _write_atomic(folder, seqs, 30)
    feat = np.arange(30 * 4, dtype=np.float32).reshape(30, 4)
    feat.tofile(folder / "Toy.feat1CLS")
    ds = read_unisrec(folder)
    np.testing.assert_array_equal(ds.features["feat1CLS"][1:], feat)
    assert (ds.features["feat1CLS"][0] == 0).all()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda t: t + "7\t1 2\n", "Toy.train.inter:\\d+: expected 3 tab-separated fields, found 2"),
        (lambda t: t.replace("user_id:token", "user"), "header"),
        (lambda t: t + "0\t\t3\n", "empty item_id_list"),
    ],
)
def test_malformed_lines(toy, mutate, message):
    folder, seqs = toy
    _write_atomic(folder, seqs, 30)
    path = folder / "Toy.train.inter"
    path.write_text(mutate(path.read_text()))
    with pytest.raises(DataError, match=message):
        read_unisrec(folder)


def test_skip_bad_lines_counts(toy):
    folder, seqs = toy
    _write_atomic(folder, seqs, 30)
    path = folder / "Toy.train.inter"
    path.write_text(path.read_text() + "broken line\n")
    ds = read_unisrec(folder, PrepareOptions(skip_bad_lines=True))
    assert ds.meta["skipped_bad_lines"] == 1 and "Toy.train.inter" in ds.meta["bad_line_examples"][0]


def test_inconsistent_files_are_rejected(toy):
    folder, seqs = toy
    _write_atomic(folder, seqs, 30)
    path = folder / "Toy.test.inter"
    lines = path.read_text().splitlines(keepends=True)
    u, hist, target = lines[1].rstrip("\n").split("\t")
    lines[1] = f"{u}\t{hist} 1\t{target}\n"
    path.write_text("".join(lines))
    with pytest.raises(DataError, match="Toy.test.inter:2: history of user 0 disagrees"):
        read_unisrec(folder)


def test_missing_files(tmp_path):
    with pytest.raises(DataError, match="no <name>.train.inter"):
        read_unisrec(tmp_path)
    with pytest.raises(DataError, match="not found"):
        read_unisrec(tmp_path / "Nope")


def _file_rows(path: Path) -> list[tuple[str, tuple[int, ...], int]]:
    rows = []
    for line in path.read_text().splitlines()[1:]:
        u, hist, target = line.split("\t")
        rows.append((u, tuple(int(t) + 1 for t in hist.split()), int(target) + 1))
    return rows


def test_scientific_reproduces_the_published_split():
    folder = requires_shared("amazon-scientific-unisrec")
    ds = read_unisrec(folder)
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (8442, 4385, 59427)  # 59,427 as in the papers
    token_of_row = {key: str(i) for i, key in enumerate(_read_keys(folder / "Scientific.user2index"))}
    users = [token_of_row[k] for k in ds.user_keys]
    for split in ("valid", "test"):
        ex = eval_examples(ds, split, 50)
        ours = {(users[r], tuple(ex.histories[r, : ex.lengths[r]].tolist()), int(ex.targets[r])) for r in range(ds.n_users)}
        assert ours == set(_file_rows(folder / f"Scientific.{split}.inter"))
    rows = prefix_rows(ds, 50)
    ours = Counter(
        (users[u], tuple(x[:n].tolist()), int(t[n - 1])) for u, x, t, n in zip(rows.users, rows.inputs, rows.targets, rows.lengths)
    )
    assert ours == Counter(_file_rows(folder / "Scientific.train.inter"))


def _read_keys(path: Path) -> list[str]:
    pairs = [line.split("\t") for line in path.read_text().splitlines()]
    return [k for k, _ in sorted(pairs, key=lambda p: int(p[1]))]


def _unisrec(root: Path) -> Path:
    root.mkdir(parents=True)
    _write_atomic(root, {u: [(u + j) % 12 for j in range(6)] for u in range(8)}, 12)
    return root


# ---- a UniSRec dataset without its .text file -----------------------------------------------------------
def test_unisrec_without_text_file_is_an_error(tmp_path, capsys):
    raw = _unisrec(tmp_path / "raw")
    (raw / "Toy.text").unlink()
    assert main(["prepare", str(raw), "--format", "unisrec", "--out", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{raw / 'Toy.text'}: file not found" in err[0], err
    # asked for explicitly, it prepares with a warning, and encode then refuses the all-empty catalogue
    assert main(["prepare", str(raw), "--format", "unisrec", "--out", str(tmp_path / "data"), "--keep-items-without-text"]) == 0
    assert "warning:" in capsys.readouterr().err
    assert main(["encode", str(tmp_path / "data"), "--encoder", "hashing"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "every item text" in err[0] and "is empty" in err[0], err


# ---- an unknown item token in a .inter file ----------------------------------------------------------
def test_unisrec_unknown_item_names_the_inter_file_and_line(tmp_path):
    raw = _unisrec(tmp_path / "raw")
    path = raw / "Toy.valid.inter"
    lines = path.read_text().splitlines(keepends=True)
    user, hist, _ = lines[3].rstrip("\n").split("\t")
    lines[3] = f"{user}\t{hist}\t99\n"
    path.write_text("".join(lines))
    with pytest.raises(DataError, match=re.escape(f"{path}:4: unknown item '99' (not in Toy.item2index)")):
        read_dataset(raw, "unisrec")
