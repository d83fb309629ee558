"""The one model surface: doubles of the next models train through the generic code paths; phases, resume
across phases, training options and the registry's promises."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import textrec
import textrec.models
import textrec.train.loop as loop
from doubles import MissDouble, RecDouble
from test_models import _model, item_inputs
from textrec.config import TrainConfig, load_config
from textrec.data.batching import EvalBatcher, SeqBatch, TrainBatcher
from textrec.data.dataset import Dataset
from textrec.data.split import eval_examples, prefix_rows
from textrec.data.synthetic import WorldSpec, make_domain
from textrec.errors import ConfigError, TextrecError
from textrec.models import MODELS
from textrec.models.spec import Phase, train_all
from textrec.serve.catalogue import add_items
from textrec.train.inputs import build_model
from textrec.train.run import load_run, make_batchers, train_run

CPU = ["train.device=cpu", "train.num_threads=1", "eval.ks=[10]"]
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


@pytest.fixture
def spy_optimizers(monkeypatch):
    """Every optimiser the loop builds, with a snapshot of the parameters and of what trains at that moment."""
    made = []
    real = loop.make_optimizer

    def spy(model, cfg):
        opt = real(model, cfg)
        made.append({"opt": opt, "params": {n: p.detach().clone() for n, p in model.named_parameters()},
                     "trainable": {n for n, p in model.named_parameters() if p.requires_grad}})
        return opt

    monkeypatch.setattr(loop, "make_optimizer", spy)
    return made


# ---- 1. a MISSRec-shaped double -----------------------------------------------------------------------
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


# ---- 2. a Recformer-shaped double -----------------------------------------------------------------------
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


# ---- 3. resume across a phase boundary ----------------------------------------------------------------
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


# ---- 4. phases ------------------------------------------------------------------------------------------
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
    assert all(set(r) <= {"epoch", "loss", "train_seconds", "valid", "eval_seconds", "improved"} for r in _log(tmp_path / "run"))


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


def test_vqrec_permutation_phase_changes_only_the_permutation_and_bakes_a_row_permutation(tiny_world, spy_optimizers):
    cfg = load_config(model="vqrec", overrides=["model.hidden_size=16", "model.inner_size=16", "model.n_heads=2",
                                                "model.permute_epochs=2", "train.epochs=3", "train.batch_size=512",
                                                "train.lr=0.05", "data.max_seq_len=10", *CPU])
    torch.manual_seed(0)
    model = build_model(cfg, item_inputs("vqrec", tiny_world))
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    permute, rest = model.phases("finetune")
    seen = {}

    def observed_enter(m):
        seen["before"] = {k: v.detach().clone() for k, v in m.state_dict().items()}
        seen["indices"] = m.permutation_indices().clone()
        rest.enter(m)
        seen["after"] = m.code_emb.weight.detach().clone()

    train_b, valid_b, _ = make_batchers(tiny_world, cfg, "cpu")
    observed = [permute, dataclasses.replace(rest, enter=observed_enter)]
    loop.fit(model, train_b, valid_b, None, cfg, quiet=True, phases=observed)
    assert len(spy_optimizers) == 2, "rebuilt at the boundary, for the parameters each phase trains"
    permuting, fine_tuning = spy_optimizers
    assert permuting["trainable"] == {"perm_logits"}
    assert {n.split(".")[0] for n in fine_tuning["trainable"]} == {"code_emb", "norm"}  # positions, Transformer frozen
    before = seen["before"]
    changed = {k for k in initial if not torch.equal(initial[k], before[k])}
    assert changed == {"perm_logits", "permuting"}  # only the permutation learned; the flag says "permuting"
    D, M = model.n_codebooks, model.codebook_size
    old, new = initial["code_emb.weight"].view(D, M + 1, -1), seen["after"].view(D, M + 1, -1)
    idx = seen["indices"]
    assert not torch.equal(idx, torch.arange(M).expand(D, M)), "a random start is not the identity"
    for d in range(D):
        assert sorted(idx[d].tolist()) == list(range(M))
        assert torch.equal(new[d, 0], old[d, 0])  # the padding row stays
        # the pre-trained rows, reordered (to rounding: see the exactness test below)
        torch.testing.assert_close(new[d, 1:], old[d, 1:][idx[d]], rtol=1e-6, atol=0)


def test_vqrec_baked_table_is_an_exact_row_permutation(tiny_world):
    model = _model("vqrec", tiny_world)
    model.start_permutation()
    D, M = model.n_codebooks, model.codebook_size
    old = model.code_emb.weight.detach().clone().view(D, M + 1, -1)
    idx = model.permutation_indices()
    model.bake_permutation()
    new = model.code_emb.weight.detach().view(D, M + 1, -1)
    assert all(torch.equal(new[d, 1:], old[d, 1:][idx[d]]) for d in range(D))


# ---- 5. training options --------------------------------------------------------------------------------
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
    model = _model("sasrec", tiny_world)
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


# ---- 6. the registry ------------------------------------------------------------------------------------
def test_importing_the_registry_imports_no_model_module():
    probe = ("import textrec.models, sys; print('textrec.models.vqrec' in sys.modules); "
             "print([m for m in sys.modules if m.startswith('textrec.models.') and m != 'textrec.models.spec'])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:2] == ["False", "[]"]


def _sources(*parts: str) -> list[Path]:
    root = Path(textrec.__file__).parent
    files = []
    for part in parts:
        path = root / part
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    assert files
    return files


def test_no_model_module_imports_the_training_code():
    for path in _sources("models"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "textrec.train" or n.startswith("textrec.train.") for n in names), f"{path.name}: {names}"


HELP_KEYWORDS = ("help", "description", "epilog")  # argparse text may name models (and the "unisrec" data format)


def _prose(tree) -> set[int]:
    """ids of the string constants that are docstrings or argparse help text: allowed to name a model."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
        if isinstance(node, ast.keyword) and node.arg in HELP_KEYWORDS:
            ids.update(id(n) for n in ast.walk(node.value) if isinstance(n, ast.Constant))
    return ids


def test_generic_code_has_no_model_name_switch():
    pattern = re.compile(rf"\b({'|'.join(map(re.escape, MODELS))})\b")
    offenders = []
    for path in _sources("train", "serve", "cli.py"):
        text = path.read_text()
        assert not re.search(r"\.model\s*(==|!=|\bin\b)", text), f"{path.name} switches on the model name"
        tree = ast.parse(text)
        prose = _prose(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
                if pattern.search(node.value):
                    offenders.append(f"{path.name}:{node.lineno}: {node.value!r}")
    assert not offenders, offenders
