"""What a run needs to read a catalogue it was not trained on, and making it there on first use.

A pre-trained checkpoint is meant to be taken to somebody else's data: ``textrec finetune MYDATA --init PT``,
or zero-shot ``textrec evaluate PT --data MYDATA`` / ``textrec recommend PT --data MYDATA``. Its model reads
item content made by tools outside it: text embeddings from one encoder (UniSRec, MISSRec) or item codes from
one quantiser fitted on those embeddings (VQ-Rec). So ``textrec pretrain`` records, in the run's config.json
under ``new_catalogue``, the encoder (name, pooling, max length, identity) and the embedding name its inputs
came from, and for item codes copies the quantiser file into the run as ``quantizer.index`` (with its sha1):
the run directory alone is then enough to start from, on another machine too.

``complete_new_catalogue`` makes what is missing in a new dataset directory before the run reads it, and says
so on stderr: the embeddings, when the dataset has none (encoded with the recorded encoder under the recorded
name, through the embedding cache), and for a code model the codes, when the dataset has none (the run's own
quantiser: the reused index set; ``textrec quantize MYDATA`` before fine-tuning fits the target's own, the
paper's new index set). Whatever the dataset already holds is left alone and checked as before: embeddings of
another encoder or codes of another quantiser are refused by the zero-shot loader.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from textrec.errors import CheckpointError, DataError
from textrec.io import read_json

RUN_QUANTIZER = "quantizer.index"

log = logging.getLogger(__name__)


def _file_sha1(path: Path) -> str:
    from textrec.quant.codes import _file_sha1 as sha1

    return sha1(path)


def describe(first_dir: Path, record: dict) -> dict:
    """``new_catalogue`` for a run whose item inputs were loaded from ``first_dir`` (and the other sources) as
    ``record`` (``load_item_inputs``' provenance); empty for a model that reads no text embeddings or codes."""
    out: dict = {}
    codes = (record.get("codes") or [None])[0]
    emb = (record.get("embeddings") or [None])[0]
    if codes:
        info = read_json(first_dir / "codes" / f"{codes}.json") if (first_dir / "codes" / f"{codes}.json").exists() else {}
        emb = emb or (info.get("embeddings") or {}).get("name")
        source = info.get("shared_index") or info.get("quantizer") or (
            str(first_dir / "codes" / info["index_file"]) if info.get("index_file") else None)
        if source and Path(source).is_file():
            out.update(codes=codes, quantizer_source=str(Path(source).resolve()), quantizer_sha1=_file_sha1(Path(source)))
    if emb:
        info_path = first_dir / "embeddings" / f"{emb}.json"
        enc = (read_json(info_path) if info_path.exists() else {}).get("encoder")
        if isinstance(enc, dict):  # encoded by textrec (attached features name no encoder to re-run)
            out.update(embeddings=emb, encoder={k: enc.get(k) for k in ("name", "identity", "pooling", "max_length")})
    return out


def bundle_quantizer(new_catalogue: dict, out: Path) -> None:
    """Copy the run's quantiser into ``out/quantizer.index`` (via a temporary file), unless it is there already."""
    source = new_catalogue.get("quantizer_source")
    target = out / RUN_QUANTIZER
    if not source or (target.is_file() and _file_sha1(target) == new_catalogue["quantizer_sha1"]):
        return
    tmp = out / f".{RUN_QUANTIZER}.tmp"
    shutil.copyfile(source, tmp)
    if _file_sha1(tmp) != new_catalogue["quantizer_sha1"]:
        tmp.unlink()
        raise DataError(f"{source}: the quantiser changed since this run read its item codes (sha1 differs); "
                        "quantize the sources again and re-run")
    os.replace(tmp, target)


def run_quantizer(run: Path, new_catalogue: dict) -> Path | None:
    """The run's quantiser file: its bundled copy, else the recorded source; checked against the recorded sha1."""
    for path in (run / RUN_QUANTIZER, Path(new_catalogue.get("quantizer_source") or "")):
        if new_catalogue.get("quantizer_sha1") and path.is_file():
            if _file_sha1(path) != new_catalogue["quantizer_sha1"]:
                raise CheckpointError(f"{path}: not the quantiser {run} was trained with (sha1 differs)")
            return path
    return None


def complete_new_catalogue(run: Path, config: dict, cfg, data_dir: Path, finetune: bool = False) -> None:
    """Make the item inputs ``run`` reads that ``data_dir`` lacks (see the module doc); a no-op for a dataset
    that has inputs of each kind already, for a run that records no ``new_catalogue``, and, when fine-tuning,
    for a kind whose name the config sets (``data.embeddings`` / ``data.codes``: the user's choice)."""
    from textrec.models import model_class
    from textrec.models.spec import item_input_kinds
    from textrec.text.encode import encode_dataset, list_item_embeddings

    nc = config.get("new_catalogue") or {}
    kinds = set(item_input_kinds(model_class(cfg.model), cfg.model_config))
    have_codes = sorted(p.stem for p in (data_dir / "codes").glob("*.npy"))
    want_codes = "codes" in kinds and bool(nc.get("codes")) and not have_codes and not (finetune and cfg.data.codes)
    want_text = "text_embeddings" in kinds and not (finetune and cfg.data.embeddings)
    if not nc.get("embeddings") or not (want_codes or want_text):
        return
    have_emb, _ = list_item_embeddings(data_dir)
    name, enc = nc["embeddings"], nc["encoder"]
    quantizer = run_quantizer(run, nc) if want_codes else None  # checked before anything is written
    if want_codes and quantizer is None and not want_text:
        return  # no quantiser to code the items with: the loader says what is missing
    if (want_text and not have_emb) or (want_codes and name not in have_emb):
        log.warning(f"note: {data_dir} has no text embeddings {name!r}: encoding its items with {enc['name']} "
                    f"(pooling {enc['pooling']}, max length {enc['max_length']}), as {run} was trained")
        encode_dataset(data_dir, enc["name"], pooling=enc["pooling"], max_length=enc["max_length"], name=name, progress=False)
    if want_codes:
        found = read_json(data_dir / "embeddings" / f"{name}.json").get("encoder") or {}
        if found.get("identity") != enc.get("identity"):
            raise DataError(f"{data_dir}/embeddings/{name}.npy comes from {found.get('name')}, not {enc['name']} as {run}'s "
                            f"codes do; encode the items with {enc['name']} under another name and quantize them with "
                            f"textrec quantize {data_dir} --embeddings NAME --quantizer {run / RUN_QUANTIZER}")
        if quantizer is None:
            return  # the loader says what is missing
        from textrec.quant.codes import quantize_dataset

        log.warning(f"note: {data_dir} has no item codes: coding its items with {run}'s quantiser ({quantizer.name}; the "
                    f"reused index set) as {nc['codes']!r}" + ("; `textrec quantize DIR` fits the target's own (the paper's "
                                                               "new index set)" if finetune else ""))
        quantize_dataset(data_dir, embeddings=name, quantizer=quantizer, name=nc["codes"])


def complete_run_catalogue(run_dir: str | Path, data_dir: str | Path) -> None:
    """``complete_new_catalogue`` for reading ``data_dir`` with the finished run ``run_dir`` (evaluate, recommend):
    the explicit step before ``textrec.runs.load_run``, which itself never writes."""
    from textrec.runs import read_run_config

    cfg, config = read_run_config(run_dir)
    complete_new_catalogue(Path(run_dir), config, cfg, Path(data_dir))
