"""``textrec export RUN --format onnx --out DIR``: a run's sequence encoder and item table for another serving stack.

Writes into ``DIR``:

* ``encoder.onnx``: history -> vector. Inputs ``item_seq`` (B, L) int64 item ids, right-padded with 0 (L up to
  the run's ``max_seq_len``; any B and L), and ``seq_len`` (B,) int64; output ``seq_repr`` (B, D) float32;
* ``items.npy``: (n_items + 1, D) float32 item table (row 0 padding), so ``scores = seq_repr @ items.T``;
* ``items.json``: the item keys in id order (``keys[i - 1]`` is item id ``i``) and how to score.

Which models can be exported (``export_problem``, read from what a model declares): those whose score is the
inner product of a sequence vector and an item-table row, and whose sequence encoder reads item ids only:
SASRec, UniSRec and VQ-Rec. MISSRec cannot: it scores with its own user-adaptive fusion of the item's
modalities (its ``SPEC.score``), which is no fixed item table. Recformer cannot: its sequence encoder reads each
item's tokenised key-value sentence (item input ``attributes``), built in Python, so item ids alone are not its
input. Both are refused with that reason.

The graph is traced with torch's TorchScript ONNX exporter (opset 17), so no extra package is needed beyond
``onnx``; ``onnxruntime`` reproduces textrec's scores within 1e-4 (``tests/test_export.py``).
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from textrec.errors import TextrecError

log = logging.getLogger("textrec.serve.export")



def export_problem(run) -> str | None:
    """Why ``run``'s model cannot be exported (module doc), or None. Read from what the model declares, not its name."""
    from textrec.models.spec import dot_score, item_input_kinds, spec_of

    name = run.cfg.model
    if spec_of(run.model).score is not dot_score:
        return (f"{name} scores items with its own rule (its SPEC.score, e.g. a user-adaptive fusion of the item's "
                "modalities), not an inner product with a fixed item table")
    if "attributes" in item_input_kinds(type(run.model), run.cfg.model_config):
        return (f"{name}'s sequence encoder reads each item's tokenised key-value sentence, built in Python from the item "
                "attributes, so item ids alone are not its input")
    return None


OPSET = 17


@dataclass
class ExportResult:
    out_dir: Path
    model: str
    n_items: int
    dim: int
    max_seq_len: int

    def to_dict(self) -> dict:
        return {"out": str(self.out_dir), "model": self.model, "n_items": self.n_items, "dim": self.dim,
                "max_seq_len": self.max_seq_len, "files": ["encoder.onnx", "items.npy", "items.json"]}


class _Encoder(torch.nn.Module):
    """(item_seq, seq_len) -> the model's ``encode`` output, for tracing."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, item_seq: torch.Tensor, seq_len: torch.Tensor) -> torch.Tensor:
        from textrec.data.batching import SeqBatch

        return self.model.encode(SeqBatch(item_seq, seq_len)).float()


def export_onnx(run, out_dir: str | Path, keys: list[str] | None = None) -> ExportResult:
    """Write ``run``'s (a loaded run) encoder and item table into ``out_dir`` (module doc)."""
    name = run.cfg.model
    problem = export_problem(run)
    if problem:
        raise TextrecError(f"{name} cannot be exported to ONNX: {problem}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = run.model.to("cpu").eval()
    L = run.cfg.data.max_seq_len
    with torch.no_grad():
        items = model.item_embeddings().float().numpy()
    example = (torch.tensor([[1, 2, 0], [3, 0, 0]], dtype=torch.long), torch.tensor([2, 1], dtype=torch.long))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(  # the wrapper in eval mode: the exporter leaves the module in the wrapper's mode
                _Encoder(model).eval(), example, str(out / "encoder.onnx"), input_names=["item_seq", "seq_len"],
                output_names=["seq_repr"], opset_version=OPSET, dynamo=False,
                dynamic_axes={"item_seq": {0: "batch", 1: "seq"}, "seq_len": {0: "batch"}, "seq_repr": {0: "batch"}},
            )
        except (RuntimeError, TypeError, ValueError) as e:  # e.g. an operator the exporter cannot write: one line
            raise TextrecError(f"{name} could not be traced to ONNX ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    np.save(out / "items.npy", items)
    keys = list(keys if keys is not None else run.dataset.item_keys)
    (out / "items.json").write_text(json.dumps({
        "model": name, "n_items": len(keys), "dim": int(items.shape[1]), "max_seq_len": L,
        "score": "seq_repr @ items.T; row 0 is padding; item id i is keys[i - 1]", "keys": keys}), encoding="utf-8")
    log.info("exported %s to %s", name, out)
    return ExportResult(out, name, len(keys), int(items.shape[1]), L)
