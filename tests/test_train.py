"""Training-loop tests: it learns the planted pattern, it cannot learn noise, resume is exact."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import textrec
import textrec.models
import textrec.train.loop as loop
from doubles import CPU, MissDouble, RecDouble, item_inputs, small_model
from textrec.config import TrainConfig, load_config
from textrec.data.batching import EvalBatcher, TrainBatcher
from textrec.data.dataset import Dataset
from textrec.data.split import eval_examples, prefix_rows
from textrec.data.synthetic import WorldSpec, make_domain
from textrec.errors import ConfigError, TextrecError
from textrec.models.spec import Phase, train_all
from textrec.serve.catalogue import add_items
from textrec.train.inputs import build_model
from textrec.train.run import load_run, make_batchers, train_run

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


SASREC = ["model.hidden_size=16", "model.inner_size=16", "model.n_layers=1", "model.hidden_dropout=0.1",
          "model.attn_dropout=0.1", "data.max_seq_len=10", *CPU]


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    """50 items, 150 users with 5-12 items each."""
    path = tmp_path_factory.mktemp("surface") / "tools"
    make_domain("tools", WorldSpec(n_items=50, n_users=150, min_len=5, max_len=12), seed=3).save(path)
    return path


# ---- a MISSRec-shaped double -----------------------------------------------------------------------
ABSENT = {"clip_text": [5], "clip_image": [3, 7, 11]}


@pytest.fixture
def missdouble(monkeypatch):
    monkeypatch.setitem(textrec.models.MODELS, "missdouble", lambda: MissDouble)
    monkeypatch.setattr(MissDouble, "built", [])
    return MissDouble


@pytest.fixture(scope="module")
def feature_dir(tmp_path_factory):
    ds = make_domain("garden", WorldSpec(n_items=40, n_users=100, min_len=5, max_len=10), seed=5)
    rng = np.random.default_rng(0)
    for name, dim in (("clip_text", 12), ("clip_image", 10)):
        table = rng.standard_normal((ds.n_items + 1, dim)).astype(np.float32)
        table[[0, *ABSENT[name]]] = 0.0  # padding and the items without this modality
        ds.features[name] = table
    path = tmp_path_factory.mktemp("features") / "garden"
    ds.save(path)
    return path


def _miss_cfg(*extra):
    return load_config(model="missdouble", overrides=['data.features=["clip_text","clip_image"]', "train.epochs=3",
                                                      "train.batch_size=64", "train.lr=0.01", "data.max_seq_len=8",
                                                      *CPU, *extra])


def test_missrec_shaped_double_trains_on_prefix_rows_with_masked_features_and_epoch_hooks(missdouble, feature_dir, tmp_path):
    result = train_run(feature_dir, _miss_cfg(), tmp_path / "run", quiet=True).fit
    assert result.epochs_run == 3
    (model,) = missdouble.built
    for name, absent in ABSENT.items():  # all-zero rows arrive as present=False (and padding is never present)
        expected = torch.ones(41, dtype=torch.bool)
        expected[[0, *absent]] = False
        assert torch.equal(getattr(model, f"present_{name}"), expected), name
    # the hook ran once before each epoch, with the epoch's (0-based) number, and before that epoch's batches
    hooks = [i for i, e in enumerate(model.events) if e[0] == "epoch"]
    assert [model.events[i][1] for i in hooks] == [0, 1, 2]
    assert hooks[0] == 0
    per_epoch = [model.events[a + 1:b] for a, b in zip(hooks, hooks[1:] + [len(model.events)])]
    ds = Dataset.load(feature_dir)
    n_prefixes = int(np.maximum(ds.seq_lengths - 3, 0).sum())  # one row per (prefix, next item) of the training part
    for steps in per_epoch:
        rows = [n for e in steps for n in e[1]]
        assert set(rows) == {1}, "every training row is a prefix row with exactly one loss position"
        assert len(rows) == n_prefixes
    assert model.centroids.abs().sum() > 0  # the re-clustering hook worked on the trained model
    # (the double's own attention and padding are not textrec's code: MISSRec's are tested in test_missrec.py)
    # the run records the feature tables it read, and loads back with them to the same scores
    record = json.loads((tmp_path / "run" / "config.json").read_text())["item_inputs"]
    assert record["features"] == ["clip_text", "clip_image"]
    run = load_run(tmp_path / "run", device="cpu")
    torch.testing.assert_close(run.model.item_embeddings(), model.item_embeddings(), rtol=0, atol=0)
    # a new item has no feature rows: absent in every table, and the trained catalogue is unchanged
    grown = add_items(run, ["NEW-1"], ["Zorblat orange bamboo rake, vintage style."]).model
    assert not grown.present_clip_text[41] and not grown.present_clip_image[41]
    torch.testing.assert_close(grown.item_embeddings()[:41], run.model.item_embeddings(), rtol=0, atol=0)
    assert torch.equal(grown.item_embeddings()[41], torch.zeros(16))


def test_non_causal_model_refuses_windows_before_writing_anything(missdouble, feature_dir, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match="not causal"):
        train_run(feature_dir, _miss_cfg("data.train_rows=windows"), out, quiet=True)
    assert not out.exists()


# ---- a Recformer-shaped double -----------------------------------------------------------------------
@pytest.fixture
def recdouble(monkeypatch):
    monkeypatch.setitem(textrec.models.MODELS, "recdouble", lambda: RecDouble)
    monkeypatch.setattr(RecDouble, "built", [])
    return RecDouble


def _bad_run_ends(records: list[dict], patience: int) -> int:
    """Index of the record after which ``patience`` evaluations in a row had not improved (-1: never)."""
    bad = 0
    for i, r in enumerate(records):
        bad = 0 if r.get("improved") else bad + 1
        if bad >= patience:
            return i
    return -1


def test_recformer_shaped_double_sampled_rows_two_stages_reload_best_and_kept_optimizer(recdouble, small_dir, tmp_path,
                                                                                      monkeypatch, spy_optimizers):
    reloads = []  # (weights before the reload, model.safetensors at that moment, the optimiser's step counts)
    real_restore = loop._Trainer.restore_best

    def spy_restore(trainer):
        steps = {int(s["step"]) for s in trainer.optimizer.state.values()}
        weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        reloads.append((weights, load_file(trainer.out / "model.safetensors"), steps))
        return real_restore(trainer)

    monkeypatch.setattr(loop._Trainer, "restore_best", spy_restore)
    out = tmp_path / "run"
    cfg = load_config(model="recdouble", overrides=["train.epochs=40", "train.batch_size=64", "train.lr=0.01",
                                                    "data.max_seq_len=8", *CPU])
    result = train_run(small_dir, cfg, out, quiet=True).fit
    (model,) = recdouble.built
    log = _log(out)
    stage_1 = [r for r in log if r["phase"] == "stage 1"]
    stage_2 = [r for r in log if r["phase"] == "stage 2"]
    assert stage_1 and stage_2 and stage_1 + stage_2 == log
    # stage 2 began right after stage 1's patience (2) ran out, and stage 2 stopped after its own (1)
    assert _bad_run_ends(stage_1, 2) == len(stage_1) - 1
    assert stage_2[0]["epoch"] == stage_1[-1]["epoch"] + 1
    assert _bad_run_ends(stage_2, 1) == len(stage_2) - 1 and result.epochs_run < 40
    # sampled rows: every epoch holds exactly one one-target row per user, drawn anew
    hooks = [i for i, e in enumerate(model.events) if e[0] == "epoch"]
    assert [model.events[i][1] for i in hooks] == list(range(len(stage_1)))  # the re-encoding hook: stage 1 only
    draws = []
    for a, b in zip(hooks, hooks[1:]):
        batches = [e for e in model.events[a + 1:b] if e[0] == "batch"]
        users = [u for e in batches for u in e[1]]
        assert sorted(users) == list(range(150)), "one row per user (every user here has training rows)"
        assert {n for e in batches for n in e[3]} == {1}
        draws.append(sorted((u, n) for e in batches for u, n in zip(e[1], e[2])))
    assert len(draws) >= 2 and all(x != y for x, y in zip(draws, draws[1:]))
    # on entry to stage 2: the best stage-1 weights (those in model.safetensors then), not the last ones
    before, saved, steps = reloads[0]
    (entered,) = [e[1] for e in model.events if e[0] == "enter"]
    assert entered.keys() == saved.keys()
    assert all(torch.equal(entered[k], saved[k]) for k in saved)
    assert not all(torch.equal(before[k], saved[k]) for k in saved), "the last stage-1 epoch did not improve"
    # the optimiser was kept: one optimiser, whose step count ran on through both stages
    per_epoch = -(-150 // 64)
    assert len(spy_optimizers) == 1
    assert steps == {len(stage_1) * per_epoch}
    assert {int(s["step"]) for s in spy_optimizers[0]["opt"].state.values()} == {len(log) * per_epoch}
    assert torch.equal(model.item_table, entered["item_table"])  # frozen from stage 2 on


# ---- resume across a phase boundary ----------------------------------------------------------------
def _only_item_emb(model):
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith("item_emb"))


def _two_phases():
    return [Phase("item embeddings", _only_item_emb, epochs=2), Phase("everything", train_all, patience=2)]


@pytest.mark.parametrize("stop, schedule", [(2, ["train.schedule=linear", "train.warmup_steps=3"]), (3, [])],
                         ids=["at-the-boundary-linear-lr", "inside-phase-2"])
def test_resume_across_a_phase_boundary_is_exact(small_dir, tmp_path, stop, schedule):
    cfg = lambda epochs: load_config(model="sasrec", overrides=[*SASREC, *schedule, f"train.epochs={epochs}",
                                                               "train.batch_size=128", "train.lr=0.01"])
    train_run(small_dir, cfg(6), tmp_path / "straight", quiet=True, phases=_two_phases())
    train_run(small_dir, cfg(stop), tmp_path / "resumed", quiet=True, phases=_two_phases())
    train_run(small_dir, cfg(6), tmp_path / "resumed", resume=True, quiet=True, phases=_two_phases())
    a, b = tmp_path / "straight", tmp_path / "resumed"
    for weights in (lambda d: load_file(d / "model.safetensors"), lambda d: torch.load(d / "state.pt")["model"]):
        wa, wb = weights(a), weights(b)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma["test"] == mb["test"] and ma["best_epoch"] == mb["best_epoch"]
    la, lb = _log(a), _log(b)
    assert [r["epoch"] for r in lb] == list(range(1, len(la) + 1)) == [r["epoch"] for r in la]
    assert [r["phase"] for r in la] == [r["phase"] for r in lb]
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]


# ---- phases ------------------------------------------------------------------------------------------
def _reporting_phases():
    """Phase 1's hook reports numbers and a string per epoch; phase 2's hook returns None."""
    report = lambda m, epoch: {"hook_seconds": 0.5 + epoch, "hook_count": 3 * epoch, "hook_note": f"e{epoch}"}  # noqa: E731
    return [Phase("reporting", _only_item_emb, epochs=2, on_epoch_start=report),
            Phase("silent", train_all, epochs=2, on_epoch_start=lambda m, epoch: None)]


def test_epoch_hook_reports_go_into_the_log_and_the_metrics_and_survive_resume(small_dir, tmp_path):
    cfg = lambda epochs: load_config(model="sasrec", overrides=[*SASREC, f"train.epochs={epochs}", "train.batch_size=128"])
    train_run(small_dir, cfg(4), tmp_path / "straight", quiet=True, phases=_reporting_phases())
    log = _log(tmp_path / "straight")
    assert [r["phase"] for r in log] == ["reporting"] * 2 + ["silent"] * 2
    for epoch, r in enumerate(log[:2]):  # the hook's epoch is 0-based, the record's 1-based
        assert (r["epoch"], r["hook_seconds"], r["hook_count"], r["hook_note"]) == (epoch + 1, 0.5 + epoch, 3 * epoch, f"e{epoch}")
    for r in log[2:]:  # a hook returning None adds nothing
        assert not any(k.startswith("hook_") for k in r) and r["train_seconds"] > 0
    means = json.loads((tmp_path / "straight" / "metrics.json").read_text())["epoch_hook_means"]
    assert means == {"hook_seconds": 1.0, "hook_count": 1.5}  # over the epochs that reported; strings are not averaged
    train_run(small_dir, cfg(1), tmp_path / "resumed", quiet=True, phases=_reporting_phases())
    train_run(small_dir, cfg(4), tmp_path / "resumed", resume=True, quiet=True, phases=_reporting_phases())
    assert json.loads((tmp_path / "resumed" / "metrics.json").read_text())["epoch_hook_means"] == means
    assert [{k: v for k, v in r.items() if k.startswith("hook_")} for r in _log(tmp_path / "resumed")] == \
           [{k: v for k, v in r.items() if k.startswith("hook_")} for r in log]


def test_only_hooks_returning_nothing_leave_no_hook_means(small_dir, tmp_path):
    cfg = load_config(model="sasrec", overrides=[*SASREC, "train.epochs=2", "train.batch_size=128"])
    train_run(small_dir, cfg, tmp_path / "run", quiet=True, phases=[Phase("silent", train_all, on_epoch_start=lambda m, e: None)])
    assert "epoch_hook_means" not in json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert all(set(r) <= {"epoch", "loss", "train_seconds", "valid", "eval_seconds", "improved", "peak_memory_mb"} for r in _log(tmp_path / "run"))


@pytest.mark.parametrize("report, message", [({"loss": 1.0}, "uses itself"), ({"n": torch.tensor(1.0)}, "Tensor"),
                                             ((1.0, 2), "returned tuple")], ids=["reserved-key", "tensor", "not-a-dict"])
def test_an_epoch_hook_report_the_log_cannot_hold_is_refused(small_dir, tmp_path, report, message):
    cfg = load_config(model="sasrec", overrides=[*SASREC, "train.epochs=1", "train.batch_size=128"])
    with pytest.raises(TextrecError, match=message):
        train_run(small_dir, cfg, tmp_path / "run", quiet=True,
                  phases=[Phase("bad", train_all, on_epoch_start=lambda m, e: report)])


def test_a_fixed_phase_leaves_frozen_parameters_untouched_and_the_next_phase_rebuilds(small_dir, tmp_path, spy_optimizers):
    def all_but_item_emb(model):
        for n, p in model.named_parameters():
            p.requires_grad_(not n.startswith("item_emb"))

    phases = [Phase("item embeddings", _only_item_emb, epochs=2), Phase("the rest", all_but_item_emb, epochs=1)]
    cfg = load_config(model="sasrec", overrides=[*SASREC, "train.epochs=5", "train.batch_size=128", "train.lr=0.01"])
    train_run(small_dir, cfg, tmp_path / "run", quiet=True, phases=phases)
    assert len(spy_optimizers) == 2, "one optimiser per phase: rebuilt at the boundary"
    start, boundary = spy_optimizers
    assert start["trainable"] == {"item_emb.weight"}
    assert boundary["trainable"] == set(start["params"]) - {"item_emb.weight"}
    assert [id(p) for g in boundary["opt"].param_groups for p in g["params"]] != \
           [id(p) for g in start["opt"].param_groups for p in g["params"]]
    for name, before in start["params"].items():
        after = boundary["params"][name]
        assert torch.equal(before, after) == (name != "item_emb.weight"), name
    last = torch.load(tmp_path / "run" / "state.pt")["model"]
    assert torch.equal(last["item_emb.weight"], boundary["params"]["item_emb.weight"])  # frozen in phase 2
    assert len(_log(tmp_path / "run")) == 3  # 2 + 1 epochs: the phases ended the run before train.epochs


def test_max_epochs_caps_a_patience_phase_and_leaves_the_schedule_spanning_the_run(small_dir, tmp_path, spy_optimizers):
    phases = [Phase("capped", train_all, patience=50, max_epochs=2),
              Phase("kept", train_all, patience=50, reload_best=True, optimizer="keep")]
    cfg = load_config(model="sasrec", overrides=[*SASREC, "train.epochs=5", "train.batch_size=64", "train.lr=0.01",
                                                 "train.schedule=linear", "train.warmup_steps=0"])
    train_run(small_dir, cfg, tmp_path / "run", quiet=True, phases=phases)
    assert [r["phase"] for r in _log(tmp_path / "run")] == ["capped"] * 2 + ["kept"] * 3  # patience never ran out
    assert len(spy_optimizers) == 1
    progress = torch.load(tmp_path / "run" / "state.pt")["progress"]
    assert progress["schedule_steps"] == progress["opt_steps"] > 0  # the schedule ends with the run, not with the cap
    with pytest.raises(ValueError, match="max_epochs"):
        Phase("fixed and capped", train_all, epochs=2, max_epochs=1)
    with pytest.raises(ValueError, match="max_epochs"):
        Phase("capped at nothing", train_all, max_epochs=0)


def test_a_kept_optimiser_that_lacks_what_the_phase_unfreezes_is_refused(small_dir, tmp_path):
    cfg = load_config(model="sasrec", overrides=[*SASREC, "train.epochs=2", "train.batch_size=128", "train.lr=0.01"])
    narrow_then_wide = [Phase("item embeddings", _only_item_emb, epochs=1),
                        Phase("everything", train_all, optimizer="keep", epochs=1)]
    with pytest.raises(TextrecError, match=r"phase 'everything' keeps the optimiser of phase 'item embeddings'.*pos_emb\.weight"):
        train_run(small_dir, cfg, tmp_path / "refused", quiet=True, phases=narrow_then_wide)
    # the other way round the kept optimiser already holds every parameter, and the second phase trains on with it
    seen = []
    wide_then_narrow = [Phase("everything", train_all, epochs=1),
                        Phase("item embeddings", _only_item_emb, optimizer="keep", epochs=1,
                              enter=lambda m: seen.append({k: v.detach().clone() for k, v in m.state_dict().items()}))]
    train_run(small_dir, cfg, tmp_path / "run", quiet=True, phases=wide_then_narrow)
    (entered,) = seen
    last = torch.load(tmp_path / "run" / "state.pt")["model"]
    assert not torch.equal(entered["item_emb.weight"], last["item_emb.weight"]), "the kept optimiser stepped the phase's parameters"
    assert all(torch.equal(entered[k], last[k]) for k in entered if k.startswith("encoder.")), "frozen parameters moved"


# ---- training options --------------------------------------------------------------------------------
def _deterministic_sasrec(ds, extra=()):
    cfg = load_config(model="sasrec", overrides=["model.hidden_size=16", "model.inner_size=16", "model.n_layers=1",
                                                 "model.hidden_dropout=0.0", "model.attn_dropout=0.0", "data.max_seq_len=8",
                                                 "train.epochs=1", "train.lr=1e-3", "train.weight_decay=0.01", *CPU, *extra])
    torch.manual_seed(0)
    return cfg, build_model(cfg, item_inputs("sasrec", ds))


def _spy_steps(monkeypatch):
    """Per optimiser built: at each step, the learning rates and the gradients the step is about to use."""
    steps = []
    real = loop.make_optimizer

    def spy(model, cfg):
        opt = real(model, cfg)
        inner, mine = opt.step, []
        steps.append(mine)

        def step(*args, **kwargs):
            mine.append({"lr": {g["lr"] for g in opt.param_groups},
                         "grads": {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}})
            return inner(*args, **kwargs)

        opt.step = step
        return opt

    monkeypatch.setattr(loop, "make_optimizer", spy)
    return steps


def test_gradient_accumulation_equals_one_batch_of_twice_the_size(tiny_world, monkeypatch):
    """Adam with L2 weight decay is not scale-invariant, so summing instead of averaging would show in the weights."""
    steps = _spy_steps(monkeypatch)
    rows = prefix_rows(tiny_world, 8)  # one loss position per row: the two half-batches weigh the same
    half_a, half_b = torch.arange(0, 96), torch.arange(500, 596)
    valid = EvalBatcher(eval_examples(tiny_world, "valid", 8), 256)
    weights = []
    for accum, plan in ((2, [half_a, half_b]), (1, [torch.cat([half_a, half_b])])):
        cfg, model = _deterministic_sasrec(tiny_world, [f"train.grad_accum={accum}", f"train.batch_size={192 // accum}"])
        batcher = TrainBatcher(rows, cfg.train.batch_size)
        batcher.plan = lambda plan=plan: list(plan)
        loop.fit(model, batcher, valid, None, cfg, quiet=True)
        weights.append({n: p.detach().clone() for n, p in model.named_parameters()})
    (accumulated,), (whole,) = steps  # one optimiser step each
    assert accumulated["grads"].keys() == whole["grads"].keys()
    for n, g in whole["grads"].items():
        torch.testing.assert_close(accumulated["grads"][n], g, atol=1e-7, rtol=1e-4, msg=n)
    for n in weights[0]:
        torch.testing.assert_close(weights[0][n], weights[1][n], atol=1e-5, rtol=0, msg=n)


def _expected_lr(lr: float, step: int, total: int, warmup: int) -> float:
    """Linear warm-up from lr / warmup to lr over ``warmup`` steps, then linear decay reaching 0 at ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * (total - step) / (total - warmup)


