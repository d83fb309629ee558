"""Recformer: items as key-value sentences, a Longformer-style language model over them (Li et al., KDD 2023).

Reference: AaronHeee/RecFormer @26b00a5 (identical to the code JiachengLi1995/Recformer held):
``recformer/models.py``, ``tokenization.py``, ``collator.py``, ``finetune.py``, ``lightning_pretrain.py``;
summarised in REFERENCE_NOTES section 4 and the seed text 003 in shared/reference.

* Items are sentences of their key-value attributes (``textrec.data.sentences``: at most ``max_attr_num``
  attributes, key + value tokens cut to ``max_attr_length``, token types key 1 / value 2), tokenised once
  per catalogue by the backbone's fast tokenizer into flat per-item tables (buffers). A batch's token rows
  are gathered from them on the device (``sequence_tokens``); nothing is tokenised per step.
* A sequence is ``<s>`` then its items **most recent first**, at most ``max_item_embeddings - 1`` items and
  ``max_token_num`` tokens. ``<s>``: token type 0, item position 0; the k-th most recent item's tokens:
  item position k; padding: the pad id, type 3, item position ``max_item_embeddings - 1``.
* Embeddings: word + position + token type (4 rows) + item position -> LayerNorm -> dropout
  (transformers' ``BertEmbeddings``, the item positions entering as part of ``inputs_embeds``). Positions
  are the backbone's: 0, 1, ... for BERT, from ``padding_idx + 1`` for RoBERTa / Longformer.
* Encoder: BERT layers from transformers (``BertAttention``, ``BertIntermediate``, ``BertOutput``) with
  Longformer's attention pattern: every token attends to the tokens within ``attention_window / 2`` on
  either side and to ``<s>`` (local projections), and ``<s>`` attends to every token through its own global
  query / key / value projections. Loaded backbones without global projections start them equal to the
  local ones (Longformer was made from RoBERTa so).
* The last hidden state of ``<s>`` is the representation of a sequence, and of an item encoded alone
  (``<s>`` + its tokens). Scores are cosines; losses divide them by ``temperature`` (0.05).
* ``pretrain_loss``: in-batch contrastive loss between each (prefix, next item) pair's prefix and item,
  plus ``mlm_weight`` (0.1) x whole-word masked-language-model loss on each side (15% of the words; of
  their tokens 80% [MASK], 10% a random token, 10% kept), the MLM on separately masked copies of the
  inputs, as the reference; the MLM decoder is tied to the word embeddings.
* Fine-tuning and training (``phases``), the reference's two stages: stage 1 re-encodes every catalogue
  item into a fixed item table at the start of every epoch and trains the sequence encoder against it with
  cross-entropy over all items (patience 5); stage 2 reloads the best weights, with that epoch's item table,
  keeps the table fixed and goes on with the same optimiser and schedule (patience 3).

Backbones (``backbone``): ``"minilm"``, the embedded all-MiniLM-L6-v2 (BERT, 384-d, read offline); any
local BERT / RoBERTa / Longformer folder (``allenai/longformer-base-4096`` is the paper's setting); or
``"random"``, the tokenizer's architecture (MiniLM's unless ``tokenizer`` names a folder) with random
weights, sizes overridable, for tests. Word embeddings and layers (and an MLM head when the folder has one)
come from the backbone; token types, item positions (and a missing MLM head) start random
(``new_tables="backbone"``: from the backbone, see below).

Deliberate differences from the reference:

* Attention is BERT's dense attention under a sliding-window + global mask: the same outputs as
  Longformer's banded kernels, at O(L^2) instead of O(L w) cost (at 512 tokens and a 64 window, about 20%
  more compute per layer).
* Whole-word masking draws each word with probability 0.15 (15% of the tokens in expectation) instead of
  filling a shuffled word list up to round(0.15 n) tokens.
* In-batch pre-training negatives: another row with the same target item, or of the same user, is not a
  negative (``same_target="mask"``, as textrec's UniSRec); ``"keep"`` is the reference's plain
  cross-entropy.
* Training rows come from the generic batcher (``SPEC.training_rows = "sampled"``): one random (prefix, next
  item) row per user per epoch. Fine-tuning draws from any prefix, the first item with an empty history
  (``<s>`` alone) included as the reference (``empty_history=false``: histories of at least one item, as rows
  measured before the option); pre-training draws the target position from U[(n-1)//2, n-1] as the reference
  (``pretrain_cut="reference"``; ``"any"``: every prefix).
* Item-table rows that were never encoded are encoded when the table is first used: a model built for a new
  catalogue, and one grown by new items (``textrec.serve.catalogue`` rebuilds item-sized buffers, so the
  whole table is then re-encoded with the final weights, not only the new rows). During pre-training the
  table is re-encoded for each validation pass.
* ``pooling="mean"`` (an option; ``"bos"``, the reference's ``<s>`` state, is the default): a sequence or item is
  the mean of its real tokens' last hidden states, ``<s>`` included, the pooling all-MiniLM-L6-v2 was trained with
  as a sentence encoder (its ``[CLS]`` state was never trained to summarise a sentence; Longformer's neither, which
  the reference's pre-training teaches ``<s>`` to do).
* ``new_tables="backbone"`` (an option; ``"random"``, the reference's, is the default): the tables a loaded backbone
  lacks start so that the backbone is unchanged: every one of the four token types as its type-0 row (the row all of
  its pre-training inputs carried; dropping it shifts every input by a vector half a word embedding's norm in MiniLM),
  the item positions at zero. Before any training an item alone is then encoded exactly as the backbone encodes it.
* ``stage_1_max_epochs`` (an option; 0, the reference's, is none): stage 1 also ends after that many epochs, so
  that a run shorter than the reference's (the reduced CPU setting) reaches stage 2; the learning-rate schedule still
  spans the whole run. ``stage_1_eval_every`` (0: ``train.eval_every``) validates stage 1 every k epochs only.
* Exact savings (the same outputs, less compute): a ``<s>``-pooled encoder computes its last layer for ``<s>``
  alone; rows of a batch that needs several forward passes are grouped by token count and cut to each group's
  width; training buckets sort rows by token count (``row_sizes``); the training logits are fp32 under autocast.
* Attributes with empty values are left out; ``max_token_num`` defaults to 512 (reference 1024; its README
  reports no clear loss at 512, and the embedded MiniLM has 512 positions).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoConfig, AutoTokenizer, BertConfig
from transformers.models.bert.modeling_bert import (BertAttention, BertEmbeddings, BertIntermediate, BertOutput,
                                                    BertPredictionHeadTransform)

from textrec.collective import gather_with_grad, global_mean, world_size
from textrec.data.batching import SeqBatch
from textrec.data.sentences import tokenize_items
from textrec.errors import ConfigError, NotFoundError
from textrec.models.layers import in_batch_contrastive, init_weights
from textrec.models.spec import ItemInputs, ModelSpec, Phase, PhaseKind, Recipe, SampledCut, train_all_but

BOS_TYPE, PAD_TYPE = 0, 3  # token types of <s> and padding (key 1, value 2: textrec.data.sentences)
_ROBERTA_POSITIONS = ("roberta", "longformer", "xlm-roberta", "camembert")  # positions start at padding_idx + 1


@dataclass(frozen=True)
class RecformerConfig:
    backbone: str = "minilm"  # "minilm" (embedded, offline), a local BERT/RoBERTa/Longformer folder, or "random"
    tokenizer: str = ""  # "" = the backbone's (for "random": the MiniLM tokenizer); or a local tokenizer folder
    hidden_size: int = 0  # 0 = the backbone's; "random" may set any size (a loaded backbone must match)
    n_layers: int = 0  # 0 = every backbone layer; k = its first k (MiniLM's <s> separates items only after all 6)
    n_heads: int = 0  # 0 = the backbone's
    inner_size: int = 0  # 0 = the backbone's feed-forward size
    hidden_dropout: float = -1.0  # < 0: the backbone's (0.1 for BERT, MiniLM, Longformer)
    attn_dropout: float = -1.0  # < 0: the backbone's
    init_std: float = 0.0  # std of the randomly initialised weights; 0: the backbone's initializer_range (0.02)
    max_attr_num: int = 3  # reference: attributes per item
    max_attr_length: int = 32  # reference: key + value tokens per attribute
    max_item_embeddings: int = 51  # reference: 50 items + <s>
    max_token_num: int = 512  # reference 1024; its README: 512 without clear loss (and MiniLM has 512 positions)
    attention_window: int = 64  # reference [64] * 12: each token sees 32 tokens on either side (+ <s>)
    temperature: float = 0.05  # reference config default
    # the representation of a sequence / an item: the last hidden state of <s> (reference), or the mean over its
    # real tokens (<s> included), the pooling all-MiniLM-L6-v2 was trained with as a sentence encoder
    pooling: Literal["bos", "mean"] = "bos"
    # the tables a loaded backbone lacks: random (reference), or "backbone": every token type starts as the backbone's
    # type-0 row and item positions at zero, so that before training an item alone is encoded as the backbone encodes it
    new_tables: Literal["random", "backbone"] = "random"
    mlm_weight: float = 0.1  # reference mlm_weight, applied to each side of a pre-training pair
    mlm_probability: float = 0.15  # reference whole-word masking rate
    freeze_word_embeddings: Literal["pretrain", "always", "never"] = "pretrain"  # reference: --fix_word_embedding in pre-training
    same_target: Literal["mask", "keep"] = "mask"  # pre-training: same-item / same-user rows are not negatives, or reference
    # pre-training pairs: the target position drawn from U[(n-1)//2, n-1] as the reference, or from any prefix
    pretrain_cut: Literal["reference", "any"] = "reference"
    stage_1_patience: int = 5  # reference: evaluations without improvement while re-encoding items every epoch
    stage_2_patience: int = 3  # reference: the same with the item table fixed
    # 0: stage 1 ends only by its patience (reference); k: also after k epochs, so that a run shorter than the
    # reference's reaches stage 2 (the learning-rate schedule still spans the whole run: stage 2 keeps the optimiser)
    stage_1_max_epochs: int = 0
    # fine-tuning rows also draw each user's first item with an empty history (<s> alone), as the reference (t ~ U[0, n-1])
    empty_history: bool = True
    stage_1_eval_every: int = 0  # 0: train.eval_every; k: stage 1 validates every k epochs (reference: 3), stage 2 as train.eval_every
    encode_tokens: int = 8192  # tokens per forward pass when encoding the catalogue or evaluating (bounds memory)

    def __post_init__(self) -> None:
        for key in ("max_attr_num", "max_attr_length", "max_token_num", "attention_window", "stage_1_patience",
                    "stage_2_patience", "encode_tokens"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key} must be >= 1, not {getattr(self, key)}")
        if self.stage_1_eval_every < 0:
            raise ConfigError(f"model.stage_1_eval_every must be >= 0 (0: train.eval_every), not {self.stage_1_eval_every}")
        if self.stage_1_max_epochs < 0:
            raise ConfigError(f"model.stage_1_max_epochs must be >= 0 (0: no cap), not {self.stage_1_max_epochs}")
        if self.max_item_embeddings < 2:
            raise ConfigError("model.max_item_embeddings must be >= 2 (<s> and at least one item)")
        if min(self.hidden_size, self.n_layers, self.n_heads, self.inner_size) < 0:
            raise ConfigError("model.hidden_size, n_layers, n_heads and inner_size must be >= 0 (0: the backbone's)")
        if self.init_std < 0:
            raise ConfigError("model.init_std must be >= 0 (0: the backbone's)")
        if self.hidden_dropout >= 1 or self.attn_dropout >= 1:
            raise ConfigError("model.hidden_dropout and attn_dropout must be < 1 (negative: the backbone's)")
        if self.temperature <= 0 or not 0 < self.mlm_probability < 1 or self.mlm_weight < 0:
            raise ConfigError("model.temperature must be > 0, mlm_probability in (0, 1), mlm_weight >= 0")


class Tokens(NamedTuple):
    """Token rows of a batch of sequences (or of items encoded alone)."""

    ids: Tensor  # (B, W) long token ids
    types: Tensor  # (B, W) long token types: <s> 0, key 1, value 2, padding 3
    item_pos: Tensor  # (B, W) long: <s> 0, k-th most recent item k, padding max_item_embeddings - 1
    real: Tensor  # (B, W) bool: not padding
    word_starts: Tensor  # (B, W) bool: the token begins a word (never <s> or padding)


# ---- backbones ---------------------------------------------------------------------------------------
def _folder(name: str) -> Path:
    if name == "minilm":
        from textrec.text.encoders import default_encoder_path

        return default_encoder_path()
    path = Path(name).expanduser()
    if not (path / "config.json").exists():
        raise NotFoundError(f"model.backbone={name!r}: not 'minilm', 'random' or a local model folder with config.json")
    return path.resolve()


@functools.lru_cache(maxsize=4)
def _tokenizer(folder: str):
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if not tok.is_fast:
        raise ConfigError(f"{folder}: Recformer needs a fast tokenizer (tokenizer.json)")
    return tok


def backbone_config(cfg: RecformerConfig) -> tuple[BertConfig, Path | None, int]:
    """(BERT config of the model, folder to load weights from or None, first position id)."""
    weights = None if cfg.backbone == "random" else _folder(cfg.backbone)
    source = weights or _folder(cfg.tokenizer or "minilm")
    hf = AutoConfig.from_pretrained(source, local_files_only=True)
    sizes = {"hidden_size": cfg.hidden_size, "num_attention_heads": cfg.n_heads, "intermediate_size": cfg.inner_size}
    for key, value in sizes.items():
        if value and weights is not None and value != getattr(hf, key):
            raise ConfigError(f"{weights} has {key} {getattr(hf, key)}; model settings cannot change it (use 0)")
    if cfg.n_layers > hf.num_hidden_layers and weights is not None:
        raise ConfigError(f"{weights} has {hf.num_hidden_layers} layers, fewer than model.n_layers={cfg.n_layers}")
    offset = hf.pad_token_id + 1 if hf.model_type in _ROBERTA_POSITIONS else 0
    config = BertConfig(
        vocab_size=hf.vocab_size, hidden_size=sizes["hidden_size"] or hf.hidden_size,
        num_hidden_layers=cfg.n_layers or hf.num_hidden_layers, num_attention_heads=cfg.n_heads or hf.num_attention_heads,
        intermediate_size=cfg.inner_size or hf.intermediate_size, hidden_act=hf.hidden_act,
        hidden_dropout_prob=hf.hidden_dropout_prob if cfg.hidden_dropout < 0 else cfg.hidden_dropout,
        attention_probs_dropout_prob=hf.attention_probs_dropout_prob if cfg.attn_dropout < 0 else cfg.attn_dropout,
        max_position_embeddings=hf.max_position_embeddings, type_vocab_size=4, layer_norm_eps=hf.layer_norm_eps,
        initializer_range=cfg.init_std or hf.initializer_range, pad_token_id=hf.pad_token_id,
    )
    config._attn_implementation = "sdpa"  # takes the boolean window mask
    if config.hidden_size % config.num_attention_heads:
        raise ConfigError(f"model.hidden_size {config.hidden_size} is not a multiple of n_heads {config.num_attention_heads}")
    return config, weights, offset


def _read_weights(folder: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if files:
        return {k: v for f in files for k, v in load_file(str(f)).items()}
    if (folder / "pytorch_model.bin").exists():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise NotFoundError(f"{folder}: no model weights (*.safetensors or pytorch_model.bin)")


_HEAD_NAMES = {"cls.predictions.transform.": "lm_head.transform.", "cls.predictions.bias": "lm_head.bias",
               "lm_head.dense.": "lm_head.transform.dense.", "lm_head.layer_norm.": "lm_head.transform.LayerNorm.",
               "lm_head.bias": "lm_head.bias"}


def backbone_state(raw: dict[str, Tensor], n_layers: int) -> dict[str, Tensor]:
    """A BERT / RoBERTa / Longformer state dict in this model's names (the new tables are not in it)."""
    out = {}
    for key, value in raw.items():
        for prefix in ("bert.", "roberta.", "longformer."):
            key = key.removeprefix(prefix)
        head = next((p for p in _HEAD_NAMES if key.startswith(p)), None)
        if head is not None:
            out[_HEAD_NAMES[head] + key[len(head):]] = value
        elif key.startswith("embeddings.") and "token_type" not in key and "position_ids" not in key:
            out[key] = value
        elif key.startswith("encoder.layer."):
            i, rest = key.removeprefix("encoder.layer.").split(".", 1)
            if int(i) < n_layers:
                for kind in ("query", "key", "value"):
                    rest = rest.replace(f"attention.self.{kind}_global.", f"global_{kind}.")
                out[f"layers.{i}.{rest}"] = value
    return out


