"""OPQ/PQ item codes: the quantiser, faiss index files (ours and VQ-Rec's released ones), dataset codes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

import re

import pytest

from doubles import cli_json
from textrec.cli import main
from textrec.data.dataset import Dataset  # noqa: E402
from textrec.errors import ConfigError, DataError, NotFoundError  # noqa: E402
from textrec.quant.codes import (  # noqa: E402
    PAD_CODE,
    code_statistics,
    load_item_codes,
    quantize_dataset,
    quantize_datasets,
)
from textrec.quant.faiss_io import (  # noqa: E402
    build_index,
    export_index,
    import_index,
    pack_codes,
    parse_index,
    unpack_codes,
)
from textrec.quant.pq import ItemQuantizer  # noqa: E402
from textrec.text.encode import (
    encode_dataset,  # noqa: E402
    load_item_embeddings,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SCIENTIFIC_INDEX = SHARED_DATA / "amazon-scientific-unisrec" / "Scientific.OPQ32,IVF1,PQ32x8.strict.index"
RELEASED = {"Pantry": 4897, "Instruments": 9954, "Arts": 21001, "Office": 25937, "OR": 3469, "Scientific": 4373}
FAST = dict(opq_iterations=3)  # faiss' default 50 OPQ iterations take ~1 min on 384-d; tests need the recipe, not the optimum


def shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not available: {path} does not exist")
    return path


def released_path(name: str) -> Path:
    if name == "Scientific":
        return shared(SCIENTIFIC_INDEX)
    return shared(SHARED_DATA / "vqrec-released-indexes" / f"{name}.OPQ32,IVF1,PQ32x8.strict.index")


@pytest.fixture(scope="module")
def vectors():
    """600 clustered 48-d vectors (20 clusters), so quantisation has structure to find."""
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((20, 48))
    return (centers[rng.integers(0, 20, 600)] + 0.6 * rng.standard_normal((600, 48))).astype(np.float32)


@pytest.fixture(scope="module")
def fitted(vectors):
    return ItemQuantizer(48, 8, 16, **FAST).fit(vectors, seed=7)


# ---- the quantiser ------------------------------------------------------------------------------------
def test_codes_shape_dtype_and_range(fitted, vectors):
    codes = fitted.encode(vectors)
    assert codes.shape == (600, 8) and codes.dtype == np.uint8 and codes.max() < 16
    assert fitted.codebooks.shape == (8, 16, 6) and fitted.centroid.shape == (48,) and fitted.rotation.shape == (48, 48)
    assert ItemQuantizer(48, 4, 512).bits == 9  # more than 256 codewords -> wider dtype
    big = ItemQuantizer(48, 4, 512, **FAST).fit(np.tile(vectors, (2, 1)) + 0.01 * np.arange(1200)[:, None])
    assert big.encode(vectors[:5]).dtype == np.int16


def test_rotation_orthogonal_and_centroid_is_normalised_mean(fitted, vectors):
    r = fitted.rotation
    np.testing.assert_allclose(r @ r.T, np.eye(48), atol=1e-5)
    mean = (vectors @ r.T).mean(0)
    np.testing.assert_allclose(fitted.centroid, mean / np.linalg.norm(mean), atol=1e-5)


def test_reconstruction_error_falls_with_more_subspaces(vectors):
    errors = []
    for d_sub in (4, 8, 16):
        q = ItemQuantizer(48, d_sub, 16, **FAST).fit(vectors, seed=0)
        x_hat = q.reconstruct(q.encode(vectors))
        errors.append(((x_hat - vectors) ** 2).sum() / (vectors**2).sum())
    assert errors[0] > errors[1] > errors[2]


def test_fixed_seed_gives_identical_codes(fitted, vectors):
    again = ItemQuantizer(48, 8, 16, **FAST).fit(vectors, seed=7)
    np.testing.assert_array_equal(again.encode(vectors), fitted.encode(vectors))
    np.testing.assert_array_equal(again.rotation, fitted.rotation)
    other = ItemQuantizer(48, 8, 16, **FAST).fit(vectors, seed=8)
    assert (other.encode(vectors) != fitted.encode(vectors)).any()


def test_encode_equals_what_index_add_stores(fitted, vectors):
    index = build_index(parse_index(fitted.index))
    index.add(vectors[:50])
    np.testing.assert_array_equal(parse_index(index).codes, fitted.encode(vectors[:50]))
    np.testing.assert_allclose(fitted.reconstruct(fitted.encode(vectors[:50])), index.sa_decode(index.sa_encode(vectors[:50])), atol=1e-5)


def test_quantizer_errors(vectors):
    with pytest.raises(ConfigError, match="must divide"):
        ItemQuantizer(384, 7)
    with pytest.raises(ConfigError, match="power of two"):
        ItemQuantizer(384, 32, 100)
    with pytest.raises(DataError, match="at least as many"):
        ItemQuantizer(48, 8, 256).fit(vectors[:100])
    with pytest.raises(DataError, match="not fitted"):
        ItemQuantizer(48, 8).encode(vectors)
    with pytest.raises(DataError, match=r"expected \(n, 48\)"):
        ItemQuantizer(48, 8, 16, **FAST).fit(vectors[:, :40])


@pytest.mark.parametrize("nbits", [4, 6, 8, 12])
def test_pack_unpack_codes(nbits):
    codes = np.random.default_rng(nbits).integers(0, 1 << nbits, (30, 8))
    np.testing.assert_array_equal(unpack_codes(pack_codes(codes, nbits), 8, nbits), codes)


def test_save_load_round_trip(fitted, vectors, tmp_path):
    codes = fitted.encode(vectors)
    fitted.save(tmp_path / "q.index", codes, np.arange(600) * 2)
    parts = import_index(tmp_path / "q.index")
    np.testing.assert_array_equal(parts.codes, codes)
    np.testing.assert_array_equal(parts.ids, np.arange(600) * 2)
    loaded = ItemQuantizer.load(tmp_path / "q.index")
    np.testing.assert_array_equal(loaded.encode(vectors), codes)


# ---- released indexes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(RELEASED))
def test_released_index_loads(name):
    parts = import_index(released_path(name))
    n = RELEASED[name]
    assert parts.codes.shape == (n, 32) and parts.ids.tolist() == list(range(n))
    assert parts.rotation.shape == (768, 768) and parts.codebooks.shape == (32, 256, 24)
    np.testing.assert_allclose(parts.rotation @ parts.rotation.T, np.eye(768), atol=1e-4)
    assert abs(np.linalg.norm(parts.centroid) - 1) < 1e-5 and parts.metric == faiss.METRIC_INNER_PRODUCT
    assert code_statistics(parts.codes, 256)["codebook_usage_min"] == 256


def test_released_index_round_trip_is_exact(tmp_path):
    parts = import_index(released_path("Scientific"))
    export_index(parts, tmp_path / "a.index")
    again = import_index(tmp_path / "a.index")
    for field, x, y in zip(parts._fields, parts, again):
        np.testing.assert_array_equal(x, y, err_msg=field)
    export_index(again, tmp_path / "b.index")
    assert (tmp_path / "a.index").read_bytes() == (tmp_path / "b.index").read_bytes()
    # Our rebuilt index encodes exactly as the released one.
    x = ItemQuantizer.from_faiss(build_index(parts)).reconstruct(parts.codes[:200])
    x += 0.02 * np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    released = ItemQuantizer.load(released_path("Scientific"))
    np.testing.assert_array_equal(ItemQuantizer.load(tmp_path / "a.index").encode(x), released.encode(x))


def test_not_an_opq_index(tmp_path):
    faiss.write_index(faiss.IndexFlatIP(8), str(tmp_path / "flat.index"))
    with pytest.raises(DataError, match="expected IndexPreTransform"):
        import_index(tmp_path / "flat.index")
    (tmp_path / "junk.index").write_bytes(b"not a faiss file")
    with pytest.raises(DataError, match="not a readable faiss index"):
        import_index(tmp_path / "junk.index")


# ---- dataset codes ------------------------------------------------------------------------------------
def test_code_statistics():
    stats = code_statistics(np.array([[1, 2], [1, 2], [3, 2], [0, 0], [3, 2], [5, 1]]), 8)
    assert stats["collisions"] == 4 and stats["collision_groups"] == 2
    assert stats["codebook_usage"] == [4, 3]


def make_domain(name: str, n_items: int, seed: int) -> Dataset:
    """Items whose last 5 appear only as test targets (never in a training part)."""
    rng = np.random.default_rng(seed)
    words = [f"{name}{w}" for w in range(60)] + [f"shared{w}" for w in range(20)]
    texts = [" ".join(rng.choice(words, size=6)) for _ in range(n_items)]
    n_seen = n_items - 5
    seqs = [list(rng.choice(np.arange(1, n_seen + 1), size=6, replace=False)) for _ in range(n_seen)]
    for u, item in enumerate(range(n_seen + 1, n_items + 1)):
        seqs[u][-1] = item
    seqs.append(list(range(1, n_seen + 1)) + [1, 2])
    return Dataset.from_sequences(name, [f"{name}{i}" for i in range(n_items)], texts, [f"u{u}" for u in range(len(seqs))], seqs)


@pytest.fixture()
def domains(tmp_path):
    dirs = []
    for i, (name, n) in enumerate((("tools", 90), ("tea", 70), ("lab", 60))):
        path = make_domain(name, n, seed=i).save(tmp_path / name)
        encode_dataset(path, encoder="hashing-48", cache=False, progress=False)
        dirs.append(path)
    return dirs


def test_quantize_dataset(domains):
    res = quantize_dataset(domains[0], n_codebooks=8, codebook_size=16, seed=1, **FAST)
    codes, info = load_item_codes(domains[0])
    assert res.name == "hashing-48-mean-opq8x16" and codes.shape == (91, 8) and codes.dtype == np.int16
    assert (codes[0] == PAD_CODE).all() and codes[1:].min() >= 0 and codes[1:].max() < 16
    assert res.n_fit == 85 and info["n_unseen"] == 5 and info["encoded_by"] == {"quantizer": 90}
    assert info["collisions"] == res.collisions and len(info["codebook_usage"]) == 8
    assert 0 < info["reconstruction_rel_error"] < 1
    saved = import_index(res.index_path)  # the reference layout: id j = j-th smallest training item
    np.testing.assert_array_equal(saved.codes, codes[1:86])

    # Reusing the saved quantiser reproduces the codes without refitting.
    reused = quantize_dataset(domains[0], quantizer=res.index_path, name="reused")
    np.testing.assert_array_equal(load_item_codes(domains[0], "reused")[0], codes)
    assert reused.encoded_by == {"quantizer": 90} and reused.n_fit == 0
    with pytest.raises(NotFoundError, match="several item codes"):
        load_item_codes(domains[0])


def test_import_own_index_maps_training_items(domains):
    fit = quantize_dataset(domains[0], n_codebooks=8, codebook_size=16, **FAST)
    res = quantize_dataset(domains[0], from_index=fit.index_path, name="imported")
    codes, info = load_item_codes(domains[0], "imported")
    fit_codes, _ = load_item_codes(domains[0], fit.name)
    np.testing.assert_array_equal(codes[1:86], fit_codes[1:86])  # training items: the index's codes
    assert res.encoded_by == {"index_codes": 85, "lstsq_map": 5} and info["approximation"]["n_train"] == 85
    assert codes[86:].min() >= 0
    with pytest.raises(DataError, match="training-split items"):
        quantize_dataset(domains[1], from_index=fit.index_path)


def test_quantize_datasets_jointly(domains, tmp_path):
    out = tmp_path / "joint.index"
    results = quantize_datasets(domains[:2], n_codebooks=8, codebook_size=16, out_index=out, **FAST)
    assert [r.n_fit for r in results] == [150, 150]
    assert import_index(out).codes.shape == (150, 8) and out.with_suffix(".json").exists()
    target = quantize_dataset(domains[2], quantizer=out)
    assert target.name == "hashing-48-mean-opq8x16-joint" and target.n_fit == 0
    q = ItemQuantizer.load(out)

    emb, _ = load_item_embeddings(domains[2])
    np.testing.assert_array_equal(load_item_codes(domains[2])[0][1:], q.encode(emb[1:]))


def test_scientific_import_maps_strict_items(tmp_path):
    from textrec.data.formats.unisrec import read_unisrec

    data_dir = read_unisrec(shared(SCIENTIFIC_INDEX).parent).save(tmp_path / "sci")
    encode_dataset(data_dir, encoder="hashing-64", cache=False, progress=False)
    res = quantize_dataset(data_dir, from_index=SCIENTIFIC_INDEX)
    assert res.encoded_by == {"index_codes": 4373, "lstsq_map": 12} and res.n_items == 4385
    codes, info = load_item_codes(data_dir)
    from textrec.data.split import training_item_ids

    strict = training_item_ids(Dataset.load(data_dir))
    np.testing.assert_array_equal(codes[strict], import_index(SCIENTIFIC_INDEX).codes)
    assert info["n_unseen"] == 12 and codes[1:].min() >= 0 and res.collisions == info["collisions"]


@pytest.mark.parametrize("n, dim, codebook_size", [(100, 32, 16), (240, 32, 64), (300, 32, 64), (300, 384, 64),
                                                          pytest.param(400, 384, 64, marks=pytest.mark.slow)])  # 35 s
def test_small_training_sets_fit_safely(n, dim, codebook_size):
    """faiss' OPQ training aborts the process with fewer vectors than dimensions; ours never asks for that."""
    x = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    for _ in range(2):
        q = ItemQuantizer(dim, 8, codebook_size).fit(x, seed=1)
        codes = q.encode(x)
        assert codes.shape == (n, 8) and codes.max() < codebook_size
    assert q.opq_method == ("faiss" if n >= dim else "numpy")
    np.testing.assert_allclose(q.rotation @ q.rotation.T, np.eye(dim), atol=1e-4)


