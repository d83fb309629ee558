"""ONNX export: the exported encoder and item table reproduce textrec's scores in onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import pytest
from serve_runs import make_world, train

from textrec.cli import main

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("export"))


@pytest.mark.parametrize("model", ["sasrec", "unisrec", "vqrec"])
def test_onnx_scores_match_textrec(world, tmp_path, capsys, model):
    from textrec.serve.recommend import all_scores
    from textrec.serve.service import load_run_for_serving

    run_dir = train(world, tmp_path / model, model, epochs=2)
    out = tmp_path / "onnx"
    assert main(["export", str(run_dir), "--format", "onnx", "--out", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"] == model and info["n_items"] == 120
    session = ort.InferenceSession(str(out / "encoder.onnx"), providers=["CPUExecutionProvider"])
    items = np.load(out / "items.npy")
    assert items.shape == (121, info["dim"])
    keys = json.loads((out / "items.json").read_text())["keys"]
    run = load_run_for_serving(run_dir)
    assert keys == run.dataset.item_keys
    L = run.cfg.data.max_seq_len
    histories = [[7], [1, 2, 3], list(range(1, 80))]  # one item, a few, and longer than max_seq_len
    for history in histories:
        cut = np.array(history[-L:], dtype=np.int64)
        vec = session.run(None, {"item_seq": cut[None], "seq_len": np.array([len(cut)], dtype=np.int64)})[0]
        got = (vec @ items.T)[0, 1:]
        want = all_scores(run.model, np.array(history), L, exclude_history=False).numpy()[1:]
        assert np.abs(got - want).max() < 1e-4
    # a right-padded batch of two histories of different lengths gives each its own vector
    batch = np.array([[1, 2, 3], [9, 0, 0]], dtype=np.int64)
    vecs = session.run(None, {"item_seq": batch, "seq_len": np.array([3, 1], dtype=np.int64)})[0]
    want = all_scores(run.model, np.array([9]), L, exclude_history=False).numpy()[1:]
    assert np.abs((vecs[1] @ items.T)[1:] - want).max() < 1e-4


def test_missrec_and_recformer_are_refused_with_the_reason():
    from types import SimpleNamespace

    from textrec.errors import TextrecError
    from textrec.serve.export import export_onnx

    for name, reason in (("missrec", "user-adaptive fusion"), ("recformer", "key-value sentence")):
        fake = SimpleNamespace(cfg=SimpleNamespace(model=name))
        with pytest.raises(TextrecError, match=reason):
            export_onnx(fake, "unused")
