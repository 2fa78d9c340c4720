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


def test_not_built_subcommand_says_so_and_exits_nonzero(capsys):
    registry = {"frobnicate": ("clo._no_such_module", "does things")}
    rc = cli.main(["frobnicate", "x"], subcommands=registry)
    assert rc == cli.NOT_BUILT_EXIT
    err = capsys.readouterr().err
    assert "clo frobnicate: not built yet" in err


def test_not_built_subcommand_is_marked_in_help(capsys):
    registry = {"frobnicate": ("clo._no_such_module", "does things")}
    with pytest.raises(SystemExit):
        cli.main(["--help"], subcommands=registry)
    assert "does things (not built yet)" in capsys.readouterr().out


def test_no_subcommand_prints_help_and_fails(capsys):
    assert cli.main([]) != 0
    assert "usage: clo" in capsys.readouterr().out
