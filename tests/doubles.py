"""Shared test helpers: doubles shaped like MISSRec and Recformer, common settings, reference formulas.

Each double is a tiny, deterministic model (no dropout) that makes the declarations of
``textrec.models.spec`` that the real model will make, and records what the training loop does to it
(``events``), so a test can check the loop, the batchers and the input loaders without the real model.
Register one with ``monkeypatch.setitem(textrec.models.MODELS, "missdouble", lambda: MissDouble)``.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from textrec.cli import main
from textrec.config import load_config
from textrec.data.batching import SeqBatch
from textrec.models.layers import (
    TransformerEncoder,
    init_weights,
    last_position,
    next_item_positions,
)
from textrec.models.spec import FeatureTable, ItemInputs, ModelSpec, Phase, train_all
from textrec.text.encoders import HashingEncoder
from textrec.train.inputs import build_model


# ---- MISSRec-shaped: several feature tables with missing rows, bidirectional, per-epoch re-clustering ----
@dataclass(frozen=True)
class MissDoubleConfig:
    hidden_size: int = 16
    n_layers: int = 1
    n_heads: int = 2
    inner_size: int = 24
    n_clusters: int = 4


class MissDouble(nn.Module):
    Config = MissDoubleConfig
    SPEC = ModelSpec(item_inputs=("features",), causal=False, training_rows="prefixes",
                     catalogue_keys=("feature_", "present_", "centroids"))
    built: list = []  # every instance, so a test can inspect the one train_run built

    def __init__(self, cfg: MissDoubleConfig, inputs: ItemInputs, max_seq_len: int) -> None:
        super().__init__()
        features = inputs.require("features", "missdouble")
        self.names = sorted(features)
        self.n_items = inputs.n_items
        d = cfg.hidden_size
        self.proj = nn.ModuleDict()
        for name in self.names:
            self.register_buffer(f"feature_{name}", features[name].values.float().clone())
            self.register_buffer(f"present_{name}", features[name].present.clone())
            self.proj[name] = nn.Linear(features[name].values.shape[1], d)
        self.pos_emb = nn.Embedding(max_seq_len, d)
        self.encoder = TransformerEncoder(cfg.n_layers, d, cfg.n_heads, cfg.inner_size, 0.0, 0.0, 1e-12)
        self.apply(lambda m: init_weights(m, 0.02))
        self.register_buffer("centroids", torch.zeros(cfg.n_clusters, d))
        self.events: list[tuple] = []  # ("epoch", e) from the hook; ("loss", loss positions per row) per step
        MissDouble.built.append(self)

    def item_vectors(self, ids: Tensor) -> Tensor:
        """Mean of the projections of the modalities an item has; absent ones are masked out."""
        total, count = 0.0, 0.0
        for name in self.names:
            present = getattr(self, f"present_{name}")[ids].float()[..., None]
            total = total + self.proj[name](getattr(self, f"feature_{name}")[ids]) * present
            count = count + present
        return total / torch.clamp(count, min=1.0)

    def hidden(self, item_seq: Tensor) -> Tensor:
        positions = torch.arange(item_seq.shape[1], device=item_seq.device)
        x = self.item_vectors(item_seq) + self.pos_emb(positions)
        return self.encoder(x, causal=False, key_padding=item_seq == 0)  # bidirectional

    def encode(self, batch: SeqBatch) -> Tensor:
        return last_position(self.hidden(batch.item_seq), batch.seq_len)

    def item_embeddings(self) -> Tensor:
        return self.item_vectors(torch.arange(self.n_items + 1, device=self.centroids.device))

    def loss(self, batch: SeqBatch) -> Tensor:
        self.events.append(("loss", (batch.targets > 0).sum(dim=1).tolist()))
        h, targets = next_item_positions(self.hidden(batch.item_seq), batch.targets)
        return F.cross_entropy(h @ self.item_embeddings()[1:].T, targets - 1)

    @torch.no_grad()
    def recluster(self, epoch: int) -> None:
        """A few k-means steps over the item vectors (MISSRec re-clusters its interests every epoch)."""
        self.events.append(("epoch", epoch))
        items = self.item_embeddings()[1:]
        k = self.centroids.shape[0]
        c = items[torch.linspace(0, len(items) - 1, k).long()]
        for _ in range(3):
            assign = torch.cdist(items, c).argmin(dim=1)
            c = torch.stack([items[assign == j].mean(0) if (assign == j).any() else c[j] for j in range(k)])
        self.centroids.copy_(c)

    def phases(self, kind: str) -> list[Phase]:
        return [Phase(kind, train_all, on_epoch_start=lambda m, epoch: m.recluster(epoch))]


# ---- Recformer-shaped: items from attribute tokens, one sampled row per user, two early-stopped stages ----
def item_token_table(attributes: list[dict[str, str]], n_tokens: int, vocab_size: int) -> Tensor:
    """(n_items + 1, n_tokens) long: hashed words of "key value" pairs; 0 = padding."""
    table = torch.zeros(len(attributes) + 1, n_tokens, dtype=torch.long)
    for i, attrs in enumerate(attributes, start=1):
        words = [w for k, v in sorted(attrs.items()) for w in f"{k} {v}".lower().split()][:n_tokens]
        table[i, : len(words)] = torch.tensor([1 + zlib.crc32(w.encode()) % vocab_size for w in words])
    return table


@dataclass(frozen=True)
class RecDoubleConfig:
    hidden_size: int = 16
    n_tokens: int = 8  # tokens per item
    vocab_size: int = 97
    temperature: float = 0.1
    patience_1: int = 2  # stage 1: re-encode the item table every epoch
    patience_2: int = 1  # stage 2: best stage-1 weights, item table frozen, optimiser kept


class RecDouble(nn.Module):
    Config = RecDoubleConfig
    SPEC = ModelSpec(item_inputs=("attributes",), causal=False, training_rows="sampled",
                     catalogue_keys=("item_tokens", "item_table", "table_frozen"))
    built: list = []

    def __init__(self, cfg: RecDoubleConfig, inputs: ItemInputs, max_seq_len: int) -> None:
        super().__init__()
        self.cfg = cfg
        attributes = inputs.require("attributes", "recdouble")
        self.n_items = len(attributes)
        d = cfg.hidden_size
        self.register_buffer("item_tokens", item_token_table(attributes, cfg.n_tokens, cfg.vocab_size))
        self.tok_emb = nn.Embedding(cfg.vocab_size + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(max_seq_len, d)
        self.mix = nn.Linear(d, d)
        self.register_buffer("item_table", torch.zeros(self.n_items + 1, d))
        self.register_buffer("table_frozen", torch.zeros((), dtype=torch.bool))
        self.reencode()
        self.events: list[tuple] = []  # ("epoch", e) from stage 1's hook, ("enter", state) and ("batch", ...) per step
        RecDouble.built.append(self)

    def item_vectors(self, ids: Tensor) -> Tensor:
        """Differentiable item encoder: mean of the item's token embeddings."""
        tokens = self.item_tokens[ids]
        n = (tokens > 0).sum(dim=-1, keepdim=True).clamp(min=1)
        return self.tok_emb(tokens).sum(dim=-2) / n

    @torch.no_grad()
    def reencode(self) -> None:
        if bool(self.table_frozen):
            return
        table = F.normalize(self.item_vectors(torch.arange(self.n_items + 1, device=self.item_tokens.device)), dim=-1)
        table[0] = 0.0
        self.item_table.copy_(table)

    def encode(self, batch: SeqBatch) -> Tensor:
        positions = torch.arange(batch.item_seq.shape[1], device=batch.item_seq.device)
        x = self.item_vectors(batch.item_seq) + self.pos_emb(positions)
        real = (batch.item_seq > 0)[..., None].float()
        return F.normalize(self.mix((x * real).sum(dim=1) / batch.seq_len[:, None]), dim=-1)

    def item_embeddings(self) -> Tensor:
        return self.item_table

    def loss(self, batch: SeqBatch) -> Tensor:
        self.events.append(("batch", batch.users.tolist(), batch.seq_len.tolist(), (batch.targets > 0).sum(dim=1).tolist()))
        target = batch.targets[torch.arange(len(batch.seq_len)), batch.seq_len - 1]
        logits = self.encode(batch) @ self.item_table[1:].T / self.cfg.temperature
        return F.cross_entropy(logits, target - 1)

    def stage_1_epoch(self, epoch: int) -> None:
        self.events.append(("epoch", epoch))
        self.reencode()

    @torch.no_grad()
    def enter_stage_2(self) -> None:
        self.events.append(("enter", {k: v.detach().clone() for k, v in self.state_dict().items()}))
        self.table_frozen.fill_(True)

    def phases(self, kind: str) -> list[Phase]:
        return [
            Phase("stage 1", train_all, patience=self.cfg.patience_1, on_epoch_start=lambda m, e: m.stage_1_epoch(e)),
            Phase("stage 2", train_all, enter=lambda m: m.enter_stage_2(), patience=self.cfg.patience_2, reload_best=True,
                  optimizer="keep"),
        ]


