"""benchmarks/bench_pretrain.py's data-pipeline section at tiny settings: its figures and loader advice."""

from __future__ import annotations

import math
import re

import pytest

from benchmarks.bench_pretrain import gpu_rates, main
from benchmarks.gpu_check import PEAK_TFLOPS, Sizes, charbert_config, flops_per_sequence


@pytest.mark.slow
def test_pipeline_section_reports_both_lengths_and_the_loaders_a_gpu_needs(capsys, one_torch_thread):
    results = main(["--tiny", "--pipeline_only", "--pipeline_lengths", "64,128", "--pipeline_blocks", "32",
                    "--pipeline_repeats", "2", "--gpu_tokens_per_s", "1e5"])
    assert set(results) == {64, 128}
    for r in results.values():
        assert r["collator"] > 0 and r["bare"] > 0
        assert r["ratio_min"] <= r["ratio"] <= r["ratio_max"]
    printed = capsys.readouterr().out
    assert "collator / bare" in printed and "loader processes" in printed
    # one row per length at the given rate, with ceil(rate / collator rate) loader processes
    for length, r in results.items():
        row = [line for line in printed.splitlines() if re.match(rf"\| {length}\s+\| --gpu_tokens_per_s", line)]
        assert len(row) == 1, printed
        cells = [c.strip() for c in row[0].strip("|").split("|")]
        assert float(cells[2]) == 1e5 and int(cells[3]) == math.ceil(1e5 / r["collator"])


def test_default_gpu_rates_come_from_counted_flops_at_the_mfu():
    (a100, rate_a), (h100, rate_h) = gpu_rates(0.4, 128, None)
    sizes = Sizes()
    per_token = flops_per_sequence(charbert_config(sizes), 128, sizes.chars_per_token * 128, 12.8, 19.2, charbert=True) / 128
    assert "A100" in a100 and "H100" in h100
    assert rate_a == pytest.approx(PEAK_TFLOPS["A100"]["bf16"] * 1e12 * 0.4 / per_token)
    assert rate_h / rate_a == pytest.approx(PEAK_TFLOPS["H100"]["bf16"] / PEAK_TFLOPS["A100"]["bf16"])
    assert 5e4 < rate_a < 2e5, "a BERT-base-sized CharBERT on an A100 consumes about 1e5 tokens/s"
    assert gpu_rates(0.4, 128, 123.0) == [("--gpu_tokens_per_s", 123.0)]


@pytest.mark.parametrize("argv", [["--pipeline_repeats", "0"], ["--mfu", "1.5"], ["--pipeline_lengths", "4"]])
def test_bad_pipeline_arguments_exit_2(argv):
    with pytest.raises(SystemExit) as err:
        main(["--tiny", "--pipeline_only", *argv])
    assert err.value.code == 2
