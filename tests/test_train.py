"""Training-loop tests: it learns the planted pattern, it cannot learn noise, resume is exact."""

from __future__ import annotations

import json
import os

import pytest
import torch

from textrec.config import load_config
from textrec.data.synthetic import WorldSpec, make_domain
from textrec.errors import TextrecError
from textrec.train.run import load_run, train_run

FAST = [
    "model.hidden_size=32",
    "model.inner_size=32",
    "model.hidden_dropout=0.1",
    "model.attn_dropout=0.1",
    "train.batch_size=256",
    "train.lr=0.005",
    "train.device=cpu",
    "eval.ks=[5,10]",
    "eval.select_metric=ndcg@10",
]


def _cfg(*extra):
    return load_config(model="sasrec", overrides=FAST + list(extra))


@pytest.mark.parametrize("noise, learns", [(0.1, True), (1.0, False)])
def test_sasrec_learns_the_planted_pattern_but_not_noise(tmp_path, noise, learns):
    ds = make_domain("kitchen", WorldSpec(n_items=60, n_users=300, noise=noise), seed=2)
    ds.save(tmp_path / "d")
    result = train_run(tmp_path / "d", _cfg("train.epochs=25", "train.patience=25"), tmp_path / "run", quiet=True).fit
    chance = 5 / ds.n_items
    if learns:  # ~6 items share each (style, next colour): a model that learned the rule is far above chance
        assert result.test["recall@5"] > 4 * chance
    else:  # shuffled (uniform) sequences: nothing to learn
        assert result.test["recall@5"] < 2 * chance


def test_resume_reaches_the_same_result(tiny_dir, tmp_path):
    straight = train_run(tiny_dir, _cfg("train.epochs=4", "train.patience=10"), tmp_path / "a", quiet=True).fit
    _ = train_run(tiny_dir, _cfg("train.epochs=2", "train.patience=10"), tmp_path / "b", quiet=True)
    # pretend the 4-epoch run was interrupted after epoch 2: same config, resume from its state
    cfg4 = _cfg("train.epochs=4", "train.patience=10")
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    config["train"]["epochs"] = 4
    (tmp_path / "b" / "config.json").write_text(json.dumps(config))
    resumed = train_run(tiny_dir, cfg4, tmp_path / "b", resume=True, quiet=True).fit
    assert resumed.epochs_run == straight.epochs_run == 4
    assert resumed.test == straight.test
    a = load_run(tmp_path / "a").model.state_dict()
    b = load_run(tmp_path / "b").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]


def test_early_stopping_and_outputs(tiny_dir, tmp_path):
    result = train_run(tiny_dir, _cfg("train.epochs=50", "train.patience=2", "train.lr=0.05"), tmp_path / "r", quiet=True).fit
    log = [json.loads(line) for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()]
    best = max(log, key=lambda r: r["valid"]["ndcg@10"])
    assert result.best_epoch == best["epoch"]
    assert result.epochs_run == result.best_epoch + 2 or result.epochs_run == 50
    assert result.valid["ndcg@10"] == pytest.approx(best["valid"]["ndcg@10"])  # the best weights were restored
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["test"] == result.test
    for f in ("config.json", "model.safetensors", "state.pt", "log.jsonl", "metrics.json"):
        assert (tmp_path / "r" / f).exists()


def test_refuses_to_clobber_or_resume_a_different_config(tiny_dir, tmp_path):
    train_run(tiny_dir, _cfg("train.epochs=1"), tmp_path / "r", quiet=True)
    with pytest.raises(TextrecError, match="already exists"):
        train_run(tiny_dir, _cfg("train.epochs=1"), tmp_path / "r", quiet=True)
    with pytest.raises(TextrecError, match="differs"):
        train_run(tiny_dir, _cfg("train.epochs=1", "train.lr=0.1"), tmp_path / "r", resume=True, quiet=True)


@pytest.mark.slow
def test_compiled_step_trains_like_the_eager_one(tiny_dir, tmp_path):
    """``train.compile=true`` (torch.compile of the training step; ~40 s of compilation on CPU) learns the same."""
    eager = train_run(tiny_dir, _cfg("train.epochs=3"), tmp_path / "eager", quiet=True).fit
    compiled = train_run(tiny_dir, _cfg("train.epochs=3", "train.compile=true"), tmp_path / "compiled", quiet=True).fit
    assert compiled.epochs_run == eager.epochs_run == 3
    for k, v in eager.test.items():
        assert compiled.test[k] == pytest.approx(v, abs=0.03), k


