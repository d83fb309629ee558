"""The shared raw-data preprocessing: dedup, text filter, iterative k-core, order, ids, counts."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from textrec.data.formats.common import PrepareOptions
from textrec.data.preprocess import build_dataset, first_occurrence_mask, k_core
from textrec.errors import DataError


def _build(rows, texts=None, **opts):
    """rows: (user, item, time[, rating]) in file order."""
    users, items, times = [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
    ratings = [r[3] for r in rows] if len(rows[0]) > 3 else None
    texts = {i: f"text {i}" for i in items} if texts is None else texts
    return build_dataset("t", users, items, times, texts, PrepareOptions(**opts), ratings=ratings, source={"path": "mem"})


def _sequences(ds):
    return {ds.user_keys[u]: [ds.item_keys[i - 1] for i in ds.sequence(u)] for u in range(ds.n_users)}


def _reference_k_core(inters, k):
    """UniSRec's filter_inters (process_amazon.py), written out with Python sets, as the oracle."""
    inters = list(inters)
    while True:
        users = collections.Counter(u for u, _ in inters)
        items = collections.Counter(i for _, i in inters)
        if all(c >= k for c in users.values()) and all(c >= k for c in items.values()):
            return inters
        inters = [(u, i) for u, i in inters if users[u] >= k and items[i] >= k]


def test_k_core_cascade_reaches_fixed_point():
    # k=2: item D (one rating, by u4) goes -> u4 falls to 1 -> item E (u4, u5) falls to 1 -> u5 falls to 1.
    rows = [("u1", "A"), ("u1", "B"), ("u2", "A"), ("u2", "B"), ("u4", "D"), ("u4", "E"), ("u5", "E"), ("u5", "A")]
    users = np.array([int(u[1]) for u, _ in rows])
    items = np.array(["ABDE".index(i) for _, i in rows])
    core = k_core(users, items, 2)
    kept = [r for r, k in zip(rows, core.keep) if k]
    assert kept == [("u1", "A"), ("u1", "B"), ("u2", "A"), ("u2", "B")]
    assert core.rounds == 4  # each removal cascaded into the next round
    assert kept == _reference_k_core(rows, 2)


def test_k_core_matches_reference_on_random_data():
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 60, 900), rng.zipf(1.6, 900) % 80
    core = k_core(users, items, 5)
    expected = _reference_k_core(list(zip(users.tolist(), items.tolist())), 5)
    assert list(zip(users[core.keep].tolist(), items[core.keep].tolist())) == expected
    kept_u, kept_i = users[core.keep], items[core.keep]
    assert np.bincount(kept_u)[np.unique(kept_u)].min() >= 5 and np.bincount(kept_i)[np.unique(kept_i)].min() >= 5


def test_duplicates_dropped_and_counted():
    rows = [("u", "a", 1, 5.0), ("u", "a", 1, 5.0), ("u", "a", 1, 4.0), ("u", "b", 2, 5.0), ("u", "c", 3, 5.0)]
    ds = _build(rows, k_core=0)
    assert _sequences(ds) == {"u": ["a", "a", "b", "c"]}  # a different rating is a different record
    assert ds.meta["counts"]["duplicates_removed"] == 1
    assert first_occurrence_mask(np.array([0, 0, 1]), np.array([2, 2, 2]), np.array([5, 5, 5])).tolist() == [True, False, True]


def test_same_timestamp_keeps_file_order_and_ids_follow_the_walk():
    rows = [("v", "x", 10), ("u", "c", 5), ("u", "b", 5), ("u", "a", 1), ("v", "a", 10), ("v", "b", 3), ("u", "d", 9)]
    ds = _build(rows, k_core=0)
    assert ds.user_keys == ["v", "u"]  # order of first appearance in the file
    assert _sequences(ds) == {"v": ["b", "x", "a"], "u": ["a", "c", "b", "d"]}  # ties: file order
    assert ds.item_keys == ["b", "x", "a", "c", "d"]  # first appearance walking v then u
    assert ds.sequence(0).tolist() == [1, 2, 3]
    assert ds.seq_times.tolist() == [3, 10, 10, 1, 5, 5, 9]


def test_items_without_text_min_rating_and_short_users():
    rows = [("u", "a", 1, 5.0), ("u", "b", 2, 1.0), ("u", "c", 3, 5.0), ("u", "nometa", 4, 5.0), ("u", "d", 5, 4.0),
            ("w", "a", 1, 5.0), ("w", "b", 2, 5.0)]
    texts = {"a": "A. ", "b": "B. ", "c": "", "d": "D. "}  # "c" has metadata but an empty text: kept
    ds = _build(rows, texts, k_core=0, min_rating=4)
    assert _sequences(ds) == {"u": ["a", "c", "d"]}
    counts = ds.meta["counts"]
    assert counts["below_min_rating_removed"] == 1
    assert counts["items_without_text_removed"] == 1 and counts["items_without_text"] == 1
    assert counts["short_users_removed"] == 1 and counts["short_user_interactions_removed"] == 2
    assert ds.item_texts == ["A. ", "", "D. "]
    kept = _build(rows, texts, k_core=0, drop_items_without_text=False)
    assert "nometa" in kept.item_keys and kept.item_texts[kept.item_keys.index("nometa")] == ""


