"""Leaf blocks used unchanged by several models: the RecBole Transformer encoder and its init.

``TransformerEncoder`` is RecBole's ``TransformerEncoder`` as SASRec, UniSRec and VQ-Rec use it
(REFERENCE_NOTES section 1): post-LayerNorm layers, each multi-head self-attention -> dropout ->
residual + LayerNorm, then a GELU feed-forward -> dropout -> residual + LayerNorm, ``layer_norm_eps``
1e-12, every Linear and Embedding initialised N(0, 0.02) with zero biases.

Deliberate differences, none of which change the function computed:

* the query, key and value projections are one fused ``Linear(d, 3d)`` (same init distribution);
* attention is ``F.scaled_dot_product_attention`` with ``is_causal=True``. RecBole adds a -10000 mask for
  future *and* padded keys; with right-padded rows a real query at position t only sees positions <= t,
  which are all real, so the causal mask alone gives identical outputs at every real position. A
  key-padding mask may be given as well (for left-padded or non-causal use); with ``causal=True`` both
  masks apply.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from textrec.collective import gather_with_grad


class MultiHeadSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, attn_dropout: float, hidden_dropout: float, eps: float) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"hidden size {d_model} is not a multiple of the number of heads {n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.attn_dropout = attn_dropout
        self.dropout = nn.Dropout(hidden_dropout)
        self.norm = nn.LayerNorm(d_model, eps=eps)

    def forward(self, x: Tensor, causal: bool = True, key_padding: Tensor | None = None) -> Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)  # 3x (B, H, L, Dh)
        mask = None
        if key_padding is not None:  # (B, L) True = padding
            mask = ~key_padding[:, None, None, :]  # (B, 1, 1, L) True = may attend
            if causal:  # combine: SDPA cannot take is_causal together with an explicit mask
                mask = mask & torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
        h = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0, is_causal=causal and mask is None
        )  # (B, H, L, Dh)
        h = h.transpose(1, 2).reshape(B, L, D)
        return self.norm(x + self.dropout(self.out(h)))


class FeedForward(nn.Module):
    def __init__(self, d_model: int, inner_size: int, hidden_dropout: float, eps: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, inner_size)
        self.fc2 = nn.Linear(inner_size, d_model)
        self.dropout = nn.Dropout(hidden_dropout)
        self.norm = nn.LayerNorm(d_model, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.dropout(self.fc2(F.gelu(self.fc1(x)))))


class TransformerLayer(nn.Module):
    def __init__(self, d_model: int, n_heads: int, inner_size: int, hidden_dropout: float, attn_dropout: float, eps: float) -> None:
        super().__init__()
        self.attn = MultiHeadSelfAttention(d_model, n_heads, attn_dropout, hidden_dropout, eps)
        self.ffn = FeedForward(d_model, inner_size, hidden_dropout, eps)

    def forward(self, x: Tensor, causal: bool = True, key_padding: Tensor | None = None) -> Tensor:
        return self.ffn(self.attn(x, causal, key_padding))


class TransformerEncoder(nn.Module):
    """A stack of post-LN Transformer layers; causal by default."""

    def __init__(
        self, n_layers: int, d_model: int, n_heads: int, inner_size: int, hidden_dropout: float, attn_dropout: float, eps: float
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerLayer(d_model, n_heads, inner_size, hidden_dropout, attn_dropout, eps) for _ in range(n_layers)
        )

    def forward(self, x: Tensor, causal: bool = True, key_padding: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            x = layer(x, causal, key_padding)
        return x  # (B, L, D)


def check_encoder_config(cfg) -> None:
    """Reject Transformer sizes that cannot work, with the config key in the message (not a torch error)."""
    from textrec.errors import ConfigError

    for key in ("hidden_size", "n_layers", "n_heads", "inner_size"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"model.{key} must be >= 1, not {getattr(cfg, key)}")
    if cfg.hidden_size % cfg.n_heads:
        raise ConfigError(f"model.hidden_size {cfg.hidden_size} is not a multiple of model.n_heads {cfg.n_heads}")
    for key in ("hidden_dropout", "attn_dropout") + tuple(k for k in ("adaptor_dropout",) if hasattr(cfg, k)):
        if not 0.0 <= getattr(cfg, key) < 1.0:
            raise ConfigError(f"model.{key} must be in [0, 1), not {getattr(cfg, key)}")
    if getattr(cfg, "temperature", 1.0) <= 0:
        raise ConfigError(f"model.temperature must be > 0, not {cfg.temperature}")


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """RecBole / BERT init: N(0, std) for Linear and Embedding weights, zero biases, LayerNorm (1, 0)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def last_position(hidden: Tensor, seq_len: Tensor) -> Tensor:
    """Hidden state at each row's last real item: (B, L, D), (B,) -> (B, D)."""
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), seq_len - 1]


