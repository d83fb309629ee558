"""VQ-Rec specifics: code lookup, semi-synthetic negatives, the permutation phase and its baking."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import textrec.train.loop as loop
from doubles import CPU, infonce_by_hand, item_inputs, random_batch, small_model
from textrec.config import load_config
from textrec.models.vqrec import gumbel_sinkhorn
from textrec.train.inputs import build_model
from textrec.train.run import make_batchers


def test_item_vector_is_the_mean_of_its_code_embeddings(tiny_world):
    model = small_model("vqrec", tiny_world)
    M = model.codebook_size
    item = 7
    codes = item_inputs("vqrec", tiny_world).codes[item]  # raw codes 0..M-1
    expected = model.code_emb.weight[[1 + int(c) + d * (M + 1) for d, c in enumerate(codes)]].mean(0)
    torch.testing.assert_close(model.item_vectors(torch.tensor([item]))[0], expected)
    assert torch.equal(model.item_vectors(torch.tensor([0]))[0], torch.zeros(34))  # padding
    # every code row lies in its own sub-space's block
    d = torch.arange(5)
    assert ((model.code_index[1:] > d * (M + 1)) & (model.code_index[1:] <= d * (M + 1) + M)).all()


def test_semi_synthetic_codes_stay_in_their_sub_space(tiny_world):
    targets = torch.arange(1, 61)
    keep = small_model("vqrec", tiny_world, extra=["model.fake_code_ratio=0.0"])
    assert torch.equal(keep._fake_index(targets), keep.code_index[targets])
    swap = small_model("vqrec", tiny_world, extra=["model.fake_code_ratio=1.0"])
    torch.manual_seed(0)
    fake = swap._fake_index(targets)
    M, d = swap.codebook_size, torch.arange(5)
    assert ((fake > d * (M + 1)) & (fake <= d * (M + 1) + M)).all()
    assert not torch.equal(fake, swap.code_index[targets])


def test_pretrain_loss_with_and_without_semi_synthetic_negatives(tiny_world):
    batch = random_batch(tiny_world)
    for flag in ("true", "false"):
        model = small_model("vqrec", tiny_world, extra=[f"model.semi_synthetic={flag}", "model.lambda_ss=0.1"]).train()
        loss = model.pretrain_loss(batch)
        loss.backward()
        assert torch.isfinite(loss) and model.code_emb.weight.grad.abs().sum() > 0


def test_sinkhorn_is_nearly_doubly_stochastic():
    torch.manual_seed(0)
    p = gumbel_sinkhorn(torch.randn(3, 16, 16), tau=0.7, n_iters=20, noise=True).exp()
    torch.testing.assert_close(p.sum(1), torch.ones(3, 16), atol=1e-4, rtol=0)
    torch.testing.assert_close(p.sum(2), torch.ones(3, 16), atol=5e-2, rtol=0)  # the last step normalised columns


def _is_permutation(idx: torch.Tensor) -> bool:
    return all(torch.equal(row.sort().values, torch.arange(len(row))) for row in idx)


def test_learned_permutation_gets_gradient_and_is_a_true_permutation(tiny_world):
    model = small_model("vqrec", tiny_world).train()
    model.start_permutation()
    model.loss(random_batch(tiny_world)).backward()
    assert model.perm_logits.grad is not None and model.perm_logits.grad.abs().sum() > 0
    assert _is_permutation(model.permutation_indices())
    # training only the permutation moves it and keeps it a permutation
    before = model.permutation_indices().clone()
    opt = torch.optim.Adam([model.perm_logits], lr=0.5)
    for step in range(20):
        opt.zero_grad()
        model.loss(random_batch(tiny_world, seed=step)).backward()
        opt.step()
    after = model.permutation_indices()
    assert _is_permutation(after) and not torch.equal(before, after)


def test_reference_permutation_gets_no_gradient(tiny_world):
    model = small_model("vqrec", tiny_world, extra=["model.permutation=reference"]).train()
    model.start_permutation()
    model.loss(random_batch(tiny_world)).backward()
    assert model.perm_logits.grad is None or model.perm_logits.grad.abs().sum() == 0


def test_bake_writes_the_permutation_into_the_table(tiny_world):
    model = small_model("vqrec", tiny_world).eval()
    model.start_permutation()
    permuted = model.item_embeddings()
    idx = model.permutation_indices()
    old = model.code_emb.weight.detach().clone().view(5, model.codebook_size + 1, -1)
    model.bake_permutation()
    assert not bool(model.permuting)
    torch.testing.assert_close(model.item_embeddings(), permuted)
    new = model.code_emb.weight.view(5, model.codebook_size + 1, -1)
    for d in range(5):
        torch.testing.assert_close(new[d, 1:], old[d, 1:][idx[d]])


def test_finetune_phases(tiny_world):
    model = small_model("vqrec", tiny_world)
    permute, rest = model.phases("finetune")
    permute.trainable(model)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["perm_logits"]
    rest.trainable(model)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"code_emb", "norm"}  # fix_enc: positions and Transformer frozen
    assert permute.epochs == 5 and rest.epochs is None  # the permutation phase is fixed, the rest early-stopped
    scratch = small_model("vqrec", tiny_world, extra=["model.permutation=none", "model.freeze_encoder=false"])
    (only,) = scratch.phases("finetune")
    only.trainable(scratch)
    assert {n.split(".")[0] for n, p in scratch.named_parameters() if p.requires_grad} == {"code_emb", "pos_emb", "norm", "encoder"}


def test_vqrec_semi_synthetic_negative_is_in_the_pretraining_loss(tiny_world):
    batch = random_batch(tiny_world, lengths=(9, 9, 6, 4))._replace(users=torch.tensor([0, 1, 1, 2]))
    with_fake = small_model("vqrec", tiny_world, extra=["model.semi_synthetic=true", "model.fake_code_ratio=0.5"])
    without = small_model("vqrec", tiny_world, extra=["model.semi_synthetic=false", "model.fake_code_ratio=0.5"])
    assert all(torch.equal(a, b) for a, b in zip(with_fake.state_dict().values(), without.state_dict().values()))
    with torch.no_grad():
        torch.manual_seed(3)
        loss_with = float(with_fake.pretrain_loss(batch))
        torch.manual_seed(3)
        loss_without = float(without.pretrain_loss(batch))
        # independently: the in-batch InfoNCE plus one extra logit per row, its semi-synthetic item
        m = with_fake
        mask = batch.targets > 0
        h, targets = m.hidden(batch.item_seq, batch.seq_len)[mask], batch.targets[mask]
        users = batch.users[:, None].expand_as(batch.targets)[mask]
        torch.manual_seed(3)
        fake = m.item_vectors(targets, index=m._fake_index(targets))
        keys = m.item_vectors(targets)
    assert not torch.allclose(fake, keys)
    assert loss_with != pytest.approx(loss_without, rel=1e-4)
    tau = m.cfg.temperature
    assert loss_with == pytest.approx(infonce_by_hand(h, keys, targets, tau, "mask", fake, users), rel=1e-5)
    assert loss_without == pytest.approx(infonce_by_hand(h, keys, targets, tau, "mask", None, users), rel=1e-5)


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
    model = small_model("vqrec", tiny_world)
    model.start_permutation()
    D, M = model.n_codebooks, model.codebook_size
    old = model.code_emb.weight.detach().clone().view(D, M + 1, -1)
    idx = model.permutation_indices()
    model.bake_permutation()
    new = model.code_emb.weight.detach().view(D, M + 1, -1)
    assert all(torch.equal(new[d, 1:], old[d, 1:][idx[d]]) for d in range(D))