def test_meta_records_filters_and_counts():
    rows = [(f"u{u}", f"i{i}", u * 10 + i) for u in range(6) for i in range(5)] + [("u0", "rare", 99)]
    ds = _build(rows)
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (6, 5, 30)
    assert ds.meta["filters"]["k_core"] == 5 and "position in the source" in ds.meta["filters"]["order"]
    c = ds.meta["counts"]
    assert c["raw_interactions"] == 31 and c["k_core_removed"] == 1 and c["k_core_items_removed"] == 1
    assert (c["users"], c["items"], c["interactions"]) == (6, 5, 30)
    assert ds.meta["source"] == {"path": "mem"}


def test_empty_result_is_a_clear_error():
    rows = [("u", "a", 1), ("u", "b", 2), ("u", "c", 3)]
    with pytest.raises(DataError, match=r"mem: no interactions left after the 5-core filter \(raw_interactions 3, k_core_removed 3"):
        _build(rows)
    with pytest.raises(DataError, match="no interactions left after dropping items without text"):
        _build(rows, texts={})
    with pytest.raises(DataError, match="min_rating=2 given but this source has no ratings"):
        _build(rows, min_rating=2)


def test_float_timestamps_sort_on_full_value():
    rows = [("u", "a", 1.7), ("u", "b", 1.2), ("u", "c", 2.0)]
    ds = _build(rows, k_core=0)
    assert _sequences(ds) == {"u": ["b", "a", "c"]}
    assert ds.seq_times.tolist() == [1, 1, 2]


def test_large_input_is_vectorised():
    rng = np.random.default_rng(1)
    n = 300_000
    users = [f"u{x}" for x in rng.integers(0, 20_000, n)]
    items = [f"i{x}" for x in rng.zipf(1.3, n) % 5_000]
    texts = {f"i{x}": "t" for x in range(5_000)}
    ds = build_dataset("big", users, items, rng.integers(0, 10**9, n), texts, PrepareOptions())
    lengths = ds.seq_lengths
    assert lengths.min() >= 5 and np.bincount(ds.seq_items)[1:].min() >= 5
    assert ds.meta["counts"]["interactions"] == ds.n_interactions


def test_max_users_keeps_whole_histories_of_a_seeded_sample():
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"i{rng.integers(40)}", t) for u in range(60) for t in range(int(rng.integers(3, 9)))]
    full = _sequences(_build(rows, k_core=1))
    a = _build(rows, k_core=1, max_users=20, sample_seed=1)
    b = _build(rows, k_core=1, max_users=20, sample_seed=1)
    c = _build(rows, k_core=1, max_users=20, sample_seed=2)
    assert a.n_users == 20 and _sequences(a) == _sequences(b) != _sequences(c)
    assert all(full[u] == seq for u, seq in _sequences(a).items())  # every kept user's whole history
    assert a.meta["counts"]["users_before_sampling"] == 60
    assert a.meta["counts"]["sampled_out_interactions"] == len(rows) - a.n_interactions
    assert _build(rows, k_core=1, max_users=100).n_users == 60  # fewer users than asked: all of them
    # the k-core runs on the whole source, the sample is not filtered again: items may have fewer than k there
    core = _sequences(_build(rows, k_core=3))
    small = _build(rows, k_core=3, max_users=5, sample_seed=0)
    assert small.n_users == 5 and all(core[u] == seq for u, seq in _sequences(small).items())
    with pytest.raises(DataError, match="max_users"):
        _build(rows, max_users=0)


def test_prepare_max_users_from_the_command_line(tmp_path, capsys):
    import json

    from textrec.cli import main

    rng = np.random.default_rng(3)
    lines = ["user\titem\ttimestamp"] + [f"u{u}\ti{rng.integers(30)}\t{t}" for u in range(50) for t in range(6)]
    (tmp_path / "inter.tsv").write_text("\n".join(lines) + "\n")
    (tmp_path / "items.tsv").write_text("item\ttitle\n" + "".join(f"i{i}\tthing {i}\n" for i in range(30)))
    args = ["prepare", str(tmp_path / "inter.tsv"), "--format", "csv", "--items", str(tmp_path / "items.tsv"),
            "--text-col", "title", "--k-core", "1", "--json"]
    assert main([*args, "--out", str(tmp_path / "a"), "--max-users", "12"]) == 0
    assert json.loads(capsys.readouterr().out)["users"] == 12
    assert main(["prepare", str(tmp_path), "--format", "unisrec", "--out", str(tmp_path / "b"), "--max-users", "5"]) == 2
    err = capsys.readouterr().err
    assert "--max-users" in err and "raw formats" in err and not (tmp_path / "b").exists()
