"""The model registry: one explicit dict from name to (config dataclass, model class).

Every model offers the same small surface (``Recommender`` below): ``encode(batch) -> (B, D)``,
``item_embeddings() -> (n_items + 1, D)`` and ``loss(batch) -> scalar``; a score is the inner product of
the two unless the model defines ``score_items(seq_repr, item_rows)``. Item-side inputs (text embeddings,
codes, image features) go to the constructor; no model holds a dataset.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from textrec.data.batching import SeqBatch
from textrec.errors import NotFoundError
from textrec.models.sasrec import SASRec, SASRecConfig
from textrec.models.unisrec import UniSRec, UniSRecConfig
from textrec.models.vqrec import VQRec, VQRecConfig


class Recommender(Protocol):
    def encode(self, batch: SeqBatch) -> Tensor: ...  # (B, D) sequence representation

    def item_embeddings(self) -> Tensor: ...  # (n_items + 1, D); row 0 is padding

    def loss(self, batch: SeqBatch) -> Tensor: ...  # scalar training loss


MODELS: dict[str, tuple[type, type]] = {
    "sasrec": (SASRecConfig, SASRec),
    "unisrec": (UniSRecConfig, UniSRec),
    "vqrec": (VQRecConfig, VQRec),
}


def model_entry(name: str) -> tuple[type, type]:
    if name not in MODELS:
        raise NotFoundError(f"unknown model {name!r} (valid: {', '.join(sorted(MODELS))})")
    return MODELS[name]
