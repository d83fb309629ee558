"""Packaging a finished ``textrec pretrain`` run as a shipped checkpoint (``textrec.pretrained`` documents the folder).

``package(run_dir, name)`` keeps what another catalogue needs and nothing of the pre-training one: the weights less
the model's ``SPEC.catalogue_keys`` (UniSRec's text table of the corpus alone would be 300 MB), the bundled
quantiser of a code model less the corpus's item codes stored in it, the config without machine paths. The weights
are stored in the first of float16 and bfloat16 whose scores match float32 within 1e-3 (the largest absolute
difference, over every item of the run's merged pre-training catalogue, for a seeded sample of its validation
users), else in float32; the card records the differences measured. The folder is staged next to its destination
and moved into place once complete, and only while every shipped checkpoint under the root together stays within
the size budget (60 MB by default).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from textrec.errors import DataError, NotFoundError, TextrecError
from textrec.io import CHECKSUMS, _umask, read_json, sha256_file, write_json, write_text
from textrec.models import model_class
from textrec.models.spec import item_input_kinds, score, spec_of
from textrec.pretrained import CARD, shipped_bytes, shipped_root
from textrec.runs import read_run_config, trained_inputs, verify_checkpoint

log = logging.getLogger(__name__)

BUDGET_MB = 60.0
TOLERANCE = 1e-3
HALF_DTYPES = ("float16", "bfloat16")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")  # no dot: never a module's file name in the package folder


@dataclass
class Packaged:
    """What ``package`` wrote."""

    name: str
    path: Path
    model: str
    dtype: str
    size_bytes: int  # this checkpoint's files
    total_bytes: int  # every shipped checkpoint under the root, this one included
    score_gaps: dict[str, float] = field(default_factory=dict)  # dtype tried -> largest |score - float32 score|

    def to_dict(self) -> dict:
        return {"name": self.name, "path": str(self.path), "model": self.model, "dtype": self.dtype,
                "size_bytes": self.size_bytes, "total_bytes": self.total_bytes, "score_gaps": self.score_gaps}


def package(
    run_dir: str | Path, name: str, out_root: str | Path | None = None, *, terms: str, command: str | None = None,
    packaged_with: str | None = None, check_data: list[str | Path] | None = None, check_users: int = 512,
    dtypes: tuple[str, ...] = HALF_DTYPES, tolerance: float = TOLERANCE, budget_mb: float = BUDGET_MB,
    overwrite: bool = False, seed: int = 0,
) -> Packaged:
    """Write the shipped checkpoint ``name`` from the finished pre-training run ``run_dir`` under ``out_root``
    (default: ``textrec.pretrained.shipped_root()``); see the module doc.

    ``terms``: the pre-training data's terms of use, for the card. ``command``: the command that made the run (default:
    one rebuilt from its config). ``check_data``: dataset directories to run the float16 check on instead of the
    run's own sources (when those are gone). ``dtypes``: the reduced precisions to try, in order.
    """
    run = Path(run_dir)
    cfg, config = read_run_config(run)
    root = shipped_root(out_root)
    _check_can_package(run, cfg, config, name, terms)
    target = root / name
    if target.exists() and not overwrite:
        raise TextrecError(f"{target} already exists (pass overwrite=True / --overwrite to replace it)")
    if verify_checkpoint(run / "model.safetensors") is None:
        log.warning("note: %s records no checksum of model.safetensors; its weights are not verified", run)
    quantizer = _quantizer(run, cfg, config)
    skip = spec_of(model_class(cfg.model)).catalogue_keys
    state = load_file(str(run / "model.safetensors"))
    kept = {k: v for k, v in state.items() if not k.startswith(skip)}
    dropped = sorted(k for k in state if k.startswith(skip))
    gaps, n_checked = _score_gaps(cfg, config, kept, check_data or [d["path"] for d in config["pretrain"]["datasets"]], dtypes,
                       tolerance, check_users, seed)
    dtype = next((d for d, gap in gaps.items() if gap <= tolerance), "float32")
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".{name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        save_file({k: _stored(v, dtype) for k, v in kept.items()}, str(staging / "model.safetensors"))
        os.chmod(staging / "model.safetensors", 0o666 & ~_umask())  # safetensors writes 0600: unreadable once installed
        q_sha1 = _write_quantizer(quantizer, staging / "quantizer.index") if quantizer is not None else None
        write_json(staging / "config.json", shipped_config(config, name, q_sha1))
        size = sum(p.stat().st_size for p in staging.iterdir())
        card = make_card(run, cfg, config, name, dtype, gaps, tolerance, n_checked, kept, dropped,
                         staging / "quantizer.index" if quantizer is not None else None, size, terms,
                         command, packaged_with)
        write_json(staging / CARD, card)
        write_text(staging / "CARD.md", render_card(card))
        write_json(staging / CHECKSUMS, {p.name: {"sha256": sha256_file(p)} for p in sorted(staging.iterdir())})
        this = sum(p.stat().st_size for p in staging.iterdir())
        total = shipped_bytes(root, without=name) + this
        if total > budget_mb * 2**20:
            raise TextrecError(f"{name}: {this / 2**20:.1f} MB would bring the shipped checkpoints in {root} to "
                               f"{total / 2**20:.1f} MB, over the {budget_mb:g} MB budget")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("packaged %s as %s (%s weights, %.1f MB; all shipped: %.1f MB)", run, target, dtype, this / 2**20, total / 2**20)
    return Packaged(name, target, cfg.model, dtype, this, total, gaps)


def _check_can_package(run: Path, cfg, config: dict, name: str, terms: str) -> None:
    if not _NAME.match(name):
        raise TextrecError(f"{name!r}: a shipped checkpoint's name is lower-case letters, digits, '_' and '-' "
                           "(e.g. seqrecbench-vqrec)")
    if "pretrain" not in config:
        raise TextrecError(f"{run}: not a pre-training run (made by `textrec pretrain`); only those are shipped")
    for f in ("model.safetensors", "metrics.json", "log.jsonl"):
        if not (run / f).is_file():
            raise NotFoundError(f"{run}: no {f} (package a finished pre-training run)")
    if not item_input_kinds(model_class(cfg.model), cfg.model_config):
        raise TextrecError(f"{run}: {cfg.model} scores item IDs, so nothing of it transfers to another catalogue")
    if not terms or not terms.strip():
        raise TextrecError("the card needs the pre-training data's terms of use (terms=...)")


def _quantizer(run: Path, cfg, config: dict) -> Path | None:
    """The quantiser a code model's new catalogue is coded with: the run's bundled copy, else its recorded source
    (either checked against the recorded sha1); None for a model that reads no item codes."""
    from textrec.train.newcatalogue import run_quantizer

    if "codes" not in item_input_kinds(model_class(cfg.model), cfg.model_config):
        return None
    found = run_quantizer(run, config.get("new_catalogue") or {})
    if found is None:
        raise NotFoundError(f"{run}: reads item codes but carries no quantiser (quantizer.index) and records none that "
                            "exists, so a new catalogue could not be coded; pre-train it again with this textrec")
    return found


def _write_quantizer(source: Path, out: Path) -> str:
    """Write the quantiser's trained parts (rotation, centroid, codebooks) to ``out`` without the item codes of the
    corpus that pre-training stored in it (a code is the same either way); return the new file's sha1."""
    from textrec.quant.codes import _file_sha1
    from textrec.quant.pq import ItemQuantizer

    ItemQuantizer.load(source).save(out)
    return _file_sha1(out)


