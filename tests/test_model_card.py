"""Model cards: the README.md front matter written for a saved model parses back to what was given."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import charbert
from charbert import model_card
from charbert.model_card import card_metrics, read_model_card, write_model_card


def _write(out: Path, **overrides) -> Path:
    kwargs = {
        "task": "ner",
        "metrics": {"eval_f1": np.float64(0.875), "eval_loss": 0.25, "eval_tokens": 1234, "epoch": 3.0},
        "base_model": "bert-base-cased",
        "training_args": {"learning_rate": 3e-5, "seed": 42, "output_dir": out, "report_to": ["tensorboard"],
                          "max_train_steps": None},
        "data_files": ["data/train.txt", Path("data/dev.txt")],
        "char_vocab_size": 1001,
        "word_vocab_size": 30000,
    }
    kwargs.update(overrides)
    return write_model_card(out, **kwargs)


def test_write_then_read_gives_the_metadata_back(tmp_path):
    out = tmp_path / "my-ner-model"
    path = _write(out)
    assert path == out / "README.md" and path.read_text(encoding="utf-8").startswith("---\n")
    meta = read_model_card(out)
    assert meta["base_model"] == "bert-base-cased" and meta["library_name"] == "transformers"
    assert meta["tags"] == ["charbert"] and meta["pipeline_tag"] == "token-classification"
    (entry,) = meta["model-index"]
    assert entry["name"] == "my-ner-model"
    (result,) = entry["results"]
    assert result["task"] == {"type": "token-classification", "name": "ner"}
    assert result["dataset"]["name"] == "train"
    # numbers come back as numbers; counts and the epoch are not results
    assert card_metrics(meta) == {"eval_f1": 0.875, "eval_loss": 0.25}
    assert [m["type"] for m in result["metrics"]] == ["f1", "loss"]
    info = meta["charbert"]
    assert info["version"] == charbert.__version__ and info["task"] == "ner"
    assert info["char_vocab_size"] == 1001 and info["word_vocab_size"] == 30000
    assert info["data_files"] == ["data/train.txt", "data/dev.txt"]
    assert info["training_args"] == {"learning_rate": 3e-5, "seed": 42, "output_dir": str(out),
                                     "report_to": ["tensorboard"], "max_train_steps": None}
    assert info["source"] is None
    # a git checkout gives the commit; it is a 40-hex sha or None (an installed wheel)
    assert info["git_commit"] is None or (len(info["git_commit"]) == 40 and int(info["git_commit"], 16) >= 0)


def test_the_hub_library_reads_the_card_and_its_eval_results(tmp_path):
    from huggingface_hub import ModelCard

    _write(tmp_path / "m", task="glue", metrics={"eval_accuracy": 0.5}, dataset="glue/mrpc")
    card = ModelCard.load(tmp_path / "m" / "README.md")
    (result,) = card.data.eval_results
    assert (result.task_type, result.dataset_name, result.metric_type, result.metric_value) == \
        ("text-classification", "glue/mrpc", "accuracy", 0.5)
    assert card.data.base_model == "bert-base-cased"
    assert "## Training arguments" in card.text and "data/train.txt" in card.text


def test_converted_checkpoint_no_metrics_no_git_and_odd_values(tmp_path, monkeypatch):
    monkeypatch.setattr(model_card, "git_commit", lambda directory=None: None)
    _write(tmp_path / "conv", task="pretraining", metrics={}, source="wtma/charbert-bert-wiki",
           word_vocab_size=None, training_args={"loss": float("nan"), "x": np.int64(2)})
    meta = read_model_card(tmp_path / "conv" / "README.md")
    assert "model-index" not in meta and card_metrics(meta) == {}
    assert meta["pipeline_tag"] == "fill-mask"
    info = meta["charbert"]
    assert info["source"] == "wtma/charbert-bert-wiki" and info["git_commit"] is None
    assert info["word_vocab_size"] is None
    assert info["training_args"] == {"loss": "nan", "x": 2}  # YAML-safe: no NaN float, no numpy scalar
    assert not any(isinstance(v, float) and math.isnan(v) for v in info["training_args"].values())


def test_git_commit_outside_a_checkout_is_none(tmp_path):
    assert model_card.git_commit(tmp_path) is None


def test_missing_card_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model card"):
        read_model_card(tmp_path)


# ---- the programs write cards ------------------------------------------------------------------


@pytest.mark.slow
def test_a_finetune_run_card_matches_its_metrics(task_files, bert_dir, tmp_path):
    import json

    from tests.conftest import run_cli

    out = tmp_path / "ner"
    assert run_cli("ner", "--train_file", task_files["ner_train"], "--validation_file", task_files["ner_dev"],
                   "--model_name_or_path", bert_dir, "--charbert", "--max_seq_length", "32", "--max_train_steps", "2",
                   "--per_device_train_batch_size", "8", "--output_dir", out, "--seed", "1") == 0
    record = json.loads((out / "metrics.json").read_text())
    meta = read_model_card(out)
    added_by_the_program = {"num_features", "num_examples", "file", "labelled", "predictions"}
    expected = {f"eval_{k}": v for k, v in record["eval"].items() if k not in added_by_the_program
                and isinstance(v, (int, float)) and not isinstance(v, bool) and model_card._is_metric(f"eval_{k}")}
    assert expected and card_metrics(meta) == expected
    assert meta["charbert"]["task"] == record["task"] and meta["pipeline_tag"] == "token-classification"
    assert meta["base_model"] == str(bert_dir) and meta["charbert"]["data_files"] == [str(task_files["ner_train"]),
                                                                                      str(task_files["ner_dev"])]
    assert meta["charbert"]["char_vocab_size"] > 0 and "README.md" in record["files"]


@pytest.mark.slow
def test_pretraining_writes_a_card(tmp_path):
    from pretrain.__main__ import main
    from tests.conftest import reset_accelerate

    reset_accelerate()
    out = tmp_path / "pre"
    assert main(["--max_train_steps", "2", "--eval_steps", "2", "--max_eval_blocks", "4", "--output_dir", str(out)]) == 0
    meta = read_model_card(out)
    assert meta["pipeline_tag"] == "fill-mask" and meta["charbert"]["word_vocab_size"] > 0
    assert card_metrics(meta) and all(name.startswith("eval_") for name in card_metrics(meta))
