"""A run directory is data, never code: resuming refuses a pickle placed as ``last/state.pt``,
a torn ``run.json`` or an incomplete state is a one-line error, and a refused training leaves
the output directory as it found it."""

import json
import pickle

import pytest
import torch

from clo.cli import main
from clo.config import config_from_dict
from clo.data.records import RecordError
from clo.train.trainer import STATE_KEYS, StateFileError, read_state, train


@pytest.fixture(scope="module")
def workdir(tiny_workdir, quadruples):
    return tiny_workdir("resume", train=quadruples(8, 0))


def _cfg(workdir):
    # The same settings as _cli's, so that the command line resumes these runs.
    return config_from_dict({"model": str(workdir / "model"), "lang": "de", "train": {
        "batch_size": 4, "eval_every": 1, "max_length": 64, "reference_cache": str(workdir / "refcache")}})


def _cli(workdir, out):
    return ["train", "--data", str(workdir / "train.jsonl"), "--output", str(out), "--no-progress",
            "--set", f"model={workdir / 'model'}", "--set", "lang=de", "--set", "train.max_length=64",
            "--set", "train.batch_size=4", "--set", "train.eval_every=1",
            "--set", f"train.reference_cache={workdir / 'refcache'}"]


def _error(capsys) -> str:
    """The one error line of a refused command (progress bars aside), with no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("clo train: error: ")]
    assert len(lines) == 1, err
    return lines[0]


class _Payload:
    """Unpickling this runs ``open(marker, 'w')``: what a malicious state.pt would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def interrupted(workdir, tmp_path_factory):
    """A run stopped after one step: ``last/state.pt`` exists and ``clo train`` would resume it."""
    out = tmp_path_factory.mktemp("interrupted") / "run"
    part = train(_cfg(workdir), workdir / "train.jsonl", None, out, stop_after_steps=1)
    assert part.metrics["steps"] == 1 and (out / "last" / "state.pt").is_file()
    return out


def _copy(run, tmp_path):
    import shutil

    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def test_clo_state_loads_with_weights_only(interrupted):
    state = torch.load(interrupted / "last" / "state.pt", map_location="cpu", weights_only=True)
    assert set(STATE_KEYS) <= set(state) and state["step"] == 1 and state["plan_len"] == 2
    assert read_state(interrupted / "last" / "state.pt")["step"] == 1


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_pickle_payload_placed_as_state_is_refused_not_executed(workdir, interrupted, tmp_path, how, capsys):
    run = _copy(interrupted, tmp_path)
    marker = tmp_path / "pwned"
    state = {k: 0 for k in STATE_KEYS} | {"trainable": {}, "payload": _Payload(marker)}
    with open(run / "last" / "state.pt", "wb") as f:
        torch.save(state, f) if how == "torch.save" else pickle.dump(state, f)
    with pytest.raises(StateFileError, match="not a training state clo can load safely"):
        train(_cfg(workdir), workdir / "train.jsonl", None, run)
    assert not marker.exists()
    # Through the command line: one line, exit 2, nothing executed.
    assert main(_cli(workdir, run)) == 2
    err = _error(capsys)
    assert "state.pt" in err
    assert not marker.exists()


def test_state_without_plan_len_is_a_one_line_error(workdir, interrupted, tmp_path, capsys):
    run = _copy(interrupted, tmp_path)
    state = torch.load(run / "last" / "state.pt", weights_only=True)
    del state["plan_len"]
    torch.save(state, run / "last" / "state.pt")
    assert main(_cli(workdir, run)) == 2
    assert "state.pt: field 'plan_len' missing" in _error(capsys)


def test_torn_run_json_is_a_one_line_error_and_overwrite_starts_over(workdir, interrupted, tmp_path, capsys):
    run = _copy(interrupted, tmp_path)
    text = (run / "run.json").read_text()
    (run / "run.json").write_text(text[: len(text) // 2])
    assert main(_cli(workdir, run)) == 2
    err = _error(capsys)
    assert "run.json:" in err and "not valid JSON" in err and "--overwrite" in err
    assert main([*_cli(workdir, run), "--overwrite"]) == 0
    assert json.loads((run / "run.json").read_text())["fingerprint"]
    assert (run / "result.json").is_file()


def test_refused_training_leaves_no_directory_behind(workdir, tmp_path, capsys, quadruples):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**quadruples(1, 3)[0], "y_tgt": ""}) + "\n")
    with pytest.raises(RecordError):
        train(_cfg(workdir), bad, None, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    # An existing directory keeps what it held, and gains no run.json.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main([*_cli(workdir, tmp_path / "mine")[:2], str(bad), *_cli(workdir, tmp_path / "mine")[3:]]) == 2
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    # sft+dpo: the stage directories and the run directory go too.
    cfg = _cfg(workdir)
    cfg.train.method = "sft+dpo"
    with pytest.raises(RecordError):
        train(cfg, bad, None, tmp_path / "two")
    assert not (tmp_path / "two").exists()
