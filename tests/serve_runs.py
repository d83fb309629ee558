"""Small trained runs on a synthetic world, shared by the serving, export and browser tests."""

from __future__ import annotations

from pathlib import Path

from textrec.cli import main
from textrec.data.synthetic import WorldSpec, make_domain

SMALL = ["model.hidden_size=32", "model.inner_size=32", "model.hidden_dropout=0.1", "model.attn_dropout=0.1",
         "train.batch_size=256", "train.lr=0.003", "train.patience=12", "train.device=cpu", "train.num_threads=1"]


def make_world(root: Path) -> Path:
    """A 120-item garden world with hashing-64 text embeddings and 8x16 OPQ codes."""
    path = root / "garden"
    make_domain("garden", WorldSpec(n_items=120, n_users=500, noise=0.05), seed=4).save(path)
    assert main(["encode", str(path), "--encoder", "hashing-64", "--json"]) == 0
    assert main(["quantize", str(path), "--codebooks", "8", "--codebook-size", "16", "--json"]) == 0
    return path


def train(data: Path, out: Path, model: str, epochs: int = 4) -> Path:
    assert main(["train", str(data), "--model", model, "--out", str(out), "--quiet", *SMALL, f"train.epochs={epochs}"]) == 0
    return out


def train_missrec_on_features(root: Path, dim: int = 16):
    """An inductive MISSRec on one ``dim``-d feature table ``feat1CLS`` of unknown origin (as UniSRec's ships with a
    dataset), over a 40-item garden world: a new item's row can only come from ``POST /items``' ``features``.
    Returns (run, dataset, the table (n_items + 1, dim))."""
    import numpy as np

    from textrec.text.encoders import HashingEncoder

    ds = make_domain("garden", WorldSpec(n_items=40, n_users=120, min_len=5, max_len=10, noise=0.1), seed=3)
    feats = np.zeros((ds.n_items + 1, dim), dtype=np.float32)
    feats[1:] = HashingEncoder(dim).encode(ds.item_texts)
    ds.features["feat1CLS"] = feats
    ds.save(root / "data")
    assert main(["train", str(root / "data"), "--model", "missrec", "--out", str(root / "run"), "--quiet", 'data.features=["feat1CLS"]',
                 'model.image_feature=""', "model.mode=inductive", "model.hidden_size=16", "model.n_heads=2", "model.inner_size=16",
                 "train.epochs=1", "train.batch_size=128", "train.device=cpu", "train.num_threads=1"]) == 0
    return root / "run", ds, feats


_SHARED: dict = {}


def shared_run(tmp_path_factory, model: str, epochs: int = 2) -> Path:
    """A run of ``model`` on one garden world for the whole test session, trained the first time a test asks for it:
    the serving fuzz and soak tests read the same VQ-Rec run (none writes into it: each service gets its own journal)."""
    if "world" not in _SHARED:
        _SHARED["world"] = make_world(tmp_path_factory.mktemp("serve-shared"))
    world = _SHARED["world"]
    if (model, epochs) not in _SHARED:
        _SHARED[model, epochs] = train(world, world.parent / f"{model}-{epochs}-epochs", model, epochs)
    return _SHARED[model, epochs]
