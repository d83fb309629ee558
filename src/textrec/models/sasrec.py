"""SASRec: item-ID embeddings and a causal Transformer (Kang & McAuley, ICDM 2018).

Reference: RecBole 1.2.1 ``SASRec`` with the UniSRec/VQ-Rec baseline settings (REFERENCE_NOTES section 1:
``run_baseline.py --hidden_size=300``, 2 layers, 2 heads, inner 256, dropout 0.5, ``loss_type CE``).

* input: item embedding + absolute position embedding -> LayerNorm -> dropout -> causal post-LN encoder
  (``layers.TransformerEncoder``);
* sequence representation: the hidden state at the last real item;
* score: inner product with the item-embedding table (shared between input and output);
* loss: cross-entropy over all items at every position that has a next item (see ``data.split``: the
  same pairs as the reference's prefix rows).

Declarations (``textrec.models.spec``): no item-side inputs (it scores item IDs, so it cannot take new items
or move to another catalogue), causal (trains on whole-sequence windows), one training phase, no
pre-training objective.

Deliberate difference: the padding row is excluded from the training softmax; the
reference leaves it in, where it only ever acts as one extra negative. Evaluation never ranks it in
either.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from textrec.collective import global_mean
from textrec.data.batching import SeqBatch
from textrec.errors import ConfigError
from textrec.models.layers import TransformerEncoder, check_encoder_config, init_weights, last_position, next_item_positions
from textrec.models.spec import ItemInputs, ModelSpec, Phase, PhaseKind, Recipe, train_all


@dataclass(frozen=True)
class SASRecConfig:
    hidden_size: int = 300  # UniSRec/VQ-Rec baseline setting (RecBole's own default is 64)
    n_layers: int = 2  # RecBole SASRec default
    n_heads: int = 2  # RecBole SASRec default
    inner_size: int = 256  # feed-forward width, RecBole default
    hidden_dropout: float = 0.5  # reference props: hidden_dropout_prob 0.5
    attn_dropout: float = 0.5  # reference props: attn_dropout_prob 0.5
    layer_norm_eps: float = 1e-12  # RecBole default
    initializer_range: float = 0.02  # N(0, 0.02) init, RecBole default

    def __post_init__(self) -> None:
        check_encoder_config(self)


class SASRec(nn.Module):
    Config = SASRecConfig
    SPEC = ModelSpec(
        item_inputs=(),  # item IDs only
        causal=True,
        training_rows="windows",
        catalogue_keys=("item_emb.",),  # every item vector belongs to one catalogue
        architecture_keys=("hidden_size", "n_layers", "n_heads", "inner_size"),
        recipe=Recipe(source="RecBole SASRec (REFERENCE_NOTES section 0): the generic defaults"),
    )

    def __init__(self, cfg: SASRecConfig, inputs: ItemInputs, max_seq_len: int) -> None:
        super().__init__()
        n_items = inputs.n_items
        self.n_items = n_items
        self.item_emb = nn.Embedding(n_items + 1, cfg.hidden_size, padding_idx=0)
        self.pos_emb = nn.Embedding(max_seq_len, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.encoder = TransformerEncoder(
            cfg.n_layers, cfg.hidden_size, cfg.n_heads, cfg.inner_size, cfg.hidden_dropout, cfg.attn_dropout, cfg.layer_norm_eps
        )
        self.apply(lambda m: init_weights(m, cfg.initializer_range))

    def hidden(self, item_seq: Tensor) -> Tensor:
        """(B, L) item ids -> (B, L, D) causal hidden states."""
        positions = torch.arange(item_seq.shape[1], device=item_seq.device)
        x = self.item_emb(item_seq) + self.pos_emb(positions)  # (B, L, D)
        return self.encoder(self.dropout(self.norm(x)))

    def encode(self, batch: SeqBatch) -> Tensor:
        return last_position(self.hidden(batch.item_seq), batch.seq_len)  # (B, D)

    def item_embeddings(self) -> Tensor:
        return self.item_emb.weight  # (n_items + 1, D)

    def loss(self, batch: SeqBatch) -> Tensor:
        h, targets = next_item_positions(self.hidden(batch.item_seq), batch.targets)  # (N, D), (N,)
        logits = h @ self.item_emb.weight[1:].T  # (N, n_items): the padding row is never a candidate
        return global_mean(F.cross_entropy(logits.float(), targets - 1, reduction="none"))

    def phases(self, kind: PhaseKind) -> list[Phase]:
        if kind != "train":
            raise ConfigError(f"sasrec scores item IDs: it has no pre-training objective and cannot move to another catalogue")
        return [Phase("train", train_all)]
