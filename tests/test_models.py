"""Model contract tests, parametrised over the registry so that every new model is tested."""

from __future__ import annotations

import ast
import dataclasses
import re
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_model, save_model

import textrec
from doubles import (
    MAX_SEQ_LEN,
    SMALL,
    TRANSDUCTIVE,
    infonce_by_hand,
    random_batch,
    small_model,
)
from textrec.config import load_config
from textrec.data.batching import SeqBatch
from textrec.models import MODELS, layers, model_class
from textrec.models.spec import (
    InputKind,
    ItemInputs,
    ItemStateFill,
    ModelSpec,
    Phase,
    Recipe,
    TrainingRows,
    dot_score,
    item_input_kinds,
    score,
    spec_of,
)


def scores(model, seq_repr):
    """(B, n_items + 1) scores as the evaluator and the recommender compute them (the model's declared rule)."""
    return score(model, seq_repr, model.item_embeddings())


@pytest.fixture(params=sorted(MODELS))
def name(request):
    return request.param


def test_shapes(name, tiny_world):
    model = small_model(name, tiny_world)
    batch = random_batch(tiny_world)
    seq_repr = model.encode(batch)
    items = model.item_embeddings()
    assert items.shape[0] == tiny_world.n_items + 1
    assert seq_repr.shape[0] == 4 and scores(model, seq_repr).shape == (4, tiny_world.n_items + 1)
    if spec_of(model).score is dot_score:
        assert seq_repr.shape == (4, items.shape[1])
    model.train()
    loss = model.loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_causal_later_items_do_not_change_earlier_outputs(name, tiny_world):
    model = small_model(name, tiny_world)
    if not spec_of(model).causal:
        pytest.skip(f"{name} is not causal (SPEC.causal is False)")
    batch = random_batch(tiny_world, lengths=(9, 9))
    changed = batch.item_seq.clone()
    changed[:, 5:] = (changed[:, 5:] % tiny_world.n_items) + 1  # new items after position 4
    for t in range(5):
        short = SeqBatch(batch.item_seq, torch.tensor([t + 1, t + 1]))
        short_changed = SeqBatch(changed, torch.tensor([t + 1, t + 1]))
        torch.testing.assert_close(model.encode(short), model.encode(short_changed))
    assert not torch.allclose(model.encode(batch), model.encode(SeqBatch(changed, batch.seq_len)))


def test_padding_invariance(name, tiny_world):
    model = small_model(name, tiny_world)
    batch = random_batch(tiny_world, lengths=(3, 5))
    trimmed = SeqBatch(batch.item_seq[:, :5], batch.seq_len)
    padded = SeqBatch(torch.nn.functional.pad(trimmed.item_seq, (0, 4)), batch.seq_len)
    torch.testing.assert_close(model.encode(trimmed), model.encode(padded))
    single = model.encode(SeqBatch(batch.item_seq[:1, :3], batch.seq_len[:1]))
    torch.testing.assert_close(single, model.encode(trimmed)[:1])


def test_save_load_gives_identical_scores(name, tiny_world, tmp_path):
    model = small_model(name, tiny_world, seed=0)
    save_model(model, str(tmp_path / "m.safetensors"))
    other = small_model(name, tiny_world, seed=1)
    batch = random_batch(tiny_world)
    assert not torch.equal(model.encode(batch), other.encode(batch))
    load_model(other, str(tmp_path / "m.safetensors"))
    assert torch.equal(scores(model, model.encode(batch)), scores(other, other.encode(batch)))


# Fixed-init forward values: a change here must be deliberate (it changes every reported number).
GOLDEN_LOSS = {"sasrec": 4.10165, "unisrec": 5.61010, "vqrec": 6.42061, "missrec": 5.25199, "recformer": 4.09432}


def test_golden_fixed_init_loss(name, tiny_world):
    model = small_model(name, tiny_world, seed=0)
    loss = model.loss(random_batch(tiny_world, seed=3))
    assert float(loss.detach()) == pytest.approx(GOLDEN_LOSS[name], abs=1e-4)


