import subprocess
import sys

import pytest

from clo import cli


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in ("data", "train", "eval", "report", "run", "demo"):
        assert name in out


def test_console_script_help_runs_in_a_subprocess():
    r = subprocess.run([sys.executable, "-m", "clo.cli", "--help"], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and "usage: clo" in r.stdout


def test_no_subcommand_prints_help_and_fails(capsys):
    assert cli.main([]) == cli.USAGE_EXIT == 2
    assert "usage: clo" in capsys.readouterr().out


@pytest.fixture
def failing_subcommand(tmp_path, monkeypatch):
    """A subcommand `fail KIND` whose main raises the exception KIND names."""
    (tmp_path / "clo_fail_cmd.py").write_text(
        "HELP = 'fails'\n"
        "def add_arguments(p):\n"
        "    p.add_argument('kind')\n"
        "def main(args):\n"
        "    from clo.config_base import ConfigError\n"
        "    from clo.eval.core import EvalDataError\n"
        "    from clo.models import ModelLoadError\n"
        "    from clo.train.data import DatasetError\n"
        "    errors = {'config': ConfigError('x.yaml: train.beta: Input should be a valid number'),\n"
        "              'data': EvalDataError('d.jsonl:3: field \\'question\\' missing'),\n"
        "              'model': ModelLoadError('no such model directory or offline name: m'),\n"
        "              'dataset': DatasetError('t.jsonl: no usable records'),\n"
        "              'missing': FileNotFoundError('t.jsonl: no such dataset file'),\n"
        "              'bug': ZeroDivisionError('a bug')}\n"
        "    from clo.errors import CloError\n"
        "    class NewError(CloError):\n"
        "        pass\n"
        "    errors['new'] = NewError('n.yaml:2: a new kind of user error')\n"
        "    raise errors[args.kind]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return {"fail": ("clo_fail_cmd", "fails")}


@pytest.mark.parametrize(("kind", "message"), [
    ("config", "x.yaml: train.beta: Input should be a valid number"),
    ("data", "d.jsonl:3: field 'question' missing"),
    ("model", "no such model directory or offline name: m"),
    ("dataset", "t.jsonl: no usable records"),
    ("missing", "t.jsonl: no such dataset file"),
    ("new", "n.yaml:2: a new kind of user error"),  # any CloError, registered nowhere
])
def test_user_errors_are_one_line_and_exit_2(failing_subcommand, capsys, kind, message):
    assert cli.main(["fail", kind], subcommands=failing_subcommand) == cli.USER_ERROR_EXIT == 2
    assert capsys.readouterr().err == f"clo fail: error: {message}\n"


def test_every_user_facing_error_is_a_clo_error():
    from clo.config_base import ConfigError
    from clo.data.build import BuildError, BuildMismatch
    from clo.data.cache import CacheError
    from clo.data.records import RecordError
    from clo.data.translators.base import TranslationError
    from clo.errors import CloError
    from clo.eval.core import EvalDataError
    from clo.formatting import PromptTooLong
    from clo.models import ModelLoadError
    from clo.train.data import DatasetError
    from clo.train.tracking import LogFileError
    from clo.train.trainer import RunMismatch

    for cls in (ConfigError, RecordError, TranslationError, EvalDataError, PromptTooLong, ModelLoadError,
                DatasetError, LogFileError, RunMismatch, BuildError, BuildMismatch, CacheError):
        assert issubclass(cls, CloError), cls


def test_a_bug_keeps_its_traceback(failing_subcommand):
    with pytest.raises(ZeroDivisionError):
        cli.main(["fail", "bug"], subcommands=failing_subcommand)
