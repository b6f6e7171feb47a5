"""benchmarks/gpu_check.py in --smoke mode on CPU: every field present and finite, fp32 master weights."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks.gpu_check import (
    FIELDS,
    SMOKE,
    batch_flops,
    charbert_config,
    main,
    synthetic_pretraining_batch,
)


@pytest.mark.slow
def test_smoke_run_reports_every_field(tmp_path, capsys, one_torch_thread):
    out = tmp_path / "gpu_check.json"
    report = main(["--smoke", "--peak_tflops", "1.0", "--output", str(out)])
    printed = capsys.readouterr().out
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    rows = report["results"]
    # fp16 is a GPU path: skipped on CPU with the reason; fp32 and bf16 for both models
    assert [(r["model"], r["precision"]) for r in rows] == [
        ("CharBertForPreTraining", "fp32"), ("CharBertForPreTraining", "bf16"),
        ("BertForMaskedLM", "fp32"), ("BertForMaskedLM", "bf16")]
    assert "fp16" in report["skipped"] and "skipped fp16" in printed
    for row in rows:
        for field in FIELDS:
            assert field in row, field
            if field not in ("model", "precision", "param_dtype"):
                assert isinstance(row[field], (int, float)) and math.isfinite(row[field]), (row["model"], field, row[field])
        assert row["param_dtype"] == "float32", "autocast keeps fp32 master weights"
        assert 0 < row["mfu"] < 1 and row["tokens_per_s"] > 0 and row["peak_memory_mib"] > 0
        assert len(row["losses"]) == report["steps"]
    for model in ("CharBertForPreTraining", "BertForMaskedLM"):
        fp32, bf16 = (r for r in rows if r["model"] == model)
        assert fp32["loss_diff_vs_fp32"] == 0.0
        assert bf16["loss_diff_vs_fp32"] < 0.05 * fp32["final_loss"], "bf16 trains the same function"
    # the readable table: a header and one line per row
    assert "| model" in printed and "MFU" in printed and printed.count("CharBertForPreTraining |") == 2


@pytest.mark.slow
def test_without_a_known_peak_mfu_is_not_invented(capsys, one_torch_thread):
    report = main(["--smoke", "--precisions", "fp32", "--models", "bert"])
    (row,) = report["results"]
    assert row["peak_tflops"] is None and row["mfu"] is None and "n/a" in capsys.readouterr().out


@pytest.mark.slow
def test_a_failing_precision_is_reported_and_the_others_still_run(monkeypatch, capsys, one_torch_thread):
    from benchmarks import gpu_check

    real = gpu_check.train_steps

    def bf16_fails(model, initial, batches, precision, *args):
        if precision == "bf16":
            raise RuntimeError("no bf16 kernel for GRU\nlong traceback")
        return real(model, initial, batches, precision, *args)

    monkeypatch.setattr(gpu_check, "train_steps", bf16_fails)
    rows = main(["--smoke", "--models", "bert"])["results"]
    assert [r["precision"] for r in rows] == ["fp32", "bf16"] and rows[0]["tokens_per_s"] > 0
    assert rows[1]["error"] == "no bf16 kernel for GRU" and rows[1]["tokens_per_s"] is None
    assert "FAILED BertForMaskedLM bf16: no bf16 kernel for GRU" in capsys.readouterr().out


def test_synthetic_batch_is_shaped_like_the_collator():
    config = charbert_config(SMOKE)
    batch = synthetic_pretraining_batch(config, 8, 64, torch.Generator().manual_seed(0), chars_per_token=5.0)
    B, L = batch["input_ids"].shape
    C = batch["char_input_ids"].shape[1]
    assert batch["char_start_positions"].shape == (B, L) == batch["char_end_positions"].shape
    assert 4.0 < batch["char_attention_mask"].sum().item() / (B * L) < 6.0  # ~5 characters a token
    # specials point at position 0; every token's span lies within its sequence's characters
    assert (batch["char_start_positions"][:, [0, -1]] == 0).all()
    assert (batch["char_start_positions"] <= batch["char_end_positions"]).all()
    assert (batch["char_end_positions"] < batch["char_attention_mask"].sum(1, keepdim=True)).all() and C > L
    mlm, nlm = batch["labels"] != -100, batch["nlm_labels"] != -100
    assert not (mlm & nlm).any()
    assert 0.05 < mlm.float().mean() < 0.15 and 0.10 < nlm.float().mean() < 0.20
    # CharBERT costs more than BertForMaskedLM per token, and the count grows with the characters
    assert batch_flops(config, batch, True) > batch_flops(config, batch, False) > 0


def test_bad_arguments_exit_2():
    with pytest.raises(SystemExit) as err:
        main(["--smoke", "--precisions", "fp8"])
    assert err.value.code == 2
    with pytest.raises(SystemExit) as err:
        main(["--smoke", "--steps", "2", "--warmup", "5"])
    assert err.value.code == 2


@pytest.mark.slow
def test_smoke_run_reports_the_character_encoder_share_and_the_loader(capsys, one_torch_thread):
    report = main(["--smoke", "--models", "charbert", "--precisions", "fp32", "--dataloader_num_workers", "1",
                   "--loader_batches", "2"])
    (row,) = report["results"]
    assert 0 < row["char_encoder_step_s"] and math.isfinite(row["char_encoder_share"]) and row["char_encoder_share"] > 0
    loader = report["loader"]
    assert loader["workers"] == 1 and loader["seq_len"] == SMOKE.seq_len and "tiny tokenizer" in loader["source"]
    assert loader["tokens_per_s"] > 0 and loader["tokens_per_s_one_core"] > 0
    assert loader["step_tokens_per_s"] == row["tokens_per_s"]
    assert isinstance(loader["keeps_up"], bool) and loader["workers_needed"] >= 1
    assert loader["keeps_up"] == (loader["tokens_per_s"] >= row["tokens_per_s"])
    printed = capsys.readouterr().out
    assert "of the CharBERT step" in printed and "workers needed" in printed
    json.dumps(report)  # the report stays JSON


def test_loader_check_can_be_skipped_and_bad_workers_exit_2(one_torch_thread):
    assert main(["--smoke", "--models", "bert", "--precisions", "fp32", "--skip_loader"])["loader"] is None
    with pytest.raises(SystemExit) as err:
        main(["--smoke", "--dataloader_num_workers", "-1"])
    assert err.value.code == 2
