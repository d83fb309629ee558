"""``textrec demo`` end to end on the synthetic world (quick size, tiny deterministic text encoder)."""

from __future__ import annotations

import json

from textrec.cli import main


def test_demo_shows_transfer_and_new_items(tmp_path, capsys):
    main(["demo", "--quick", "--encoder", "hashing-64", "--device", "cpu", "--out", str(tmp_path / "demo"), "--json"])
    out = capsys.readouterr()
    summary = json.loads(out.out)
    chance = summary["chance"]["recall@10"]
    runs = {k: v["test"]["recall@10"] for k, v in summary["runs"].items()}
    assert set(runs) == {"SASRec, scratch", "UniSRec inductive, scratch", "VQ-Rec, scratch", "VQ-Rec, pre-trained + fine-tuned"}
    assert all(r > 2 * chance for r in runs.values()), runs  # every model learns the planted rule
    # pre-training on the two source domains helps VQ-Rec on the small target domain
    assert runs["VQ-Rec, pre-trained + fine-tuned"] > runs["VQ-Rec, scratch"] + 0.1, runs
    # the new items (unseen brand and kind) that fit each user's rule rank far above chance for both text models
    n_items = 160
    for name, m in summary["new_items"]["models"].items():
        assert len(m["ranks"]) == 150 and min(m["ranks"]) >= 1 and max(m["ranks"]) <= n_items + 1
        assert m["median_rank"] < n_items / 4, (name, m["median_rank"])
    assert "added 48 brand-new items" in out.err and "chance level" in out.err
    assert (tmp_path / "demo" / "runs" / "vqrec-finetune" / "model.safetensors").exists()
