"""MISSRec: multi-modal interest-aware sequence representations (Wang et al., ACM MM 2023).

Reference: gimpong/MM23-MISSRec @c3167c5 (``missrec.py``, ``model_utils.py``, ``trainer.py``, ``cluster_utils.py``,
``data/transform.py``, ``props/*.yaml``), summarised in REFERENCE_NOTES section 3.

* Items: each modality has a frozen feature table and its own adaptor, a plain ``Linear(d_in, D)`` with PyTorch's
  default init (the reference builds it after its N(0, 0.02) pass). Text comes from a dataset feature table
  (``text_feature``, e.g. CLIP ``feat1CLS``; item input ``features``, named in ``data.features``) or from the run's
  text embeddings (``text_feature="embeddings"``, e.g. MiniLM; item input ``text_embeddings``, and the word-drop
  view in pre-training); ``""`` drops a modality, so text-only and image-only are configurations of this model.
* Interest discovery (paper Sec. 3.2, ``_multimodal_interest_discovery``) before every epoch, as the phases'
  ``on_epoch_start`` hook: **faiss** k-means (``faiss.Kmeans``, 5 iterations, Euclidean; faiss' GPU when it has
  one, else the CPU with torch's thread count) of the adaptor outputs of all items' text and image rows into
  K = ceil(P x ratio) clusters (``interest_ratio`` 0.5; ``pretrain_interest_ratio`` 0.02 in pre-training).
  Centroids and each row's cluster id (+1, 0 = padding) are buffers saved with the weights. Each epoch's
  ``cluster_seconds``, ``n_interests`` and ``cluster_points`` go into the run's ``log.jsonl``.
* Interest tokens: the sorted distinct cluster ids of a sequence's items over all modalities, embedded by the
  (untrained) centroids, through a non-causal post-LN Transformer encoder without positions -> memory.
* Decoder (paper Eq. 4-6): per position the sum of the adapted modality vectors + a position embedding (+ an
  item-ID embedding when transductive) -> LayerNorm -> dropout -> post-LN layers of non-causal self-attention
  (key padding), cross-attention to the memory and feed-forward; the sequence is the L2-normalised output at the
  last item. Both stacks end with a LayerNorm as ``nn.Transformer``; ``n_layers`` counts each stack (the
  reference's ``n_layers 2`` is one encoder and one decoder layer).
* Scores (paper Eq. 7-8, ``_compute_dynamic_fused_logits``): s_m = cos(u, item_m), fused by user-adaptive weights
  softmax(alpha x [s_text, s_image]) with a learned scalar alpha (init 0), computed as its two-modality closed
  form s_v + sigmoid(alpha (s_t - s_v)) (s_t - s_v); transductive: (cos(u, E_id[i]) + 2 x fused) / 3, inductive:
  fused. ``item_embeddings`` rows hold an item's normalised modality vectors, ID vector and presence flags, and
  ``score_items`` fuses them (``SPEC.score``: the evaluator and recommender call it).
* ``loss``: cross-entropy over all items of scores / temperature + gamma x Omega, the interest-orthogonality
  regulariser sum_batch ||pooled memory||^2 / D. ``pretrain_loss``: in-batch sequence-item contrast on fused
  scores + lambda x sequence-sequence contrast with an augmented view (item drop with probability
  ``item_drop_coefficient``, else the word-drop text view when given) + gamma x (Omega + Omega of the view).
* Phases: training from scratch; pre-training; fine-tuning with position embeddings, encoder and decoder frozen
  when ``freeze_encoder`` (a real switch: the reference's ``-f`` is ``type=bool`` and always freezes). Rows: one
  per (prefix, next item), since the decoder is not causal and interests come from the whole history.

Deliberate differences from the reference:

* A missing modality (all-zero row, ``FeatureTable.present`` False) is masked: it adds nothing to the decoder
  input (the reference adds ``adaptor(0)``, the bias), is not clustered (the reference clusters the zero rows,
  which then share a "missing" interest; K counts present rows, not 2N) and has no fusion weight. An item with
  no modality at all scores -1 before the ID term.
* The item-drop view is built from the dropped sequence in every modality, interests included; the reference
  reuses the un-dropped sequence's image rows and image interests, misaligned with the dropped positions.
* Omega pools the memory by its mean over real interest tokens; the reference scales a sum over all positions,
  padding included, by the share of real ones, so it depends on the batch's padding width.
* In-batch contrast drops same-target and same-user rows from the negatives (``same_target="mask"``, as textrec's
  UniSRec; ``"reference"``: logit 0 as UniSRec's release). The padding row is never a candidate.
* With one modality the transductive score keeps the (s_id + 2 s) / 3 form; the reference then scores
  cos(u, normalise(item + E_id)).
* The last decoder layer computes only the query at the last item (the one output used: the same function).
  Attention projections start N(0, 0.02) (the reference's in-projection keeps Xavier); no dropout inside the
  feed-forward. The reference fine-tunes with batches of 512 (``train.batch_size=512``; textrec: 2048).
* A sequence without any interest (before the first discovery, or no feature present) attends to one zero token.
  A grown catalogue (``serve.catalogue``, reading ``SPEC.item_state``) keeps the trained centroids, their number and
  every old row's cluster id, and gives each new present row its nearest trained centroid on loading (no k-means).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from textrec.collective import gather_with_grad, global_mean, global_sum
from textrec.data.batching import SeqBatch
from textrec.models.layers import (FeedForward, TransformerEncoder, check_encoder_config, init_weights, item_drop,
                                   mask_in_batch)
from textrec.models.spec import FeatureTable, InputKind, ItemInputs, ModelSpec, Phase, PhaseKind, Recipe, train_all, train_all_but


@dataclass(frozen=True)
class MISSRecConfig:
    hidden_size: int = 300  # reference hidden_size
    n_layers: int = 1  # encoder layers and decoder layers each (reference n_layers 2 = 1 + 1)
    n_heads: int = 4  # reference
    inner_size: int = 256  # reference
    hidden_dropout: float = 0.5  # reference hidden_dropout_prob
    attn_dropout: float = 0.5  # reference attn_dropout_prob
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    temperature: float = 0.07  # reference
    text_feature: str = "feat1CLS"  # text feature table (reference .feat1CLS); "embeddings": the text embeddings; "": none
    image_feature: str = "feat3CLS"  # image feature table (reference .feat3CLS); "": text only
    word_drop_feature: str = ""  # pre-training: feature table of the word-drop text view (reference .feat2CLS)
    mode: Literal["inductive", "transductive"] = "transductive"  # reference default transductive_ft (with item IDs)
    fusion: Literal["dynamic", "mean"] = "dynamic"  # modality scores: user-adaptive softmax (reference) or their mean
    interest_tokens: bool = True  # False: no interest encoder and no cross-attention (an ablation)
    interest_ratio: float = 0.5  # K = ceil(rows x ratio) interests, training / fine-tuning (reference finetune.yaml)
    pretrain_interest_ratio: float = 0.02  # the same in pre-training (reference pretrain.yaml)
    kmeans_iters: int = 5  # reference cluster_kmeans niter
    gamma: float = 1e-4  # weight of the interest-orthogonality regulariser (reference)
    lambda_ss: float = 1e-3  # pre-training weight of the sequence-sequence term (reference lambda)
    item_drop_coefficient: float = 0.9  # pre-training: probability of item drop rather than word drop (reference)
    item_drop_ratio: float = 0.2  # pre-training: per-position drop / swap probability (reference)
    same_target: Literal["mask", "reference"] = "mask"  # in-batch rows sharing the target: removed, or exp(0) as released
    freeze_encoder: bool = True  # fine-tuning: freeze position embeddings, encoder and decoder (reference with -p)

    def __post_init__(self) -> None:
        from textrec.errors import ConfigError

        check_encoder_config(self)
        if not (self.text_feature or self.image_feature):
            raise ConfigError("model.text_feature and model.image_feature are both empty: MISSRec needs a modality")
        if self.image_feature == "embeddings":
            raise ConfigError('model.image_feature cannot be "embeddings" (text embeddings are text)')
        for key in ("interest_ratio", "pretrain_interest_ratio"):
            if not 0.0 < getattr(self, key) <= 1.0:
                raise ConfigError(f"model.{key} must be in (0, 1], not {getattr(self, key)}")
        if self.kmeans_iters < 1:
            raise ConfigError(f"model.kmeans_iters must be >= 1, not {self.kmeans_iters}")


class Encoded(NamedTuple):
    seq: Tensor  # (B, D) L2-normalised sequence representations
    omega: Tensor  # () interest-orthogonality regulariser of the batch


class Discovery(NamedTuple):
    n_interests: int  # K
    n_points: int  # adapted modality rows clustered
    seconds: float

    def report(self) -> dict[str, float | int]:
        """The epoch hook's entry in the training log (``log.jsonl``): clustering time and size."""
        return {"cluster_seconds": self.seconds, "n_interests": self.n_interests, "cluster_points": self.n_points}