def _stored(t: torch.Tensor, dtype: str) -> torch.Tensor:
    """A tensor as shipped: floating tensors in ``dtype``, the others (codes, flags) as they are."""
    return t.to(getattr(torch, dtype)).contiguous() if t.is_floating_point() else t.contiguous()


# ---- the reduced-precision check ------------------------------------------------------------------


def _score_gaps(cfg, config: dict, kept: dict, data_dirs: list, dtypes: tuple[str, ...], tolerance: float,
                n_users: int, seed: int) -> tuple[dict[str, float], int]:
    """(dtype -> the largest |score - float32 score| over every item for a sample of validation users, stopping at
    the first within ``tolerance``; the number of users scored)."""
    from textrec.data.dataset import Dataset
    from textrec.data.multidomain import merge_domains
    from textrec.data.split import eval_examples
    from textrec.train.inputs import build_model, load_item_inputs

    if not dtypes:
        return {}, 0
    dirs = [Path(d) for d in data_dirs]
    for d in dirs:
        if not d.is_dir():
            raise DataError(f"{d}: not found; the reduced-precision check ranks the pre-training datasets' items "
                            "(give other datasets with the run's item inputs: check_data / --check-data DIR ...)")
    merged, _ = merge_domains([Dataset.load(d) for d in dirs])
    inputs, _ = load_item_inputs(cfg, dirs, recorded=config.get("item_inputs") if not _other(dirs, config) else None)
    examples = eval_examples(merged, "valid", cfg.data.max_seq_len)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(examples.lengths), size=min(n_users, len(examples.lengths)), replace=False))

    def model_with(weights: dict) -> torch.nn.Module:
        torch.manual_seed(seed)  # the same initial state for anything the weights do not set
        model = build_model(cfg, inputs)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights.items()}, strict=False)
        return model.eval()

    reference = model_with(kept)
    gaps = {}
    for dtype in dtypes:
        gaps[dtype] = _largest_gap(reference, model_with({k: _stored(v, dtype) for k, v in kept.items()}), examples, pick)
        log.info("%s weights: scores within %.2e of float32 on %d validation users", dtype, gaps[dtype], len(pick))
        if gaps[dtype] <= tolerance:
            break
    return gaps, len(pick)


