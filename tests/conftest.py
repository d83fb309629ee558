"""Shared fixtures: a seeded synthetic world with a planted pattern, and the real data folder."""

from __future__ import annotations

from pathlib import Path

import pytest

import textrec.train.loop as loop
from textrec.data.synthetic import WorldSpec, make_domain

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SCIENTIFIC = SHARED_DATA / "amazon-scientific-unisrec"


def requires_shared(folder: str) -> Path:
    """The real-data folder, or skip the test with the reason."""
    path = SHARED_DATA / folder
    if not path.is_dir():
        pytest.skip(f"real data not available: {path} does not exist")
    return path


@pytest.fixture(scope="session")
def tiny_world():
    """One synthetic domain: 60 items, 300 users, sequences of 5-20 items, 10% noise."""
    return make_domain("tools", WorldSpec(n_items=60, n_users=300, min_len=5, max_len=20, noise=0.1), seed=1)


@pytest.fixture(scope="session")
def tiny_dir(tiny_world, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tools"
    tiny_world.save(path)
    return path


@pytest.fixture(autouse=True, scope="session")
def _private_embedding_cache(tmp_path_factory):
    """Tests never read or write the user's embedding cache."""
    import os

    old = os.environ.get("TEXTREC_CACHE_DIR")
    os.environ["TEXTREC_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("TEXTREC_CACHE_DIR", None)
    else:
        os.environ["TEXTREC_CACHE_DIR"] = old


@pytest.fixture()
def world_dir(tmp_path):
    """A fresh synthetic dataset (60 items) of this test's own, so codes and embeddings written here stay here."""
    return make_domain("tools", WorldSpec(n_items=60, n_users=200, min_len=5, max_len=12), seed=3).save(tmp_path / "tools")


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


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch at one thread for a module's tests (use with ``pytestmark = pytest.mark.usefixtures(...)``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
