"""Text encoders, the embedding cache, word-drop, and item embeddings of a dataset directory."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from textrec.data.dataset import Dataset
from textrec.errors import DataError, NotFoundError
from textrec.text.augment import word_drop, word_drop_texts
from textrec.text.cache import EmbeddingCache, text_hashes
from textrec.text.encode import (
    attach_embeddings,
    encode_dataset,
    encode_texts,
    load_item_embeddings,
)
from textrec.text.encoders import HashingEncoder, get_encoder

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WORDS = "caliper steel ruler gauge tea coffee mug kettle pipette beaker flask glove tape drill saw".split()


class CountingEncoder:
    """A HashingEncoder that records every text it is asked to encode."""

    def __init__(self, dim: int = 16) -> None:
        self.inner = HashingEncoder(dim)
        self.name, self.identity, self.dim = "counting", self.inner.identity, dim
        self.pooling, self.max_length = "mean", self.inner.max_length
        self.seen: list[str] = []

    def encode(self, texts):
        self.seen.extend(texts)
        return self.inner.encode(texts)


def make_dataset(n_items: int = 40, seed: int = 0, extra_texts: list[str] | None = None) -> Dataset:
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=rng.integers(2, 7))) + f" item{i}" for i in range(n_items)]
    texts += extra_texts or []
    n = len(texts)
    seqs = [rng.permutation(np.arange(1, n + 1))[: rng.integers(3, 8)] for _ in range(30)]
    seqs.append(np.arange(1, n + 1))  # every item occurs
    return Dataset.from_sequences("toy", [f"k{i}" for i in range(n)], texts, [f"u{u}" for u in range(len(seqs))], seqs)


@pytest.fixture()
def toy_dir(tmp_path):
    return make_dataset().save(tmp_path / "toy")


# ---- encoders -----------------------------------------------------------------------------------------
def test_hashing_encoder_is_deterministic():
    a, b = HashingEncoder(24), HashingEncoder(24)
    texts = ["Digital caliper, 6 inch.", "green tea", "", "digital CALIPER 6 inch"]
    va, vb = a.encode(texts), b.encode(texts)
    assert va.shape == (4, 24) and va.dtype == np.float32
    np.testing.assert_array_equal(va, vb)
    np.testing.assert_array_equal(va[2], 0)  # no words -> zeros
    np.testing.assert_allclose(va[0], va[3], rtol=1e-6)  # case and punctuation do not matter
    assert not np.allclose(va[0], va[1])
    assert a.identity == b.identity != HashingEncoder(32).identity


def test_get_encoder_choices():
    assert get_encoder("hashing").dim == 32 and get_encoder("hashing-64").dim == 64
    with pytest.raises(NotFoundError, match="minilm"):
        get_encoder("no-such-encoder")


def test_word_drop_rate():
    text = " ".join(f"w{i}" for i in range(20000))
    kept = word_drop(text, 0.15, np.random.default_rng(0)).split()
    assert abs(1 - len(kept) / 20000 - 0.15) < 0.01
    assert set(kept) <= set(text.split()) and kept == sorted(kept, key=lambda w: int(w[1:]))  # order kept
    assert word_drop("a  b\tc", 0.0) == "a b c" and word_drop("a b c", 1.0, np.random.default_rng(0)) == ""
    assert word_drop_texts(["a b c d"] * 5, 0.5, seed=3) == word_drop_texts(["a b c d"] * 5, 0.5, seed=3)


# ---- the cache ----------------------------------------------------------------------------------------
def test_cache_encodes_only_new_texts(tmp_path):
    enc = CountingEncoder()
    texts = [f"text number {i}" for i in range(30)] + ["text number 0"]  # one duplicate
    cache = EmbeddingCache(enc.identity, enc.pooling, enc.max_length, enc.dim, tmp_path)
    first = encode_texts(enc, texts, cache)
    assert (first.n_encoded, first.n_cached) == (30, 0) and len(enc.seen) == 30

    enc.seen.clear()  # a fresh cache object reads the chunk files from disk
    cache2 = EmbeddingCache(enc.identity, enc.pooling, enc.max_length, enc.dim, tmp_path)
    again = encode_texts(enc, texts, cache2)
    assert (again.n_encoded, again.n_cached) == (0, 30) and enc.seen == []
    np.testing.assert_array_equal(again.vectors, first.vectors)

    more = texts + [f"new text {i}" for i in range(10)]
    third = encode_texts(enc, more, cache2)
    assert (third.n_encoded, third.n_cached) == (10, 30) and sorted(enc.seen) == sorted(more[-10:])
    np.testing.assert_array_equal(third.vectors[:31], first.vectors)
    assert len(list(cache2.dir.glob("chunk-*.npz"))) == 2


def test_cache_keys_and_compaction(tmp_path):
    enc = CountingEncoder()
    a = EmbeddingCache(enc.identity, "mean", 512, enc.dim, tmp_path)
    b = EmbeddingCache(enc.identity, "cls", 512, enc.dim, tmp_path)
    assert a.dir != b.dir  # pooling is part of the key
    for i in range(3):
        encode_texts(enc, [f"t{i}"], a)
    a.compact()
    assert len(list(a.dir.glob("chunk-*.npz"))) == 1
    fresh = EmbeddingCache(enc.identity, "mean", 512, enc.dim, tmp_path)
    vectors, found = fresh.get(text_hashes(["t0", "t1", "t2", "t3"]))
    assert found.tolist() == [True, True, True, False]
    np.testing.assert_array_equal(vectors[:3], enc.inner.encode(["t0", "t1", "t2"]))


# ---- dataset embeddings -------------------------------------------------------------------------------
def test_encode_dataset_writes_and_reuses(tmp_path, toy_dir):
    enc = CountingEncoder()
    res = encode_dataset(toy_dir, encoder=enc, cache=tmp_path / "cache", progress=False)
    table, info = load_item_embeddings(toy_dir)
    assert res.name == "counting-mean" and table.shape == (41, 16) and table.dtype == np.float32
    np.testing.assert_array_equal(table[0], 0)
    np.testing.assert_array_equal(table[1:], enc.inner.encode(Dataset.load(toy_dir).item_texts))
    assert info["encoder"]["identity"] == enc.identity and res.n_encoded == 40

    again = encode_dataset(toy_dir, encoder=enc, cache=tmp_path / "cache", progress=False)
    assert (again.n_encoded, again.n_cached) == (0, 40)

    # The same catalogue plus 10 new items: only those are encoded.
    grown = make_dataset(extra_texts=[f"brand new thing {i}" for i in range(10)]).save(tmp_path / "grown")
    enc.seen.clear()
    res3 = encode_dataset(grown, encoder=enc, cache=tmp_path / "cache", progress=False)
    assert (res3.n_encoded, res3.n_cached) == (10, 40) and len(enc.seen) == 10


def test_word_drop_view_and_names(tmp_path, toy_dir):
    encode_dataset(toy_dir, encoder="hashing", cache=False, progress=False)
    res = encode_dataset(toy_dir, encoder="hashing", word_drop=0.15, cache=False, progress=False)
    assert res.name == "hashing-32-mean-wd15"
    with pytest.raises(NotFoundError, match="hashing-32-mean, hashing-32-mean-wd15"):
        load_item_embeddings(toy_dir)
    _, info = load_item_embeddings(toy_dir, "hashing-32-mean-wd15")
    assert info["word_drop"] == 0.15 and info["seed"] == 2020


def test_load_checks_content_hash(toy_dir):
    encode_dataset(toy_dir, encoder="hashing", cache=False, progress=False)
    meta_path = toy_dir / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["content_hash"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match="content hash"):
        load_item_embeddings(toy_dir)


def test_attach_embeddings(tmp_path, toy_dir):
    rows = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
    np.save(tmp_path / "a.npy", rows)
    np.save(tmp_path / "b.npy", np.vstack([np.ones((1, 8), np.float32), rows]))
    rows.tofile(tmp_path / "Toy.feat1CLS")
    for source, name in (("a.npy", "a"), ("b.npy", "b"), ("Toy.feat1CLS", "raw")):
        attach_embeddings(toy_dir, tmp_path / source, name)
        table, info = load_item_embeddings(toy_dir, name)
        np.testing.assert_array_equal(table[1:], rows)
        np.testing.assert_array_equal(table[0], 0)
    np.save(tmp_path / "bad.npy", rows[:39])
    with pytest.raises(DataError, match="shape"):
        attach_embeddings(toy_dir, tmp_path / "bad.npy", "bad")


def test_dataset_features_are_exposed(tmp_path):
    ds = make_dataset()
    feat = np.vstack([np.zeros((1, 6)), np.random.default_rng(1).standard_normal((40, 6))]).astype(np.float32)
    ds.features["feat1CLS"] = feat
    path = ds.save(tmp_path / "withfeat")
    table, info = load_item_embeddings(path)  # no encoded embeddings: the feature is the default
    assert info["name"] == "feat1CLS" and info["kind"] == "dataset_feature"
    np.testing.assert_array_equal(table, feat)
    attach_embeddings(path, "feat1CLS", "bert-cls")
    np.testing.assert_array_equal(load_item_embeddings(path, "bert-cls")[0], feat)


# ---- Hugging Face folders -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A randomly initialised 2-layer, 32-wide BERT with MiniLM's tokenizer, saved as a local folder."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from textrec.text.encoders import default_encoder_path

    try:
        src = default_encoder_path()
    except NotFoundError as e:
        pytest.skip(str(e))
    folder = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=37, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(folder)
    for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(src / f, folder / f)
    return folder


def test_sorted_batches_keep_the_original_order(tiny_bert):
    from textrec.text.encoders import HFEncoder

    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=rng.integers(1, 30))) for _ in range(23)] + [""]
    sorted_ = HFEncoder(tiny_bert, batch_size=5, device="cpu").encode(texts)
    unsorted = HFEncoder(tiny_bert, batch_size=5, device="cpu", sort_by_length=False).encode(texts)
    single = HFEncoder(tiny_bert, batch_size=1, device="cpu").encode(texts)
    assert sorted_.shape == (24, 32) and sorted_.dtype == np.float32
    np.testing.assert_allclose(sorted_, single, atol=1e-5)
    np.testing.assert_allclose(unsorted, single, atol=1e-5)
    assert HFEncoder(tiny_bert, max_length=1000, device="cpu").max_length == 64  # capped by the model


def test_pooling_matches_the_model(tiny_bert):
    import torch
    from transformers import AutoModel, AutoTokenizer

    from textrec.text.encoders import HFEncoder

    texts = ["digital caliper", "a much longer text about green tea and coffee mugs"]
    tok = AutoTokenizer.from_pretrained(tiny_bert, local_files_only=True)
    model = AutoModel.from_pretrained(tiny_bert, local_files_only=True).eval()
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected_mean = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    np.testing.assert_allclose(HFEncoder(tiny_bert, pooling="mean", device="cpu").encode(texts), expected_mean, atol=1e-5)
    np.testing.assert_allclose(HFEncoder(tiny_bert, pooling="cls", device="cpu").encode(texts), hidden[:, 0].numpy(), atol=1e-5)
    normed = HFEncoder(tiny_bert, normalize=True, device="cpu")
    np.testing.assert_allclose(np.linalg.norm(normed.encode(texts), axis=1), 1, rtol=1e-5)
    assert normed.identity != HFEncoder(tiny_bert, device="cpu").identity


def test_identity_follows_the_weights(tiny_bert, tmp_path):
    import torch
    from transformers import BertModel

    from textrec.text.encoders import HFEncoder

    copy = tmp_path / "copy"
    shutil.copytree(tiny_bert, copy)
    assert HFEncoder(copy, device="cpu").identity == HFEncoder(tiny_bert, device="cpu").identity
    model = BertModel.from_pretrained(copy)
    with torch.no_grad():
        model.pooler.dense.bias.add_(1.0)
    model.save_pretrained(copy)
    assert HFEncoder(copy, device="cpu").identity != HFEncoder(tiny_bert, device="cpu").identity


def test_minilm_offline():
    from textrec.text.encoders import default_encoder_path

    try:
        default_encoder_path()
    except NotFoundError as e:
        pytest.skip(str(e))
    enc = get_encoder("minilm", device="cpu")
    v = enc.encode(["Digital caliper, stainless steel, 6 inch.", "Vernier caliper for precise measuring.",
                    "Organic green tea, 100 bags."])
    assert v.shape == (3, 384) and enc.dim == 384 and enc.identity.startswith("hf:")
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2 and v[0] @ v[1] > v[1] @ v[2] + 0.2


def test_fully_cached_encode_never_imports_torch(tiny_bert, toy_dir, tmp_path):
    """A rerun served entirely from the cache skips the torch import (about 1 s of a ~1.5 s rerun on CPU)."""
    import subprocess
    import sys

    script = ("import sys, json; from textrec.text.encode import encode_dataset; "
              f"r = encode_dataset({str(toy_dir)!r}, {str(tiny_bert)!r}, device='cpu', cache={str(tmp_path / 'cache')!r}, progress=False); "
              "print(json.dumps([r.n_encoded, r.n_cached, 'torch' in sys.modules]))")
    runs = [json.loads(subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout)
            for _ in range(2)]
    assert runs == [[40, 0, True], [0, 40, False]]


# ---- an interrupted encode keeps the chunks it finished --------------------------------------------------
class DyingEncoder(CountingEncoder):
    """Encodes ``lives`` calls, then dies the way a killed process stops: mid-way."""

    def __init__(self, lives: int) -> None:
        super().__init__(dim=32)
        self.lives = lives

    def encode(self, texts):
        if self.lives == 0:
            raise KeyboardInterrupt
        self.lives -= 1
        return super().encode(texts)


def test_killed_encode_resumes_from_the_cache(tmp_path, world_dir, monkeypatch):
    import textrec.text.encode as encode_mod

    monkeypatch.setattr(encode_mod, "CHUNK_TEXTS", 25, raising=False)
    cache = tmp_path / "cache"
    n_distinct = len(set(Dataset.load(world_dir).item_texts))
    with pytest.raises(KeyboardInterrupt):
        encode_dataset(world_dir, encoder=DyingEncoder(lives=2), cache=cache, progress=False)
    assert len(EmbeddingCache("hashing-v1:32", "mean", 512, 32, cache)) == 50  # two chunks of 25 were kept
    rerun = CountingEncoder(dim=32)
    res = encode_dataset(world_dir, encoder=rerun, cache=cache, progress=False)
    assert (res.n_cached, res.n_encoded) == (50, n_distinct - 50) and len(rerun.seen) == n_distinct - 50
    table, _ = load_item_embeddings(world_dir)
    fresh = encode_dataset(world_dir, encoder=CountingEncoder(dim=32), cache=False, progress=False, name="fresh")
    np.testing.assert_array_equal(table, np.load(fresh.path))


# ---- several embeddings / codes: say how to choose ---------------------------------------------------------
def test_several_embeddings_or_codes_say_how_to_choose(world_dir):
    encode_dataset(world_dir, encoder="hashing-16", cache=False, progress=False)
    encode_dataset(world_dir, encoder="hashing-32", cache=False, progress=False)
    with pytest.raises(NotFoundError, match=re.escape(
            f"several item embeddings in {world_dir} (hashing-16-mean, hashing-32-mean); choose one with data.embeddings=NAME")):
        load_item_embeddings(world_dir)
    from textrec.quant.codes import load_item_codes, random_codes

    random_codes(world_dir, 4, 8, name="a")
    random_codes(world_dir, 4, 8, name="b")
    with pytest.raises(NotFoundError, match=re.escape(f"several item codes in {world_dir} (a, b); choose one with data.codes=NAME")):
        load_item_codes(world_dir)