def item_inputs_for(cfg: MISSRecConfig) -> tuple[InputKind, ...]:
    """The item inputs a config reads: the text embeddings for ``text_feature="embeddings"``, feature tables for
    any table named."""
    kinds: tuple[InputKind, ...] = ("text_embeddings",) if cfg.text_feature == "embeddings" else ()
    if feature_tables(cfg):
        kinds += ("features",)
    return kinds


def feature_tables(cfg: MISSRecConfig) -> tuple[str, ...]:
    """The feature tables a config names (text, image, word-drop view), read when ``data.features`` is empty."""
    text = cfg.text_feature if cfg.text_feature != "embeddings" else ""
    return tuple(name for name in (text, cfg.image_feature, cfg.word_drop_feature) if name)


def n_interests(n_points: int, ratio: float) -> int:
    return max(1, min(n_points, math.ceil(n_points * ratio)))


def kmeans(points: Tensor, k: int, iters: int, seed: int) -> tuple[Tensor, Tensor]:
    """faiss k-means of (P, D) points: (k, D) centroids and (P,) labels in 0..k-1, on ``points``' device."""
    from textrec.quant.faiss_io import require_faiss
    from textrec.quant.pq import faiss_threads

    faiss = require_faiss("MISSRec's interest discovery (k-means)")
    x = np.ascontiguousarray(points.detach().float().cpu().numpy())
    with faiss_threads(torch.get_num_threads()):  # respect train.num_threads on a shared machine
        gpu = points.is_cuda and faiss.get_num_gpus() > 0
        km = faiss.Kmeans(x.shape[1], k, niter=iters, seed=seed, min_points_per_centroid=1, gpu=gpu, verbose=False)
        km.train(x)
        _, labels = km.index.search(x, 1)
    return torch.from_numpy(km.centroids).to(points.device), torch.from_numpy(labels[:, 0]).long().to(points.device)


