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
