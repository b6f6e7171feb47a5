"""benchmarks/bench_inference.py in --tiny mode: every model and backend at every batch size, in seconds."""

from __future__ import annotations

import json
import math

import pytest
from conftest import skip_module_without

skip_module_without("onnxruntime", reason="the onnx extra is not installed")

from benchmarks.bench_inference import BACKENDS, main  # noqa: E402


@pytest.mark.slow
def test_tiny_run_reports_every_model_backend_and_batch_size(tmp_path, capsys, one_torch_thread):
    out = tmp_path / "bench.json"
    report = main(["--tiny", "--num_sentences", "12", "--repeats", "1", "--num_batches", "1", "--min_sentences", "4",
                   "--batch_sizes", "1", "3", "--batch_size", "4", "--threads", "1", "--output", str(out)])
    printed = capsys.readouterr().out
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    rows = report["forward"]
    assert [(r["model"], r["backend"], r["batch_size"]) for r in rows] == [
        (model, backend, size) for size in (1, 3) for model in ("plain", "CharBERT") for backend in BACKENDS]
    for row in rows:
        for key in ("ms_per_batch", "sentences_per_s", "vs_plain_eager_speed"):
            assert math.isfinite(row[key]) and row[key] > 0, (row, key)
        assert row["sentences_per_s"] == pytest.approx(1000 * row["batch_size"] / row["ms_per_batch"])
        assert len(row["tokens"]) == {1: 4, 3: 2}[row["batch_size"]]  # at least --min_sentences sentences a size
    assert all(r["vs_plain_eager_speed"] == 1.0 for r in rows if (r["model"], r["backend"]) == ("plain", "eager"))
    assert len(report["prediction_path"]) == 4 and "speed vs plain eager" in printed and "int8" in printed