# ---- the declarations (textrec.models.spec.ModelSpec) ---------------------------------------------------
def _check_spec(name: str, model, world) -> set[str]:
    """Check every field of the model's ``SPEC``; return the names of the fields checked."""
    cls, spec = type(model), spec_of(model)
    cfg = load_config(model=name, overrides=SMALL[name]).model_config
    kinds, rows, fills = set(typing.get_args(InputKind)), set(typing.get_args(TrainingRows)), set(typing.get_args(ItemStateFill))
    state = set(model.state_dict()) | {n for n, _ in model.named_buffers()}
    checked = set()

    def check(field_name: str, ok: bool) -> None:
        assert ok, f"{name}: SPEC.{field_name} = {getattr(spec, field_name)!r}"
        checked.add(field_name)

    check("item_inputs", isinstance(spec.item_inputs, tuple) and set(spec.item_inputs) <= kinds - {"word_drop_embeddings"})
    check("inputs_for_config", spec.inputs_for_config is None or set(spec.inputs_for_config(cfg)) <= set(spec.item_inputs))
    check("feature_tables", all(isinstance(t, str) and t for t in spec.feature_tables(cfg))
          and (not spec.feature_tables(cfg) or "features" in item_input_kinds(cls, cfg)))
    check("pretrain_inputs", isinstance(spec.pretrain_inputs, tuple) and set(spec.pretrain_inputs) <= kinds)
    check("word_drop_view", (spec.word_drop_view is None) == ("word_drop_embeddings" not in spec.pretrain_inputs)
          and (spec.word_drop_view is None or spec.word_drop_view("minilm-mean") not in ("", "minilm-mean")))
    check("causal", isinstance(spec.causal, bool))
    check("training_rows", spec.training_rows in rows and (spec.training_rows != "windows" or spec.causal))
    check("sampled_cut", {spec.sampled_cut(cfg, p) for p in (False, True)} <= {"any", "reference"})
    check("empty_history_rows", all(isinstance(spec.empty_history_rows(cfg, p), bool) for p in (False, True))
          and not spec.empty_history_rows(cfg, True)  # pre-training pairs never have an empty history
          and (not spec.empty_history_rows(cfg, False) or spec.training_rows != "windows"))
    check("catalogue_keys", isinstance(spec.catalogue_keys, tuple) and all(isinstance(k, str) and k for k in spec.catalogue_keys)
          and any(k.startswith(spec.catalogue_keys) for k in state))
    check("item_state", spec.item_state is None or (set(spec.item_state.values()) <= fills
          and all(any(k.startswith(prefix) for k in state) for prefix in spec.item_state if prefix != "word_drop_table")))
    config_fields = {f.name for f in dataclasses.fields(cls.Config)}
    check("architecture_keys", bool(spec.architecture_keys) and set(spec.architecture_keys) <= config_fields)
    seq_repr = model.encode(random_batch(world))
    check("score", callable(spec.score) and score(model, seq_repr, model.item_embeddings()).shape == (4, model.n_items + 1))
    ok = isinstance(spec.recipe, Recipe)
    for kind in ("train", "pretrain", "finetune"):
        resolved = load_config(model=name, kind=kind)
        for key, value in spec.recipe.for_kind(kind).items():  # every recipe key is a real setting, and reaches the config
            section, _, field_name = key.partition(".")
            got = getattr(getattr(resolved, section), field_name)
            ok = ok and (list(got) if isinstance(got, tuple) else got) == value and resolved.recipe[key] == value
    check("recipe", ok)
    check("extra", spec.extra in ("", "text", "quant", "image"))
    return checked


def test_every_registered_model_makes_every_declaration(name, tiny_world):
    model = small_model(name, tiny_world)
    assert model_class(name).Config is type(load_config(model=name).model_config)
    assert _check_spec(name, model, tiny_world) == {f.name for f in dataclasses.fields(ModelSpec)}, "a ModelSpec field is not checked here"
    phases = model.phases("train")
    assert phases and all(isinstance(p, Phase) for p in phases)


def test_a_misspelt_or_wrong_declaration_fails_when_declared():
    with pytest.raises(TypeError):
        ModelSpec(catalog_keys=("x",))  # a typo is no silent default
    with pytest.raises(ValueError, match="causal"):
        ModelSpec(training_rows="windows")  # windows need a causal model
    with pytest.raises(ValueError, match="input kind"):
        ModelSpec(item_inputs=("text_embedding",))
    with pytest.raises(ValueError, match="word_drop_view"):
        ModelSpec(pretrain_inputs=("word_drop_embeddings",))
    with pytest.raises(ValueError, match="recipe key"):
        Recipe(train={"batch_size": 16})
    with pytest.raises(TypeError, match="SPEC"):
        spec_of(torch.nn.Linear)


def test_one_score_rule_for_evaluation_and_recommendation(tiny_world):
    """A model whose declared rule is not the inner product is ranked by that rule everywhere."""
    from textrec.data.batching import EvalBatcher
    from textrec.data.split import eval_examples
    from textrec.eval.ranking import evaluate
    from textrec.models.sasrec import SASRec
    from textrec.serve.recommend import all_scores

    class Negated(SASRec):
        SPEC = dataclasses.replace(SASRec.SPEC, score=lambda model, u, rows: -(u @ rows.T))

    torch.manual_seed(0)
    plain = small_model("sasrec", tiny_world)
    negated = Negated(load_config(model="sasrec", overrides=SMALL["sasrec"]).model_config, ItemInputs(n_items=tiny_world.n_items),
                      MAX_SEQ_LEN)
    negated.load_state_dict(plain.state_dict())
    negated.eval()
    history = np.array([1, 2, 3])
    a, b = all_scores(plain, history, MAX_SEQ_LEN), all_scores(negated, history, MAX_SEQ_LEN)
    finite = torch.isfinite(a)
    torch.testing.assert_close(b[finite], -a[finite])
    batcher = EvalBatcher(eval_examples(tiny_world, "test", MAX_SEQ_LEN), 64)
    ranks_plain, ranks_negated = evaluate(plain, batcher).ranks, evaluate(negated, batcher).ranks
    n = tiny_world.n_items
    assert not np.array_equal(ranks_plain, ranks_negated)
    assert np.all((ranks_plain + ranks_negated <= n - 1) | (ranks_negated == n - 1))  # reversed order (ties pessimistic)


