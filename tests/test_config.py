import pytest

from textrec.config import RunConfig, load_config, parse_value
from textrec.errors import ConfigError


def test_defaults_are_the_reference_settings():
    cfg = load_config(model="sasrec")
    assert (cfg.model_config.hidden_size, cfg.model_config.n_layers, cfg.model_config.n_heads) == (300, 2, 2)
    assert (cfg.model_config.inner_size, cfg.model_config.hidden_dropout) == (256, 0.5)
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.patience, cfg.train.optimizer) == (1e-3, 2048, 10, "adam")
    assert cfg.data.max_seq_len == 50 and cfg.eval.ks == (10, 50) and cfg.eval.select_metric == "ndcg@10"
    assert cfg.eval.mask_history is False


def test_overrides_are_typed():
    cfg = load_config(model="sasrec", overrides=["train.lr=3e-3", "model.hidden_size=64", "eval.ks=[5, 20]", "eval.select_metric=recall@20", "train.amp=false", "train.device=cpu"])
    assert cfg.train.lr == 0.003 and cfg.model_config.hidden_size == 64 and cfg.eval.ks == (5, 20)
    assert cfg.train.amp is False and cfg.train.device == "cpu"
    assert load_config(model="sasrec", overrides=["train.lr=1"]).train.lr == 1.0  # int accepted for a float


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=0.1", "unknown config key train.lrr (did you mean train.lr?); valid keys: epochs, batch_size, lr,"),
        ("model.hidden=3", "unknown config key model.hidden (did you mean model.hidden_size?); valid keys: hidden_size,"),
        ("model.zzz=3", "unknown config key model.zzz; valid keys: hidden_size,"),
        ("train.max_seq_len=3", "unknown config key train.max_seq_len (did you mean data.max_seq_len?)"),
        ("trian.lr=1", "unknown config section 'trian' in 'trian.lr' (did you mean train?)"),
        ("model.hidden_size=3.5", "model.hidden_size must be an integer, not 3.5"),
        ("model.hidden_size=true", "model.hidden_size must be an integer"),
        ("train.optimizer=sgd", "train.optimizer must be one of adam, adamw, not 'sgd'"),
        ("train.amp=1", "train.amp must be true or false"),
        ("eval.ks=10", "eval.ks must be a list"),
        ("eval.select_metric=ndcg@20", "eval.select_metric must be"),
        ("training.lr=1", "unknown config section 'training'"),
        ("lr=1", "must be section.key"),
        ("train.lr", "is not key=value"),
        ("train.lr=-1", "train.lr must be > 0"),
        ("train.device=gpu", "train.device must be auto, cpu, cuda"),
    ],
)
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(model="sasrec", overrides=[override])
    assert message in str(e.value)


def test_unknown_model_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown model 'sasrek' \\(valid: .*sasrec"):
        load_config(model="sasrek")
    with pytest.raises(ConfigError, match="no model given"):
        load_config()


def test_toml_file_and_round_trip(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[model]\nname = "sasrec"\nhidden_size = 48\n[train]\nlr = 0.002\n')
    cfg = load_config(path, overrides=["train.lr=0.004"])
    assert cfg.model_config.hidden_size == 48 and cfg.train.lr == 0.004
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="disagrees"):
        load_config(path, model="other")
    (tmp_path / "bad.toml").write_text("[train\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(tmp_path / "bad.toml", model="sasrec")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", model="sasrec")


def test_parse_value():
    assert parse_value("3") == 3 and parse_value("3.0") == 3.0 and parse_value("true") is True
    assert parse_value("[1,2]") == [1, 2] and parse_value("cuda:0") == "cuda:0" and parse_value('"x y"') == "x y"