def _other(dirs: list[Path], config: dict) -> bool:
    """Whether ``dirs`` are not the run's own sources (their recorded input names may not exist there)."""
    own = [Path(d["path"]).resolve() for d in config["pretrain"]["datasets"]]
    return [d.resolve() for d in dirs] != own


@torch.no_grad()
def _largest_gap(a: torch.nn.Module, b: torch.nn.Module, examples, pick: np.ndarray, batch: int = 64) -> float:
    from textrec.data.batching import SeqBatch

    items_a, items_b = a.item_embeddings().float()[1:], b.item_embeddings().float()[1:]  # (n_items, D)
    gap = 0.0
    for lo in range(0, len(pick), batch):
        rows = pick[lo : lo + batch]
        lengths = torch.as_tensor(examples.lengths[rows], dtype=torch.long)
        seq = SeqBatch(torch.as_tensor(examples.histories[rows][:, : int(lengths.max())], dtype=torch.long), lengths)
        diff = (score(a, a.encode(seq).float(), items_a) - score(b, b.encode(seq).float(), items_b)).abs()  # (B, n_items)
        if not torch.isfinite(diff).all():
            return float("inf")
        gap = max(gap, float(diff.max()))
    return gap


# ---- config and card --------------------------------------------------------------------------------


def shipped_config(config: dict, name: str, quantizer_sha1: str | None = None) -> dict:
    """The run's config.json as shipped: no machine path; the quantiser named by its sha1: the run's, or that of the
    shipped copy (``quantizer_sha1``), which item codes made for a new catalogue then record."""
    out = {k: config[k] for k in ("textrec_version", "model", "data", "train", "eval", "recipe") if k in config}
    pt = config["pretrain"]
    out["pretrain"] = {"datasets": [{k: d[k] for k in ("name", "content_hash", "n_items", "n_users") if k in d}
                                    for d in pt["datasets"]], "item_offsets": pt.get("item_offsets")}
    out["item_inputs"] = trained_inputs(config)
    out["new_catalogue"] = {k: v for k, v in (config.get("new_catalogue") or {}).items() if k != "quantizer_source"}
    if quantizer_sha1 is not None:
        out["new_catalogue"]["quantizer_sha1"] = quantizer_sha1
        out["item_inputs"]["quantizer"] = f"quantizer:{quantizer_sha1}"
    out["shipped"] = {"name": name}
    return out


def corpus_hash(datasets: list[dict]) -> str:
    """One hash of the pre-training corpus: sha256 over its datasets' names and content hashes, in order."""
    text = "\n".join(f"{d['name']}:{d.get('content_hash')}" for d in datasets)
    return hashlib.sha256(text.encode()).hexdigest()


def pretrain_command(config: dict) -> str:
    """A ``textrec pretrain`` command that makes this run's config: the settings that differ from the model's
    pre-training recipe; the datasets by folder name (they were prepared by the user)."""
    from textrec.config import format_setting, with_recipe

    model = config["model"]["name"]
    base = with_recipe({"model": {"name": model}}, "pretrain").to_dict()
    sets = [f"{section}.{key}={format_setting(value)}" for section in ("model", "data", "train", "eval")
            for key, value in config[section].items()
            if key != "name" and json.loads(json.dumps(base[section].get(key))) != value]
    dirs = " ".join(Path(d["path"]).name if "path" in d else d["name"] for d in config["pretrain"]["datasets"])
    return " ".join(["textrec pretrain", dirs, "--model", model, *sets])


