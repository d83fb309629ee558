"""What a model declares about itself, so that the loaders, the training loop and the CLI stay generic.

A model class (``nn.Module``; no base class) carries its config class, one frozen ``ModelSpec`` and the scoring
surface, read by ``textrec.train``, ``textrec.eval`` and ``textrec.serve`` instead of any ``if model == ...``
switch and without ``getattr(..., default)`` fallbacks (a misspelt member fails at import, not in training):

``Config``
    its frozen config dataclass (in the model's own file).
``SPEC = ModelSpec(...)``
    every declaration, each with a default (the fields' comments below say what each means): the item-side
    inputs, the optional pre-training inputs, the training rows and whether the model is causal, the catalogue
    keys, the per-item state, the sampling rule, the architecture keys, the word-drop view's name, the score
    rule and the reference training recipe (``Recipe``). Read through ``spec_of(cls_or_model)``.
``__init__(cfg, inputs: ItemInputs, max_seq_len)``
    the one constructor signature; a model never holds a dataset.
``encode(batch) -> (B, D)``, ``item_embeddings() -> (n_items + 1, D)``, ``loss(batch) -> scalar``
    the scoring surface; ``score(model, seq_repr, item_rows)`` is the one score rule evaluation,
    recommendation and tests use: ``seq_repr @ item_rows.T`` unless the model's ``SPEC.score`` says otherwise.
``phases(kind: PhaseKind) -> list[Phase]``
    its training phases for ``kind`` in ``"train"`` (from scratch), ``"pretrain"`` and ``"finetune"``:
    which parameters train, which loss, how each phase ends, per-epoch hooks. What "freeze the encoder"
    means for a model is said here, in its own ``phases``.

Nothing here imports the training loop: models import this file, the loop imports models.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from torch import Tensor, nn

InputKind = Literal["text_embeddings", "word_drop_embeddings", "codes", "features", "attributes"]
TrainingRows = Literal["windows", "prefixes", "sampled"]
PhaseKind = Literal["train", "pretrain", "finetune"]
ItemStateFill = Literal["inputs", "grow"]  # how a grown catalogue fills a per-item entry (``ModelSpec.item_state``)


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


SampledCut = Literal["any", "reference"]  # which prefix rows a per-user draw picks (textrec.data.batching.cut_mask)


def _any_cut(cfg, pretraining: bool) -> SampledCut:
    return "any"


def _no_empty_history(cfg, pretraining: bool) -> bool:
    return False


def _no_features(cfg) -> tuple[str, ...]:
    return ()


def dot_score(model: nn.Module, seq_repr: Tensor, item_rows: Tensor) -> Tensor:
    """(B, n) inner products of (B, D) sequences with (n, D) rows of ``item_embeddings``: the default score rule."""
    return seq_repr @ item_rows.T


@dataclass(frozen=True)
class Recipe:
    """The settings a model trains with when the user says nothing else: ``"section.key" -> value`` per run kind.

    ``textrec.config.load_config`` applies them under the user's config file and ``key=value`` overrides (the user
    wins); each applied value is printed in the run header and recorded in ``config.json`` (``recipe``). Only what
    differs from the generic defaults (``textrec.config``: the references' SASRec/UniSRec settings) is listed.
    """

    train: Mapping[str, Any] = field(default_factory=dict)  # ``textrec train``: training from scratch
    pretrain: Mapping[str, Any] = field(default_factory=dict)  # ``textrec pretrain``, over the generic pre-training defaults
    finetune: Mapping[str, Any] = field(default_factory=dict)  # ``textrec finetune``
    source: str = ""  # where the values come from, one line (shown by ``textrec info --models``)

    def __post_init__(self) -> None:
        for kind in ("train", "pretrain", "finetune"):
            values = getattr(self, kind)
            bad = [k for k in values if k.partition(".")[0] not in ("data", "train", "eval") or "." not in k]
            if bad:
                raise ValueError(f"recipe key {bad[0]!r} must be data.KEY, train.KEY or eval.KEY")
            object.__setattr__(self, kind, MappingProxyType(dict(values)))

    def for_kind(self, kind: PhaseKind) -> dict[str, Any]:
        """The ``"section.key" -> value`` settings of this recipe for runs of ``kind``."""
        return dict({"train": self.train, "pretrain": self.pretrain, "finetune": self.finetune}[kind])


@dataclass(frozen=True)
class ModelSpec:
    """Everything generic code needs to know about a model, in one typed object (``SPEC`` on the model class)."""

    # the item-side inputs the constructor needs; () means the model scores item IDs and cannot take new items
    item_inputs: tuple[InputKind, ...] = ()
    # the subset of ``item_inputs`` a given model config reads (MISSRec: text from a feature table or the text
    # embeddings); None: always all of ``item_inputs``. Read through ``item_input_kinds``.
    inputs_for_config: Callable[[Any], tuple[InputKind, ...]] | None = None
    # the feature tables a config names, loaded when ``data.features`` is empty (MISSRec: text and image tables)
    feature_tables: Callable[[Any], tuple[str, ...]] = _no_features
    # optional extras pre-training reads when present (UniSRec's "word_drop_embeddings")
    pretrain_inputs: tuple[InputKind, ...] = ()
    # the name of the word-drop view of embeddings ``name`` read with "word_drop_embeddings" (UniSRec: "NAME-wd15")
    word_drop_view: Callable[[str], str] | None = None
    # whether the output at position t depends only on items 0..t (a causal mask, positions from the start)
    causal: bool = False
    # "windows": one whole-sequence window yields every prefix's next-item loss (causal models only);
    # "prefixes": one row per (prefix, next item), as the references build them;
    # "sampled": one randomly drawn (prefix, next item) row per sequence, drawn anew every epoch
    training_rows: TrainingRows = "prefixes"
    # with "sampled" rows: which prefixes the draw may pick, "any" or "reference" (a target in the second half of
    # the sequence: Recformer's pre-training pairs), given (model config, pretraining)
    sampled_cut: Callable[[Any, bool], SampledCut] = _any_cut
    # whether prefix rows include each user's first item with an empty history, given (model config, pretraining)
    # (Recformer's fine-tuning, as its reference); a causal model never needs one
    empty_history_rows: Callable[[Any, bool], bool] = _no_empty_history
    # state-dict prefixes that belong to one catalogue and are not carried to another one
    catalogue_keys: tuple[str, ...] = ()
    # the state entries with one row per item (row 0: padding), key prefix -> how a grown catalogue
    # (``textrec.serve.catalogue``) fills them: "inputs" rebuilds the entry from the extended item inputs,
    # "grow" keeps the trained rows and appends zero rows. None: read by shape (an entry whose shape changed
    # is per item, rebuilt when it is a buffer and grown when it is a parameter).
    item_state: Mapping[str, ItemStateFill] | None = None
    # model config keys that fix the shapes of the transferable weights: fine-tuning cannot change them
    architecture_keys: tuple[str, ...] = ()
    # (model, (B, D) sequences, (n, W) rows of ``item_embeddings``) -> (B, n) scores; read through ``score``
    score: Callable[[nn.Module, Tensor, Tensor], Tensor] = dot_score
    # the reference training recipe, applied under the user's settings
    recipe: Recipe = field(default_factory=Recipe)
    # the ``pip install 'textrec[EXTRA]'`` extra the model's module needs ("" = none beyond the core)
    extra: str = ""

    def __post_init__(self) -> None:
        kinds = set(typing.get_args(InputKind))
        for name in ("item_inputs", "pretrain_inputs"):
            bad = [k for k in getattr(self, name) if k not in kinds]
            if bad:
                raise ValueError(f"ModelSpec.{name}: unknown input kind {bad[0]!r} (valid: {', '.join(sorted(kinds))})")
        if self.training_rows not in typing.get_args(TrainingRows):
            raise ValueError(f"ModelSpec.training_rows must be one of {typing.get_args(TrainingRows)}, not {self.training_rows!r}")
        if self.training_rows == "windows" and not self.causal:
            raise ValueError("ModelSpec.training_rows='windows' needs a causal model (causal=True)")
        if "word_drop_embeddings" in self.pretrain_inputs and self.word_drop_view is None:
            raise ValueError("ModelSpec: a model reading word_drop_embeddings names the view (word_drop_view)")
        if self.item_state is not None:
            bad = [v for v in self.item_state.values() if v not in typing.get_args(ItemStateFill)]
            if bad:
                raise ValueError(f"ModelSpec.item_state: unknown fill {bad[0]!r}")
            object.__setattr__(self, "item_state", MappingProxyType(dict(self.item_state)))


def spec_of(model_or_cls) -> ModelSpec:
    """The ``ModelSpec`` a model class (or an instance of one) declares as ``SPEC``."""
    cls = model_or_cls if isinstance(model_or_cls, type) else type(model_or_cls)
    spec = next((c.__dict__["SPEC"] for c in cls.__mro__ if "SPEC" in c.__dict__), None)
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"{cls.__name__} declares no SPEC = ModelSpec(...) (textrec.models.spec)")
    return spec


def item_input_kinds(cls: type, model_cfg) -> tuple[str, ...]:
    """The item-side inputs model class ``cls`` reads under its config ``model_cfg``."""
    spec = spec_of(cls)
    return tuple(spec.inputs_for_config(model_cfg)) if spec.inputs_for_config is not None else spec.item_inputs


def score(model: nn.Module, seq_repr: Tensor, item_rows: Tensor) -> Tensor:
    """(B, n) scores of (B, D) sequence representations against ``item_rows`` (rows of ``model.item_embeddings()``),
    by the model's declared rule: what evaluation, recommendation and tests all rank by."""
    return spec_of(model).score(model, seq_repr, item_rows)


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
