"""experiments/replicate_small.py without the hour of compute: stages run once and resume,
a failing stage stops the run with its log's tail, and the results table follows the reports."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "replicate_small.py"


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