def benchmark_script(name: str):
    """Import ``benchmarks/NAME.py`` as a module (its own imports, e.g. ``_common``, resolved from benchmarks/)."""
    import importlib.util
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, script)
    sys.path.insert(0, str(script.parent))
    try:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(script.parent))
    return module


CPU = ["train.device=cpu", "train.num_threads=1", "eval.ks=[10]"]  # key=value settings: one CPU thread, recall@10
CLI_CPU = [*CPU, "--quiet"]  # the same on a command line, without per-epoch progress


TINY_TEXT = ["model.hidden_size=16", "model.inner_size=16", "model.n_layers=1", "model.n_heads=2", "data.max_seq_len=10",
             "train.batch_size=256", *CPU]


# ---- in-batch contrastive loss ---------------------------------------------------------------------
def infonce_by_hand(query, keys, key_ids, temperature, same_target="mask", extra=None, groups=None) -> float:
    """Mean over rows of -log(exp(s_ii) / sum of exp over row i's denominator), in float64 with explicit loops.

    Denominator of row i: its positive; every other row j, except rows of the same user (``groups``), and
    except, for rows with the same target item, nothing ("mask") or exp(0) = 1 each ("reference"); plus the
    extra negative of row i when given.
    """
    q = F.normalize(query.double(), dim=-1)
    k = F.normalize(keys.double(), dim=-1)
    e = None if extra is None else F.normalize(extra.double(), dim=-1)
    n, total = len(key_ids), 0.0
    for i in range(n):
        positive = float(q[i] @ k[i]) / temperature
        terms = [positive]
        for j in range(n):
            if j == i or (groups is not None and int(groups[i]) == int(groups[j])):
                continue
            if int(key_ids[j]) == int(key_ids[i]):
                if same_target == "reference":
                    terms.append(0.0)
                continue
            terms.append(float(q[i] @ k[j]) / temperature)
        if e is not None:
            terms.append(float(q[i] @ e[i]) / temperature)
        top = max(terms)
        total += top + math.log(sum(math.exp(t - top) for t in terms)) - positive
    return total / n


