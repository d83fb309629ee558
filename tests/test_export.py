"""ONNX export: the exported encoder and item table reproduce textrec's scores in onnxruntime."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from serve_runs import make_world, train

from textrec.cli import main
from textrec.data.batching import SeqBatch
from textrec.models import MODELS

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


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_model_exports_or_says_why(name, tiny_world, tmp_path):
    """Exportable models reproduce ``encode`` in onnxruntime; the others are refused with the reason."""
    import torch
    from doubles import MAX_SEQ_LEN, SMALL, item_inputs

    from textrec.config import load_config
    from textrec.errors import TextrecError
    from textrec.serve.export import export_onnx, export_problem
    from textrec.train.inputs import build_model

    cfg = load_config(model=name, overrides=SMALL[name] + [f"data.max_seq_len={MAX_SEQ_LEN}"])
    torch.manual_seed(0)
    run = SimpleNamespace(model=build_model(cfg, item_inputs(name, tiny_world)).eval(), cfg=cfg, dataset=tiny_world)
    reasons = {"missrec": "its own rule", "recformer": "key-value sentence"}
    if name in reasons:
        assert reasons[name] in export_problem(run)
        with pytest.raises(TextrecError, match=reasons[name]):
            export_onnx(run, tmp_path / "out")
        return
    assert export_problem(run) is None
    export_onnx(run, tmp_path / "out")
    assert not run.model.training  # exporting leaves the model as it was
    session = ort.InferenceSession(str(tmp_path / "out" / "encoder.onnx"), providers=["CPUExecutionProvider"])
    seq = torch.tensor([[3, 1, 4, 1, 5], [9, 2, 6, 0, 0]])
    lengths = torch.tensor([5, 3])
    with torch.no_grad():
        want = run.model.encode(SeqBatch(seq, lengths)).float().numpy()
    got = session.run(None, {"item_seq": seq.numpy(), "seq_len": lengths.numpy()})[0]
    assert np.abs(got - want).max() < 1e-4
