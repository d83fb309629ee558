import numpy as np
import pytest

from doubles import TINY_TEXT
from textrec.config import load_config
from textrec.data.dataset import Dataset
from textrec.data.synthetic import WorldSpec, make_domain
from textrec.errors import DataError
from textrec.text.encode import encode_dataset
from textrec.train.inputs import load_item_inputs
from textrec.train.transfer import pretrain_run


def _small(**kw):
    args = dict(
        name="small",
        item_keys=["a", "b", "c", "d"],
        item_texts=["A.", "B.", "C.", "D."],
        user_keys=["u1", "u2"],
        sequences=[[1, 2, 3], [4, 3, 2, 1]],
    )
    args.update(kw)
    return Dataset.from_sequences(**args)


def test_save_load_round_trip(tiny_world, tmp_path):
    tiny_world.save(tmp_path / "d")
    back = Dataset.load(tmp_path / "d")
    assert back.content_hash() == tiny_world.content_hash()
    assert back.meta["content_hash"] == tiny_world.content_hash()
    assert back.item_attributes == tiny_world.item_attributes
    np.testing.assert_array_equal(back.seq_times, tiny_world.seq_times)
    assert back.statistics()["users"] == tiny_world.n_users


def test_content_hash_changes_with_content():
    a, b = _small(), _small(sequences=[[1, 2, 3], [4, 3, 1, 2]])
    assert a.content_hash() == _small().content_hash()
    assert a.content_hash() != b.content_hash()
    assert a.content_hash() != _small(item_texts=["A.", "B.", "C.", "E."]).content_hash()


def test_features_round_trip(tmp_path):
    feat = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    _small(features={"feat1CLS": feat}).save(tmp_path / "d")
    back = Dataset.load(tmp_path / "d")
    np.testing.assert_array_equal(back.features["feat1CLS"], feat)


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(sequences=[[1, 2], [4, 3, 2, 1]]), "has 2 interactions"),
        (dict(sequences=[[1, 2, 9], [4, 3, 2, 1]]), "item ids must lie in 1..4"),
        (dict(item_texts=["A."]), "1 texts for 4 items"),
        (dict(user_keys=[], sequences=[]), "no users"),
        (dict(features={"x": np.zeros((4, 2))}), "expected (5, dim)"),
    ],
)
def test_validation_errors(kw, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _small(**kw)


def test_save_refuses_to_overwrite_and_replaces_when_asked(tmp_path):
    _small().save(tmp_path / "d")
    with pytest.raises(FileExistsError):
        _small().save(tmp_path / "d")
    _small(item_texts=["A.", "B.", "C.", "Z."]).save(tmp_path / "d", overwrite=True)
    assert Dataset.load(tmp_path / "d").item_texts[-1] == "Z."
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_failed_save_leaves_nothing_behind(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    _small().save(tmp_path / "d")
    calls = {"n": 0}
    real = pq.write_table

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(pq, "write_table", failing)
    with pytest.raises(OSError, match="disk full"):
        _small(item_texts=["A.", "B.", "C.", "Z."]).save(tmp_path / "d", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temporary directories left
    assert Dataset.load(tmp_path / "d").item_texts[-1] == "D."  # the old dataset is intact


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="no such dataset directory"):
        Dataset.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no meta.json"):
        Dataset.load(tmp_path / "empty")


# ---- merged inputs must share their origin ------------------------------------------------------------
@pytest.fixture(scope="module")
def origin_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("origins")
    dirs = {}
    for key, domain, seed in (("a", "office", 1), ("b", "home", 2), ("c", "office", 3), ("d", "home", 4)):
        dirs[key] = root / key
        make_domain(domain, WorldSpec(n_items=40, n_users=100, min_len=5, max_len=10), seed=seed).save(dirs[key])
    return dirs


def test_embeddings_of_different_encoders_are_not_merged(origin_dirs, tmp_path):
    a, b = origin_dirs["a"], origin_dirs["b"]
    encode_dataset(a, "hashing-32", progress=False)
    encode_dataset(b, "hashing-32", max_length=8, progress=False)  # same name and dim, another encoder setting
    cfg = load_config(model="unisrec", overrides=TINY_TEXT)
    with pytest.raises(DataError, match="different sources") as err:
        load_item_inputs(cfg, [a, b])
    assert str(a) in str(err.value) and str(b) in str(err.value)
    with pytest.raises(DataError, match="different sources"):
        pretrain_run([a, b], cfg, tmp_path / "pre", quiet=True)
    assert not (tmp_path / "pre").exists()


def test_codes_of_separate_quantisers_are_refused_and_a_joint_one_accepted(origin_dirs):
    pytest.importorskip("faiss", reason="fitting item codes needs faiss")
    from textrec.quant.codes import quantize_dataset, quantize_datasets

    c, d = origin_dirs["c"], origin_dirs["d"]
    for path in (c, d):
        encode_dataset(path, "hashing-32", progress=False)
    q = dict(n_codebooks=4, codebook_size=16, opq_iterations=5)
    separate = {quantize_dataset(path, **q).name for path in (c, d)}
    (name,) = separate
    cfg = lambda codes: load_config(model="vqrec", overrides=[*TINY_TEXT, f"data.codes={codes}"])
    with pytest.raises(DataError, match="different sources") as err:
        load_item_inputs(cfg(name), [c, d])
    assert str(c) in str(err.value) and str(d) in str(err.value)
    (joint,) = {r.name for r in quantize_datasets([c, d], **q)}
    inputs, record = load_item_inputs(cfg(joint), [c, d])
    assert inputs.codes.shape == (81, 4) and inputs.codebook_size == 16
    assert record["quantizer"].startswith("joint:")
