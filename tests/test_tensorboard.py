"""--report_to tensorboard: a short pretraining run writes event files holding the loss, the lr and the eval metrics."""

from __future__ import annotations

import shutil

import pytest
from conftest import skip_module_without

skip_module_without("tensorboard", reason="the tensorboard extra is not installed")


def _scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series under `log_dir` (all event files, recursively): tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series: dict[str, list[tuple[int, float]]] = {}
    files = sorted(log_dir.rglob("events.out.tfevents.*"))
    assert files, f"no event files under {log_dir}"
    for path in files:
        acc = EventAccumulator(str(path))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            series.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return series


@pytest.mark.slow
def test_pretraining_writes_loss_lr_and_eval_metrics(tmp_path, tiny_texts, bert_dir, one_torch_thread):
    from charbert.pretraining.vocab import WordVocab
    from pretrain.__main__ import main

    (tmp_path / "train.txt").write_text("\n".join(tiny_texts[:300]), encoding="utf-8")
    (tmp_path / "valid.txt").write_text("\n".join(tiny_texts[300:340]), encoding="utf-8")
    WordVocab.build(tiny_texts, max_size=400).save(tmp_path / "vocab")
    shutil.copytree(bert_dir, tmp_path / "model")
    out = tmp_path / "run"
    assert main([
        "--model_name_or_path", str(tmp_path / "model"), "--train_file", str(tmp_path / "train.txt"),
        "--validation_file", str(tmp_path / "valid.txt"), "--word_vocab", str(tmp_path / "vocab"),
        "--max_seq_length", "64", "--per_device_train_batch_size", "4", "--learning_rate", "1e-3",
        "--num_warmup_steps", "2", "--max_train_steps", "4", "--logging_steps", "2", "--eval_steps", "2",
        "--max_eval_blocks", "8", "--report_to", "tensorboard", "--output_dir", str(out), "--seed", "1",
    ]) == 0
    series = _scalars(out)
    for tag in ("loss", "lr", "mlm_loss", "nlm_loss", "tokens_per_s"):
        assert [step for step, _ in series[tag]] == [2, 4], tag
    for tag in ("eval_mlm_loss", "eval_mlm_perplexity", "eval_nlm_accuracy"):
        assert [step for step, _ in series[tag]] == [2, 4], tag
    # the values are the run's: the same as its log.jsonl
    from charbert.training import read_log

    log = {r["step"]: r for r in read_log(out / "log.jsonl") if "loss" in r}
    assert [v for _, v in series["loss"]] == pytest.approx([log[2]["loss"], log[4]["loss"]], rel=1e-6)
    assert [v for _, v in series["lr"]] == pytest.approx([log[2]["lr"], log[4]["lr"]], rel=1e-6)
    assert log[2]["lr"] == pytest.approx(1e-3)  # the end of the 2 warmup steps
    assert all(v > 0 for _, v in series["eval_mlm_perplexity"])
