"""Language drift during training: echoes, shares, the logged curves and their plot."""

import json

import pytest

from clo.config import config_from_dict
from clo.train.drift import drift_shares, echoes


@pytest.mark.parametrize("prompt, answer, expected", [
    ("Was ist die Hauptstadt von Frankreich?", "Was ist die Hauptstadt von Frankreich?", True),
    ("Was ist die Hauptstadt von Frankreich?", "was ist die  hauptstadt von frankreich", True),  # case, spaces
    ("Was ist die Hauptstadt von Frankreich?", "Was ist die Hauptstadt von Frankreich? Paris.", True),
    ("Was ist die Hauptstadt von Frankreich?", "Was ist die Hauptstadt von Frankreich, bitte?", True),  # ratio
    ("Was ist die Hauptstadt von Frankreich?", "Die Hauptstadt von Frankreich ist Paris.", False),
    ("Was ist die Hauptstadt von Frankreich?", "Paris.", False),
    ("Was ist die Hauptstadt von Frankreich?", "", False),
])
def test_echo_hand_checked(prompt, answer, expected):
    assert echoes(prompt, answer) is expected


def test_shares_leave_echoes_out_of_the_language_share():
    prompts = ["Wie spät ist es?", "Nenne drei Farben.", "Was ist ein Hund?", "Erkläre Regen."]
    answers = ["Wie spät ist es?", "Rot, Grün und Blau.", "A dog is an animal.", "Regen fällt aus Wolken."]
    detect = lambda texts: ["de" if any(w in t for w in ("Rot", "Regen")) else "en" for t in texts]
    s = drift_shares(prompts, answers, "de", detect)
    assert s == {"lang_share": pytest.approx(2 / 3), "echo_share": 0.25, "n": 4}
    assert drift_shares(prompts[:1], answers[:1], "de", detect)["lang_share"] is None  # all echoes


def test_training_logs_drift_at_every_validation_and_the_report_plots_it(tmp_path):
    from clo.report.plots import drift_curves, plot_drift
    from clo.testing import tiny_model, tiny_tokenizer
    from clo.train.trainer import train

    tiny_model("llama", vocab_size=512).save_pretrained(tmp_path / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    rec = {"tgt_lang": "de", "x_en": "What is the cat?", "y_en": "The cat runs.", "x_tgt": "Was ist die Katze?",
           "y_tgt": "Die Katze läuft."}
    for name, n in (("train", 8), ("val", 3)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({**rec, "id": f"{name}{i}"}) + "\n"
                                                       for i in range(n)))
    cfg = config_from_dict({"model": str(tmp_path / "model"), "lang": "de", "train": {
        "batch_size": 4, "eval_every": 1, "max_length": 64, "drift_prompts": 2, "drift_max_new_tokens": 4,
        "reference_cache": str(tmp_path / "ref")}})
    train(cfg, tmp_path / "train.jsonl", tmp_path / "val.jsonl", tmp_path / "run" / "train")
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "train" / "log.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val/loss" in r]
    assert len(val) == 2
    for r in val:
        assert 0.0 <= r["drift/tgt_echo_share"] <= 1.0 and 0.0 <= r["drift/en_echo_share"] <= 1.0
    # The untrained model's point at step 0 (measured before the first step), then every validation.
    assert [r["step"] for r in rows if "drift/tgt_echo_share" in r] == [0, 1, 2]
    curves = drift_curves(tmp_path / "run" / "train")
    assert [s for s, _ in curves["tgt_echo_share"]] == [0, 1, 2]
    png = plot_drift(curves, "tiny", tmp_path / "drift.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_drift_figure_has_integer_steps_from_zero_and_distinguishable_lines():
    from clo.report.plots import DRIFT_SERIES, drift_figure

    # Two steps only, and every series on the same values: the case that hid lines and gave 0.5 ticks.
    curves = {key: [(0, 0.0), (1, 0.0), (2, 0.0)] for key, _ in DRIFT_SERIES}
    fig = drift_figure(curves, "t")
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert ticks and all(float(t).is_integer() for t in ticks) and 0 in ticks
    styles = {(ln.get_marker(), ln.get_linestyle(), ln.get_markerfacecolor() == "none") for ln in ax.get_lines()}
    assert len(ax.get_lines()) == len(DRIFT_SERIES) == len(styles)