def next_item_positions(hidden: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Hidden states and targets at the positions that carry a next-item loss: -> (N, D), (N,)."""
    mask = targets > 0
    return hidden[mask], targets[mask]


def position_users(targets: Tensor, users: Tensor | None) -> Tensor | None:
    """(N,) the user of each loss position (in ``next_item_positions`` order), or None without users."""
    if users is None:
        return None
    return users[:, None].expand_as(targets)[targets > 0]


def in_batch_contrastive(
    query: Tensor, keys: Tensor, key_ids: Tensor, temperature: float, same_target: str = "mask", extra: Tensor | None = None,
    groups: Tensor | None = None,
) -> Tensor:
    """InfoNCE over a batch: row i's positive is key i, the other keys are its negatives (UniSRec/VQ-Rec).

    query, keys (N, D) are L2-normalised here; key_ids (N,) item ids of the keys. Other rows whose key is
    the same item as row i's are removed from its negatives (``same_target="mask"``) or, as the released
    code does, given logit 0 so each still adds exp(0) = 1 to the denominator (``"reference"``).
    ``extra`` (N, D): one more negative per row (VQ-Rec's semi-synthetic item). ``groups`` (N,): the user
    each row comes from; another row of the same user is never a negative (its target is that user's
    own item, not a contrast). Under torchrun the rows of every rank are gathered (``gather_with_grad``): the
    loss is the single-process loss over the global batch.
    """
    query, keys, key_ids, extra, groups = (gather_with_grad(t) for t in (query, keys, key_ids, extra, groups))  # all ranks' rows
    q = F.normalize(query, dim=-1)
    logits = mask_in_batch(q @ F.normalize(keys, dim=-1).T / temperature, key_ids, same_target, groups)  # (N, N)
    if extra is not None:
        logits = torch.cat([logits, (q * F.normalize(extra, dim=-1)).sum(-1, keepdim=True) / temperature], dim=1)
    return F.cross_entropy(logits.float(), torch.arange(len(key_ids), device=logits.device))


def mask_in_batch(logits: Tensor, key_ids: Tensor, same_target: str = "mask", groups: Tensor | None = None) -> Tensor:
    """(N, N) in-batch logits with the diagonal as positive: other rows of the same target are removed
    (``"mask"``) or set to logit 0 (``"reference"``), other rows of the same group (user) are removed."""
    eye = torch.eye(len(key_ids), dtype=torch.bool, device=logits.device)
    same = (key_ids[:, None] == key_ids[None, :]) & ~eye
    logits = logits.masked_fill(same, float("-inf") if same_target == "mask" else 0.0)
    if groups is not None:
        logits = logits.masked_fill((groups[:, None] == groups[None, :]) & ~eye, float("-inf"))
    return logits


def item_drop(item_seq: Tensor, seq_len: Tensor, ratio: float) -> tuple[Tensor, Tensor]:
    """Drop each item but the first with probability ``ratio`` and move the rest left (UniSRec augmentation)."""
    B, L = item_seq.shape
    pos = torch.arange(L, device=item_seq.device)
    keep = (pos[None, :] < seq_len[:, None]) & ((torch.rand(B, L, device=item_seq.device) >= ratio) | (pos[None, :] == 0))
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    new_len = keep.sum(dim=1)
    return torch.where(pos[None, :] < new_len[:, None], torch.gather(item_seq, 1, order), 0), new_len


# Rows of one batch are encoded in groups of similar length, each trimmed to its longest row, when that saves at
# least this many padded positions per extra group (a group costs a few kernel launches per layer).
GROUP_OVERHEAD_POSITIONS = 512


def length_groups(seq_len: Tensor, overhead: int | None = None) -> list[tuple[Tensor, int]]:
    """Rows of a batch split into groups of similar length: [(row indices, group width)], fewest padded positions.

    Domain-stratified pre-training batches mix every domain's b-th length slice, so a batch may hold 50-item
    MovieLens windows beside 3-item Amazon ones: padded to the longest, three quarters of the positions a
    Transformer computes on the ten-domain corpus are padding. Exact dynamic programming over the distinct
    lengths (at most ``max_seq_len`` of them): group costs are (rows x width) + ``overhead``.
    """
    overhead = GROUP_OVERHEAD_POSITIONS if overhead is None else overhead
    lengths = seq_len.detach().to("cpu").clamp(min=1)
    order = torch.argsort(lengths, stable=True)
    values, counts = torch.unique_consecutive(lengths[order], return_counts=True)
    u, c = values.tolist(), counts.tolist()
    m = len(u)
    best, cut = [0.0] + [float("inf")] * m, [0] * (m + 1)  # best[j]: cost of the j shortest distinct lengths
    for j in range(1, m + 1):
        rows = 0
        for i in range(j, 0, -1):  # the last group holds distinct lengths i..j, width u[j - 1]
            rows += c[i - 1]
            cost = best[i - 1] + rows * u[j - 1] + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i - 1
    bounds, j = [], m
    while j > 0:
        bounds.append((cut[j], j))
        j = cut[j]
    starts = [0] + list(torch.cumsum(counts, 0).tolist())
    return [(order[starts[i]:starts[j]].to(seq_len.device), u[j - 1]) for i, j in reversed(bounds)]


def by_length(encode, item_seq: Tensor, seq_len: Tensor, *per_position: Tensor | None) -> Tensor:
    """``encode(item_seq, *per_position)`` -> (B, L, D), computed per group of rows of similar length.

    Exact at every real position for an encoder whose real positions do not read padded ones (causal attention
    over right-padded rows, or a key-padding mask): each group is trimmed to its longest row and the results are
    put back in place. Padded positions of the result are zero. ``per_position`` tensors (B, L, ...) are sliced
    like ``item_seq`` (None passes through).
    """
    groups = length_groups(seq_len)
    if len(groups) == 1:
        return encode(item_seq, *per_position)
    B, L = item_seq.shape
    parts, index = [], []
    for rows, width in groups:
        extra = [None if t is None else t[rows, :width] for t in per_position]
        h = encode(item_seq[rows, :width], *extra)  # (b, width, D)
        parts.append(F.pad(h, (0, 0, 0, L - width)))
        index.append(rows)
    out = torch.cat(parts)  # rows in group order
    inverse = torch.empty(B, dtype=torch.long, device=item_seq.device)
    inverse[torch.cat(index)] = torch.arange(B, device=item_seq.device)
    return out[inverse]
