"""Cold-start items (``textrec holdout``): a slice of the catalogue held out of training entirely, ranked by a
content model when it appears as a test target; ID models are refused on it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from textrec.cli import main
from textrec.data.holdout import held_out_ids, hold_out_items
from textrec.data.synthetic import WorldSpec, make_domain
from textrec.errors import DataError

SMALL = ["model.hidden_size=32", "model.inner_size=32", "model.hidden_dropout=0.1", "model.attn_dropout=0.1",
         "train.batch_size=256", "train.lr=0.003", "train.epochs=12", "train.patience=12", "train.device=cpu",
         "train.num_threads=1", "--quiet"]


@pytest.fixture(scope="module")
def world():
    ds = make_domain("garden", WorldSpec(n_items=120, n_users=500, noise=0.05), seed=4)
    ds.seq_times = np.arange(ds.n_interactions, dtype=np.int64) * 7  # timestamps must follow the items
    ds.features = {"img": np.vstack([np.zeros((1, 3)), np.arange(1, ds.n_items + 1)[:, None] * np.ones((1, 3))]).astype(np.float32)}
    return ds


def test_held_out_items_never_reach_training_and_come_back_as_test_targets(world):
    train, ev = hold_out_items(world, 0.2, seed=3)
    held_keys = set(ev.meta["holdout"]["held_out"])
    assert len(held_keys) == 24 and train.n_items == 96
    assert set(train.item_keys) == set(world.item_keys) - held_keys
    assert [k for k in world.item_keys if k not in held_keys] == train.item_keys  # order kept, ids renumbered
    assert (ev.item_keys, ev.item_texts, ev.item_attributes) == (world.item_keys, world.item_texts, world.item_attributes)
    assert train.item_texts == [world.item_texts[world.item_keys.index(k)] for k in train.item_keys]
    assert train.user_keys == ev.user_keys
    by_user = world.user_index()
    cold = dropped = 0
    for u, user in enumerate(train.user_keys):
        orig = [world.item_keys[i - 1] for i in world.sequence(by_user[user])]
        warm = [k for k in orig if k not in held_keys]
        assert [train.item_keys[i - 1] for i in train.sequence(u)] == warm  # every held-out interaction removed
        evseq = [ev.item_keys[i - 1] for i in ev.sequence(u)]
        if orig[-1] in held_keys:
            cold += 1
            assert evseq == warm + [orig[-1]]  # the held-out last item is the test target again
        else:
            assert evseq == warm
        # timestamps travel with their items
        o = by_user[user]
        times = world.seq_times[world.seq_offsets[o]:world.seq_offsets[o + 1]]
        kept = [t for k, t in zip(orig, times) if k not in held_keys]
        assert list(train.seq_times[train.seq_offsets[u]:train.seq_offsets[u + 1]]) == kept
    for u in range(world.n_users):
        if sum(world.item_keys[i - 1] not in held_keys for i in world.sequence(u)) < 3:
            dropped += 1
    h = train.meta["holdout"]
    assert (h["cold_test_users"], h["dropped_users"]) == (cold, dropped) and cold > 10
    assert train.n_users == world.n_users - dropped
    # feature tables: the train table keeps the kept items' rows, padding row first
    ids = np.array([world.item_keys.index(k) + 1 for k in train.item_keys])
    assert np.array_equal(train.features["img"][1:, 0], ids) and not train.features["img"][0].any()
    assert np.array_equal(held_out_ids(ev), np.sort([world.item_keys.index(k) + 1 for k in held_keys]))
    assert held_out_ids(world) is None


def test_held_out_sample_is_seeded_and_checked(world):
    a, _ = hold_out_items(world, 0.1, seed=1)
    b, _ = hold_out_items(world, 0.1, seed=1)
    c, _ = hold_out_items(world, 0.1, seed=2)
    assert a.item_keys == b.item_keys != c.item_keys
    for bad in (0.0, 1.0, -0.5, 1.5):
        with pytest.raises(DataError, match="fraction"):
            hold_out_items(world, bad)


def test_content_model_ranks_held_out_items_far_above_chance_and_id_model_is_refused(world, tmp_path, capsys):
    torch.manual_seed(0)
    src = tmp_path / "garden"
    world.save(src)
    out = tmp_path / "cold"
    assert main(["holdout", str(src), "--fraction", "0.2", "--seed", "3", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["held_out_items"] == 24 and summary["train_items"] == 96 and summary["eval_items"] == 120
    assert main(["holdout", str(src), "--out", str(out)]) == 2  # exists: refused, nothing replaced
    assert "already exists" in capsys.readouterr().err
    for d in ("train", "eval"):
        assert main(["encode", str(out / d), "--encoder", "hashing-64", "--json"]) == 0
    capsys.readouterr()
    assert main(["info", str(out / "eval")]) == 0
    assert f"24 items of synthetic-garden held out (seed 3); evaluation side: whole catalogue, {summary['cold_test_users']} users" in capsys.readouterr().out
    assert main(["info", str(out / "train"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["holdout"]["role"] == "train"

    run = tmp_path / "unisrec"
    assert main(["train", str(out / "train"), "--model", "unisrec", "--out", str(run), "model.mode=inductive", *SMALL]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(out / "eval"), "--ks", "10", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["zero_shot"] is True
    cold, seen = res["held_out"], res["seen"]
    assert cold["users"] == summary["cold_test_users"] and cold["users"] + seen["users"] == res["users"]
    assert cold["chance_recall@10"] == pytest.approx(10 / 120)
    # the planted rule (same style, next colour) is in the held-out items' text: ranked from it alone
    assert cold["recall@10"] > 4 * cold["chance_recall@10"], cold
    # the overall figure is the users' mean of the two groups
    assert res["recall@10"] == pytest.approx((cold["recall@10"] * cold["users"] + seen["recall@10"] * seen["users"]) / res["users"])

    # negative control: the same model untrained ranks them near chance
    untrained = tmp_path / "untrained"
    assert main(["train", str(out / "train"), "--model", "unisrec", "--out", str(untrained), "model.mode=inductive",
                 *SMALL, "train.epochs=1", "train.lr=1e-9"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(untrained), "--data", str(out / "eval"), "--ks", "10", "--json"]) == 0
    base = json.loads(capsys.readouterr().out)["held_out"]
    assert base["recall@10"] < cold["recall@10"] / 2, (base, cold)

    # an item-ID model never saw the held-out items: it cannot rank the eval catalogue
    sas = tmp_path / "sasrec"
    assert main(["train", str(out / "train"), "--model", "sasrec", "--out", str(sas), *SMALL, "train.epochs=1"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(sas), "--data", str(out / "eval")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "item IDs" in err

    # the human-readable table has a row per group
    assert main(["evaluate", str(run), "--data", str(out / "eval"), "--ks", "10"]) == 0
    table = capsys.readouterr().out
    assert f"held_out targets ({cold['users']:,} users)" in table and f"seen targets ({seen['users']:,} users)" in table
