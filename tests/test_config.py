import pytest

from clo.config import ConfigError, config_from_dict, load_config


def test_defaults_are_the_papers():
    cfg = load_config()
    t = cfg.train
    assert (t.lam, t.beta, t.lr, t.min_lr, t.batch_size, t.max_length, t.epochs) == (
        0.5, 0.1, 5e-5, 1.1e-6, 8, 3000, 1.0)
    assert t.trainable == "attention" and t.nll_langs == ["tgt"] and t.method == "clo"


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lang: sw\ntrain:\n  beta: 0.3\n  method: sft\n")
    cfg = load_config(f, ["train.beta=0.2", "train.nll_langs=[tgt, en]", "data.n=64"])
    assert cfg.lang == "sw" and cfg.train.beta == 0.2 and cfg.train.method == "sft"
    assert cfg.train.nll_langs == ["tgt", "en"] and cfg.data.n == 64


def test_unknown_key_names_key_and_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  betta: 0.2\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(e.value) == f"{f}: train.betta: unknown key; did you mean train.beta?"


@pytest.mark.parametrize(("tree", "message"), [
    ({"train": {"betta": 0.2}}, "train.betta: unknown key; did you mean train.beta?"),
    ({"beta": 0.2}, "beta: unknown key; did you mean train.beta?"),                  # right key, wrong section
    ({"data": {"lr": 1e-4}}, "data.lr: unknown key; did you mean train.lr?"),
    ({"data": {"translator": {"modle": "m"}}},
     "data.translator.modle: unknown key; did you mean data.translator.model?"),
    ({"outputdir": "runs/x"}, "outputdir: unknown key; did you mean output_dir?"),
    ({"eval": {"judge": {"modell": "m"}}}, "eval.judge.modell: unknown key; did you mean eval.judge.model?"),
    ({"frobnicate": 1}, "frobnicate: unknown key"),                                  # nothing close: no guess
])
def test_unknown_key_suggests_the_closest_known_key(tree, message):
    with pytest.raises(ConfigError) as e:
        config_from_dict(tree, "c.yaml")
    assert str(e.value) == f"c.yaml: {message}"


def test_unknown_override_suggests_the_closest_known_key():
    with pytest.raises(ConfigError, match=r"train\.lamda: unknown key; did you mean train\.lam\?"):
        load_config(None, ["train.lamda=0.3"])


@pytest.mark.parametrize(("value", "expected"), [
    ("none", "none"), (None, "none"), ([], "none"), ("wandb", ["wandb"]), (["tensorboard"], ["tensorboard"]),
    (["tensorboard", "wandb", "tensorboard"], ["tensorboard", "wandb"]), (["none"], "none"),
])
def test_report_to_takes_none_one_tracker_or_a_list(value, expected):
    assert config_from_dict({"train": {"report_to": value}}).train.report_to == expected


def test_report_to_refuses_an_unknown_tracker():
    with pytest.raises(ConfigError, match="train.report_to: Value error, unknown tracker 'mlflow'; known: none, "
                                          "tensorboard, wandb"):
        config_from_dict({"train": {"report_to": "mlflow"}})


def test_wrong_type_names_key_and_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  batch_size: eight\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert msg.startswith(f"{f}: train.batch_size: ") and "integer" in msg


def test_override_errors_name_the_override():
    with pytest.raises(ConfigError, match=r"^--set train\.beta=abc: train\.beta: .*number"):
        load_config(None, ["train.beta=abc"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(None, ["train.beta"])
    with pytest.raises(ConfigError, match="train.nope: unknown key"):
        load_config(None, ["train.nope=1"])


def test_unknown_language_is_rejected():
    with pytest.raises(ConfigError, match="lang: .*unknown language code 'xx'"):
        config_from_dict({"lang": "xx"})


def test_invalid_yaml_names_line(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("train:\n  beta: [0.1\n")
    with pytest.raises(ConfigError, match=rf"{f}:\d+: invalid YAML"):
        load_config(f)


def test_missing_file():
    with pytest.raises(ConfigError, match="no such config file"):
        load_config("/nonexistent/x.yaml")


def test_cli_reports_config_errors(tmp_path, capsys):
    # Exercised through the real `clo train` parser once it exists; here through load_config's
    # error type, which cli.main turns into exit code 2.
    from clo import cli

    assert issubclass(ConfigError, ValueError) and cli.USER_ERROR_EXIT == 2