# ---- transductive mode -------------------------------------------------------------------------------
TRANSDUCTIVE = ["model.mode=transductive"]


# ---- small models of every kind, built without a real encoder -------------------------------------------
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


def small_model(name, ds, seed=0, extra=()):
    """Model ``name`` at the odd SMALL sizes over ``item_inputs``, seeded, in eval mode."""
    if name not in SMALL:
        pytest.fail(f"add a small test config for model {name!r} to SMALL in tests/doubles.py")
    cfg = load_config(model=name, overrides=SMALL[name] + [f"data.max_seq_len={MAX_SEQ_LEN}", *extra])
    torch.manual_seed(seed)
    return build_model(cfg, item_inputs(name, ds)).eval()


def random_batch(ds, lengths=(1, 4, 9, 6), seed=0):
    """A seeded batch of right-padded random sequences of ``lengths``, a random target at every position."""
    g = torch.Generator().manual_seed(seed)
    L = max(lengths)
    seq = torch.zeros(len(lengths), L, dtype=torch.long)
    for r, n in enumerate(lengths):
        seq[r, :n] = torch.randint(1, ds.n_items + 1, (n,), generator=g)
    targets = torch.where(seq > 0, torch.randint(1, ds.n_items + 1, seq.shape, generator=g), 0)
    return SeqBatch(seq, torch.tensor(lengths), targets)


def one_line_error(capsys, argv, *fragments) -> str:
    """Run the CLI in-process: it must fail with exit status 2 and one ``textrec: error:`` line holding ``fragments``."""
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("textrec: error: "), err
    for fragment in fragments:
        assert fragment in err[0], err[0]
    return err[0]


def cli_json(capsys, argv: list[str]) -> dict:
    """Run the CLI in-process (it must succeed) and parse what it printed as JSON."""
    capsys.readouterr()
    assert main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)
