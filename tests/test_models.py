"""Model contract tests, parametrised over the registry so that every new model is tested."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_model, save_model

from textrec.config import load_config
from textrec.data.batching import SeqBatch
from textrec.models import MODELS
from textrec.text.encoders import HashingEncoder
from textrec.models.spec import FeatureTable, ItemInputs
from textrec.train.inputs import build_model

# Odd sizes (HF's hidden=32/intermediate=37 trick): shape bugs that square sizes hide show up here.
SMALL = {
    "sasrec": ["model.hidden_size=34", "model.n_heads=2", "model.inner_size=37", "model.n_layers=2"],
    "unisrec": ["model.hidden_size=34", "model.n_heads=2", "model.inner_size=37", "model.n_experts=3"],
    "vqrec": ["model.hidden_size=34", "model.n_heads=2", "model.inner_size=37"],
    "missrec": ["model.hidden_size=34", "model.n_heads=2", "model.inner_size=37"],
    "recformer": ["model.backbone=random", "model.hidden_size=34", "model.n_heads=2", "model.inner_size=37", "model.n_layers=2"],
}
MAX_SEQ_LEN = 9


def item_inputs(name, ds):
    """The item-side inputs of every kind, built without any real encoder; each model takes what it declares."""
    text = np.zeros((ds.n_items + 1, 23), dtype=np.float32)
    text[1:] = HashingEncoder(23).encode(ds.item_texts)
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 7, size=(ds.n_items + 1, 5))  # 5 sub-spaces x 7 codewords
    # two feature tables, MISSRec's default names: text-like, and an image-like noisy projection missing for some items
    image = text @ rng.normal(size=(23, 19)).astype(np.float32) + 0.3 * rng.normal(size=(ds.n_items + 1, 19)).astype(np.float32)
    image[0] = image[7::5] = 0.0
    features = {name: FeatureTable(torch.from_numpy(v), torch.from_numpy(np.abs(v).sum(axis=1) > 0))
                for name, v in (("feat1CLS", text), ("feat3CLS", image))}
    return ItemInputs(n_items=ds.n_items, text_embeddings=torch.from_numpy(text), codes=torch.from_numpy(codes), codebook_size=7,
                      features=features, attributes=list(ds.item_attributes))


def scores(model, seq_repr):
    """(B, n_items + 1) scores as the evaluator computes them (``score_items`` where the model defines it)."""
    items = model.item_embeddings()
    score_fn = getattr(model, "score_items", None)
    return score_fn(seq_repr, items) if score_fn else seq_repr @ items.T


def _model(name, ds, seed=0, extra=()):
    if name not in SMALL:
        pytest.fail(f"add a small test config for model {name!r} to SMALL in {__file__}")
    cfg = load_config(model=name, overrides=SMALL[name] + [f"data.max_seq_len={MAX_SEQ_LEN}", *extra])
    torch.manual_seed(seed)
    return build_model(cfg, item_inputs(name, ds)).eval()


def _batch(ds, lengths=(1, 4, 9, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    L = max(lengths)
    seq = torch.zeros(len(lengths), L, dtype=torch.long)
    for r, n in enumerate(lengths):
        seq[r, :n] = torch.randint(1, ds.n_items + 1, (n,), generator=g)
    targets = torch.where(seq > 0, torch.randint(1, ds.n_items + 1, seq.shape, generator=g), 0)
    return SeqBatch(seq, torch.tensor(lengths), targets)


@pytest.fixture(params=sorted(MODELS))
def name(request):
    return request.param


def test_shapes(name, tiny_world):
    model = _model(name, tiny_world)
    batch = _batch(tiny_world)
    seq_repr = model.encode(batch)
    items = model.item_embeddings()
    assert items.shape[0] == tiny_world.n_items + 1
    assert seq_repr.shape[0] == 4 and scores(model, seq_repr).shape == (4, tiny_world.n_items + 1)
    if not hasattr(model, "score_items"):
        assert seq_repr.shape == (4, items.shape[1])
    model.train()
    loss = model.loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_causal_later_items_do_not_change_earlier_outputs(name, tiny_world):
    model = _model(name, tiny_world)
    if type(model).TRAINING_ROWS != "windows":
        pytest.skip(f"{name} is not causal (TRAINING_ROWS={type(model).TRAINING_ROWS!r})")
    batch = _batch(tiny_world, lengths=(9, 9))
    changed = batch.item_seq.clone()
    changed[:, 5:] = (changed[:, 5:] % tiny_world.n_items) + 1  # new items after position 4
    for t in range(5):
        short = SeqBatch(batch.item_seq, torch.tensor([t + 1, t + 1]))
        short_changed = SeqBatch(changed, torch.tensor([t + 1, t + 1]))
        torch.testing.assert_close(model.encode(short), model.encode(short_changed))
    assert not torch.allclose(model.encode(batch), model.encode(SeqBatch(changed, batch.seq_len)))


def test_padding_invariance(name, tiny_world):
    model = _model(name, tiny_world)
    batch = _batch(tiny_world, lengths=(3, 5))
    trimmed = SeqBatch(batch.item_seq[:, :5], batch.seq_len)
    padded = SeqBatch(torch.nn.functional.pad(trimmed.item_seq, (0, 4)), batch.seq_len)
    torch.testing.assert_close(model.encode(trimmed), model.encode(padded))
    single = model.encode(SeqBatch(batch.item_seq[:1, :3], batch.seq_len[:1]))
    torch.testing.assert_close(single, model.encode(trimmed)[:1])


def test_save_load_gives_identical_scores(name, tiny_world, tmp_path):
    model = _model(name, tiny_world, seed=0)
    save_model(model, str(tmp_path / "m.safetensors"))
    other = _model(name, tiny_world, seed=1)
    batch = _batch(tiny_world)
    assert not torch.equal(model.encode(batch), other.encode(batch))
    load_model(other, str(tmp_path / "m.safetensors"))
    assert torch.equal(scores(model, model.encode(batch)), scores(other, other.encode(batch)))


# Fixed-init forward values: a change here must be deliberate (it changes every reported number).
GOLDEN_LOSS = {"sasrec": 4.10165, "unisrec": 5.61010, "vqrec": 6.42061, "missrec": 5.25199, "recformer": 4.09432}


def test_golden_fixed_init_loss(name, tiny_world):
    model = _model(name, tiny_world, seed=0)
    loss = model.loss(_batch(tiny_world, seed=3))
    assert float(loss.detach()) == pytest.approx(GOLDEN_LOSS[name], abs=1e-4)
