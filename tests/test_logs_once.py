"""Each log line once: the demo's read of the training prompts (for the held-out set) is silent,
so the data stage's line about the same file is the only one; httpx2's per-request lines are
among the quiet loggers."""

import json
import logging
from pathlib import Path

from clo import demo
from clo.cli import NOISY_LOGGERS, quiet_libraries
from clo.experiments.config import grid_from_dict


def test_httpx2_requests_are_quiet_by_default():
    assert "httpx2" in NOISY_LOGGERS
    lg = logging.getLogger("httpx2")
    before = lg.level
    with quiet_libraries():
        assert lg.level == logging.WARNING
        assert not lg.isEnabledFor(logging.INFO)
    assert lg.level == before


def test_the_demo_logs_what_it_read_once(tmp_path, shared_data, monkeypatch, caplog):
    def fake_build(cfg, out_dir, *, progress=True, overwrite=False):
        from clo.data.build import build_inputs, fingerprint
        from clo.data.records import CrossLingualRecord, write_records

        pairs = json.loads(Path(cfg.data.path).read_text(encoding="utf-8"))
        recs = [CrossLingualRecord(id=f"h{i}", tgt_lang="de", x_en=p["instruction"], y_en=p["output"],
                                   x_tgt="de " + p["instruction"], y_tgt="de " + p["output"])
                for i, p in enumerate(pairs)]
        write_records(recs, out_dir / "train.jsonl")
        s = {"records_out": len(recs), "fingerprint": fingerprint(build_inputs(cfg))}
        (out_dir / "summary.json").write_text(json.dumps(s))
        return s

    monkeypatch.setattr("clo.data.build.build_dataset", fake_build)
    src = str(shared_data / "sft_en" / "alpaca_en_demo.json")
    grid = grid_from_dict(demo.demo_tree(tmp_path, shared_data, 48, {"source": "alpaca", "path": src}), "demo")
    with caplog.at_level(logging.INFO):
        demo.build_heldout(grid, shared_data, progress=False)
        # What the grid's data stage then reads (and logs) of the same training file.
        from clo.data.sources import load_examples
        from clo.experiments.config import expand

        load_examples(expand(grid)[-1].config.data, "de")
    # The data stage reads the whole file (data.max_chars picks the short pairs of it) and says so once.
    reads = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{src}: ")]
    assert len(reads) == 1, reads
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == len(set(messages)), messages
