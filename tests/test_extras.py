"""Optional dependencies: a missing one fails in one line naming the ``pip install 'textrec[...]'`` to run."""

from __future__ import annotations

import importlib

import pytest

import textrec.extras
from textrec.cli import main
from textrec.extras import EXTRAS, MissingDependencyError, require


@pytest.fixture
def missing(monkeypatch):
    """``missing("faiss")``: importing that module fails from now on, as when its package is not installed."""
    real = importlib.import_module
    gone: set[str] = set()

    def import_module(name, package=None):
        if name.split(".")[0] in gone:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real(name, package)

    monkeypatch.setattr(textrec.extras.importlib, "import_module", import_module)
    return gone.add


@pytest.mark.parametrize("module", sorted(EXTRAS))
def test_every_optional_module_names_its_extra(missing, module):
    missing(module)
    with pytest.raises(MissingDependencyError) as e:
        require(module, "this step")
    message = str(e.value)
    assert "\n" not in message and f"pip install 'textrec[{EXTRAS[module][1]}]'" in message and "this step" in message


def test_present_module_is_returned_and_unknown_one_is_a_bug():
    assert require("faiss", "x") is importlib.import_module("faiss")
    with pytest.raises(KeyError):
        require("numpy", "x")


def test_quantize_and_missrec_kmeans_without_faiss(missing, tiny_world):
    from textrec.config import load_config
    from textrec.quant.faiss_io import require_faiss
    from doubles import SMALL, item_inputs
    from textrec.train.inputs import build_model

    missing("faiss")
    with pytest.raises(MissingDependencyError, match=r"quantising item codes needs the package faiss-cpu \(pip install 'textrec\[quant\]'\)"):
        require_faiss()
    model = build_model(load_config(model="missrec", overrides=SMALL["missrec"]), item_inputs("missrec", tiny_world))
    with pytest.raises(MissingDependencyError, match=r"MISSRec's interest discovery \(k-means\) needs .*textrec\[quant\]"):
        model.phases("train")  # before any training starts


def test_recformer_without_transformers_fails_in_one_line(missing, tiny_dir, tmp_path, capsys):
    missing("transformers")
    assert main(["train", str(tiny_dir), "--model", "recformer", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'textrec[text]'" in err and "recformer" in err
    assert not (tmp_path / "run").exists()


def test_text_encoding_without_transformers(missing):
    from textrec.text.encoders import HFEncoder, default_encoder_path

    encoder = HFEncoder(default_encoder_path(), device="cpu")  # nothing is loaded before the first text
    missing("transformers")
    with pytest.raises(MissingDependencyError, match=r"text encoding with .* needs the package transformers \(pip install 'textrec\[text\]'\)"):
        encoder.encode(["a text"])
