"""``textrec finetune --config FILE|NAME``: the pre-trained run's model settings, then the file, then the flags and
key=value overrides; a shipped config (``recformer-reference``) is found by its short name."""

from __future__ import annotations

import json

import pytest

from textrec.cli import main
from textrec.config import load_config
from textrec.data.synthetic import WorldSpec, make_domain
from textrec.errors import ConfigError
from textrec.train.transfer import finetune_config

PRETRAIN = ["model.hidden_size=16", "model.inner_size=16", "model.n_experts=2", "model.temperature=0.05",
            "train.epochs=1", "train.batch_size=128", "train.device=cpu", "train.num_threads=1"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """(target dataset, a pre-trained UniSRec run) on hashed text."""
    root = tmp_path_factory.mktemp("ftcfg")
    for name, seed in (("tools", 0), ("garden", 1)):
        make_domain(name, WorldSpec(n_items=30, n_users=60, min_len=5, max_len=8), seed=seed).save(root / name)
        assert main(["encode", str(root / name), "--encoder", "hashing-32", "--json"]) == 0
    pre = root / "pre"
    assert main(["pretrain", str(root / "tools"), "--model", "unisrec", "--out", str(pre), "--quiet", *PRETRAIN]) == 0
    return root / "garden", pre


def test_config_file_applies_over_the_pretrained_run_then_flags_and_overrides(pretrained, tmp_path, capsys):
    data, pre = pretrained
    toml = tmp_path / "ft.toml"
    toml.write_text('[model]\nname = "unisrec"\ntemperature = 0.1\nfreeze_encoder = true\n\n'
                    '[train]\nlr = 0.005\nepochs = 3\nbatch_size = 64\ndevice = "cpu"\nnum_threads = 1\n\n'
                    '[eval]\nks = [10, 20]\n')
    out = tmp_path / "ft"
    capsys.readouterr()
    assert main(["finetune", str(data), "--init", str(pre), "--out", str(out), "--config", str(toml), "--quiet",
                 "--no-freeze-encoder", "train.epochs=1", "--json"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["hidden_size"] == 16 and cfg["model"]["n_experts"] == 2  # the pre-trained run's
    assert cfg["model"]["temperature"] == 0.1  # the file over the pre-trained run's 0.05
    assert cfg["model"]["freeze_encoder"] is False  # --no-freeze-encoder over the file
    assert cfg["train"]["lr"] == 0.005 and cfg["train"]["batch_size"] == 64 and cfg["eval"]["ks"] == [10, 20]
    assert cfg["train"]["epochs"] == 1  # key=value over the file
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 1


def test_shipped_config_by_short_name(tmp_path):
    init = tmp_path / "pre"
    init.mkdir()
    trained = load_config(model="recformer", overrides=["model.backbone=random", "model.hidden_size=32", "model.n_layers=2",
                                                        "model.n_heads=2", "model.inner_size=37", "train.lr=0.001"])
    (init / "config.json").write_text(json.dumps(trained.to_dict()))
    cfg = finetune_config(init, ["train.warmup_steps=10"], "recformer-reference")
    model = cfg.model_config
    assert (model.backbone, model.hidden_size, model.n_layers, model.inner_size) == ("random", 32, 2, 37)  # the run's
    assert (model.stage_1_patience, model.stage_2_patience) == (5, 3)  # the shipped file
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.grad_accum, cfg.train.eval_every) == (5e-5, 16, 8, 3)
    assert cfg.train.warmup_steps == 10 and cfg.eval.extra == ("mrr", "auc")
    bare = finetune_config(init, [])  # without --config: Recformer's own recipe, the same reference settings
    # the recipe steps every 128 rows as the reference's 16 x 8, in batches of 8 x 16 (memory on CPU)
    assert (bare.train.lr, bare.train.batch_size, bare.train.grad_accum, bare.recipe["train.lr"]) == (5e-5, 8, 16, 5e-5)
    assert finetune_config(init, ["train.lr=0.001"]).train.lr == 0.001 and "train.lr" not in finetune_config(init, ["train.lr=0.001"]).recipe


@pytest.mark.parametrize("config, message", [
    ("recformer-reference", "model.name = 'recformer', but {pre} is a pre-trained unisrec run"),
    ("no-such-config", "config file not found, nor a shipped config (shipped: recformer-reference"),
    ("{tmp}/bad.toml", "unknown config key train.lrr"),
    ("{tmp}/broken.toml", "invalid TOML"),
])
def test_config_errors_are_one_line(pretrained, tmp_path, capsys, config, message):
    data, pre = pretrained
    (tmp_path / "bad.toml").write_text("[train]\nlrr = 0.1\n")
    (tmp_path / "broken.toml").write_text("[train\n")
    capsys.readouterr()
    assert main(["finetune", str(data), "--init", str(pre), "--out", str(tmp_path / "ft"), "--quiet",
                 "--config", config.format(tmp=tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("textrec: error:") and message.format(pre=pre) in err[0], err
    assert not (tmp_path / "ft").exists()
    with pytest.raises(ConfigError):
        finetune_config(pre, [], config.format(tmp=tmp_path))