def in_batch_loss(logits: Tensor, key_ids: Tensor, users: Tensor | None, same_target: str) -> Tensor:
    """Cross-entropy of (N, N) logits whose diagonal is the positive; same-target and same-user rows are no negatives."""
    logits = mask_in_batch(logits, key_ids, same_target, users)
    return F.cross_entropy(logits.float(), torch.arange(len(key_ids), device=logits.device))


class Attention(nn.Module):
    """Post-LN multi-head attention of queries over a source: norm(query + dropout(out(attn(query, source))))."""

    def __init__(self, d_model: int, n_heads: int, attn_dropout: float, hidden_dropout: float, eps: float) -> None:
        super().__init__()
        self.n_heads, self.attn_dropout = n_heads, attn_dropout
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(hidden_dropout)
        self.norm = nn.LayerNorm(d_model, eps=eps)

    def forward(self, query: Tensor, source: Tensor, source_pad: Tensor) -> Tensor:
        (B, Lq, D), Ls, H = query.shape, source.shape[1], self.n_heads
        q = self.q(query).view(B, Lq, H, D // H).transpose(1, 2)  # (B, H, Lq, Dh)
        k, v = self.kv(source).view(B, Ls, 2, H, D // H).permute(2, 0, 3, 1, 4)  # 2x (B, H, Ls, Dh)
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=~source_pad[:, None, None, :],
                                           dropout_p=self.attn_dropout if self.training else 0.0)  # (B, H, Lq, Dh)
        return self.norm(query + self.dropout(self.out(h.transpose(1, 2).reshape(B, Lq, D))))


class DecoderLayer(nn.Module):
    """Non-causal self-attention over the items, cross-attention to the interest memory, feed-forward."""

    def __init__(self, d: int, n_heads: int, inner: int, hidden_dropout: float, attn_dropout: float, eps: float, cross: bool) -> None:
        super().__init__()
        self.self_attn = Attention(d, n_heads, attn_dropout, hidden_dropout, eps)
        self.cross_attn = Attention(d, n_heads, attn_dropout, hidden_dropout, eps) if cross else None
        self.ffn = FeedForward(d, inner, hidden_dropout, eps)

    def forward(self, query: Tensor, items: Tensor, item_pad: Tensor, memory: Tensor | None, memory_pad: Tensor | None) -> Tensor:
        x = self.self_attn(query, items, item_pad)  # (B, Lq, D)
        if self.cross_attn is not None:
            x = self.cross_attn(x, memory, memory_pad)
        return self.ffn(x)


class MISSRec(nn.Module):
    Config = MISSRecConfig
    SPEC = ModelSpec(
        item_inputs=("features", "text_embeddings"),  # the kinds it can read; inputs_for_config: those a config reads
        inputs_for_config=item_inputs_for,
        feature_tables=feature_tables,  # without data.features: the tables model.text_feature / image_feature name
        pretrain_inputs=("word_drop_embeddings",),  # with text_feature="embeddings": the word-drop view
        word_drop_view=lambda embeddings: f"{embeddings}-wd15",  # as UniSRec's (the reference's .feat2CLS: rate 0.15)
        causal=False,  # non-causal decoder, interests from the whole history
        training_rows="prefixes",
        catalogue_keys=("feature_", "present_", "interest_", "word_drop_table", "item_id_emb."),
        # the per-item entries, for a grown catalogue; the interest centroids are not per item, whatever their shape
        item_state={"feature_": "inputs", "present_": "inputs", "word_drop_table": "inputs", "interest_of_": "grow",
                    "item_id_emb.": "grow"},
        architecture_keys=("hidden_size", "n_layers", "n_heads", "inner_size"),
        score=lambda model, seq_repr, item_rows: model.score_items(seq_repr, item_rows),  # fused modality scores
        recipe=Recipe(train={"train.batch_size": 512}, finetune={"train.batch_size": 512},
                      source="MISSRec finetune.py: train batch 512 (also from scratch); otherwise the generic defaults"),
        extra="quant",  # faiss k-means for interest discovery
    )

    def __init__(self, cfg: MISSRecConfig, inputs: ItemInputs, max_seq_len: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_items = inputs.n_items
        tables, word_drop = self._tables(cfg, inputs)
        self.modalities = tuple(tables)
        d = cfg.hidden_size
        for m, table in tables.items():
            self.register_buffer(f"feature_{m}", table.values.float().clone())  # (n_items + 1, d_m)
            self.register_buffer(f"present_{m}", table.present.bool().clone())  # (n_items + 1,)
            self.register_buffer(f"interest_of_{m}", torch.zeros(self.n_items + 1, dtype=torch.long))  # cluster id + 1
        self.register_buffer("word_drop_table", None if word_drop is None else word_drop.float().clone())
        self.adaptors = nn.ModuleDict({m: nn.Linear(t.values.shape[1], d) for m, t in tables.items()})
        n_points = sum(int(t.present.sum()) for t in tables.values())
        k_max = max(n_interests(n_points, r) for r in (cfg.interest_ratio, cfg.pretrain_interest_ratio))
        self.register_buffer("interest_centroids", torch.zeros(k_max + 1, d))  # row 0: padding
        self.register_buffer("interest_count", torch.zeros((), dtype=torch.long))  # K of the last discovery; 0: none yet
        self.fusion_alpha = nn.Parameter(torch.zeros(()))  # reference fusion_factor
        self.item_id_emb = nn.Embedding(self.n_items + 1, d, padding_idx=0) if cfg.mode == "transductive" else None
        self.pos_emb = nn.Embedding(max_seq_len, d)
        self.norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        args = (cfg.n_layers, d, cfg.n_heads, cfg.inner_size, cfg.hidden_dropout, cfg.attn_dropout, cfg.layer_norm_eps)
        self.encoder = TransformerEncoder(*args) if cfg.interest_tokens else None
        self.encoder_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps) if cfg.interest_tokens else None
        self.decoder = nn.ModuleList(DecoderLayer(*args[1:], cross=cfg.interest_tokens) for _ in range(cfg.n_layers))
        self.decoder_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        for m in (self.item_id_emb, self.pos_emb, self.norm, self.encoder, self.encoder_norm, self.decoder, self.decoder_norm):
            if m is not None:
                m.apply(lambda mod: init_weights(mod, cfg.initializer_range))
        self.discoveries: list[Discovery] = []  # one per discovery, for timing (not saved)
        self.register_load_state_dict_post_hook(lambda module, keys: module._complete_interests())

    @staticmethod
    def _tables(cfg: MISSRecConfig, inputs: ItemInputs) -> tuple[dict[str, FeatureTable], Tensor | None]:
        """The modality tables a config names, and the word-drop text view (None without one)."""
        from textrec.errors import DataError

        def named(key: str, name: str) -> FeatureTable:
            if name not in inputs.features:
                raise DataError(f"model.{key}={name!r} is not among the loaded feature tables "
                                f"({', '.join(sorted(inputs.features)) or 'none'}); name it in data.features=[...]")
            return inputs.features[name]

        tables, word_drop = {}, inputs.word_drop_embeddings if cfg.text_feature == "embeddings" else None
        if cfg.text_feature == "embeddings":
            values = inputs.require("text_embeddings", "missrec").float()
            tables["text"] = FeatureTable(values, (values.abs().sum(dim=1) > 0) & (torch.arange(len(values)) > 0))
        elif cfg.text_feature:
            tables["text"] = named("text_feature", cfg.text_feature)
        if cfg.image_feature:
            tables["image"] = named("image_feature", cfg.image_feature)
        if cfg.word_drop_feature:
            word_drop = named("word_drop_feature", cfg.word_drop_feature).values
        for m, t in tables.items():
            if t.values.shape[0] != inputs.n_items + 1:
                raise DataError(f"{m} feature table has {t.values.shape[0]} rows for {inputs.n_items} items")
        if word_drop is not None and ("text" not in tables or word_drop.shape != tables["text"].values.shape):
            raise DataError(f"the word-drop view {tuple(word_drop.shape)} does not match the text table")
        return tables, word_drop

    # ---- items -------------------------------------------------------------------------------
    def adapted(self, m: str, ids: Tensor, rows: Tensor | None = None) -> Tensor:
        """Adapted modality-``m`` vectors of ``ids`` (any shape) -> (..., D); zero where the modality is absent."""
        x = self.adaptors[m](getattr(self, f"feature_{m}")[ids] if rows is None else rows)
        return x * getattr(self, f"present_{m}")[ids].unsqueeze(-1).to(x.dtype)

    def adapted_tables(self) -> dict[str, Tensor]:
        """Modality -> (n_items + 1, D) adapted vectors of every item (zero rows where absent)."""
        ids = torch.arange(self.n_items + 1, device=self.interest_centroids.device)
        return {m: self.adapted(m, ids) for m in self.modalities}

    def item_rows(self, ids: Tensor, tables: dict[str, Tensor] | None = None) -> Tensor:
        """(N, M*D [+ D] + M) scoring rows of ``ids`` (N,): normalised modality vectors, [ID vector], presence flags."""
        parts = [F.normalize(self.adapted(m, ids) if tables is None else tables[m][ids], dim=-1) for m in self.modalities]
        if self.item_id_emb is not None:
            parts.append(F.normalize(self.item_id_emb(ids), dim=-1))
        parts.append(torch.stack([getattr(self, f"present_{m}")[ids] for m in self.modalities], dim=-1).to(parts[0].dtype))
        return torch.cat(parts, dim=-1)

    def item_embeddings(self) -> Tensor:
        return self.item_rows(torch.arange(self.n_items + 1, device=self.interest_centroids.device))  # (n_items + 1, W)

    def score_items(self, seq_repr: Tensor, item_rows: Tensor) -> Tensor:
        """(B, n) fused scores of (B, D) sequences against ``item_rows`` (rows of ``item_embeddings``)."""
        M, D = len(self.modalities), self.cfg.hidden_size
        s = [seq_repr @ item_rows[:, j * D : (j + 1) * D].T for j in range(M)]  # M x (B, n) cosines
        present = item_rows[:, -M:] > 0.5  # (n, M)
        if len(s) == 1:
            fused = s[0]
        else:  # softmax(alpha * [s_t, s_v]) . [s_t, s_v] = s_v + sigmoid(alpha * (s_t - s_v)) * (s_t - s_v)
            gap = s[0] - s[1]
            w = torch.sigmoid(self.fusion_alpha * gap) if self.cfg.fusion == "dynamic" else torch.full_like(gap, 0.5)
            w = torch.where(present[:, 1], torch.where(present[:, 0], w, 0.0), 1.0)  # an absent modality has no weight
            fused = s[1] + w * gap
        fused = torch.where(present.any(dim=-1), fused, -1.0)  # (B, n); no modality at all: the lowest cosine
        if self.item_id_emb is None:
            return fused
        return (seq_repr @ item_rows[:, M * D : (M + 1) * D].T + 2 * fused) / 3

    # ---- sequences ---------------------------------------------------------------------------
    def interest_tokens(self, item_seq: Tensor) -> Tensor:
        """(B, T) sorted distinct interest ids of each row's items over all modalities, right-padded with 0."""
        ids = torch.cat([getattr(self, f"interest_of_{m}")[item_seq] for m in self.modalities], dim=1).sort(dim=1).values
        keep = ids > 0
        keep[:, 1:] &= ids[:, 1:] != ids[:, :-1]
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
        width = max(1, int(keep.sum(dim=1).max()))
        return torch.where(keep, ids, 0).gather(1, order)[:, :width]  # (B, T)

    def interests(self, item_seq: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T, D) memory of the interest tokens, its (B, T) padding mask, and Omega."""
        ids = self.interest_tokens(item_seq)
        pad = ids == 0
        pad[:, 0] &= ~pad.all(dim=1)  # a row without interests attends to one zero token
        memory = self.encoder_norm(self.encoder(self.interest_centroids[ids], causal=False, key_padding=pad))  # (B, T, D)
        real = (~pad).unsqueeze(-1).to(memory.dtype)
        pooled = (memory * real).sum(dim=1) / real.sum(dim=1)  # (B, D)
        return memory, pad, (pooled * pooled).sum() / memory.shape[-1]

    def sequence(self, item_seq: Tensor, seq_len: Tensor, text_rows: Tensor | None = None,
                 tables: dict[str, Tensor] | None = None) -> Encoded:
        """(B, L) right-padded items (optionally their (B, L, d_text) text rows) -> the encoded sequences.

        ``tables`` (``adapted_tables()``): rows gathered from the adapted item tables instead of adapting each position.
        """
        B, L = item_seq.shape
        x = self.pos_emb(torch.arange(L, device=item_seq.device))  # (L, D)
        for m in self.modalities:
            own = text_rows if m == "text" else None
            x = x + (tables[m][item_seq] if tables is not None and own is None else self.adapted(m, item_seq, own))  # (B, L, D)
        if self.item_id_emb is not None:
            x = x + self.item_id_emb(item_seq)
        x = self.dropout(self.norm(x))
        memory, memory_pad, omega = self.interests(item_seq) if self.encoder is not None else (None, None, x.new_zeros(()))
        pad = item_seq == 0
        for i, layer in enumerate(self.decoder):  # the last layer only computes the query that is used
            query = x if i + 1 < len(self.decoder) else x[torch.arange(B, device=x.device), seq_len - 1, None]
            x = layer(query, x, pad, memory, memory_pad)
        return Encoded(F.normalize(self.decoder_norm(x[:, 0]), dim=-1), omega)

    def encode(self, batch: SeqBatch) -> Tensor:
        return self.sequence(batch.item_seq, batch.seq_len).seq  # (B, D)

    # ---- losses ------------------------------------------------------------------------------
    @staticmethod
    def _last_targets(batch: SeqBatch) -> Tensor:
        return batch.targets[torch.arange(len(batch.seq_len), device=batch.seq_len.device), batch.seq_len - 1]  # (B,)

    def loss(self, batch: SeqBatch) -> Tensor:
        """Cross-entropy over all items of fused scores / temperature + gamma * Omega."""
        tables = self.adapted_tables()
        enc = self.sequence(batch.item_seq, batch.seq_len, tables=tables)
        ids = torch.arange(1, self.n_items + 1, device=batch.item_seq.device)
        logits = self.score_items(enc.seq, self.item_rows(ids, tables)) / self.cfg.temperature  # (B, n_items)
        return global_mean(F.cross_entropy(logits.float(), self._last_targets(batch) - 1, reduction="none")) + self.cfg.gamma * global_sum(enc.omega)

    def pretrain_loss(self, batch: SeqBatch) -> Tensor:
        """L_si + lambda_ss * L_ss + gamma * (Omega + Omega_aug) over a (multi-domain) batch of prefix rows."""
        enc = self.sequence(batch.item_seq, batch.seq_len)
        targets = self._last_targets(batch)
        seq, rows, targets, users = (gather_with_grad(t) for t in (enc.seq, self.item_rows(targets), targets, batch.users))  # all ranks
        logits = self.score_items(seq, rows) / self.cfg.temperature  # (B, B)
        loss, omega = in_batch_loss(logits, targets, users, self.cfg.same_target), enc.omega
        if self.cfg.lambda_ss > 0:
            aug = self.sequence(*self.augment(batch.item_seq, batch.seq_len))
            loss = loss + self.cfg.lambda_ss * in_batch_loss(seq @ gather_with_grad(aug.seq).T / self.cfg.temperature, targets, users,
                                                             self.cfg.same_target)
            omega = omega + aug.omega
        return loss + self.cfg.gamma * global_sum(omega)

    def augment(self, item_seq: Tensor, seq_len: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Item drop (all modalities and interests of the dropped sequence) or the word-drop text view; one per batch."""
        if self.word_drop_table is None or "text" not in self.modalities or torch.rand(()) < self.cfg.item_drop_coefficient:
            return *item_drop(item_seq, seq_len, self.cfg.item_drop_ratio), None
        swap = torch.rand(item_seq.shape, device=item_seq.device) < self.cfg.item_drop_ratio
        text = torch.where(swap[..., None], self.word_drop_table[item_seq], self.feature_text[item_seq])
        return item_seq, seq_len, text

    # ---- interest discovery ------------------------------------------------------------------
    @torch.no_grad()
    def discover_interests(self, ratio: float | None = None) -> Discovery:
        """k-means (faiss) over the adapted rows of every present modality; writes centroids and lookups."""
        start = time.perf_counter()
        rows = {m: torch.nonzero(getattr(self, f"present_{m}")).squeeze(1) for m in self.modalities}
        points = torch.cat([self.adaptors[m](getattr(self, f"feature_{m}")[r]) for m, r in rows.items()])  # (P, D)
        if len(points) == 0:
            return Discovery(0, 0, 0.0)
        k = n_interests(len(points), self.cfg.interest_ratio if ratio is None else ratio)
        seed = int(torch.randint(0, 2**31 - 1, ()))  # from torch's generator: a seeded run (and its resume) repeats
        centroids, labels = kmeans(points, k, self.cfg.kmeans_iters, seed)
        self.interest_centroids.zero_()
        self.interest_centroids[1 : k + 1] = centroids
        offset = 0
        for m, r in rows.items():
            lookup = getattr(self, f"interest_of_{m}")
            lookup.zero_()
            lookup[r] = labels[offset : offset + len(r)] + 1
            offset += len(r)
        self.interest_count.fill_(k)
        found = Discovery(k, len(points), time.perf_counter() - start)
        self.discoveries.append(found)
        return found

    @torch.no_grad()
    def _complete_interests(self) -> None:
        """After loading: present rows without an interest (a grown catalogue's new items) get their nearest centroid.

        The trained centroids and the other rows' ids stay as loaded; nothing is re-clustered, nothing is random.
        """
        k = int(self.interest_count)
        missing = {m: getattr(self, f"present_{m}") & (getattr(self, f"interest_of_{m}") == 0) for m in self.modalities}
        if k == 0 or not any(bool(v.any()) for v in missing.values()):
            return
        for m, rows in missing.items():
            points = self.adaptors[m](getattr(self, f"feature_{m}")[rows])  # (P, D)
            getattr(self, f"interest_of_{m}")[rows] = torch.cdist(points, self.interest_centroids[1 : k + 1]).argmin(dim=1) + 1

    def phases(self, kind: PhaseKind) -> list[Phase]:
        if self.cfg.interest_tokens:  # fail before training starts, not at the first epoch's clustering
            from textrec.quant.faiss_io import require_faiss

            require_faiss("MISSRec's interest discovery (k-means)")
        ratio = self.cfg.pretrain_interest_ratio if kind == "pretrain" else self.cfg.interest_ratio
        hook = (lambda model, epoch: model.discover_interests(ratio).report()) if self.cfg.interest_tokens else None
        if kind == "pretrain":
            return [Phase("pretrain", train_all, loss=self.pretrain_loss, on_epoch_start=hook)]
        if kind == "finetune" and self.cfg.freeze_encoder:
            frozen = [m for m in (self.pos_emb, self.encoder, self.encoder_norm, self.decoder, self.decoder_norm) if m is not None]
            return [Phase("fine-tune, encoder frozen", train_all_but(*frozen), on_epoch_start=hook)]
        return [Phase(kind, train_all, on_epoch_start=hook)]
