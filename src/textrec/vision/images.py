"""Item images: where each item's file is, its content hash, and its pixels (Pillow + numpy, no torchvision).

An item's image comes from one of two places:

* a folder of ``<item key>.jpg`` / ``.jpeg`` / ``.png`` / ``.webp`` files (extension case ignored; when
  one key has several files the first of that order wins);
* a path column of the items table, kept with the item's attributes by ``textrec prepare`` (the column
  ``image`` by default). A relative path is read against ``root``, by default the folder of the items
  table the dataset was prepared from (recorded in ``meta.json``), else the dataset directory. A URL is
  not fetched: the item counts as missing.

An item without a file is *missing*; a file that cannot be read or decoded (corrupt, truncated, empty, not
an image) is *unreadable*. Neither stops the run: both are counted and their feature rows stay all-zero,
which dataset feature tables read as "absent".

Pixels: the EXIF orientation is applied, transparency is composited onto white, the shorter side is resized
to ``Preprocess.resize`` (bicubic), the centre ``Preprocess.crop`` square is cut out, and each channel is
normalised as ``(x - mean) / std`` in 0..255 units -> (3, crop, crop) float32.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from textrec.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
DEFAULT_COLUMN = "image"
HASH_BYTES = 20  # SHA-1, the width of the embedding cache's keys


class Preprocess(NamedTuple):
    """How one encoder wants its pixels; part of the cache key, so a change re-encodes."""

    resize: int  # the shorter side after resizing
    crop: int  # the centre square kept
    mean: tuple[float, float, float]  # per RGB channel, 0..255 units
    std: tuple[float, float, float]

    def tag(self) -> str:
        return f"r{self.resize}c{self.crop}m{','.join(f'{v:g}' for v in self.mean)}s{','.join(f'{v:g}' for v in self.std)}"


class ItemImages(NamedTuple):
    """Where the images of a dataset's items are."""

    paths: list[Path | None]  # (n_items,) the file of item id i + 1; None = missing
    source: str  # "folder PATH" or "column NAME (root PATH)", for reports
    missing_reason: dict[int, str]  # item index (0-based) -> why it has no file


def images_from_folder(folder: str | Path, item_keys: list[str]) -> ItemImages:
    """``<item key>.<ext>`` files of ``folder`` (listed once, so large folders are cheap)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"{folder}: no such image folder")
    rank = {ext: r for r, ext in enumerate(IMAGE_EXTENSIONS)}
    best: dict[str, tuple[int, str]] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            stem, ext = os.path.splitext(entry.name)
            r = rank.get(ext.lower())
            if r is not None and (stem not in best or r < best[stem][0]):
                best[stem] = (r, entry.name)
    paths: list[Path | None] = []
    reasons: dict[int, str] = {}
    for i, key in enumerate(item_keys):
        found = best.get(key)
        paths.append(folder / found[1] if found else None)
        if found is None:
            reasons[i] = f"no {key}.jpg|jpeg|png|webp in {folder}"
    if len(reasons) == len(item_keys):
        example = item_keys[0] if item_keys else "KEY"
        raise DataError(f"{folder}: no image file is named after an item key (expected e.g. {example}.jpg)")
    return ItemImages(paths, f"folder {folder}", reasons)


def images_from_column(attributes: list[dict[str, str]] | None, column: str, root: str | Path) -> ItemImages:
    """The path column ``column`` of the items table, relative paths read against ``root``."""
    root = Path(root).expanduser()
    if attributes is None or not any(column in a for a in attributes):
        have = sorted({k for a in attributes or [] for k in a})
        raise DataError(f"the items table has no {column!r} column with values (columns: {', '.join(have) or 'none'}); "
                        f"pass --images FOLDER for a folder of <item key>.jpg files")
    paths: list[Path | None] = []
    reasons: dict[int, str] = {}
    for i, attrs in enumerate(attributes):
        value = attrs.get(column, "").strip()
        if not value:
            paths.append(None)
            reasons[i] = f"no {column} value"
        elif "://" in value:
            paths.append(None)
            reasons[i] = f"{value} is a URL; images are read from local files only"
        else:
            path = Path(value).expanduser()
            paths.append(path if path.is_absolute() else root / path)
    return ItemImages(paths, f"column {column!r} (relative paths under {root})", reasons)


def file_sha1(path: Path) -> bytes:
    """SHA-1 digest of a file's bytes (raises OSError when it cannot be read)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.digest()


def hash_images(paths: list[Path | None]) -> tuple[np.ndarray, dict[int, str], dict[int, str]]:
    """((n, 20) uint8 content hashes, zero where unavailable; {index: why} for files that cannot be read;
    {index: why} for paths with no file)."""
    hashes = np.zeros((len(paths), HASH_BYTES), dtype=np.uint8)
    unreadable: dict[int, str] = {}
    missing: dict[int, str] = {}
    for i, path in enumerate(paths):
        if path is None:
            continue
        try:
            if path.stat().st_size == 0:
                unreadable[i] = f"{path}: empty file"
                continue
            hashes[i] = np.frombuffer(file_sha1(path), dtype=np.uint8)
        except FileNotFoundError:
            missing[i] = f"{path}: file not found"
        except OSError as e:  # a folder, no permission, an I/O error
            unreadable[i] = f"{path}: {e.strerror or e}"
    return hashes, unreadable, missing


def _to_rgb(image):
    """RGB, with transparency composited onto white (product photos with cut-out backgrounds)."""
    from PIL import Image

    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def load_pixels(path: Path, prep: Preprocess) -> np.ndarray:
    """(3, crop, crop) float32 normalised pixels of one file; raises ``DataError`` when it is not a readable image."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here rather than later
            image = _to_rgb(ImageOps.exif_transpose(image))
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image file Pillow can decode") from None
    except Exception as e:  # noqa: BLE001 -- decoders of arbitrary files raise anything (OSError, struct.error, ...)
        raise DataError(f"{path}: cannot decode ({type(e).__name__}: {e})") from None
    w, h = image.size
    if min(w, h) < 1:
        raise DataError(f"{path}: image of size {w}x{h}")
    long = int(prep.resize * max(w, h) / min(w, h))  # floored, as Hugging Face's CLIP image processor does
    size = (prep.resize, long) if w <= h else (long, prep.resize)  # (width, height)
    image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (size[0] - prep.crop) // 2, (size[1] - prep.crop) // 2
    image = image.crop((left, top, left + prep.crop, top + prep.crop))
    pixels = np.asarray(image, dtype=np.float32)  # (crop, crop, 3)
    pixels = (pixels - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))  # (3, crop, crop)
