"""One command line: --output (aliases --out, --output-dir), --model, --config/--set, --no-progress
on every subcommand that has them; grid presets given to single-run commands; quiet logs; the
trackers of train.report_to; `clo --help` imports no subcommand."""

import json
import logging
import subprocess
import sys
import types
import warnings
from pathlib import Path
from typing import ClassVar

import pytest

from clo import cli
from clo.config import load_config

REPO = Path(__file__).resolve().parents[1]


def _parse(argv):
    return cli.build_parser(argv=argv).parse_args(argv)


# ---------------------------------------------------------------------------------------------
# the flags


@pytest.mark.parametrize("argv", [
    ["data", "build"], ["data", "check", "f.jsonl"], ["data", "view", "d.jsonl", "--view", "sft"],
    ["train", "--data", "t.jsonl"], ["eval", "belebele"], ["report", "runs/g"], ["demo"],
])
@pytest.mark.parametrize("flag", ["--output", "--out", "--output-dir"])
def test_output_and_its_aliases_set_one_destination(argv, flag):
    assert _parse([*argv, flag, "somewhere"]).output == "somewhere"


def test_only_output_is_listed_in_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--output DIR" in out and "aliases: --out, --output-dir" in out
    assert "--out DIR" not in out and "--output-dir DIR" not in out


@pytest.mark.parametrize("argv", [["data", "build"], ["data", "check", "f.jsonl"], ["train", "--data", "t.jsonl"],
                                  ["eval", "belebele"]])
def test_config_and_set_on_every_command_that_reads_a_config(argv):
    args = _parse([*argv, "-c", "x.yaml", "--set", "train.beta=0.2", "--set", "lang=sw"])
    assert args.config == "x.yaml" and args.overrides == ["train.beta=0.2", "lang=sw"]


@pytest.mark.parametrize("argv", [["data", "build"], ["train", "--data", "t.jsonl"], ["eval", "belebele"],
                                  ["demo"], ["run", "g.yaml"]])
def test_no_progress_on_every_long_command(argv):
    assert _parse([*argv, "--no-progress"]).no_progress is True


def test_demo_output_defaults_to_runs_demo():
    assert _parse(["demo"]).output == "runs/demo"


def test_data_build_translator_model_and_the_deprecated_model_alias(capsys):
    assert _parse(["data", "build", "--translator-model", "facebook/m2m100_1.2B"]).translator_model == \
        "facebook/m2m100_1.2B"
    assert capsys.readouterr().err == ""
    assert _parse(["data", "build", "--model", "facebook/m2m100_418M"]).translator_model == "facebook/m2m100_418M"
    err = capsys.readouterr().err.splitlines()
    assert err == ["clo data build: --model is deprecated here, use --translator-model (the translation model)"]


def test_data_view_without_output_is_refused(tmp_path, capsys):
    assert cli.main(["data", "view", str(tmp_path / "d.jsonl"), "--view", "sft"]) == 2
    assert "--output FILE" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# clo train: --model, presets, report_to


@pytest.fixture
def fake_train(monkeypatch):
    """clo.train.trainer replaced by a recorder: `clo train` runs up to the training call."""
    calls = []

    def train(cfg, data, val, output, overwrite=False):
        calls.append({"cfg": cfg, "data": data, "val": val, "output": output})
        return types.SimpleNamespace(best_checkpoint=Path(output) / "best", metrics={"method": cfg.train.method})

    fake = types.ModuleType("clo.train.trainer")
    fake.train, fake.TrainingDiverged = train, type("TrainingDiverged", (RuntimeError,), {})
    monkeypatch.setitem(sys.modules, "clo.train.trainer", fake)
    return calls


