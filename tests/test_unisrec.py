"""UniSRec specifics: adaptor, pre-training loss, augmentation, inductive scoring of never-seen items."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from doubles import item_inputs, random_batch, small_model
from textrec.config import load_config
from textrec.data.batching import EvalBatcher
from textrec.data.dataset import Dataset
from textrec.data.split import eval_examples, training_item_ids
from textrec.data.synthetic import WorldSpec, make_domain
from textrec.eval.ranking import evaluate
from textrec.models.spec import ItemInputs
from textrec.models.unisrec import MoEAdaptor
from textrec.text.encoders import HashingEncoder
from textrec.train.inputs import build_model
from textrec.train.loop import fit
from textrec.train.run import make_batchers


def test_moe_starts_with_uniform_gates_and_is_a_mixture():
    torch.manual_seed(0)
    moe = MoEAdaptor(5, 3, n_experts=4, dropout=0.0, std=0.1).eval()
    x = torch.randn(7, 5)
    expected = sum(((x - moe.bias[k]) @ moe.weight[k]) / 4 for k in range(4))
    torch.testing.assert_close(moe(x), expected)


def test_pretrain_loss_and_same_target_handling(tiny_world):
    model = small_model("unisrec", tiny_world).train()
    torch.manual_seed(0)
    loss = model.pretrain_loss(random_batch(tiny_world, lengths=(9, 9, 9, 9)))
    loss.backward()
    assert torch.isfinite(loss) and model.adaptor.weight.grad.abs().sum() > 0
    # with every target identical, masking leaves only the positive: the item term is exactly 0
    model.eval()
    assert float(model._contrast(torch.randn(6, 34), torch.randn(6, 34), torch.full((6,), 5))) == pytest.approx(0.0, abs=1e-6)
    ref = small_model("unisrec", tiny_world, extra=["model.same_target=reference"]).eval()
    assert float(ref._contrast(torch.randn(6, 34), torch.randn(6, 34), torch.full((6,), 5))) > 1.0  # 5 extra exp(0) terms


def test_item_drop_keeps_the_first_item_and_order(tiny_world):
    model = small_model("unisrec", tiny_world, extra=["model.item_drop_ratio=0.5"])
    seq = torch.tensor([[1, 2, 3, 4, 5, 6, 0, 0], [7, 8, 9, 0, 0, 0, 0, 0]])
    torch.manual_seed(3)
    new_seq, new_len, text = model.augment(seq, torch.tensor([6, 3]))
    assert text is None
    for row, n, orig in zip(new_seq.tolist(), new_len.tolist(), seq.tolist()):
        kept = row[:n]
        assert kept[0] == orig[0] and all(x > 0 for x in kept) and all(x == 0 for x in row[n:])
        assert kept == [x for x in orig if x in kept]  # a subsequence, order preserved


def test_word_drop_view_swaps_text_rows(tiny_world):

    inputs = item_inputs("unisrec", tiny_world)
    inputs.word_drop_embeddings = inputs.text_embeddings + 100.0
    cfg = load_config(model="unisrec", overrides=["model.hidden_size=34", "model.item_drop_coefficient=0.0", "model.item_drop_ratio=1.0"])
    model = build_model(cfg, inputs)
    seq = torch.tensor([[1, 2, 0]])
    _, _, text = model.augment(seq, torch.tensor([2]))
    assert torch.equal(text[0, :2], model.word_drop_table[seq[0, :2]]) and torch.equal(text[0, 2], model.text_table[0])


def _world_with_new_items(seed=0):
    """A domain where 12 items never occur in training: they only appear as some users' test targets."""
    ds = make_domain("home", WorldSpec(n_items=120, n_users=700, noise=0.05), seed=seed)
    new = set(range(109, 121))
    seqs = []
    for u in range(ds.n_users):
        s = ds.sequence(u).tolist()
        body = [i for i in s[:-1] if i not in new]
        seqs.append(body + [s[-1]])
    keep = [i for i, s in enumerate(seqs) if len(s) >= 4]
    out = Dataset.from_sequences("new-items", ds.item_keys, ds.item_texts, [ds.user_keys[i] for i in keep], [seqs[i] for i in keep])
    return out, sorted(new)