@pytest.mark.parametrize("accum", [1, 2])
def test_linear_schedule_with_warmup_sets_the_promised_learning_rates(tiny_world, monkeypatch, accum):
    steps = _spy_steps(monkeypatch)
    cfg = load_config(model="sasrec", overrides=[*SASREC, "train.epochs=2", "train.batch_size=600", "train.lr=0.01",
                                                 "train.schedule=linear", "train.warmup_steps=2",
                                                 f"train.grad_accum={accum}"])
    train_b, valid_b, _ = make_batchers(tiny_world, cfg, "cpu")
    n_batches = len(train_b)
    assert n_batches == len(train_b.plan()) == 5  # odd: with accumulation the last step of an epoch takes one batch
    torch.manual_seed(0)
    loop.fit(build_model(cfg, item_inputs("sasrec", tiny_world)), train_b, valid_b, None, cfg, quiet=True)
    (made,) = steps
    total = 2 * -(-n_batches // accum)
    assert len(made) == total and all(len(s["lr"]) == 1 for s in made)
    got = [min(s["lr"]) for s in made]
    assert got == pytest.approx([_expected_lr(0.01, s, total, 2) for s in range(total)], rel=1e-12)
    assert got[1] == pytest.approx(0.01) and 0 < got[-1] < got[-2]


def test_adamw_puts_biases_and_layernorm_weights_in_a_zero_decay_group(tiny_world):
    model = small_model("sasrec", tiny_world)
    no_decay = {id(p) for m in model.modules() for name, p in m.named_parameters(recurse=False)
                if isinstance(m, torch.nn.LayerNorm) or name == "bias"}
    decay = {id(p) for p in model.parameters()} - no_decay
    assert no_decay and decay
    opt = loop.make_optimizer(model, TrainConfig(optimizer="adamw", weight_decay=0.1))
    assert isinstance(opt, torch.optim.AdamW)
    groups = {g["weight_decay"]: {id(p) for p in g["params"]} for g in opt.param_groups}
    assert groups == {0.1: decay, 0.0: no_decay}
    flat = loop.make_optimizer(model, TrainConfig(optimizer="adamw", weight_decay=0.1, no_decay_1d=False))
    assert [g["weight_decay"] for g in flat.param_groups] == [0.1]


def test_limit_batches_caps_every_epoch(small_dir, tmp_path, spy_optimizers):
    cfg = load_config(model="sasrec", overrides=["train.epochs=2", "train.batch_size=16", "train.limit_batches=3",
                                                 "model.hidden_size=8", "model.inner_size=8", *CPU])
    train_run(small_dir, cfg, tmp_path / "run", quiet=True)
    (made,) = spy_optimizers
    assert {int(s["step"]) for s in made["opt"].state.values()} == {2 * 3}  # 2 epochs of 3 batches, not of every batch
    with pytest.raises(ConfigError, match="train.limit_batches"):
        load_config(model="sasrec", overrides=["train.limit_batches=-1"])


def test_long_epochs_report_progress_lines_where_no_bar_is_drawn(caplog):
    from textrec.log import ProgressLines

    with caplog.at_level("INFO", logger="textrec"):
        lines = ProgressLines("epoch 3", 40, every=0.0)  # stderr is not a terminal under pytest: lines, not a bar
        lines.update(10)
        lines.update(40)  # the end: the epoch's own line follows, no progress line
        ProgressLines("epoch 4", 40, every=3600.0).update(10)  # not due yet
        ProgressLines("epoch 5", 40, every=0.0, enabled=False).update(10)  # --quiet, or not the writing rank
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and msgs[0].startswith("epoch 3: 10/40 (25%)") and "min left" in msgs[0]