# ---- layers ------------------------------------------------------------------------------------------
class LongformerStyleLayer(nn.Module):
    """A BERT layer whose self-attention is Longformer's: local window for every token, global for <s>."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.attention = BertAttention(config)  # local q/k/v + output projection, residual and LayerNorm
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)
        self.global_query, self.global_key, self.global_value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.n_heads = config.num_attention_heads
        self.attn_dropout = config.attention_probs_dropout_prob

    @torch.no_grad()
    def copy_local_to_global(self) -> None:
        local = self.attention.self
        for g, loc in ((self.global_query, local.query), (self.global_key, local.key), (self.global_value, local.value)):
            g.load_state_dict(loc.state_dict())

    def forward(self, h: Tensor, local_mask: Tensor, real: Tensor, bos_only: bool = False) -> Tensor:
        """(B, W, D) -> (B, W, D) next hidden states; ``bos_only``: (B, 1, D), the ``<s>`` row alone.

        ``<s>`` attends through the global projections only, so its output needs every token's global keys and
        values but no local attention and no other row's output projection or feed-forward: the last layer of a
        ``<s>``-pooled encoder computes just that (the same numbers as the whole layer's row 0)."""
        B, W, D = h.shape
        if not bos_only:
            local, _ = self.attention.self(h, attention_mask=local_mask)  # (B, W, D)
        q = self.global_query(h[:, :1]).view(B, 1, self.n_heads, -1).transpose(1, 2)  # (B, H, 1, d_head)
        k = self.global_key(h).view(B, W, self.n_heads, -1).transpose(1, 2)  # (B, H, W, d_head)
        v = self.global_value(h).view(B, W, self.n_heads, -1).transpose(1, 2)
        glob = F.scaled_dot_product_attention(q, k, v, attn_mask=real[:, None, None, :],
                                              dropout_p=self.attn_dropout if self.training else 0.0)  # (B, H, 1, d_head)
        glob = glob.transpose(1, 2).reshape(B, 1, D)
        if bos_only:
            x = self.attention.output(glob, h[:, :1])  # (B, 1, D)
            return self.output(self.intermediate(x), x)
        mixed = torch.cat([glob, local[:, 1:]], dim=1)  # (B, W, D)
        x = self.attention.output(mixed, h)
        return self.output(self.intermediate(x), x)


class MLMHead(nn.Module):
    """BERT's prediction head; the decoder is the word-embedding matrix (tied, as the reference's lm_head)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, h: Tensor, word_weight: Tensor) -> Tensor:
        return F.linear(self.transform(h), word_weight, self.bias)  # (N, vocab)


# ---- the model ---------------------------------------------------------------------------------------
def sampled_cut(cfg: RecformerConfig, pretraining: bool) -> SampledCut:
    """The prefixes a per-user draw picks from (``textrec.data.batching.cut_mask``): the reference's second-half cut
    in pre-training (``pretrain_cut``), any prefix in fine-tuning (reference: t ~ U[0, n-1])."""
    return cfg.pretrain_cut if pretraining else "any"


def empty_history_rows(cfg: RecformerConfig, pretraining: bool) -> bool:
    """Whether training rows include each user's first item with an empty history (``<s>`` alone): in
    fine-tuning as the reference (``empty_history``), never in pre-training (its pairs cut in the second half)."""
    return cfg.empty_history and not pretraining


# the reference's fine-tuning (finetune.sh over finetune.py's defaults) and pre-training (lightning_run.sh) settings,
# REFERENCE_NOTES section 4 (textrec/configs/recformer-reference.toml spells the fine-tuning ones out). Fine-tuning
# steps the optimiser every 128 rows as the reference's 16 x 8, in batches of 8 x 16: a batch of 16 512-token rows
# (MovieLens-100K) peaked at 7.9 GB on CPU; the full softmax makes the two the same gradient
_FINETUNE = {"train.optimizer": "adamw", "train.lr": 5e-5, "train.weight_decay": 0.0, "train.batch_size": 8,
             "train.grad_accum": 16, "train.schedule": "linear", "train.warmup_steps": 100, "train.epochs": 128,
             "train.eval_every": 3, "eval.extra": ["mrr", "auc"]}
RECIPE = Recipe(
    train=_FINETUNE,
    finetune=_FINETUNE,
    pretrain={"train.optimizer": "adamw", "train.lr": 5e-5, "train.batch_size": 16, "train.grad_accum": 8,
              "train.schedule": "linear", "train.grad_clip": 1.0},
    source="Recformer finetune.sh / lightning_run.sh: AdamW 5e-5, 128 rows per step (fine-tuning: 8 x 16), linear schedule",
)


def _with_pad_entry(values, fill) -> Tensor:
    """A flat numpy token table as a tensor with one padding entry appended (every gather index stays valid)."""
    t = torch.from_numpy(values)
    return torch.cat([t, torch.full((1,), fill, dtype=t.dtype)])


class Recformer(nn.Module):
    Config = RecformerConfig
    SPEC = ModelSpec(
        item_inputs=("attributes",),
        causal=False,  # bidirectional attention over the whole history
        training_rows="sampled",  # one random (prefix, next item) per user per epoch, as the reference
        sampled_cut=sampled_cut,
        empty_history_rows=empty_history_rows,
        catalogue_keys=("item_table",),  # the token tables are rebuilt from the attributes and never saved
        architecture_keys=("hidden_size", "n_layers", "n_heads", "inner_size"),
        recipe=RECIPE,
        extra="text",  # transformers
    )

    def __init__(self, cfg: RecformerConfig, inputs: ItemInputs, max_seq_len: int) -> None:
        super().__init__()
        self.cfg = cfg
        attributes = inputs.require("attributes", "recformer")
        self.n_items = len(attributes)
        config, weights, self.position_offset = backbone_config(cfg)
        if cfg.max_token_num + self.position_offset > config.max_position_embeddings:
            raise ConfigError(f"model.max_token_num={cfg.max_token_num} exceeds the backbone's "
                              f"{config.max_position_embeddings - self.position_offset} positions")
        tok = _tokenizer(str(_folder(cfg.tokenizer) if cfg.tokenizer else weights or _folder("minilm")))
        if len(tok) > config.vocab_size:
            raise ConfigError(f"the tokenizer has {len(tok)} tokens, more than the backbone's {config.vocab_size} word embeddings")
        self.bos_id, self.pad_id, self.mask_id = tok.cls_token_id, tok.pad_token_id, tok.mask_token_id
        self.vocab_size = config.vocab_size
        table = tokenize_items(attributes, tok, cfg.max_attr_num, cfg.max_attr_length)
        # flat per-item token tables (one pad entry appended so that every gather index is valid)
        self.register_buffer("tok_ids", _with_pad_entry(table.token_ids, self.pad_id), persistent=False)  # (N + 1,) int32
        self.register_buffer("tok_types", _with_pad_entry(table.token_types, PAD_TYPE), persistent=False)  # (N + 1,) int8
        self.register_buffer("tok_word_starts", _with_pad_entry(table.word_starts, False), persistent=False)  # (N + 1,) bool
        self.register_buffer("item_offsets", torch.from_numpy(table.offsets[:-1]).clone(), persistent=False)  # (n + 1,)
        self.register_buffer("item_lengths", torch.from_numpy(table.lengths).clone(), persistent=False)  # (n + 1,)

        self.embeddings = BertEmbeddings(config)
        self.item_position_embeddings = nn.Embedding(cfg.max_item_embeddings, config.hidden_size)
        self.layers = nn.ModuleList(LongformerStyleLayer(config) for _ in range(config.num_hidden_layers))
        self.lm_head = MLMHead(config)
        # <s> state of every item encoded alone, L2-normalised; all-zero rows are not encoded yet (row 0: padding)
        self.register_buffer("item_table", torch.zeros(self.n_items + 1, config.hidden_size))
        self.apply(lambda m: init_weights(m, config.initializer_range))
        has_global = False
        if weights is not None:
            raw = _read_weights(weights)
            state = backbone_state(raw, config.num_hidden_layers)
            has_global = any(".global_" in k for k in state)
            unexpected = self.load_state_dict(state, strict=False).unexpected_keys
            if unexpected:
                raise ConfigError(f"{weights}: weights {unexpected[:3]} do not fit a BERT-style backbone")
            if cfg.new_tables == "backbone":
                self._start_new_tables_from(raw)
        if not has_global:
            for layer in self.layers:
                layer.copy_local_to_global()

    @torch.no_grad()
    def _start_new_tables_from(self, raw: dict[str, Tensor]) -> None:
        """``new_tables="backbone"``: every token type starts as the backbone's type-0 row (the row all its
        pre-training inputs carried), item positions at zero."""
        types = next((v for k, v in raw.items() if k.endswith("embeddings.token_type_embeddings.weight")), None)
        if types is not None:
            table = self.embeddings.token_type_embeddings.weight
            table.copy_(types[0].to(table.dtype).expand_as(table))
        self.item_position_embeddings.weight.zero_()

    # ---- tokens --------------------------------------------------------------------------------------
    def sequence_tokens(self, item_seq: Tensor, seq_len: Tensor) -> Tokens:
        """Token rows of right-padded item sequences (oldest first): <s>, then items most recent first."""
        cfg, device = self.cfg, item_seq.device
        B, L = item_seq.shape
        K = max(1, min(L, cfg.max_item_embeddings - 1))
        slot = torch.arange(K, device=device)
        n_kept = seq_len.clamp(max=K)  # (B,)
        kept = slot[None, :] < n_kept[:, None]  # (B, K)
        recent = torch.where(kept, item_seq.gather(1, (seq_len[:, None] - 1 - slot[None, :]).clamp(min=0, max=L - 1)), 0)  # (B, K)
        lengths = self.item_lengths[recent]  # (B, K) tokens of each kept item (0 for padding)
        ends = lengths.cumsum(dim=1)  # (B, K) end of each item's tokens, counted after <s>
        n_tokens = (1 + ends[:, -1]).clamp(max=cfg.max_token_num)  # (B,) including <s>
        W = int(n_tokens.max())
        pos = torch.arange(W - 1, device=device).expand(B, -1)  # (B, W - 1) token index after <s>
        k = torch.searchsorted(ends, pos.contiguous(), right=True).clamp(max=K - 1)  # (B, W - 1) item slot of each token
        real = pos + 1 < n_tokens[:, None]
        start = ends.gather(1, k) - lengths.gather(1, k)
        flat = torch.where(real, self.item_offsets[recent.gather(1, k)] + pos - start, self.tok_ids.numel() - 1)
        first = torch.ones(B, 1, dtype=torch.bool, device=device)
        return Tokens(
            ids=torch.cat([torch.full_like(first, self.bos_id, dtype=torch.long), self.tok_ids[flat].long()], dim=1),
            types=torch.cat([torch.full_like(first, BOS_TYPE, dtype=torch.long), self.tok_types[flat].long()], dim=1),
            item_pos=torch.cat([torch.zeros_like(first, dtype=torch.long),
                                torch.where(real, k + 1, cfg.max_item_embeddings - 1)], dim=1),
            real=torch.cat([first, real], dim=1),
            word_starts=torch.cat([~first, self.tok_word_starts[flat]], dim=1),
        )

    @torch.no_grad()
    def row_sizes(self, item_seq: Tensor, seq_len: Tensor) -> Tensor:
        """(R,) tokens of each row's ``sequence_tokens`` (``<s>`` included), what training buckets sort by
        (``TrainBatcher.bucket_by``) so that a batch's rows have similar widths; computed in blocks of rows."""
        K = max(1, min(item_seq.shape[1], self.cfg.max_item_embeddings - 1))
        out = []
        for seq, n in zip(item_seq.split(4096), seq_len.split(4096)):
            pos = torch.arange(seq.shape[1], device=seq.device)
            kept = (pos[None, :] < n[:, None]) & (pos[None, :] >= n[:, None] - K)  # the K most recent items
            out.append((1 + (self.item_lengths[seq] * kept).sum(dim=1)).clamp(max=self.cfg.max_token_num))
        return torch.cat(out).cpu()

    def item_tokens(self, ids: Tensor) -> Tokens:
        """Token rows of items encoded alone: ``<s>`` + the item, as the reference's ``encode_all_items``."""
        return self.sequence_tokens(ids[:, None], torch.ones_like(ids))

    # ---- encoder -------------------------------------------------------------------------------------
    def attention_mask(self, real: Tensor) -> Tensor:
        """(B, 1, W, W) or (B, 1, 1, W) bool: key j is visible to query i (local window, <s>, not padding)."""
        W = real.shape[1]
        half = self.cfg.attention_window // 2
        if W - 1 <= half:  # the window covers the whole row
            return real[:, None, None, :]
        pos = torch.arange(W, device=real.device)
        window = ((pos[:, None] - pos[None, :]).abs() <= half) | (pos[None, :] == 0)  # (W, W)
        return window[None, None] & real[:, None, None, :]

    def hidden(self, tok: Tokens, bos_only: bool = False) -> Tensor:
        """Token rows -> (B, W, D) last hidden states; ``bos_only``: (B, 1, D), the last layer for ``<s>`` alone."""
        B, W = tok.ids.shape
        positions = (self.position_offset + torch.arange(W, device=tok.ids.device)).expand(B, -1)
        x = self.embeddings(token_type_ids=tok.types, position_ids=positions,
                            inputs_embeds=self.embeddings.word_embeddings(tok.ids) + self.item_position_embeddings(tok.item_pos))
        mask = self.attention_mask(tok.real)
        for i, layer in enumerate(self.layers):
            x = layer(x, mask, tok.real, bos_only=bos_only and i == len(self.layers) - 1)
        return x  # (B, W, D), or (B, 1, D)

    def pool(self, tok: Tokens) -> Tensor:
        """(B, D) representations of token rows (``pooling``): the <s> state, or the mean of the real tokens' states."""
        if self.cfg.pooling == "bos":
            return self.hidden(tok, bos_only=True)[:, 0]
        h = self.hidden(tok)
        real = tok.real.unsqueeze(-1).to(h.dtype)  # (B, W, 1)
        return (h * real).sum(dim=1) / real.sum(dim=1)

    def _pooled(self, tok: Tokens) -> Tensor:
        """L2-normalised representations (``pool``), ``encode_tokens`` tokens per forward pass: (B, D).

        Rows that do not fit one pass are grouped by their number of real tokens and each group is cut to its
        longest row, so that padding is not computed (the rows' outputs do not depend on it); a batch that
        fits one pass is encoded as it is."""
        B, W = tok.ids.shape
        if B * W <= self.cfg.encode_tokens:
            return F.normalize(self.pool(tok), dim=-1)
        groups = self.token_groups(tok.real.sum(dim=1))
        parts = [self.pool(Tokens(*(t[rows, :width] for t in tok))) for rows, width in groups]
        order = torch.cat([rows for rows, _ in groups])
        return F.normalize(torch.cat(parts)[torch.argsort(order)], dim=-1)

    def token_groups(self, n_real: Tensor) -> list[tuple[Tensor, int]]:
        """(rows, width) groups of rows with ``n_real`` tokens each, fewest tokens first: the next row joins a group
        while the group's rows x its width fit ``encode_tokens`` (a longer row alone makes its own group)."""
        order = torch.argsort(n_real, stable=True)
        widths = n_real[order].tolist()
        groups, start = [], 0
        for end in range(1, len(widths) + 1):
            if end == len(widths) or (end + 1 - start) * widths[end] > self.cfg.encode_tokens:
                groups.append((order[start:end], int(widths[end - 1])))
                start = end
        return groups

    def encode(self, batch: SeqBatch) -> Tensor:
        return self._pooled(self.sequence_tokens(batch.item_seq, batch.seq_len))  # (B, D)

    # ---- the item table ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_items(self, ids: Tensor) -> None:
        """Encode items ``ids`` into ``item_table``: items of one token count together (no padding), at most
        ``encode_tokens`` tokens per forward pass, so working memory is bounded by that budget, not the catalogue."""
        was_training = self.training
        self.eval()
        ids = ids[torch.argsort(self.item_lengths[ids], stable=True)]
        widths, counts = torch.unique_consecutive((1 + self.item_lengths[ids]).clamp(max=self.cfg.max_token_num),
                                                  return_counts=True)
        start = 0
        for width, count in zip(widths.tolist(), counts.tolist()):  # at most max_attr_num * max_attr_length groups
            rows = max(1, self.cfg.encode_tokens // width)
            for first in range(start, start + count, rows):
                chunk = ids[first : min(first + rows, start + count)]
                self.item_table[chunk] = self._pooled(self.item_tokens(chunk)).to(self.item_table.dtype)
            start += count
        self.train(was_training)

    def refresh_item_table(self) -> dict[str, float]:
        """Re-encode every catalogue item (stage 1: at the start of every epoch); reports the seconds it took
        (``item_encode_seconds`` in the epoch's log record, inside its ``train_seconds``)."""
        start = time.perf_counter()
        self.encode_items(torch.arange(1, self.n_items + 1, device=self.item_table.device))
        if self.item_table.is_cuda:
            torch.cuda.synchronize(self.item_table.device)
        return {"item_encode_seconds": time.perf_counter() - start}

    def clear_item_table(self) -> None:
        """Mark every row stale; the next use re-encodes them (pre-training: before each validation)."""
        self.item_table.zero_()

    def _ready_item_table(self) -> Tensor:
        """The item table after encoding its all-zero rows (scanned in blocks: no temporary of the table's size)."""
        block = 65536
        missing = torch.cat([torch.nonzero(rows.abs().amax(dim=1) == 0).squeeze(1) + start
                             for start, rows in zip(range(1, self.n_items + 1, block), self.item_table[1:].split(block))])
        if missing.numel():
            self.encode_items(missing)
        return self.item_table

    def item_embeddings(self) -> Tensor:
        return self._ready_item_table()  # (n_items + 1, D); row 0 is zeros

    # ---- losses --------------------------------------------------------------------------------------
    def loss(self, batch: SeqBatch) -> Tensor:
        """Cross-entropy over all items of cos(sequence, fixed item table) / temperature (reference fine-tuning)."""
        items = self._ready_item_table()[1:]  # (n_items, D), no gradient: re-encoded per epoch or fixed
        # (an empty history keeps its target in column 0)
        target = batch.targets.gather(1, (batch.seq_len - 1).clamp(min=0)[:, None]).squeeze(1)  # (B,)
        seq = self.encode(batch)  # (B, D)
        with torch.autocast(seq.device.type, enabled=False):  # one small matmul: fp32 even under autocast (bf16 errs up to 0.08)
            logits = seq.float() @ items.float().T / self.cfg.temperature
        return global_mean(F.cross_entropy(logits, target - 1, reduction="none"))

    def pretrain_loss(self, batch: SeqBatch) -> Tensor:
        """In-batch contrastive loss of (prefix, next item) + mlm_weight x whole-word MLM on both sides."""
        target = batch.targets.gather(1, (batch.seq_len - 1)[:, None]).squeeze(1)  # (B,)
        seq_tok, item_tok = self.sequence_tokens(batch.item_seq, batch.seq_len), self.item_tokens(target)
        seq, item = self.pool(seq_tok), self.pool(item_tok)  # (B, D) each
        if self.cfg.same_target == "mask":
            loss = in_batch_contrastive(seq, item, target, self.cfg.temperature, "mask", groups=batch.users)
        else:
            seq, item = gather_with_grad(seq), gather_with_grad(item)  # all ranks' rows
            logits = F.normalize(seq, dim=-1) @ F.normalize(item, dim=-1).T / self.cfg.temperature
            loss = F.cross_entropy(logits.float(), torch.arange(len(seq), device=target.device))
        if self.cfg.mlm_weight > 0:
            loss = loss + self.cfg.mlm_weight * (self.mlm_loss(seq_tok) + self.mlm_loss(item_tok))
        return loss

    def mask_words(self, tok: Tokens) -> tuple[Tensor, Tensor]:
        """(masked ids, chosen) for whole-word MLM: each word drawn with mlm_probability; 80/10/10 per token."""
        B, W = tok.ids.shape
        word = tok.word_starts.long().cumsum(dim=1)  # (B, W) word index in the row (1-based; <s> 0)
        drawn = torch.rand(B, W + 1, device=tok.ids.device) < self.cfg.mlm_probability  # one draw per word index
        chosen = drawn.gather(1, word) & tok.real & (word > 0)  # (B, W)
        r = torch.rand(B, W, device=tok.ids.device)
        ids = tok.ids.masked_fill(chosen & (r < 0.8), self.mask_id)
        random_ids = torch.randint(self.vocab_size, (B, W), device=tok.ids.device)
        return torch.where(chosen & (r >= 0.8) & (r < 0.9), random_ids, ids), chosen

    def mlm_loss(self, tok: Tokens) -> Tensor:
        masked, chosen = self.mask_words(tok)
        h = self.hidden(tok._replace(ids=masked))[chosen]  # (M, D)
        if h.shape[0] == 0 and world_size() == 1:
            return h.sum()  # no word drawn in this batch: zero, still on the graph
        logits = self.lm_head(h, self.embeddings.word_embeddings.weight)  # (M, vocab)
        return global_mean(F.cross_entropy(logits.float(), tok.ids[chosen], reduction="none"))  # over every rank's words

    # ---- phases --------------------------------------------------------------------------------------
    def _frozen(self, pretraining: bool) -> list[nn.Module]:
        frozen = [] if pretraining and self.cfg.mlm_weight > 0 else [self.lm_head]
        if self.cfg.freeze_word_embeddings == "always" or (pretraining and self.cfg.freeze_word_embeddings == "pretrain"):
            frozen.append(self.embeddings.word_embeddings)
        return frozen

    def phases(self, kind: PhaseKind) -> list[Phase]:
        if kind == "pretrain":
            return [Phase("pretrain", train_all_but(*self._frozen(True)), loss=self.pretrain_loss,
                          on_epoch_start=lambda m, epoch: m.clear_item_table())]
        trainable = train_all_but(*self._frozen(False))
        return [
            Phase("stage 1 (items re-encoded every epoch)", trainable, patience=self.cfg.stage_1_patience,
                  max_epochs=self.cfg.stage_1_max_epochs or None, eval_every=self.cfg.stage_1_eval_every or None,
                  on_epoch_start=lambda m, epoch: m.refresh_item_table()),
            Phase("stage 2 (item table fixed)", trainable, patience=self.cfg.stage_2_patience, reload_best=True,
                  optimizer="keep"),
        ]
