"""VQ-Rec: vector-quantised item codes as item representations (Hou et al., TheWebConf 2023).

Reference: RUCAIBox/VQ-Rec @2981845 (``vqrec.py``, ``trainer.py``, ``props/VQRec.yaml``), summarised in
REFERENCE_NOTES section 2; equations as numbered in the paper (seed text 001 in shared/reference).

* Item codes (paper Eq. 1-2): D discrete codes per item from OPQ/PQ of its text embedding, built by
  ``textrec quantize`` (not by this file). Code ``c`` of sub-space ``d`` looks up row ``1 + c + d (M + 1)``
  of one code-embedding table of ``D (M + 1)`` rows (the reference's ``+1`` and ``d * 257`` offsets); row 0 is
  padding, and the padding item uses it in every sub-space, so its vector is zero.
* Item vector (Eq. 3): the mean of its D code embeddings. The whole catalogue's table is built once per
  step from the codes (one gather and a mean), never per sequence.
* Sequence encoder: item vectors + positions -> LayerNorm -> dropout -> the causal post-LN Transformer
  shared with SASRec; the sequence is the hidden state at the last real item. Scores are cosines.
* ``pretrain_loss`` (Eq. 6-8): in-batch contrastive loss over the targets of a shuffled multi-domain batch
  (mixed-domain negatives) plus one semi-synthetic negative per row: the positive's codes, each replaced with
  probability ``fake_code_ratio`` (rho, reference ``fake_idx_ratio`` 0.75) by a uniform code of the same
  sub-space, mean-pooled; log-sum-exp through ``F.cross_entropy``. ``lambda_ss`` > 0 adds a
  sequence-sequence term against an item-drop view (off by default: Eq. 8 has none).
* ``loss``: cross-entropy over all items of cos / temperature (fine-tuning and training from scratch).
* Fine-tuning (Eq. 9-10, ``phases("finetune")``): for ``permute_epochs`` epochs only a per-sub-space matrix
  T (D x M x M) trains; each step the code-embedding rows of every sub-space are permuted by
  P = Gumbel-Sinkhorn(T) (``sinkhorn_iters`` alternating row/column normalisations in log space at
  temperature ``gumbel_tau``), hard in the forward pass. Then the permutation is baked into the table and
  the rest of the model fine-tunes, with position embeddings and Transformer frozen when ``freeze_encoder``
  (reference ``fix_enc``).

Deliberate differences from the reference:

* ``permutation="learned"`` (default) makes P a true permutation — the Hungarian assignment that maximises
  the Sinkhorn scores — and passes gradients to T straight through the soft Sinkhorn matrix. The released
  code takes a row-wise argmax and ``torch.ceil``, whose gradient is zero, so T never learns and the baked
  table is one random Gumbel-Sinkhorn sample that maps ~79% of rows to distinct rows (REFERENCE_NOTES
  section 2, VERIFIED). ``permutation="reference"`` reproduces that; ``"none"`` skips the phase.
* Same-target in-batch rows are removed from the negatives (``same_target="mask"``), as in UniSRec; the
  reference's exp(0) terms are ``same_target="reference"``.
* Training from scratch (``textrec train``) trains every parameter from the first epoch; the reference's
  trainer freezes the Transformer from epoch 5 even without pre-training, leaving it at its random init.
* The padding item is never a candidate in the softmax.
* ``mode="transductive"`` adds an item-ID embedding to the code vector (not in the released code).
* T is D x M x M over the M real codewords of each sub-space; the release's ``trans_matrix`` is
  D x (M + 1) x (M + 1), so its permutation can also move the padding row (row 0 of each sub-space block)
  onto a real code and a real code onto it. The padding row is zero and stays padding here, in both
  ``permutation`` modes. The release also feeds ``log(exp(T) + 1e-6)`` (a softplus-like transform) to the
  Sinkhorn steps; here T enters directly (same fixed point, it only reparametrises T).
* Pre-training rows are one per (prefix, next item) in domain-stratified batches, and rows of the same
  user are never each other's negatives (see UniSRec's docstring); the reference pre-trains with 8192
  targets per batch (``props/pretrain.yaml``; its README's single-GPU command uses 2048, textrec's default).
* Fine-tuning phases end on their own: the permutation phase after ``permute_epochs`` epochs, the rest by
  early stopping with the full patience counted from its start (the reference's trainer counts patience
  across both).

Declarations (``textrec.models.spec``): item input ``codes``; causal (whole-sequence windows); phases:
one from scratch (every parameter), one in pre-training (``pretrain_loss``), and in fine-tuning the
permutation phase then the rest (``finetune`` phases below).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from textrec.collective import global_mean
from textrec.data.batching import SeqBatch
from textrec.models.layers import (TransformerEncoder, by_length, check_encoder_config, in_batch_contrastive, init_weights,
                                   item_drop, last_position, next_item_positions, position_users)
from textrec.models.spec import ItemInputs, ModelSpec, Phase, PhaseKind, Recipe, train_all


@dataclass(frozen=True)
class VQRecConfig:
    hidden_size: int = 300  # reference props/VQRec.yaml
    n_layers: int = 2
    n_heads: int = 2
    inner_size: int = 256
    hidden_dropout: float = 0.5
    attn_dropout: float = 0.5
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    temperature: float = 0.07  # reference temperature
    mode: Literal["inductive", "transductive"] = "inductive"  # codes only (reference), or codes + item-ID embedding
    fake_code_ratio: float = 0.75  # pre-training: rho of the semi-synthetic negative (reference fake_idx_ratio)
    semi_synthetic: bool = True  # pre-training: add the semi-synthetic negative (ablation: false)
    lambda_ss: float = 0.0  # pre-training: weight of an optional sequence-sequence term (Eq. 8 has none)
    item_drop_ratio: float = 0.2  # pre-training: item-drop probability of the sequence-sequence view
    same_target: Literal["mask", "reference"] = "mask"  # in-batch rows sharing the target: removed, or exp(0)
    permutation: Literal["learned", "reference", "none"] = "learned"  # fine-tuning code-embedding permutation
    permute_epochs: int = 5  # reference reassign_steps
    sinkhorn_iters: int = 3  # reference sinkhorn_iter
    gumbel_tau: float = 0.7  # reference Gumbel-Sinkhorn temperature
    freeze_encoder: bool = True  # after the permutation phase: freeze positions + Transformer (reference fix_enc)

    def __post_init__(self) -> None:
        check_encoder_config(self)
        if self.permute_epochs < 0 or self.sinkhorn_iters < 1 or self.gumbel_tau <= 0 or not 0 <= self.fake_code_ratio <= 1:
            from textrec.errors import ConfigError

            raise ConfigError("model.permute_epochs >= 0, model.sinkhorn_iters >= 1, model.gumbel_tau > 0 and "
                              "model.fake_code_ratio in [0, 1] are required")


def gumbel_sinkhorn(log_alpha: Tensor, tau: float, n_iters: int, noise: bool) -> Tensor:
    """(D, M, M) scores -> log of a (nearly) doubly stochastic matrix per sub-space."""
    if noise:
        u = torch.rand_like(log_alpha).clamp_(1e-10, 1.0)
        log_alpha = log_alpha - torch.log(-torch.log(u))
    log_alpha = log_alpha / tau
    for _ in range(n_iters):
        log_alpha = log_alpha - torch.logsumexp(log_alpha, dim=2, keepdim=True)  # rows sum to 1
        log_alpha = log_alpha - torch.logsumexp(log_alpha, dim=1, keepdim=True)  # columns sum to 1
    return log_alpha


def hungarian(log_p: Tensor) -> Tensor:
    """(D, M, M) log scores -> (D, M) column assigned to each row: a true permutation per sub-space."""
    from scipy.optimize import linear_sum_assignment

    scores = log_p.detach().float().cpu().numpy()
    cols = np.stack([linear_sum_assignment(-s)[1] for s in scores])
    return torch.as_tensor(cols, device=log_p.device)


class VQRec(nn.Module):
    Config = VQRecConfig
    SPEC = ModelSpec(
        item_inputs=("codes",),
        causal=True,
        training_rows="windows",
        # item-side state that belongs to one catalogue (or one fine-tuning) and is not carried over
        catalogue_keys=("code_index", "item_id_emb.weight", "perm_logits", "permuting"),
        architecture_keys=("hidden_size", "n_layers", "n_heads", "inner_size"),
        recipe=Recipe(finetune={"train.lr": 0.003},
                      source="VQ-Rec README: fine-tuning on Scientific with learning_rate 0.003; otherwise the generic defaults"),
    )

    def __init__(self, cfg: VQRecConfig, inputs: ItemInputs, max_seq_len: int) -> None:
        super().__init__()
        self.cfg = cfg
        codes = torch.as_tensor(inputs.require("codes", "vqrec"), dtype=torch.long)
        codebook_size = inputs.codebook_size
        n_rows, n_codebooks = codes.shape
        if codes[1:].min() < 0 or codes[1:].max() >= codebook_size:
            raise ValueError(f"item codes must lie in 0..{codebook_size - 1}")
        self.n_items, self.n_codebooks, self.codebook_size = n_rows - 1, n_codebooks, codebook_size
        offsets = torch.arange(n_codebooks) * (codebook_size + 1) + 1
        index = codes + offsets  # (n_items + 1, D) rows of the code-embedding table
        index[0] = 0  # the padding item: padding row in every sub-space
        self.register_buffer("code_index", index)
        d = cfg.hidden_size
        self.code_emb = nn.Embedding(n_codebooks * (codebook_size + 1), d, padding_idx=0)
        self.item_id_emb = nn.Embedding(n_rows, d, padding_idx=0) if cfg.mode == "transductive" else None
        self.pos_emb = nn.Embedding(max_seq_len, d)
        self.norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.encoder = TransformerEncoder(cfg.n_layers, d, cfg.n_heads, cfg.inner_size, cfg.hidden_dropout, cfg.attn_dropout, cfg.layer_norm_eps)
        self.apply(lambda m: init_weights(m, cfg.initializer_range))
        with torch.no_grad():
            self.code_emb.weight[0].zero_()
        self.perm_logits = nn.Parameter(torch.randn(n_codebooks, codebook_size, codebook_size))  # T, reference init randn
        self.register_buffer("permuting", torch.zeros((), dtype=torch.bool))

    # ---- the code-embedding table ------------------------------------------------------------
    def _permutation(self, noise: bool) -> Tensor:
        """(D, M, M) hard 0/1 assignment matrices; gradients reach T straight through when learned."""
        log_p = gumbel_sinkhorn(self.perm_logits, self.cfg.gumbel_tau, self.cfg.sinkhorn_iters, noise=noise)
        M = log_p.shape[-1]
        soft = log_p.exp()
        if self.cfg.permutation == "reference":  # row-wise argmax then ceil: connected, but zero gradient
            return F.one_hot(log_p.argmax(dim=2), M).to(soft.dtype) + 0.0 * soft
        return F.one_hot(hungarian(log_p), M).to(soft.dtype) + (soft - soft.detach())  # exactly 0/1 forward

    def code_table(self, noise: bool | None = None) -> Tensor:
        """(D (M + 1), h) code embeddings, permuted per sub-space during the permutation phase.

        ``noise`` (default: in training) draws Gumbel noise for this step's permutation.
        """
        if not bool(self.permuting):
            return self.code_emb.weight
        D, M = self.n_codebooks, self.codebook_size
        table = self.code_emb.weight.view(D, M + 1, -1)
        P = self._permutation(self.training if noise is None else noise)
        permuted = torch.bmm(P, table[:, 1:])  # (D, M, h): new row i = old row pi(i)
        return torch.cat([table[:, :1], permuted], dim=1).reshape(D * (M + 1), -1)

    def item_vectors(self, ids: Tensor, table: Tensor | None = None, index: Tensor | None = None) -> Tensor:
        """Mean of the D code embeddings of ``ids`` (any shape) -> (..., h).

        ``embedding_bag`` averages without materialising the (..., D, h) gather, which for a batch of
        prefix rows (2048 x 50 positions x 32 codes x 300) would be about 4 GB.
        """
        table = self.code_table() if table is None else table
        index = self.code_index[ids] if index is None else index  # (..., D)
        v = F.embedding_bag(index.reshape(-1, index.shape[-1]), table, mode="mean").view(*index.shape[:-1], table.shape[1])
        if self.item_id_emb is not None:
            v = v + self.item_id_emb(ids)
        return v

    # ---- encoders ----------------------------------------------------------------------------
    def hidden(self, item_seq: Tensor, seq_len: Tensor, table: Tensor | None = None) -> Tensor:
        """(B, L) item ids of rows ``seq_len`` long -> (B, L, h) causal states, computed per group of rows of
        similar length (``by_length``: exact, less padding)."""

        def encode(seq: Tensor) -> Tensor:
            positions = torch.arange(seq.shape[1], device=seq.device)
            x = self.item_vectors(seq, table) + self.pos_emb(positions)
            return self.encoder(self.dropout(self.norm(x)))

        return by_length(encode, item_seq, seq_len)

    def encode(self, batch: SeqBatch) -> Tensor:
        return F.normalize(last_position(self.hidden(batch.item_seq, batch.seq_len), batch.seq_len), dim=-1)  # (B, h)

    def item_embeddings(self) -> Tensor:
        ids = torch.arange(self.n_items + 1, device=self.code_index.device)
        return F.normalize(self.item_vectors(ids), dim=-1)  # (n_items + 1, h)

    # ---- losses ------------------------------------------------------------------------------
    def loss(self, batch: SeqBatch) -> Tensor:
        table = self.code_table()  # one permutation sample per step, shared by input and candidates
        h, targets = next_item_positions(self.hidden(batch.item_seq, batch.seq_len, table), batch.targets)  # (N, h), (N,)
        ids = torch.arange(1, self.n_items + 1, device=h.device)
        items = F.normalize(self.item_vectors(ids, table), dim=-1)  # (n_items, h)
        logits = F.normalize(h, dim=-1) @ items.T / self.cfg.temperature
        return global_mean(F.cross_entropy(logits.float(), targets - 1, reduction="none"))

    def _fake_index(self, targets: Tensor) -> Tensor:
        """Semi-synthetic codes (Eq. 7): each code replaced w.p. rho by a uniform code of its sub-space."""
        index = self.code_index[targets]  # (N, D)
        M = self.codebook_size
        offsets = torch.arange(self.n_codebooks, device=index.device) * (M + 1) + 1
        random_codes = torch.randint(0, M, index.shape, device=index.device) + offsets
        replace = torch.rand(index.shape, device=index.device) < self.cfg.fake_code_ratio
        return torch.where(replace, random_codes, index)

    def pretrain_loss(self, batch: SeqBatch) -> Tensor:
        """Eq. 8: in-batch (mixed-domain) negatives plus one semi-synthetic negative per row."""
        hidden = self.hidden(batch.item_seq, batch.seq_len)
        h, targets = next_item_positions(hidden, batch.targets)  # (N, h), (N,)
        fake = self.item_vectors(targets, index=self._fake_index(targets)) if self.cfg.semi_synthetic else None
        users = position_users(batch.targets, batch.users)
        loss = in_batch_contrastive(h, self.item_vectors(targets), targets, self.cfg.temperature, self.cfg.same_target, fake, users)
        if self.cfg.lambda_ss > 0:
            seq = last_position(hidden, batch.seq_len)
            aug_seq, aug_len = item_drop(batch.item_seq, batch.seq_len, self.cfg.item_drop_ratio)
            aug = last_position(self.hidden(aug_seq, aug_len), aug_len)
            last_target = batch.targets[torch.arange(len(batch.seq_len)), batch.seq_len - 1]
            loss = loss + self.cfg.lambda_ss * in_batch_contrastive(seq, aug, last_target, self.cfg.temperature,
                                                                    self.cfg.same_target, groups=batch.users)
        return loss

    # ---- fine-tuning phases ------------------------------------------------------------------
    @torch.no_grad()
    def start_permutation(self) -> None:
        self.permuting.fill_(True)

    @torch.no_grad()
    def bake_permutation(self) -> None:
        """Write the current permutation into the code-embedding table and stop permuting."""
        if not bool(self.permuting):
            return
        # learned: the noise-free (MAP) permutation; reference: one last noisy sample, as released
        table = self.code_table(noise=self.cfg.permutation == "reference").detach().clone()
        self.code_emb.weight.copy_(table)
        self.code_emb.weight[0].zero_()
        self.permuting.fill_(False)

    def permutation_indices(self) -> Tensor:
        """(D, M) the row of the pre-trained table each code uses under the current (noise-free) permutation."""
        with torch.no_grad():
            log_p = gumbel_sinkhorn(self.perm_logits, self.cfg.gumbel_tau, self.cfg.sinkhorn_iters, noise=False)
            return log_p.argmax(dim=2) if self.cfg.permutation == "reference" else hungarian(log_p)

    def phases(self, kind: PhaseKind) -> list[Phase]:
        if kind == "pretrain":
            return [Phase("pretrain", train_all, loss=self.pretrain_loss)]
        if kind == "train":
            return [Phase("train", train_all)]
        frozen = (*self.pos_emb.parameters(), *self.encoder.parameters()) if self.cfg.freeze_encoder else ()

        def only_permutation(m: nn.Module) -> None:
            for p in m.parameters():
                p.requires_grad_(p is m.perm_logits)

        def rest(m: nn.Module) -> None:
            for p in m.parameters():
                p.requires_grad_(p is not m.perm_logits and all(p is not f for f in frozen))

        if self.cfg.permutation == "none" or self.cfg.permute_epochs == 0:
            return [Phase("fine-tune", rest)]
        return [
            Phase("permute", only_permutation, enter=lambda m: m.start_permutation(), epochs=self.cfg.permute_epochs),
            Phase("fine-tune", rest, enter=lambda m: m.bake_permutation()),
        ]