@pytest.fixture
def records(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("", encoding="utf-8")
    return path


def test_train_model_lang_and_output_reach_the_run(fake_train, records, tmp_path, capsys):
    rc = cli.main(["train", "--model", "org/some-model", "--lang", "sw", "--data", str(records),
                   "--out", str(tmp_path / "run")])
    assert rc == 0
    (call,) = fake_train
    assert call["cfg"].model == "org/some-model" and call["cfg"].lang == "sw"
    assert call["output"] == tmp_path / "run"
    assert json.loads(capsys.readouterr().out)["best_checkpoint"] == str(tmp_path / "run" / "best")


def test_train_takes_a_grid_preset_s_base_section_with_a_note(fake_train, records, tmp_path, capsys):
    rc = cli.main(["train", "-c", str(REPO / "configs" / "paper.yaml"), "--model", "org/m", "--data", str(records),
                   "--output", str(tmp_path / "run")])
    assert rc == 0
    cfg = fake_train[0]["cfg"]
    assert cfg.model == "org/m" and cfg.train.dtype == "bfloat16"
    assert cfg.data.translator.model == "facebook/m2m100_1.2B"
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1
    assert err[0].startswith(f"clo train: note: {REPO / 'configs' / 'paper.yaml'} is a grid config (for `clo run`); "
                             "using its base: section (ignoring ")
    assert "configs/train/*.yaml" in err[0]


def test_grid_preset_errors_name_the_base_section(tmp_path, records, capsys):
    grid = tmp_path / "g.yaml"
    grid.write_text("name: g\nmodels: [m]\nbase:\n  train:\n    betta: 0.2\n", encoding="utf-8")
    assert cli.main(["train", "-c", str(grid), "--data", str(records)]) == 2
    err = capsys.readouterr().err
    assert f"clo train: error: {grid}: base: train.betta: unknown key; did you mean train.beta?" in err


@pytest.mark.parametrize("preset", ["paper", "tiny"])
def test_single_run_presets_load(preset):
    cfg = load_config(REPO / "configs" / "train" / f"{preset}.yaml")
    assert cfg.train.method == "clo" and cfg.train.report_to == "none"


def test_paper_preset_is_appendix_b_with_m2m100():
    cfg = load_config(REPO / "configs" / "train" / "paper.yaml")
    t = cfg.train
    assert (t.lam, t.beta, t.lr, t.min_lr, t.batch_size, t.max_length, t.epochs, t.trainable, t.nll_langs) == (
        0.5, 0.1, 5e-5, 1.1e-6, 8, 3000, 1.0, "attention", ["tgt"])
    assert (cfg.data.source, cfg.data.n, cfg.data.translator.kind, cfg.data.translator.model) == (
        "oasst1", 6400, "seq2seq", "facebook/m2m100_1.2B")
    assert "Llama-3-8B" in cfg.model and cfg.lang == "sw"


def test_unknown_key_on_the_command_line_suggests_the_key(fake_train, records, capsys):
    assert cli.main(["train", "--data", str(records), "--set", "train.betta=0.2"]) == 2
    assert capsys.readouterr().err.strip().endswith("train.betta: unknown key; did you mean train.beta?")
    assert not fake_train


def test_train_method_choices_are_the_config_s(capsys):
    from clo.train.cli import method_choices
    from clo.train.methods import METHODS, STAGES

    assert set(method_choices()) == {*METHODS, *STAGES}


def test_report_to_missing_package_fails_before_training(fake_train, records, monkeypatch, capsys):
    from clo.train import tracking

    monkeypatch.setitem(tracking.TRACKERS, "wandb", ("clo_no_such_package", "pip install wandb"))
    assert cli.main(["train", "--data", str(records), "--report-to", "wandb"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("clo train: error: train.report_to: wandb needs the clo_no_such_package package, which is not "
                   "installed (pip install wandb); or set train.report_to=none")
    assert not fake_train  # refused before the model was loaded


# ---------------------------------------------------------------------------------------------
# trackers


class _Recorder:
    made: ClassVar[list] = []

    def __init__(self, output_dir, resume_step=0):
        _Recorder.made.append(output_dir)

    def log(self, record, step):
        pass

    def close(self):
        pass


@pytest.fixture
def fake_wandb(monkeypatch):
    from clo.train import tracking

    _Recorder.made = []
    monkeypatch.setitem(tracking.BACKENDS, "wandb", _Recorder)
    monkeypatch.setitem(tracking.TRACKERS, "wandb", ("yaml", "pip install wandb"))  # an installed package
    return _Recorder.made


@pytest.mark.parametrize("report_to", ["none", None, []])
def test_default_trackers_are_the_json_log_only_even_with_wandb_project_set(tmp_path, monkeypatch, fake_wandb,
                                                                             report_to):
    from clo.train.tracking import JsonLog, Trackers

    monkeypatch.setenv("WANDB_PROJECT", "someone-elses")
    t = Trackers(tmp_path, 0, report_to=report_to)
    assert [type(b) for b in t.backends] == [JsonLog] and not fake_wandb
    t.log({"loss": 1.0}, 1)
    t.close()
    assert json.loads((tmp_path / "log.jsonl").read_text())["loss"] == 1.0


def test_requested_tracker_is_used(tmp_path, fake_wandb):
    from clo.train.tracking import JsonLog, Trackers

    t = Trackers(tmp_path, 0, report_to=["wandb"])
    assert [type(b) for b in t.backends] == [JsonLog, _Recorder] and fake_wandb == [tmp_path]
    t.close()
    assert Trackers(tmp_path, 0, enabled=False, report_to=["wandb"]).backends == []  # not the main process


def test_requested_tracker_without_its_package_is_an_error(tmp_path, monkeypatch):
    from clo.config_base import ConfigError
    from clo.train import tracking

    monkeypatch.setitem(tracking.TRACKERS, "tensorboard", ("clo_no_such_package", "pip install 'clo[tensorboard]'"))
    with pytest.raises(ConfigError, match=r"tensorboard needs the clo_no_such_package package.*clo\[tensorboard\]"):
        tracking.Trackers(tmp_path, 0, report_to="tensorboard")
    assert not (tmp_path / "log.jsonl").exists()


# ---------------------------------------------------------------------------------------------
# logs and progress bars


@pytest.fixture
def probe(tmp_path, monkeypatch):
    """A subcommand `probe` that records, while it runs, what the user would see."""
    (tmp_path / "clo_probe_cmd.py").write_text(
        "import logging, warnings\n"
        "from tqdm.auto import tqdm\n"
        "HELP = 'probe'\n"
        "seen = {}\n"
        "def add_arguments(p):\n"
        "    p.add_argument('--no-progress', action='store_true')\n"
        "def main(args):\n"
        "    bar = tqdm(total=3, disable=False)\n"
        "    seen['bar_disabled'] = bar.disable\n"
        "    bar.close()\n"
        "    seen['httpx'] = logging.getLogger('httpx').level\n"
        "    seen['handlers'] = [type(h).__name__ for h in logging.getLogger().handlers]\n"
        "    warnings.warn('old API', FutureWarning)\n"
        "    return 0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    mod = importlib.import_module("clo_probe_cmd")
    yield {"probe": ("clo_probe_cmd", "probe")}, mod.seen
    sys.modules.pop("clo_probe_cmd", None)


def test_no_progress_disables_every_bar_and_only_while_the_command_runs(probe):
    registry, seen = probe
    assert cli.main(["probe", "--no-progress"], subcommands=registry) == 0
    assert seen["bar_disabled"] is True
    from tqdm.auto import tqdm

    bar = tqdm(total=1, disable=False)
    assert bar.disable is False  # restored
    bar.close()
    assert cli.main(["probe"], subcommands=registry) == 0
    assert seen["bar_disabled"] is False


def test_default_log_is_quiet_and_verbose_shows_more(probe):
    registry, seen = probe
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main(["probe"], subcommands=registry) == 0
    assert seen["httpx"] == logging.WARNING  # no INFO line per API request
    assert not [w for w in caught if issubclass(w.category, FutureWarning)]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main(["-v", "probe"], subcommands=registry) == 0
    assert seen["httpx"] == logging.NOTSET  # left as it is
    assert [w for w in caught if issubclass(w.category, FutureWarning)]


def test_console_log_lines_go_through_tqdm(probe, monkeypatch):
    registry, seen = probe
    root = logging.getLogger()
    console = logging.StreamHandler(sys.stderr)
    monkeypatch.setattr(root, "handlers", [*root.handlers, console])
    assert cli.main(["probe"], subcommands=registry) == 0
    # while the command ran, the console handler was a tqdm.write one, so that a log line lands
    # above a progress bar instead of breaking it
    assert "_TqdmLoggingHandler" in seen["handlers"] and "StreamHandler" not in seen["handlers"]
    assert console in root.handlers and "_TqdmLoggingHandler" not in [type(h).__name__ for h in root.handlers]


def test_transformers_is_quieted_when_the_command_imports_it():
    """In a fresh process: transformers imported during the command logs errors only and shows
    no per-load bar; -v leaves it as it is."""
    code = (
        "import sys, types\n"
        "from clo import cli\n"
        "mod = types.ModuleType('clo_tf_probe')\n"
        "mod.HELP = 'p'\n"
        "mod.add_arguments = lambda p: None\n"
        "def main(args):\n"
        "    from transformers.utils import logging as tl\n"
        "    print(tl.get_verbosity(), tl.is_progress_bar_enabled())\n"
        "mod.main = main\n"
        "sys.modules['clo_tf_probe'] = mod\n"
        "cli.main(sys.argv[1:], subcommands={'p': ('clo_tf_probe', 'p')})\n"
        "from transformers.utils import logging as tl\n"
        "print(tl.get_verbosity(), tl.is_progress_bar_enabled())\n"
    )
    quiet = subprocess.run([sys.executable, "-c", code, "p"], capture_output=True, text=True, check=True)
    assert quiet.stdout.split() == [str(logging.ERROR), "False", str(logging.WARNING), "True"]
    loud = subprocess.run([sys.executable, "-c", code, "-v", "p"], capture_output=True, text=True, check=True)
    assert loud.stdout.split()[:2] == [str(logging.WARNING), "True"]


# ---------------------------------------------------------------------------------------------
# a fast --help


def test_help_imports_no_subcommand_module():
    code = ("import sys\nfrom clo import cli\n"
            "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m in ('torch', 'transformers', 'pydantic') "
            "or m.startswith('clo.')))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # clo.errors: the error base class main() catches, a module of a few lines importing nothing
    assert r.stdout.strip().splitlines()[-1] == "['clo.cli', 'clo.errors']"


@pytest.mark.parametrize("command", ["data", "train", "eval", "report", "run", "demo"])
def test_command_help_does_not_import_torch(command):
    code = ("import sys\nfrom clo import cli\n"
            f"try:\n    cli.main([{command!r}, '--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip().splitlines()[-1] == "False"


def test_unknown_command_is_a_usage_error(capsys):
    assert cli.main(["trian"]) == 2
    assert "unknown command 'trian'; did you mean 'train'?" in capsys.readouterr().err


def test_global_verbose_before_the_command_still_builds_it():
    assert _parse(["-v", "train", "--data", "t.jsonl", "--model", "m"]).model == "m"
