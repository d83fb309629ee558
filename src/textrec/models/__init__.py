"""The model registry: one explicit dict from name to a function that imports and returns the model class.

Every model offers the surface described in ``textrec.models.spec`` (``Recommender`` below is its typing
Protocol): ``encode(batch) -> (B, D)``, ``item_embeddings() -> (n_items + 1, D)``, ``loss(batch) -> scalar``,
``phases(kind)``, and the class-level declarations ``Config`` and ``SPEC`` (one ``ModelSpec``). The loader functions import a model's module only when that model is used, so a model
that needs a heavy dependency costs nothing to commands that do not use it. Adding a model is its own file
plus one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Protocol

from textrec.errors import NotFoundError

if TYPE_CHECKING:  # annotations only: the registry itself must not import torch
    from torch import Tensor

    from textrec.models.spec import ModelSpec, PhaseKind


class Recommender(Protocol):
    Config: ClassVar[type]
    SPEC: ClassVar[ModelSpec]  # every declaration (textrec.models.spec)

    def encode(self, batch) -> Tensor: ...  # (B, D) sequence representation

    def item_embeddings(self) -> Tensor: ...  # (n_items + 1, D); row 0 is padding

    def loss(self, batch) -> Tensor: ...  # scalar training loss

    def phases(self, kind: PhaseKind) -> list: ...  # textrec.models.spec.Phase list for "train" / "pretrain" / "finetune"


def _sasrec():
    from textrec.models.sasrec import SASRec

    return SASRec


def _unisrec():
    from textrec.models.unisrec import UniSRec

    return UniSRec


def _recformer():
    from textrec.extras import require

    require("transformers", "model recformer (BERT layers from transformers)")
    from textrec.models.recformer import Recformer

    return Recformer


def _vqrec():
    from textrec.models.vqrec import VQRec

    return VQRec


def _missrec():
    from textrec.models.missrec import MISSRec

    return MISSRec


MODELS: dict[str, Callable[[], type]] = {
    "sasrec": _sasrec,
    "unisrec": _unisrec,
    "vqrec": _vqrec,
    "recformer": _recformer,
    "missrec": _missrec,
}


def model_class(name: str) -> type:
    """The model class registered as ``name``; an unknown name lists the valid ones."""
    if name not in MODELS:
        raise NotFoundError(f"unknown model {name!r} (valid: {', '.join(sorted(MODELS))})")
    return MODELS[name]()
