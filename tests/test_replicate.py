"""experiments/replicate_small.py without the hour of compute: stages run once and resume,
a failing stage stops the run with its log's tail, and the results table follows the reports."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "replicate_small.py"
PREVIOUS = SCRIPT.parent / "replicate_small_previous.json"  # the numbers of the previous architecture


@pytest.fixture(scope="module")
def rep():
    spec = importlib.util.spec_from_file_location("replicate_small", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_finished_stage_is_not_redone(rep, tmp_path):
    counter = tmp_path / "count.txt"
    command = [sys.executable, "-c", f"p='{counter}'; import os; n=int(open(p).read()) if os.path.exists(p) else 0; "
                                     f"open(p,'w').write(str(n+1))"]
    runner = rep.Runner(tmp_path / "out")
    runner.run("stage", command)
    runner.run("stage", command)
    assert counter.read_text() == "1"
    again = rep.Runner(tmp_path / "out")  # a new process: the marker and wall times are on disk
    assert again.done("stage") and "stage" in again.times
    again.run("stage", command)
    assert counter.read_text() == "1"


@pytest.mark.slow
def test_a_failing_stage_stops_with_its_log_and_is_retried_next_time(rep, tmp_path):
    runner = rep.Runner(tmp_path / "out")
    with pytest.raises(SystemExit, match="(?s)stage broken failed \\(exit 3\\).*boom"):
        runner.run("broken", [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"])
    assert not runner.done("broken")
    runner.run("broken", [sys.executable, "-c", "print('fixed')"])
    assert runner.done("broken")
    assert "boom" in (tmp_path / "out" / "logs" / "broken.log").read_text()  # the log keeps both attempts


def test_results_table_rows_and_relative_drop(rep):
    report = {"attacks": ["swap", "drop"], "models": [
        {"name": "BERT", "scores": {"clean": 0.80, "swap": 0.40, "drop": 0.60}},
        {"name": "CharBERT", "scores": {"clean": 0.0, "swap": 0.0, "drop": 0.0}}]}
    lines = rep.results_table(report, ["BERT", "AdvBERT", "CharBERT"])
    assert lines[0] == "| model | clean | swap | drop | mean attacked | rel. drop |"
    assert lines[2] == "| BERT | 80.00 | 40.00 | 60.00 | 50.00 | 37.5% |"
    assert lines[3] == "| AdvBERT | - | - | - | - | - |"  # a model without a report row
    assert lines[4] == "| CharBERT | 0.00 | 0.00 | 0.00 | 0.00 | - |"  # no relative drop from a zero score


def test_models_filter_picks_the_rows(rep):
    parse = rep.build_parser().parse_args
    assert rep.selected_models(parse([])) == ["BERT", "AdvBERT", "CharBERT"]
    assert rep.selected_models(parse(["--with_mlm"])) == ["BERT", "AdvBERT", "MLM-BERT", "CharBERT"]
    assert rep.selected_models(parse(["--models", "charbert, BERT"])) == ["BERT", "CharBERT"]  # table order
    with pytest.raises(SystemExit, match="--models 'charbert,roberta'"):
        rep.selected_models(parse(["--models", "charbert,roberta"]))


def test_models_charbert_runs_only_the_charbert_stages(rep, tmp_path, monkeypatch):
    data = tmp_path / "data"
    for name in ("corpus/brown.txt", "corpus/webtext.txt", "corpus/wikitext2_valid_test.txt", "conll2003/train.txt",
                 "glue/SST-2/train.tsv"):
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_text("x\n")
    ran = []
    monkeypatch.setattr(rep.Runner, "run", lambda self, name, command: ran.append((name, command)))
    out = tmp_path / "out"
    assert rep.main(["--models", "charbert", "--data_dir", str(data), "--model_name_or_path", str(tmp_path / "base"),
                     "--output_dir", str(out), "--previous_results", str(PREVIOUS)]) == 0
    assert [name for name, _ in ran] == ["vocab", "pretrain_CharBERT", "finetune_ner_CharBERT", "robustness_ner",
                                         "finetune_sst2_CharBERT", "robustness_sst2"]
    robustness = dict(ran)["robustness_ner"]
    names = robustness[robustness.index("--model_names") + 1:]
    assert names[:names.index("--attacks")] == ["CharBERT"]
    results = json.loads((out / "results.json").read_text())
    assert results["models"] == ["CharBERT"] and results["previous"]["label"] == "previous architecture"


def test_previous_rows_sit_beside_the_new_ones_labelled(rep):
    previous = rep.load_previous(str(PREVIOUS), None)
    report = {"attacks": ["drop", "add", "swap", "keyboard", "all"], "models": [
        {"name": "CharBERT", "scores": {"clean": 0.83, "drop": 0.45, "add": 0.44, "swap": 0.40, "keyboard": 0.41,
                                        "all": 0.42}}]}
    reports, rows = rep.with_previous({"conll2003": report}, previous, ["CharBERT"])
    assert rows == ["BERT", "AdvBERT", "CharBERT [previous architecture]", "CharBERT"]
    lines = rep.results_table(reports["conll2003"], rows)
    assert lines[2].startswith("| BERT | 83.48 | 37.94 |")  # not run again: its earlier numbers, unlabelled
    assert lines[4].startswith("| CharBERT [previous architecture] | 82.47 | 41.55 |")
    assert lines[5].startswith("| CharBERT | 83.00 | 45.00 |")
    sensitivity = rep.sensitivity_table(reports, rows)
    assert "| CharBERT [previous architecture] | conll2003 | 0.4190 | 0.1090 |" in sensitivity
    assert not any(line.startswith("| CharBERT |") for line in sensitivity)  # the new row has no S here
    relabelled = rep.load_previous(str(PREVIOUS), "old fusion")
    assert rep.with_previous({"conll2003": report}, relabelled, ["CharBERT"])[1][2] == "CharBERT [old fusion]"