def make_card(run: Path, cfg, config: dict, name: str, dtype: str, gaps: dict, tolerance: float, check_users: int,
              kept: dict, dropped: list[str], shipped_quantizer: Path | None, size: int, terms: str, command: str | None,
              packaged_with: str | None) -> dict:
    """The card: what the checkpoint is, where it came from, how it did, and on what terms (card.json)."""
    from textrec.quant.codes import _file_sha1

    metrics = read_json(run / "metrics.json")
    curve = []
    for line in (run / "log.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            curve.append({k: r[k] for k in ("epoch", "loss", "valid", "train_seconds") if k in r})
    datasets = config["pretrain"]["datasets"]
    nc = config.get("new_catalogue") or {}
    quantizer = None
    if shipped_quantizer is not None:
        quantizer = {"file": "quantizer.index", "sha1": _file_sha1(shipped_quantizer), "codes": nc.get("codes"),
                     "pretraining_sha1": nc.get("quantizer_sha1"), "bytes": shipped_quantizer.stat().st_size}
    return {
        "name": name,
        "model": cfg.model,
        "textrec_version": config.get("textrec_version"),
        "packaged": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "corpus": {"datasets": [{k: d.get(k) for k in ("name", "content_hash", "n_items", "n_users")} for d in datasets],
                   "content_hash": corpus_hash(datasets), "n_items": sum(d["n_items"] for d in datasets),
                   "n_users": sum(d.get("n_users", 0) for d in datasets)},
        "encoder": nc.get("encoder"),
        "embeddings": nc.get("embeddings"),
        "quantizer": quantizer,
        "config": {k: config[k] for k in ("model", "data", "train", "eval")},
        "recipe": config.get("recipe") or {},
        "validation": {"select_metric": cfg.eval.select_metric, "best_epoch": metrics.get("best_epoch"),
                       "epochs_run": metrics.get("epochs_run"), "best": metrics.get("valid") or {}, "curve": curve},
        "weights": {"dtype": dtype, "tensors": len(kept), "parameters": int(sum(v.numel() for v in kept.values())),
                    "tolerance": tolerance, "check_users": check_users, "score_gaps": gaps,
                    "not_shipped": dropped},
        "size_bytes": size,
        "terms": terms.strip(),
        "command": command or pretrain_command(config),
        "packaged_with": packaged_with,
    }


def render_card(card: dict) -> str:
    """CARD.md: the card for a reader."""
    c, v, w = card["corpus"], card["validation"], card["weights"]
    metric = v["select_metric"]
    best = v["best"].get(metric)
    lines = [
        f"# {card['name']}", "",
        f"A pre-trained {card['model']} (textrec {card['textrec_version']}), shipped with textrec: rank any catalogue "
        f"zero-shot (`textrec recommend {card['name']} --data DIR --user U`) or fine-tune from it "
        f"(`textrec finetune DIR --init {card['name']} --out RUN`).", "",
        "## Corpus", "",
        f"{len(c['datasets'])} datasets, {c['n_items']:,} items, {c['n_users']:,} users; corpus hash `{c['content_hash']}`.", "",
        "| dataset | items | users | content hash |", "|---|---:|---:|---|",
        *[f"| {d['name']} | {d['n_items']:,} | {d['n_users'] or 0:,} | `{d['content_hash']}` |" for d in c["datasets"]], "",
        "## Item content", "",
    ]
    enc = card["encoder"]
    lines.append(f"- encoder: {enc['name']} (identity `{enc['identity']}`, pooling {enc['pooling']}, max length "
                 f"{enc['max_length']}), embeddings named `{card['embeddings']}`" if enc else "- encoder: none recorded")
    q = card["quantizer"]
    lines.append(f"- quantiser: `{q['file']}` (sha1 `{q['sha1']}`; the pre-training's file, which also held the corpus's "
                 f"item codes: `{q['pretraining_sha1']}`), codes named `{q['codes']}`" if q else "- quantiser: none")
    gaps = ", ".join(f"{d} {g:.2e}" for d, g in w["score_gaps"].items()) or "not checked"
    lines += [
        "", "## Weights", "",
        f"{w['parameters']:,} parameters in {w['tensors']} tensors, stored as {w['dtype']}; {card['size_bytes']:,} bytes "
        f"(weights, config, quantiser). Largest score difference from float32 on {w['check_users']} validation users: "
        f"{gaps} (kept when at most {w['tolerance']:g}). Not shipped (the pre-training catalogue's): "
        f"{', '.join(w['not_shipped']) or 'nothing'}.", "",
        "## Validation", "",
        f"Best {metric} {best:.4f} at epoch {v['best_epoch']} of {v['epochs_run']} (merged validation split of the corpus)."
        if best is not None else "No validation recorded.", "",
        f"| epoch | loss | {metric} |", "|---:|---:|---:|",
        *[f"| {r['epoch']} | {r['loss']:.4f} | {(r.get('valid') or {}).get(metric, float('nan')):.4f} |" for r in v["curve"]], "",
        "## Recipe", "",
        f"    {card['command']}", "",
        f"Packaged with `{card['packaged_with']}`." if card["packaged_with"] else "", "",
        "## Terms", "", card["terms"], "",
    ]
    return "\n".join(lines)
