"""Shipped checkpoints: pre-trained models that come with textrec, found by name.

A shipped checkpoint is a folder ``<root>/<name>/`` made from a finished ``textrec pretrain`` run by
``textrec.pretrained.packaging.package`` (``benchmarks/ship_checkpoint.py``); it is a run directory that any
command reading a run accepts (zero-shot with ``--data``, ``finetune --init``), with nothing of its pre-training
catalogue in it::

    config.json        the run's config less machine paths (model, data, train and eval sections; the corpus by
                       name and content hash; the encoder and, for item codes, the quantiser a new catalogue needs)
    model.safetensors  the weights without the model's ``SPEC.catalogue_keys``, in float16 or bfloat16 only where
                       the scores they give matched float32 within 1e-3 when packaged (else float32)
    quantizer.index    the rotation and codebooks of the joint quantiser that coded the corpus, without the corpus's
                       item codes (models that read item codes); named in config.json by this file's sha1
    card.json          what it is: corpus, encoder, quantiser, recipe, validation curve, size, the data's terms,
                       the commands that made it; ``CARD.md`` the same for a reader
    checksums.json     sha256 of every other file, checked each time a name is resolved (``shipped_dir``)

The root is the ``pretrained`` folder of this package (package data, installed with textrec), or the folder the
environment variable ``TEXTREC_PRETRAINED_DIR`` names (tests, or checkpoints kept elsewhere). Reading a shipped
checkpoint never writes into it: what a new catalogue lacks is made in the dataset
(``textrec.train.newcatalogue``). ``textrec.runs.resolve_run`` turns a command's RUN argument into a folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from textrec.errors import CheckpointError, NotFoundError
from textrec.io import CHECKSUMS, read_json, sha256_file

ENV_DIR = "TEXTREC_PRETRAINED_DIR"
CARD = "card.json"


def shipped_root(root: str | Path | None = None) -> Path:
    """Where shipped checkpoints live: ``root``, else ``$TEXTREC_PRETRAINED_DIR``, else this package's folder."""
    if root is not None:
        return Path(root)
    env = os.environ.get(ENV_DIR)
    return Path(env) if env else Path(__file__).resolve().parent


def shipped_names(root: str | Path | None = None) -> list[str]:
    """The names of the checkpoints under the root (folders holding a card), sorted."""
    folder = shipped_root(root)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / CARD).is_file())


def verify_shipped(folder: Path) -> None:
    """Refuse a shipped checkpoint whose files are not those it was packaged with (one line naming the file)."""
    sums_path = folder / CHECKSUMS
    if not sums_path.is_file():
        raise CheckpointError(f"{folder}: no {CHECKSUMS}; not a complete shipped checkpoint (reinstall textrec or "
                              "package it again)")
    sums = read_json(sums_path)
    for name, entry in sorted(sums.items()):
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing from the shipped checkpoint (reinstall textrec or package it again)")
        if sha256_file(path) != (entry or {}).get("sha256"):
            raise CheckpointError(f"{path} is damaged or was changed after packaging (checksum mismatch; reinstall "
                                  "textrec or package it again)")


def shipped_dir(name: str, root: str | Path | None = None) -> Path:
    """The verified folder of the shipped checkpoint ``name``; an unknown name is one line listing the shipped ones."""
    names = shipped_names(root)
    if name not in names:
        have = ", ".join(names) if names else f"none in {shipped_root(root)}"
        raise NotFoundError(f"{name}: no such run directory or shipped checkpoint (shipped: {have}; `textrec pretrained` "
                            "lists them)")
    folder = shipped_root(root) / name
    verify_shipped(folder)
    return folder


@dataclass
class ShippedCheckpoint:
    """One row of ``list_shipped``: what ``textrec pretrained`` shows."""

    name: str
    model: str
    corpus: list[str]  # the pre-training datasets' names
    corpus_hash: str
    size_bytes: int
    dtype: str  # how the weights are stored
    select_metric: str
    best_valid: float | None  # the selected epoch's validation value of select_metric
    best_epoch: int | None
    card: Path  # CARD.md, for a reader

    def to_dict(self) -> dict:
        return {"name": self.name, "model": self.model, "corpus": self.corpus, "corpus_hash": self.corpus_hash,
                "size_bytes": self.size_bytes, "dtype": self.dtype, "select_metric": self.select_metric,
                "best_valid": self.best_valid, "best_epoch": self.best_epoch, "card": str(self.card)}


def list_shipped(root: str | Path | None = None) -> list[ShippedCheckpoint]:
    """Every shipped checkpoint under the root, read from its card (not verified: ``shipped_dir`` does that on use)."""
    rows = []
    for name in shipped_names(root):
        folder = shipped_root(root) / name
        card = read_json(folder / CARD)
        valid = card["validation"]
        rows.append(ShippedCheckpoint(
            name=name, model=card["model"], corpus=[d["name"] for d in card["corpus"]["datasets"]],
            corpus_hash=card["corpus"]["content_hash"], size_bytes=int(card["size_bytes"]), dtype=card["weights"]["dtype"],
            select_metric=valid["select_metric"], best_valid=valid["best"].get(valid["select_metric"]),
            best_epoch=valid["best_epoch"], card=folder / "CARD.md"))
    return rows


def shipped_bytes(root: str | Path | None = None, without: str | None = None) -> int:
    """The size of every shipped checkpoint under the root together (less the one named ``without``)."""
    total = 0
    for name in shipped_names(root):
        if name != without:
            total += sum(p.stat().st_size for p in (shipped_root(root) / name).iterdir() if p.is_file())
    return total
