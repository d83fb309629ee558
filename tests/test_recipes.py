"""Model recipes and pre-training defaults: what a model trains with when the user says nothing, under what they say."""

from __future__ import annotations

import json

import pytest

from textrec.cli import main
from textrec.config import PRETRAIN_DEFAULTS, load_config, model_recipes, parse_value
from textrec.data.synthetic import WorldSpec, make_domain
from textrec.models import MODELS
from textrec.text.encode import encode_dataset

CPU = ["train.device=cpu", "train.num_threads=1"]


def test_a_model_recipe_applies_under_the_file_and_the_overrides(tmp_path):
    bare = load_config(model="recformer")
    assert (bare.train.batch_size, bare.train.lr, bare.train.optimizer, bare.eval.extra) == (8, 5e-5, "adamw", ("mrr", "auc"))
    assert bare.recipe["train.batch_size"] == 8 and bare.recipe["eval.extra"] == ["mrr", "auc"]
    path = tmp_path / "mine.toml"
    path.write_text('[model]\nname = "recformer"\n[train]\nbatch_size = 4\n')
    mine = load_config(path, overrides=["train.lr=0.01"])
    assert (mine.train.batch_size, mine.train.lr, mine.train.grad_accum) == (4, 0.01, 16)  # the user wins; the rest stays
    assert "train.batch_size" not in mine.recipe and "train.lr" not in mine.recipe and mine.recipe["train.grad_accum"] == 16
    assert load_config(model="missrec").train.batch_size == 512  # MISSRec's reference batch (finetune.py)
    plain = load_config(model="sasrec")
    assert plain.recipe == {} and plain.train.batch_size == 2048  # the generic defaults are SASRec's reference


def test_pretraining_defaults_fit_and_stop_by_patience():
    cfg = load_config(model="unisrec", kind="pretrain")
    assert (cfg.data.long_sequences, cfg.train.patience, cfg.train.epochs) == ("chunked", 5, 20)
    assert all(cfg.recipe[k] == v for k, v in PRETRAIN_DEFAULTS.items())
    assert load_config(model="unisrec").data.long_sequences == "exact"  # training from scratch keeps the reference rows
    assert load_config(model="unisrec", kind="pretrain", overrides=["data.long_sequences=exact"]).data.long_sequences == "exact"


def test_bare_words_in_override_lists():
    assert parse_value("[feat1CLS,feat3CLS]") == ["feat1CLS", "feat3CLS"]
    assert parse_value("[feat1CLS, 3, true,]") == ["feat1CLS", 3, True]
    assert parse_value('["a","b"]') == ["a", "b"] and parse_value("[]") == [] and parse_value("[10,50]") == [10, 50]
    assert parse_value("[a,,b]") == "[a,,b]"  # not a list a person means: stays a string, and the type check says so
    cfg = load_config(model="missrec", overrides=["data.features=[feat1CLS,feat3CLS]"])
    assert cfg.data.features == ("feat1CLS", "feat3CLS")


def test_model_recipes_for_every_registered_model():
    recipes = model_recipes()
    assert set(recipes) == set(MODELS)
    assert recipes["recformer"]["train"]["train.batch_size"] == 8 and recipes["missrec"]["finetune"] == {"train.batch_size": 512}
    assert recipes["vqrec"]["finetune"] == {"train.lr": 0.003} and recipes["sasrec"]["pretrain"] == PRETRAIN_DEFAULTS


def test_cli_shows_the_recipes(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "recformer" in out and "train.batch_size=8" in out and "missrec" in out and "train.batch_size=512" in out
    assert main(["info", "--models", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["recformer"]["train"]["train.lr"] == 5e-5


@pytest.fixture(scope="module")
def two_domains(tmp_path_factory):
    root = tmp_path_factory.mktemp("pt")
    dirs = []
    for i, domain in enumerate(("tools", "kitchen")):
        path = root / domain
        make_domain(domain, WorldSpec(n_items=30, n_users=80, min_len=5, max_len=70), seed=20 + i).save(path)
        encode_dataset(path, "hashing-32", progress=False)
        dirs.append(str(path))
    return dirs


def test_cli_pretrain_takes_the_pretraining_defaults_and_records_them(two_domains, tmp_path, capsys):
    run = tmp_path / "pt"
    argv = ["pretrain", *two_domains, "--model", "unisrec", "--out", str(run), "model.hidden_size=16", "model.n_heads=2",
            "model.inner_size=16", "model.n_experts=2", "data.max_seq_len=20", "train.epochs=1", *CPU]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "recipe" in err and "data.long_sequences=chunked" in err and "train.patience=5" in err
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["long_sequences"] == "chunked" and config["train"]["patience"] == 5
    assert config["recipe"] == {"data.long_sequences": "chunked", "train.patience": 5, "eval.valid_users": 20_000}  # train.epochs was the user's
    assert main([*argv, "--resume"]) == 0  # the recorded recipe does not stand in the way of resuming


def test_missrec_reads_the_tables_its_config_names_without_data_features(tmp_path, capsys):
    from test_missrec import world_features

    ds = make_domain("garden", WorldSpec(n_items=40, n_users=120, min_len=5, max_len=10, noise=0.1), seed=3)
    text, image = world_features(ds)
    ds.features.update(feat1CLS=text, feat3CLS=image, other=text)
    ds.save(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "data"), "--model", "missrec", "--out", str(run), "--quiet", "model.hidden_size=16",
                 "model.n_heads=2", "model.inner_size=16", "train.epochs=1", *CPU]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["item_inputs"]["features"] == ["feat1CLS", "feat3CLS"]  # text and image, as model.text/image_feature name
    assert config["train"]["batch_size"] == 512 and config["recipe"] == {"train.batch_size": 512}
