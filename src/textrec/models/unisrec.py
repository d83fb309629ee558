"""UniSRec: universal sequence representations from item text (Hou et al., KDD 2022).

Reference: RUCAIBox/UniSRec @05aa5cb (``unisrec.py``, ``props/UniSRec.yaml``, ``props/pretrain.yaml``,
``props/finetune.yaml``), summarised in REFERENCE_NOTES section 1.

* Item encoder: a frozen table of text embeddings (row 0 = padding) -> mixture-of-experts adaptor of
  ``n_experts`` parametric-whitening experts, ``PW_k(x) = W_k (dropout(x) - b_k)`` (paper Eq. 1-2), mixed by
  softmax gates over ``x W_g`` plus Gaussian noise scaled by ``softplus(x W_n) + 0.01`` in training (Eq. 3;
  W_g, W_n start at zero, so the gates start uniform; the reference applies no top-k).
* Sequence encoder: item vectors + absolute position embeddings -> LayerNorm -> dropout -> the causal
  post-LN Transformer shared with SASRec (``layers.TransformerEncoder``); the sequence is the hidden state
  at the last real item.
* Scores: cosine similarity between sequence and item vectors; losses divide it by ``temperature``.
* ``mode="inductive"``: items are text only (new items are scored from their text alone).
  ``mode="transductive"``: an item-ID embedding is added to the item vector both in the input sequence and
  among the candidates (reference ``transductive_ft``).
* ``loss``: cross-entropy over all items (fine-tuning / training from scratch, reference ``finetune.py``).
* ``pretrain_loss``: sequence-item contrastive loss over the in-batch targets of a multi-domain batch plus
  ``lambda_ss`` times the sequence-sequence contrastive loss against an augmented view (Eq. 5-7): with
  probability ``item_drop_coefficient`` per batch, item drop (each item but the first dropped with
  probability ``item_drop_ratio``, the rest moved left), otherwise the word-drop view (each position's text
  embedding swapped, with probability ``item_drop_ratio``, for the embedding of its text with 15% of the words
  dropped, when a word-drop table is given).

Deliberate differences from the reference:

* In-batch rows whose target is the same item as the row's own target are **removed** from that row's
  negatives (``same_target="mask"``). The reference sets their logits to 0, so each still adds exp(0) = 1 to
  the denominator (REFERENCE_NOTES section 1); ``same_target="reference"`` keeps that behaviour.
* Training rows are whole-sequence windows (see ``textrec.data.split``), so the sequence-item term sees the
  same (prefix, target) pairs as the reference, while the sequence-sequence term is computed once per window
  (its last position) instead of once per prefix row.
* The padding row is never a candidate in the softmax (the reference includes it).
* The adaptor's experts share one input-dropout mask (the reference draws one per expert), see ``MoEAdaptor``.
* ``default mode`` is inductive (the reference's default is transductive): on Scientific with MiniLM text
  the reference code itself measures inductive 0.1201 vs transductive 0.1072 R@10 (shared/data/README.md).
* Freezing the encoder during fine-tuning is a real switch (``freeze_encoder``, default on as in the
  reference, where fine-tuning from a checkpoint always freezes position embeddings and Transformer); the
  reference's ``-f`` flag is ``type=bool`` and cannot turn it off. Training from scratch never freezes.
* Pre-training rows: one row per (prefix, next item), grouped so that every batch mixes the source domains
  in proportion (``train.batching="stratified"``, the default for ``textrec pretrain``), and rows of the
  same user are never each other's negatives. The reference shuffles its prefix rows (same mixing, on
  average) and lets same-user rows act as negatives. The reference pre-trains with 8192 targets per batch
  (``props/pretrain.yaml``); textrec's default is 2048 (``train.batch_size=8192`` gives the reference's).

Declarations (``textrec.models.spec``): item inputs ``text_embeddings`` (+ the optional
``word_drop_embeddings`` view in pre-training); causal, so it trains on whole-sequence windows; phases:
one from scratch, one in pre-training (``pretrain_loss``), one in fine-tuning (position embeddings and
Transformer frozen when ``freeze_encoder``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from textrec.collective import global_mean
from textrec.data.batching import SeqBatch
from textrec.models.layers import (TransformerEncoder, by_length, check_encoder_config, in_batch_contrastive, init_weights,
                                   item_drop, last_position, next_item_positions, position_users)
from textrec.models.spec import ItemInputs, ModelSpec, Phase, PhaseKind, Recipe, train_all, train_all_but


@dataclass(frozen=True)
class UniSRecConfig:
    hidden_size: int = 300  # reference adaptor_layers [768, 300] output and hidden_size
    n_layers: int = 2  # reference (RecBole SASRec settings)
    n_heads: int = 2
    inner_size: int = 256
    hidden_dropout: float = 0.5
    attn_dropout: float = 0.5
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    n_experts: int = 8  # reference n_exps
    adaptor_dropout: float = 0.2  # reference adaptor_dropout_prob
    temperature: float = 0.07  # reference temperature
    mode: Literal["inductive", "transductive"] = "inductive"  # text only, or text + item-ID embedding
    freeze_encoder: bool = True  # fine-tuning: freeze position embeddings and Transformer (reference, with a checkpoint)
    lambda_ss: float = 1e-3  # pre-training weight of the sequence-sequence term (reference lambda)
    item_drop_coefficient: float = 0.9  # pre-training: probability of item drop rather than word drop
    item_drop_ratio: float = 0.2  # pre-training: per-position drop / swap probability
    same_target: Literal["mask", "reference"] = "mask"  # in-batch rows sharing the target: removed, or exp(0) as released

    def __post_init__(self) -> None:
        check_encoder_config(self)


class MoEAdaptor(nn.Module):
    """Mixture of parametric-whitening experts: Σ_k g_k(x) W_k (dropout(x) - b_k).

    One dropout mask is shared by the experts (the reference draws one per expert); this lets all experts
    run as one matrix product, several times faster on CPU, and is identical in evaluation.
    """

    def __init__(self, d_in: int, d_out: int, n_experts: int, dropout: float, std: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_experts, d_in, d_out) * std)  # W_k, stored transposed
        self.bias = nn.Parameter(torch.zeros(n_experts, d_in))  # b_k, subtracted before projecting
        self.w_gate = nn.Parameter(torch.zeros(d_in, n_experts))
        self.w_noise = nn.Parameter(torch.zeros(d_in, n_experts))
        self.dropout = nn.Dropout(dropout)

    # rows per pass without gradients (a whole catalogue): the experts' (rows, K, d_out) intermediate and its shifted
    # copy take 2 x 157 MB at 16,384 rows, K=8, d_out=300; a 500k-item catalogue in one pass would need 9.6 GB
    CHUNK = 16_384

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])  # (N, d_in)
        if not torch.is_grad_enabled() and x.shape[0] > self.CHUNK:
            return torch.cat([self._mix(part) for part in x.split(self.CHUNK)]).reshape(*shape, -1)
        return self._mix(x).reshape(*shape, -1)

    def _mix(self, x: Tensor) -> Tensor:
        logits = x @ self.w_gate  # (N, K)
        if self.training:
            logits = logits + torch.randn_like(logits) * (F.softplus(x @ self.w_noise) + 1e-2)
        gates = logits.softmax(dim=-1)  # (N, K)
        k, d_in, d_out = self.weight.shape
        # W_k (x - b_k) = W_k x - W_k b_k: one (d_in, K * d_out) matmul for all experts
        experts = (self.dropout(x) @ self.weight.permute(1, 0, 2).reshape(d_in, k * d_out)).view(-1, k, d_out)  # (N, K, d_out)
        shift = torch.bmm(self.bias[:, None, :], self.weight).squeeze(1)  # (K, d_out)
        return torch.bmm(gates[:, None, :], experts - shift).squeeze(1)  # (N, d_out)


def word_drop_view(embeddings: str) -> str:
    """The word-drop view of text embeddings ``embeddings``: the reference's rate 0.15 (``process_amazon.py
    --word_drop_ratio 0.15``), named as ``textrec encode DIR --word-drop 0.15`` names it."""
    return f"{embeddings}-wd15"


class UniSRec(nn.Module):
    Config = UniSRecConfig
    SPEC = ModelSpec(
        item_inputs=("text_embeddings",),
        pretrain_inputs=("word_drop_embeddings",),  # optional: without it, augmentation is item drop only
        word_drop_view=word_drop_view,
        causal=True,
        training_rows="windows",
        # item-side state that belongs to one catalogue and is not carried to a new domain
        catalogue_keys=("text_table", "word_drop_table", "item_id_emb.weight"),
        architecture_keys=("hidden_size", "n_layers", "n_heads", "inner_size"),
        recipe=Recipe(source="UniSRec props (REFERENCE_NOTES section 1): the generic defaults"),
    )

    def __init__(self, cfg: UniSRecConfig, inputs: ItemInputs, max_seq_len: int) -> None:
        super().__init__()
        self.cfg = cfg
        text_embeddings = inputs.require("text_embeddings", "unisrec")
        word_drop_embeddings = inputs.word_drop_embeddings
        n_rows, d_text = text_embeddings.shape
        self.n_items = n_rows - 1
        self.register_buffer("text_table", torch.as_tensor(text_embeddings, dtype=torch.float32).clone())  # (n+1, d_text)
        self.text_table[0] = 0.0
        if word_drop_embeddings is not None:
            if word_drop_embeddings.shape != text_embeddings.shape:
                raise ValueError(f"word-drop embeddings {tuple(word_drop_embeddings.shape)} != text embeddings {tuple(text_embeddings.shape)}")
            self.register_buffer("word_drop_table", torch.as_tensor(word_drop_embeddings, dtype=torch.float32).clone())
        else:
            self.word_drop_table = None
        d = cfg.hidden_size
        self.adaptor = MoEAdaptor(d_text, d, cfg.n_experts, cfg.adaptor_dropout, cfg.initializer_range)
        self.item_id_emb = nn.Embedding(n_rows, d, padding_idx=0) if cfg.mode == "transductive" else None
        self.pos_emb = nn.Embedding(max_seq_len, d)
        self.norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.encoder = TransformerEncoder(cfg.n_layers, d, cfg.n_heads, cfg.inner_size, cfg.hidden_dropout, cfg.attn_dropout, cfg.layer_norm_eps)
        for m in (self.pos_emb, self.norm, self.encoder, self.item_id_emb):
            if m is not None:
                m.apply(lambda mod: init_weights(mod, cfg.initializer_range))

    # ---- encoders ----------------------------------------------------------------------------
    def item_vectors(self, ids: Tensor, text: Tensor | None = None) -> Tensor:
        """Un-normalised item vectors of ``ids`` (any shape) -> (..., D)."""
        v = self.adaptor(self.text_table[ids] if text is None else text)
        if self.item_id_emb is not None:
            v = v + self.item_id_emb(ids)
        return v

    def hidden(self, item_seq: Tensor, seq_len: Tensor, text: Tensor | None = None) -> Tensor:
        """(B, L) item ids of rows ``seq_len`` long (and optionally their (B, L, d_text) text rows) -> (B, L, D)
        causal states, computed per group of rows of similar length (``by_length``: exact, less padding)."""
        return by_length(self._hidden, item_seq, seq_len, text)

    def _hidden(self, item_seq: Tensor, text: Tensor | None) -> Tensor:
        positions = torch.arange(item_seq.shape[1], device=item_seq.device)
        x = self.item_vectors(item_seq, text) + self.pos_emb(positions)
        return self.encoder(self.dropout(self.norm(x)))

    def encode(self, batch: SeqBatch) -> Tensor:
        return F.normalize(last_position(self.hidden(batch.item_seq, batch.seq_len), batch.seq_len), dim=-1)  # (B, D)

    def item_embeddings(self) -> Tensor:
        ids = torch.arange(self.n_items + 1, device=self.text_table.device)
        return F.normalize(self.item_vectors(ids), dim=-1)  # (n_items + 1, D)

    # ---- losses ------------------------------------------------------------------------------
    def loss(self, batch: SeqBatch) -> Tensor:
        """Cross-entropy over all items of cos(sequence, item) / temperature."""
        h, targets = next_item_positions(self.hidden(batch.item_seq, batch.seq_len), batch.targets)  # (N, D), (N,)
        items = self.item_embeddings()[1:]  # (n_items, D)
        logits = F.normalize(h, dim=-1) @ items.T / self.cfg.temperature
        return global_mean(F.cross_entropy(logits.float(), targets - 1, reduction="none"))

    def _contrast(self, query: Tensor, keys: Tensor, key_ids: Tensor, groups: Tensor | None = None) -> Tensor:
        return in_batch_contrastive(query, keys, key_ids, self.cfg.temperature, self.cfg.same_target, groups=groups)

    def pretrain_loss(self, batch: SeqBatch) -> Tensor:
        """L_si + lambda_ss * L_ss over a (multi-domain) batch of training windows."""
        hidden = self.hidden(batch.item_seq, batch.seq_len)  # (B, L, D)
        h, targets = next_item_positions(hidden, batch.targets)  # (N, D), (N,)
        loss = self._contrast(h, self.item_vectors(targets), targets, position_users(batch.targets, batch.users))
        if self.cfg.lambda_ss > 0:
            seq = last_position(hidden, batch.seq_len)  # (B, D)
            aug_seq, aug_len, aug_text = self.augment(batch.item_seq, batch.seq_len)
            aug = last_position(self.hidden(aug_seq, aug_len, aug_text), aug_len)  # (B, D)
            last_target = batch.targets[torch.arange(len(batch.seq_len)), batch.seq_len - 1]
            loss = loss + self.cfg.lambda_ss * self._contrast(seq, aug, last_target, batch.users)
        return loss

    def phases(self, kind: PhaseKind) -> list[Phase]:
        if kind == "pretrain":
            return [Phase("pretrain", train_all, loss=self.pretrain_loss)]
        if kind == "finetune" and self.cfg.freeze_encoder:
            return [Phase("fine-tune, encoder frozen", train_all_but(self.pos_emb, self.encoder))]
        return [Phase(kind, train_all)]

    def augment(self, item_seq: Tensor, seq_len: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Item drop (compacted left) or the word-drop view; one choice per batch, as the reference."""
        B, L = item_seq.shape
        pos = torch.arange(L, device=item_seq.device)
        real = pos[None, :] < seq_len[:, None]
        if self.word_drop_table is None or torch.rand(()) < self.cfg.item_drop_coefficient:
            return *item_drop(item_seq, seq_len, self.cfg.item_drop_ratio), None
        swap = real & (torch.rand(B, L, device=item_seq.device) < self.cfg.item_drop_ratio)
        text = torch.where(swap[..., None], self.word_drop_table[item_seq], self.text_table[item_seq])
        return item_seq, seq_len, text