@pytest.mark.parametrize("amp_cpu", [False, True])
def test_amp_cpu_autocasts_only_the_training_forward(tiny_dir, tmp_path, monkeypatch, amp_cpu):
    """``train.amp_cpu=true``: bf16 autocast of the training forward on CPU; validation and test stay fp32.
    Off (the default): CPU training is fp32 as before, whatever ``train.amp`` says."""
    from textrec.models.sasrec import SASRec

    seen = {"train": set(), "eval": set()}
    real = SASRec.hidden

    def spy(self, item_seq):
        seen["train" if torch.is_grad_enabled() else "eval"].add(torch.is_autocast_enabled("cpu"))
        return real(self, item_seq)

    monkeypatch.setattr(SASRec, "hidden", spy)
    fit = train_run(tiny_dir, _cfg("train.epochs=2", f"train.amp_cpu={str(amp_cpu).lower()}"), tmp_path / "run", quiet=True).fit
    assert seen == {"train": {amp_cpu}, "eval": {False}}
    assert fit.test["recall@10"] > 0


# ---- distributed helpers in one process (tests/test_distributed.py launches torchrun) ---------------


def test_collective_helpers_are_the_single_process_operations():
    from textrec.collective import gather_with_grad, global_mean, global_sum

    x = torch.randn(5, 3, requires_grad=True)
    assert gather_with_grad(x) is x and gather_with_grad(None) is None
    assert torch.equal(global_mean(x), x.sum() / x.numel()) and torch.equal(global_sum(x), x)
    empty = global_mean(torch.zeros(0, requires_grad=True))
    assert float(empty.detach()) == 0.0 and empty.requires_grad  # a shard with no targets adds nothing, on the graph


def test_a_state_of_another_number_of_processes_is_refused():
    from textrec.train import distributed

    state = {"torch": torch.get_rng_state()}
    distributed.set_rng_states([state], torch.device("cpu"))
    with pytest.raises(TextrecError, match="run of 2 process"):
        distributed.set_rng_states([state, state], torch.device("cpu"))


def test_threads_bound_torch_and_openmp_together(monkeypatch):
    from textrec import threads

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        assert threads.prepare(3) == 3
        assert torch.get_num_threads() == 3 and os.environ["OMP_NUM_THREADS"] == "3"
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
        monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert threads.prepare() == max(1, threads.available_cores() // 2)  # torchrun's processes share the cores
        assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"  # a user's choice stays
    finally:
        torch.set_num_threads(before)


def test_cli_threads_option_sets_the_pool(tiny_dir, tmp_path, monkeypatch):
    from textrec.cli import main

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        assert main(["info", str(tiny_dir), "--json", "--threads", "2"]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_synthetic_corpus_has_long_tails_and_a_topic_signal():
    import numpy as np

    from textrec.data.synthetic import CorpusSpec, make_corpus

    spec = CorpusSpec(n_users=3000, n_items=2000, n_topics=20)
    ds = make_corpus(spec, seed=3)
    lengths = np.diff(ds.seq_offsets)
    assert ds.n_users == 3000 and ds.n_items == 2000 and lengths.min() >= spec.min_len and lengths.max() <= spec.max_len
    assert np.median(lengths) == spec.median_len and lengths.max() > 4 * spec.median_len  # short typical users, a long tail
    counts = np.sort(np.bincount(ds.seq_items, minlength=ds.n_items + 1)[1:])[::-1]
    assert counts[:20].sum() / counts.sum() > 10 * 20 / ds.n_items  # the top 1% of items far above their uniform share
    topic = np.array([int(t.split("Topic ")[1].split(".")[0]) for t in ds.item_texts])
    first, second = ds.seq_items[ds.seq_offsets[:-1]] - 1, ds.seq_items[ds.seq_offsets[:-1] + 1] - 1
    assert (topic[first] == topic[second]).mean() > 0.3  # chance: 1 / 20
    again = make_corpus(spec, seed=3)
    assert np.array_equal(again.seq_items, ds.seq_items) and not np.array_equal(make_corpus(spec, seed=4).seq_items, ds.seq_items)


def test_snapshot_sees_what_a_hook_replaced_or_wrote():
    """What ``sync_changed`` would broadcast from rank 0 after an epoch hook: the changed tensors, not the rest."""
    from textrec.train import distributed

    model = torch.nn.Linear(3, 2)
    model.register_buffer("table", torch.zeros(4, 3))
    model.register_buffer("centroids", torch.zeros(2, 3))
    before = distributed.snapshot(model)
    assert distributed.changed(model, before) == []
    with torch.no_grad():
        model.centroids[1] = 1.0  # written in place
    model.bias = torch.nn.Parameter(torch.ones(2))  # replaced
    assert sorted(distributed.changed(model, before)) == ["bias", "centroids"]