@pytest.mark.parametrize("model_name, inductive", [("unisrec", True), ("sasrec", False)])
def test_inductive_unisrec_recommends_items_never_seen_in_training(model_name, inductive):
    ds, new = _world_with_new_items()
    assert not set(new) & set(training_item_ids(ds).tolist())
    text = np.zeros((ds.n_items + 1, 64), dtype=np.float32)
    text[1:] = HashingEncoder(64).encode(ds.item_texts)
    small = ["model.hidden_size=32", "model.inner_size=32", "model.hidden_dropout=0.1", "model.attn_dropout=0.1",
             "train.batch_size=256", "train.lr=0.003", "train.epochs=10", "train.patience=10", "train.device=cpu"]
    cfg = load_config(model=model_name, overrides=small)
    torch.manual_seed(0)
    model = build_model(cfg, ItemInputs(n_items=ds.n_items, text_embeddings=torch.from_numpy(text)))
    train_b, valid_b, _ = make_batchers(ds, cfg, "cpu")
    fit(model, train_b, valid_b, None, cfg, quiet=True)
    ex = eval_examples(ds, "test", 50)
    rows = np.flatnonzero(np.isin(ex.targets, new))
    assert len(rows) >= 40
    sub = type(ex)(ex.histories[rows], ex.lengths[rows], ex.targets[rows], ex.users[rows], np.zeros(len(rows) + 1, np.int64), np.zeros(0, np.int32))
    recall = evaluate(model, EvalBatcher(sub), ks=(10,)).metrics["recall@10"]
    chance = 10 / ds.n_items
    if inductive:  # the text of a never-seen item places it where the rule says
        assert recall > 5 * chance  # measured 0.91 with chance 0.083
    else:  # an ID model knows nothing about never-seen items
        assert recall < 1.5 * chance  # measured 0.0


# ---- MoE adaptor and VQ-Rec's semi-synthetic negative ----------------------------------------------------
def _moe():
    torch.manual_seed(0)
    moe = MoEAdaptor(6, 4, 3, dropout=0.0, std=0.5)
    with torch.no_grad():
        moe.bias.copy_(torch.randn(3, 6))
        moe.w_gate.copy_(torch.randn(6, 3))
        moe.w_noise.copy_(torch.randn(6, 3))
    return moe


def _moe_by_hand(moe, x, noise=None):
    """sum_k g_k(x) W_k (x - b_k), gates softmax(x W_g [+ noise * (softplus(x W_n) + 0.01)]), in float64."""
    x, W, b = x.double(), moe.weight.detach().double(), moe.bias.detach().double()
    logits = x @ moe.w_gate.detach().double()
    if noise is not None:
        logits = logits + noise.double() * (F.softplus(x @ moe.w_noise.detach().double()) + 0.01)
    gates = logits.softmax(dim=-1)
    return sum(gates[:, k:k + 1] * ((x - b[k]) @ W[k]) for k in range(W.shape[0]))


def test_moe_whitening_subtracts_the_bias_before_projecting():
    moe = _moe().eval()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(moe(x).double(), _moe_by_hand(moe, x), atol=1e-5, rtol=1e-5)
    assert torch.equal(moe(x), moe(x))  # evaluation is deterministic
    with torch.no_grad():
        moe.bias.neg_()
        flipped = moe(x)
        moe.bias.neg_()
    assert not torch.allclose(flipped, moe(x), atol=1e-3)  # the bias really enters (its sign matters)


def test_moe_gate_noise_is_active_in_training(monkeypatch):
    moe = _moe().train()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(moe(x), moe(x))  # no dropout here: only the gate noise differs
    noise = torch.randn(5, 3, generator=torch.Generator().manual_seed(3))
    monkeypatch.setattr(torch, "randn_like", lambda t: noise.to(t.dtype))
    torch.testing.assert_close(moe(x).double(), _moe_by_hand(moe, x, noise), atol=1e-5, rtol=1e-5)


def test_the_adaptor_maps_a_whole_catalogue_in_chunks_without_gradients(monkeypatch):
    from textrec.models.unisrec import MoEAdaptor

    torch.manual_seed(0)
    adaptor = MoEAdaptor(12, 6, 3, 0.2, 0.5).eval()
    with torch.no_grad():
        adaptor.w_gate.normal_()  # gates that differ per row
    x = torch.randn(2, 50, 12)
    with torch.no_grad():
        whole = adaptor(x)
        monkeypatch.setattr(MoEAdaptor, "CHUNK", 7)
        chunked = adaptor(x)
    assert chunked.shape == (2, 50, 6)
    torch.testing.assert_close(chunked, whole)
    calls = []
    monkeypatch.setattr(MoEAdaptor, "_mix", lambda self, rows: calls.append(len(rows)) or torch.zeros(len(rows), 6))
    with torch.no_grad():
        adaptor(x)
    assert max(calls) <= 7 and sum(calls) == 100
    calls.clear()
    adaptor(x)  # with gradients: one pass (backward needs every row's intermediate anyway)
    assert calls == [100]
