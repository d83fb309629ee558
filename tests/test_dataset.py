import numpy as np
import pytest

from textrec.data.dataset import Dataset
from textrec.errors import DataError


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