def test_rotation_is_learnt_below_the_dimension():
    """With fewer vectors than dimensions the numpy OPQ still learns a rotation that beats a random one."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((200, 12)) @ rng.standard_normal((12, 256)) + 0.05 * rng.standard_normal((200, 256))).astype(np.float32)

    def rel_error(q):
        return float(np.linalg.norm(q.reconstruct(q.encode(x)) - x) / np.linalg.norm(x))

    learnt = ItemQuantizer(256, 8, 16, opq_iterations=10).fit(x, seed=3)
    fixed = ItemQuantizer(256, 8, 16, opq_iterations=0).fit(x, seed=3)
    assert learnt.opq_method == "numpy"
    assert rel_error(learnt) < 0.8 * rel_error(fixed), (rel_error(learnt), rel_error(fixed))
    np.testing.assert_allclose(learnt.rotation @ learnt.rotation.T, np.eye(256), atol=1e-4)
    again = ItemQuantizer(256, 8, 16, opq_iterations=10).fit(x, seed=3)
    np.testing.assert_array_equal(again.encode(x), learnt.encode(x))  # deterministic for a seed


# ---- quantize reports progress, collisions and codebook usage in words -------------------------------
def test_quantize_reports_progress_collisions_and_usage(world_dir, capsys):
    pytest.importorskip("faiss")
    from textrec.quant.codes import code_statistics, load_item_codes

    assert main(["encode", str(world_dir), "--encoder", "hashing-32", "--json"]) == 0
    capsys.readouterr()
    assert main(["quantize", str(world_dir), "--codebooks", "4", "--codebook-size", "8"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"training OPQ rotation and PQ codebooks \(4 x 8\) on [\d,]+ vectors", err), err
    assert re.search(r"encoding 60 items", err), err
    line = err.strip().splitlines()[-1]
    m = re.fullmatch(r"codes 'hashing-32-mean-opq4x8': 60 items, 4 codebooks x 8 codewords; (\d+) items share their "
                     r"full code with another item \(collisions\); codebook usage: mean ([\d.]+)/8 codewords used per "
                     r"codebook \(min (\d+)\); (\d+\.\d) s; wrote (\S+)", line)
    assert m, line
    codes, _ = load_item_codes(world_dir)
    stats = code_statistics(codes[1:], 8)
    assert int(m[1]) == stats["collisions"] and int(m[3]) == stats["codebook_usage_min"]
    assert float(m[2]) == pytest.approx(stats["codebook_usage_mean"], abs=0.05) and Path(m[5]).exists()
    out = cli_json(capsys, ["quantize", str(world_dir), "--codebooks", "4", "--codebook-size", "8", "--name", "again", "--json"])
    assert out["collisions"] == stats["collisions"] and out["codebook_usage"] == stats["codebook_usage"]
    assert out["codebook_usage_min"] == stats["codebook_usage_min"]
    assert out["codebook_usage_mean"] == pytest.approx(stats["codebook_usage_mean"])
    assert out["collision_groups"] == stats["collision_groups"] and out["seconds"] == round(out["seconds"], 3)
