"""``textrec demo`` end to end on the synthetic world (quick size, tiny deterministic text encoder)."""

from __future__ import annotations

import json
import re

import pytest

import textrec.demo
from textrec.cli import main

EPOCH_LINE = re.compile(r"epoch\s+\d+\s+loss")  # the training loop's per-epoch progress line


@pytest.mark.slow  # the whole demo, six training stages (32 s); the quick demo below stays in the default run
def test_demo_shows_transfer_and_new_items(tmp_path, capsys, monkeypatch):
    summaries = []  # run_demo's return value: without --json the command prints tables, not the summary
    run_demo = textrec.demo.run_demo
    monkeypatch.setattr(textrec.demo, "run_demo", lambda **kw: summaries.append(run_demo(**kw)) or summaries[-1])
    main(["demo", "--quick", "--encoder", "hashing-64", "--device", "cpu", "--out", str(tmp_path / "demo")])
    out = capsys.readouterr()
    (summary,) = summaries
    chance = summary["chance"]["recall@10"]
    runs = {k: v["test"]["recall@10"] for k, v in summary["runs"].items()}
    assert set(runs) == {"SASRec, scratch", "UniSRec inductive, scratch", "MISSRec inductive, scratch", "VQ-Rec, scratch",
                         "VQ-Rec, pre-trained + fine-tuned"}
    assert all(r > 2 * chance for r in runs.values()), runs  # every model learns the planted rule
    # pre-training on the two source domains helps VQ-Rec on the small target domain
    assert runs["VQ-Rec, pre-trained + fine-tuned"] > runs["VQ-Rec, scratch"] + 0.1, runs
    # MISSRec clustered its interests before every epoch (its epoch hook's report)
    assert summary["runs"]["MISSRec inductive, scratch"]["epoch_hook_means"]["n_interests"] == 80  # ceil(160 texts x 0.5)
    # the new items (unseen brand and kind) that fit each user's rule rank far above chance for every text model
    n_items = 160
    assert set(summary["new_items"]["models"]) == {"UniSRec inductive", "MISSRec inductive", "VQ-Rec fine-tuned"}
    for name, m in summary["new_items"]["models"].items():
        assert len(m["ranks"]) == 150 and min(m["ranks"]) >= 1 and max(m["ranks"]) <= n_items + 1
        assert m["median_rank"] < n_items / 4, (name, m["median_rank"])
    assert (tmp_path / "demo" / "runs" / "vqrec-finetune" / "model.safetensors").exists()

    # results on stdout (`textrec demo > out.txt` keeps them), progress on stderr
    for result in ("chance level", "VQ-Rec, pre-trained + fine-tuned", "top 5 recommendations", "added 48 brand-new items", "median rank"):
        assert result in out.out and result not in out.err, result
    # --quick says first what it is for (its short training does not show the models' order)
    assert out.out.startswith("note: --quick is a smoke run") and summary["note"] == textrec.demo.QUICK_NOTE
    assert "test metrics on garden" in out.out and not EPOCH_LINE.search(out.out)  # no progress among them
    # every training stage shows its epochs under its header
    stages = re.split(r"\[\d/6\]", out.err)
    assert len(stages) == 7 and all(EPOCH_LINE.search(s) for s in stages[1:]), out.err
    assert f"wrote {tmp_path / 'demo'} (datasets and runs)" in out.err


def test_demo_json_on_a_prepared_dataset(tiny_dir, tmp_path, capsys):
    main(["demo", "--data", str(tiny_dir), "--quick", "--device", "cpu", "--out", str(tmp_path / "demo"), "--json"])
    out = capsys.readouterr()
    summary = json.loads(out.out)  # stdout is exactly one JSON object ...
    assert summary["dataset"] == "synthetic-tools"
    # ... and the human tables, one line per training epoch and where the outputs went are on stderr
    assert "chance level" in out.err and "top 5 recommendations" in out.err
    assert len(EPOCH_LINE.findall(out.err)) == summary["runs"]["sasrec"]["epochs_run"] > 0
    assert f"wrote {tmp_path / 'demo'} (runs)" in out.err
