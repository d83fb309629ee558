"""Zero-shot: a run ranks the items of a catalogue it was never trained on (``textrec evaluate RUN --data DIR``),
for models whose item side comes from item content (Recformer: sentences; UniSRec inductive: text embeddings);
models that cannot (SASRec: item IDs; transductive: a weight per item; another text encoder) are refused."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest

from doubles import CLI_CPU, cli_json
from textrec.cli import main
from textrec.data.dataset import Dataset
from textrec.data.synthetic import WorldSpec, make_domain

TINY = ["model.backbone=random", "model.hidden_size=32", "model.n_heads=2", "model.inner_size=37", "model.n_layers=2",
        "model.init_std=0.1", "model.hidden_dropout=0", "model.attn_dropout=0"]
CPU = CLI_CPU
SMALL = ["model.hidden_size=32", "model.inner_size=32", "train.batch_size=256", "train.epochs=3", *CPU]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _permuted_copy(ds: Dataset, seed: int) -> Dataset:
    """The same items (content and keys) and users under other item ids: another catalogue, same content."""
    order = np.random.default_rng(seed).permutation(ds.n_items)  # new id i + 1 holds old item order[i] + 1
    new_id = np.empty(ds.n_items + 1, dtype=np.int64)
    new_id[order + 1] = np.arange(1, ds.n_items + 1)
    return Dataset.from_sequences(
        ds.name, [ds.item_keys[i] for i in order], [ds.item_texts[i] for i in order], ds.user_keys,
        [new_id[ds.sequence(u)] for u in range(ds.n_users)],
        item_attributes=[ds.item_attributes[i] for i in order], meta={"source": ds.meta.get("source") or {}},
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("zeroshot")
    tools = make_domain("tools", WorldSpec(n_items=30, n_users=80, min_len=5, max_len=8), seed=0)
    tools.save(root / "tools")
    make_domain("garden", WorldSpec(n_items=36, n_users=70, min_len=5, max_len=8), seed=3).save(root / "garden")
    _permuted_copy(tools, seed=1).save(root / "tools-permuted")
    return root




def _fingerprint(folder: Path) -> dict[str, tuple[int, str]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line_error(capsys, argv: list[str], *fragments: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("textrec: error: "), err
    for f in fragments:
        assert f in err, err
    return err


def test_recformer_ranks_another_catalogue_zero_shot(world, tmp_path, capsys):
    run = tmp_path / "recformer"
    assert main(["train", str(world / "tools"), "--config", "recformer-reference", "--out", str(run), *TINY, *CPU,
                 "train.grad_accum=1", "train.warmup_steps=0", "train.epochs=2", "train.eval_every=1", "train.lr=1e-3"]) == 0
    capsys.readouterr()
    before = _fingerprint(run)
    own = cli_json(capsys, ["evaluate", str(run), "--json"])
    assert own["zero_shot"] is False
    garden = cli_json(capsys, ["evaluate", str(run), "--data", str(world / "garden"), "--json"])
    assert garden["zero_shot"] is True and garden["users"] == 70 and garden["data"] == str((world / "garden").resolve())
    assert all(math.isfinite(garden[k]) for k in ("recall@10", "ndcg@10", "mrr@10"))
    assert main(["evaluate", str(run), "--data", str(world / "garden")]) == 0  # the human table names what happens
    assert "zero-shot: " in capsys.readouterr().err
    # the run's own items under other ids: zero-shot gives the run's ranking with its item table re-encoded
    from textrec.data.batching import EvalBatcher
    from textrec.data.split import eval_examples
    from textrec.eval.ranking import evaluate
    from textrec.train.run import load_run

    loaded = load_run(run, device="cpu")
    loaded.model.clear_item_table()
    want = evaluate(loaded.model, EvalBatcher(eval_examples(loaded.dataset, "test", 50), 256), (10,), False, 65536).metrics
    permuted = cli_json(capsys, ["evaluate", str(run), "--data", str(world / "tools-permuted"), "--json"])
    assert permuted["zero_shot"] is True
    assert {k: permuted[k] for k in want} == pytest.approx(want, abs=1e-9)
    assert _fingerprint(run) == before  # nothing was written to the run


def test_pretrained_recformer_zero_shot_and_recommend_by_attributes(world, tmp_path, capsys):
    pre = tmp_path / "pre"
    assert main(["pretrain", str(world / "tools"), "--model", "recformer", "--out", str(pre), *TINY, *CPU,
                 "train.batch_size=32", "train.epochs=1"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(pre)]) == 2
    assert "--data DIR" in capsys.readouterr().err
    res = cli_json(capsys, ["evaluate", str(pre), "--data", str(world / "garden"), "--json"])
    assert res["zero_shot"] is True and math.isfinite(res["ndcg@10"])
    recs = cli_json(capsys, ["recommend", str(pre), "--data", str(world / "garden"), "--items", "garden-00001", "-k", "5", "--json"])
    assert len(recs["recommendations"]) == 5 and all(r["item"].startswith("garden-") for r in recs["recommendations"])


@pytest.fixture(scope="module")
def encoded(world):
    for name in ("tools", "garden", "tools-permuted"):
        assert main(["encode", str(world / name), "--encoder", "hashing-64", "--json"]) == 0
    return world


def test_unisrec_inductive_zero_shot_matches_its_own_ranking_on_the_same_content(encoded, tmp_path, capsys):
    run = tmp_path / "unisrec"
    assert main(["train", str(encoded / "tools"), "--model", "unisrec", "--out", str(run), "model.mode=inductive", *SMALL]) == 0
    capsys.readouterr()
    own = cli_json(capsys, ["evaluate", str(run), "--json"])
    permuted = cli_json(capsys, ["evaluate", str(run), "--data", str(encoded / "tools-permuted"), "--json"])
    assert permuted["zero_shot"] is True
    assert permuted["ndcg@10"] == pytest.approx(own["ndcg@10"], abs=1e-9) and permuted["recall@10"] == own["recall@10"]
    garden = cli_json(capsys, ["evaluate", str(run), "--data", str(encoded / "garden"), "--json"])
    assert garden["zero_shot"] is True and math.isfinite(garden["ndcg@10"])


def test_models_that_cannot_rank_another_catalogue_are_refused(encoded, tmp_path, capsys):
    sasrec = tmp_path / "sasrec"
    assert main(["train", str(encoded / "tools"), "--model", "sasrec", "--out", str(sasrec), *SMALL]) == 0
    transductive = tmp_path / "transductive"
    assert main(["train", str(encoded / "tools"), "--model", "unisrec", "--out", str(transductive), "model.mode=transductive",
                 *SMALL]) == 0
    capsys.readouterr()
    _one_line_error(capsys, ["evaluate", str(sasrec), "--data", str(encoded / "garden")],
                    "another catalogue", "sasrec scores the item IDs it was trained on")
    _one_line_error(capsys, ["evaluate", str(sasrec), "--data", str(encoded / "tools-permuted")], "sasrec scores the item IDs")
    _one_line_error(capsys, ["evaluate", str(transductive), "--data", str(encoded / "garden")],
                    "a weight per item", "item_id_emb.weight", "transductive")
    other_encoder = tmp_path / "garden-32"  # the garden items embedded by another encoder than the run's
    Dataset.load(encoded / "garden").save(other_encoder)
    assert main(["encode", str(other_encoder), "--encoder", "hashing-32", "--json"]) == 0
    inductive = tmp_path / "inductive"
    assert main(["train", str(encoded / "tools"), "--model", "unisrec", "--out", str(inductive), "model.mode=inductive",
                 *SMALL, "train.epochs=1"]) == 0
    capsys.readouterr()
    _one_line_error(capsys, ["evaluate", str(inductive), "--data", str(other_encoder)], "come from hashing-v1:32", "the run's from hashing-v1:64")


def test_text_model_reads_a_new_item_given_by_attributes_alone(encoded, tmp_path, capsys):
    """UniSRec reads new items by text: one given by attributes only gets the text `prepare` builds from them."""
    import csv

    run = tmp_path / "unisrec"
    assert main(["train", str(encoded / "tools"), "--model", "unisrec", "--out", str(run), "model.mode=inductive", *SMALL]) == 0
    copied = Dataset.load(encoded / "tools").item_attributes[4]  # item tools-00004, by its attributes alone
    path = tmp_path / "new.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["item", "brand", "category", "title"])  # columns in any order
        w.writeheader()
        w.writerow({"item": "COPY", **copied})
    capsys.readouterr()
    out = cli_json(capsys, ["recommend", str(run), "--items", "tools-00001", "--new-items", str(path), "-k", "40", "--json"])
    scores = {r["item"]: r["score"] for r in out["recommendations"]}
    assert scores["COPY"] == pytest.approx(scores["tools-00004"], abs=1e-6)
    assert next(r["text"] for r in out["recommendations"] if r["item"] == "COPY") == \
        next(r["text"] for r in out["recommendations"] if r["item"] == "tools-00004")