_DECLARATIONS = re.compile(r"^[A-Z][A-Z0-9_]*$|^(score_items|sampled_cut|item_inputs_for|SPEC)$")


def declaration_fallbacks(source: str) -> list[str]:
    """``getattr(x, "NAME", ...)`` / ``hasattr(x, "NAME")`` reads of declarations (UPPER_CASE members and the old
    optional methods) in ``source``: the fallbacks ``SPEC`` replaced."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
                and _DECLARATIONS.match(node.args[1].value)):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_no_declaration_is_read_with_a_getattr_fallback():
    assert declaration_fallbacks('skip = tuple(getattr(cls, "CATALOGUE_KEYS", ()))')  # the check can fail
    assert declaration_fallbacks('f = getattr(model, "score_items", None)')
    assert not declaration_fallbacks('getattr(cfg, "hidden_size")')
    root = Path(textrec.__file__).parent
    offending = {str(p.relative_to(root)): hits for p in sorted(root.rglob("*.py")) if p != root / "models" / "spec.py"
                 for hits in [declaration_fallbacks(p.read_text(encoding="utf-8"))] if hits}
    assert offending == {}


@pytest.mark.parametrize("same_target", ["mask", "reference"])
@pytest.mark.parametrize("with_extra", [False, True], ids=["no-extra", "extra"])
@pytest.mark.parametrize("with_groups", [False, True], ids=["no-groups", "groups"])
def test_in_batch_contrastive_matches_an_independent_formula(same_target, with_extra, with_groups):
    g = torch.Generator().manual_seed(0)
    n, d = 9, 6
    query, keys, extra = (torch.randn(n, d, generator=g) for _ in range(3))
    key_ids = torch.tensor([4, 7, 4, 2, 9, 7, 4, 1, 3])  # item 4 three times, item 7 twice
    groups = torch.tensor([0, 0, 1, 2, 2, 3, 1, 4, 4])  # rows 0/2 share item 4 across users, 2/6 within one
    args = dict(same_target=same_target, extra=extra if with_extra else None, groups=groups if with_groups else None)
    got = layers.in_batch_contrastive(query, keys, key_ids, 0.2, **args)
    assert float(got) == pytest.approx(infonce_by_hand(query, keys, key_ids, 0.2, **args), rel=1e-5)


def test_the_same_target_rules_and_groups_really_differ():
    """The fixture above is not degenerate: each option changes the loss."""
    g = torch.Generator().manual_seed(1)
    query, keys, extra = (torch.randn(9, 6, generator=g) for _ in range(3))
    key_ids = torch.tensor([4, 7, 4, 2, 9, 7, 4, 1, 3])
    groups = torch.tensor([0, 0, 1, 2, 2, 3, 1, 4, 4])
    values = {infonce_by_hand(query, keys, key_ids, 0.2, st, e, gr)
              for st in ("mask", "reference") for e in (None, extra) for gr in (None, groups)}
    assert len(values) == 8


@pytest.mark.parametrize("name", ["unisrec", "vqrec"])
def test_transductive_id_embedding_is_added_to_inputs_and_candidates(name, tiny_world):
    model = small_model(name, tiny_world, extra=TRANSDUCTIVE)
    assert small_model(name, tiny_world).item_id_emb is None  # inductive: no ID embedding at all
    item = 7
    with_item = SeqBatch(torch.tensor([[3, item, 9, 12]]), torch.tensor([4]))  # the item inside the history
    without = SeqBatch(torch.tensor([[3, 11, 9, 12]]), torch.tensor([4]))
    before = model.encode(with_item), model.encode(without), model.item_embeddings().detach().clone()
    with torch.no_grad():
        model.item_id_emb.weight[item] += torch.randn(model.item_id_emb.weight.shape[1])
    after = model.encode(with_item), model.encode(without), model.item_embeddings()
    assert not torch.allclose(before[0], after[0])  # input side
    assert torch.equal(before[1], after[1])
    changed = [i for i in range(tiny_world.n_items + 1) if not torch.equal(before[2][i], after[2][i])]
    assert changed == [item]  # candidate side, that item only


# ---- the encoder's causal and key-padding masks together ----------------------------------------------
@pytest.fixture
def encoder():
    torch.manual_seed(0)
    return layers.TransformerEncoder(2, 16, 2, 24, 0.0, 0.0, 1e-12).eval()


def test_causal_with_key_padding_on_right_padded_rows(encoder):
    x = torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([7, 4, 2])
    padding = torch.arange(7)[None, :] >= lengths[:, None]
    both = encoder(x, causal=True, key_padding=padding)
    causal_only = encoder(x, causal=True)
    real = ~padding
    torch.testing.assert_close(both[real], causal_only[real], atol=1e-5, rtol=1e-5)
    # a later key never reaches an earlier query: change the padding and, in row 0, the real items after position 2
    changed = x.clone()
    changed[padding] = torch.randn(int(padding.sum()), 16)
    changed[0, 3:] += 1.0
    again = encoder(changed, causal=True, key_padding=padding)
    keep = real.clone()
    keep[0, 3:] = False
    torch.testing.assert_close(again[keep], both[keep], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(again[0, 3:], both[0, 3:])


def test_causal_with_key_padding_masks_left_padding(encoder):
    x = torch.randn(1, 4, 16, generator=torch.Generator().manual_seed(2))
    pad = torch.randn(1, 3, 16, generator=torch.Generator().manual_seed(3))
    left = torch.cat([pad, x], dim=1)
    padding = torch.tensor([[True, True, True, False, False, False, False]])
    out = encoder(left, causal=True, key_padding=padding)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, 3:], encoder(x, causal=True), atol=1e-5, rtol=1e-5)
    unmasked = encoder(left, causal=True)
    assert not torch.allclose(unmasked[:, 3:], out[:, 3:])  # without the padding mask the padding leaks in


def test_length_groups_partition_rows_at_the_least_padded_cost():
    torch.manual_seed(0)
    seq_len = torch.cat([torch.full((30,), 50), torch.randint(1, 6, (200,)), torch.randint(10, 20, (40,))])
    seq_len = seq_len[torch.randperm(len(seq_len))]
    groups = layers.length_groups(seq_len, overhead=64)
    rows = torch.cat([r for r, _ in groups])
    assert sorted(rows.tolist()) == list(range(len(seq_len)))  # every row exactly once
    assert all(int(seq_len[r].max()) == w for r, w in groups)  # each group as wide as its longest row
    area = sum(len(r) * w for r, w in groups)
    assert int(seq_len.sum()) <= area < 0.5 * len(seq_len) * 50  # padded to 50 everywhere: over twice the positions
    # exhaustive check of optimality on few distinct lengths: every split of the sorted distinct lengths
    small = torch.tensor([1, 1, 1, 2, 7, 7, 8, 20, 3, 3])
    values = sorted(set(small.tolist()))
    counts = [int((small == v).sum()) for v in values]
    best = min(
        sum(sum(counts[i:j]) * values[j - 1] + 5 for i, j in zip((0, *cuts), (*cuts, len(values))))
        for k in range(len(values)) for cuts in __import__("itertools").combinations(range(1, len(values)), k)
    )
    got = layers.length_groups(small, overhead=5)
    assert sum(len(r) * w + 5 for r, w in got) == best
    assert len(layers.length_groups(small, overhead=10**9)) == 1


@pytest.mark.parametrize("kind", ["loss", "pretrain_loss"])
def test_encoding_rows_grouped_by_length_changes_no_loss_and_no_gradient(name, kind, tiny_world, monkeypatch):
    """The models that encode a batch in groups of similar length (``layers.by_length``) compute the same losses
    and gradients as one padded pass (no dropout, so the values are comparable)."""
    model = small_model(name, tiny_world)
    if not hasattr(model, kind):
        pytest.skip(f"{name} has no {kind}")
    lengths = (1, 2, 2, 3, MAX_SEQ_LEN, MAX_SEQ_LEN - 1, 4)
    batch = random_batch(tiny_world, lengths=lengths)._replace(users=torch.arange(len(lengths)))

    def run(overhead: int):
        monkeypatch.setattr(layers, "GROUP_OVERHEAD_POSITIONS", overhead)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(5)
        loss = getattr(model, kind)(batch)
        loss.backward()
        return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    assert len(layers.length_groups(batch.seq_len, overhead=0)) > 1
    grouped, grouped_grads = run(0)
    whole, whole_grads = run(10**9)  # one group: the whole padded batch
    torch.testing.assert_close(grouped, whole, atol=1e-5, rtol=1e-5)
    assert grouped_grads.keys() == whole_grads.keys() and grouped_grads
    for k in whole_grads:
        torch.testing.assert_close(grouped_grads[k], whole_grads[k], atol=1e-5, rtol=1e-4, msg=k)
