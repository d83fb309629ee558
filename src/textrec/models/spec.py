"""What a model declares about itself, so that the loaders, the training loop and the CLI stay generic.

A model class (``nn.Module``; no base class) carries these class attributes and methods, read by
``textrec.train`` and ``textrec.serve`` instead of any ``if model == ...`` switch:

``Config``
    its frozen config dataclass (in the model's own file).
``ITEM_INPUTS``
    the item-side inputs its constructor needs, a tuple of ``InputKind`` (``"text_embeddings"``,
    ``"codes"``, ``"features"``, ``"attributes"``); ``PRETRAIN_INPUTS`` the optional extras pre-training
    reads when present (UniSRec's ``"word_drop_embeddings"``). An empty ``ITEM_INPUTS`` means the model
    scores item IDs and cannot take new items. A model whose inputs depend on its config (MISSRec: text from a
    feature table or from text embeddings) lists all it can read and defines ``item_inputs_for(cfg)``, the
    subset a config reads (``item_input_kinds``).
``TRAINING_ROWS``
    ``"windows"``: causal, so one whole-sequence window yields every prefix's next-item loss;
    ``"prefixes"``: not causal, one row per (prefix, next item) as the references build them;
    ``"sampled"``: one randomly drawn (prefix, next item) row per sequence, drawn anew every epoch.
    A model that is not ``"windows"`` can never be trained on windows (``resolve_training_rows``).
``sampled_cut(cfg, pretraining) -> "any" | "reference"`` (optional, static; read with ``"sampled"`` rows)
    which of a user's prefix rows the per-epoch draw may pick (``textrec.data.batching.cut_mask``, kept by
    ``textrec.train.run.make_batchers``): ``"any"`` prefix, or ``"reference"``, a target in the second half of
    the sequence (Recformer's pre-training pairs). A model that declares nothing draws from any prefix.
``CATALOGUE_KEYS``
    state-dict prefixes that belong to one catalogue and are not carried to another one.
``ITEM_STATE`` (optional)
    the state-dict entries with one row per item (row 0: padding), as a dict from key prefix to how a grown
    catalogue (``textrec.serve.catalogue``: brand-new items added to a trained run) fills them: ``"inputs"``
    rebuilds the entry from the extended item inputs (a feature table, its presence flags); ``"grow"`` keeps
    the trained rows and appends zero rows for the new items (an item-ID embedding; MISSRec's cluster ids,
    0 = none yet). Every other entry is carried exactly as trained, its shape included, even where the model
    built for the grown catalogue sized it otherwise (MISSRec's interest centroids: the checkpoint fixes the
    number of interests). A model that declares nothing is read by shape: an entry whose shape changed is
    per item, rebuilt when it is a buffer and grown when it is a parameter (its first dimension by the new items).
``__init__(cfg, inputs: ItemInputs, max_seq_len)``
    the one constructor signature; a model never holds a dataset.
``encode(batch) -> (B, D)``, ``item_embeddings() -> (n_items + 1, D)``, ``loss(batch) -> scalar``
    the scoring surface; a score is ``encode @ item_embeddings.T`` unless the model defines
    ``score_items(seq_repr, item_rows) -> (B, n_rows)``.
``phases(kind) -> list[Phase]``
    its training phases for ``kind`` in ``"train"`` (from scratch), ``"pretrain"`` and ``"finetune"``:
    which parameters train, which loss, how each phase ends, per-epoch hooks. What "freeze the encoder"
    means for a model is said here, in its own ``phases``.

Nothing here imports the training loop: models import this file, the loop imports models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor, nn

InputKind = Literal["text_embeddings", "word_drop_embeddings", "codes", "features", "attributes"]
TrainingRows = Literal["windows", "prefixes", "sampled"]
PhaseKind = Literal["train", "pretrain", "finetune"]
ItemStateFill = Literal["inputs", "grow"]  # how a grown catalogue fills a per-item entry (``ITEM_STATE``)


@dataclass
class FeatureTable:
    """A named per-item feature table and which items really have the feature."""

    values: Tensor  # (n_items + 1, d) float32; row 0 is padding
    present: Tensor  # (n_items + 1,) bool; False rows (missing modality, padding) are zeros and must be masked


@dataclass
class ItemInputs:
    """Everything item-side a model may be built from; each model reads only what it declares."""

    n_items: int
    text_embeddings: Tensor | None = None  # (n_items + 1, d_text) float32
    word_drop_embeddings: Tensor | None = None  # (n_items + 1, d_text) float32, UniSRec's pre-training view
    codes: Tensor | None = None  # (n_items + 1, n_codebooks) long; row 0 ignored
    codebook_size: int = 0
    features: dict[str, FeatureTable] = field(default_factory=dict)
    attributes: list[dict[str, str]] | None = None  # per item 1..n_items: key -> value (item sentences)

    def require(self, kind: str, model: str):
        value = getattr(self, kind)
        if value is None or (kind == "features" and not value):
            raise ValueError(f"model {model} needs item {kind.replace('_', ' ')}, which were not given")
        return value


@dataclass(frozen=True)
class Phase:
    """One phase of training.

    ``trainable(model)`` sets ``requires_grad`` (it runs on entry and again on resume); ``enter(model)`` runs
    once when the phase starts (it may change weights, e.g. bake a learned permutation) and never on resume.
    A phase ends after ``epochs`` epochs, or, when ``epochs`` is None, when validation has not improved for
    ``patience`` evaluations (None: ``train.patience``), or after ``max_epochs`` epochs if that comes first (unlike
    ``epochs``, it leaves the learning-rate schedule spanning the run, so a kept optimiser decays on through the
    next phase); the run's ``train.epochs`` caps all phases together.
    ``reload_best`` loads the best weights so far on entry; ``optimizer="keep"`` carries the optimiser and
    learning-rate schedule over from the previous phase instead of building new ones.
    ``eval_every`` validates after every that many epochs of the phase (None: ``train.eval_every``, counted over
    the run); the run's last epoch is always validated.
    ``on_epoch_start(model, epoch)`` runs before every epoch of the phase (e.g. re-clustering, re-encoding
    the catalogue) and returns None or a dict of numbers, strings or booleans about that work (MISSRec:
    ``{"cluster_seconds": ..., "n_interests": ...}``; Recformer: ``{"item_encode_seconds": ...}``), which the
    loop adds to the epoch's ``log.jsonl`` record and averages over epochs in ``metrics.json``
    (``epoch_hook_means``); its time also counts in the epoch's ``train_seconds``. ``loss`` is the objective
    (None: ``model.loss``).
    """

    name: str
    trainable: Callable[[nn.Module], None]
    enter: Callable[[nn.Module], None] | None = None
    epochs: int | None = None
    patience: int | None = None
    max_epochs: int | None = None
    reload_best: bool = False
    optimizer: Literal["rebuild", "keep"] = "rebuild"
    on_epoch_start: Callable[[nn.Module, int], dict[str, float | int | str | bool] | None] | None = None
    loss: Callable | None = None
    eval_every: int | None = None

    def __post_init__(self) -> None:
        if self.eval_every is not None and self.eval_every < 1:
            raise ValueError(f"phase {self.name!r}: eval_every must be >= 1 or None")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"phase {self.name!r}: epochs must be >= 1 or None")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"phase {self.name!r}: patience must be >= 1 or None")
        if self.max_epochs is not None and (self.max_epochs < 1 or self.epochs is not None):
            raise ValueError(f"phase {self.name!r}: max_epochs caps a phase ended by patience: >= 1, and only when epochs is None")


def item_input_kinds(cls: type, model_cfg) -> tuple[str, ...]:
    """The item-side inputs model class ``cls`` reads under its config ``model_cfg``."""
    pick = getattr(cls, "item_inputs_for", None)
    return tuple(pick(model_cfg)) if pick is not None else tuple(cls.ITEM_INPUTS)


def train_all(model: nn.Module) -> None:
    """``Phase.trainable`` that trains every parameter."""
    for p in model.parameters():
        p.requires_grad_(True)


def train_all_but(*frozen: nn.Module) -> Callable[[nn.Module], None]:
    """``Phase.trainable`` that trains every parameter except those of the ``frozen`` sub-modules."""

    def trainable(model: nn.Module) -> None:
        skip = {id(p) for m in frozen for p in m.parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) not in skip)

    return trainable
