"""Evaluation in two processes gathers exactly the dataset: same predictions and metrics as one process.

A fixed model (fine-tuning heads on tiny random checkpoints, saved without training) scores a
dev set of 13 examples with a per-process batch of 4: 13 is not a multiple of 2 x 4, so the
second process's last batch is topped up with repeated examples that must not be counted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import free_port, gloo_available

from charbert import CharBertForQuestionAnswering, CharBertForSequenceClassification, CharBertTokenizer

REPO = Path(__file__).resolve().parents[1]


def _run(program: str, argv: list[str], nproc: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "TOKENIZERS_PARALLELISM": "false"}
    if nproc == 1:
        cmd = [sys.executable, "-m", f"finetune.{program}"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
               "127.0.0.1", "--master_port", str(free_port()), "-m", f"finetune.{program}"]
    proc = subprocess.run(cmd + [str(a) for a in argv], env=env, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _fixed_model(cls, ckpt: Path, out: Path, **config) -> Path:
    torch.manual_seed(0)
    model = cls.from_pretrained(ckpt, **config)
    model.save_pretrained(out)
    CharBertTokenizer.from_pretrained(ckpt).save_pretrained(out)
    return out


def _plain_token_model(ckpt: Path, out: Path, labels: list[str]) -> Path:
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForTokenClassification.from_pretrained(ckpt, id2label=dict(enumerate(labels)),
                                                            label2id={t: i for i, t in enumerate(labels)})
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(ckpt).save_pretrained(out)
    return out


@pytest.mark.slow
@pytest.mark.skipif(not gloo_available(), reason="torch.distributed with the gloo backend is unavailable")
def test_two_process_evaluation_equals_one_process(tmp_path, task_files, bert_dir):
    glue_model = _fixed_model(CharBertForSequenceClassification, bert_dir, tmp_path / "glue_model",
                              id2label={0: "0", 1: "1"}, label2id={"0": 0, "1": 1})
    ner_model = _plain_token_model(bert_dir, tmp_path / "ner_model", ["O", "B-LOC", "B-PER", "I-LOC", "I-PER"])
    qa_model = _fixed_model(CharBertForQuestionAnswering, bert_dir, tmp_path / "qa_model")
    jobs = {
        "glue": (["--task_name", "mrpc", "--test_file", task_files["mrpc_dev"], "--model_name_or_path", glue_model,
                  "--max_seq_length", "64"], "predict_predictions.tsv", ["accuracy", "f1", "num_examples"]),
        "ner": (["--test_file", task_files["ner_dev"], "--model_name_or_path", ner_model, "--max_seq_length", "48"],
                "predict_predictions.txt", ["precision", "recall", "f1", "accuracy", "truncated_words", "num_words"]),
        "squad": (["--version_2_with_negative", "--test_file", task_files["squad_v2_dev"], "--model_name_or_path",
                   qa_model, "--max_seq_length", "64", "--doc_stride", "16", "--max_query_length", "16"],
                  "predict_predictions.json", ["exact", "f1", "total", "HasAns_f1", "NoAns_exact"]),
    }
    for program, (argv, predictions, keys) in jobs.items():
        results = {}
        for nproc in (1, 2):
            out = tmp_path / f"{program}_{nproc}"
            _run(program, ["--do_predict", *argv, "--per_device_eval_batch_size", "4", "--output_dir", out], nproc)
            record = json.loads((out / "metrics.json").read_text())
            assert record["num_processes"] == nproc
            results[nproc] = (record["predict"], (out / predictions).read_text())
        (one, one_text), (two, two_text) = results[1], results[2]
        assert two_text == one_text, program  # the same predictions, in the same order, none duplicated
        for key in keys:
            assert two[key] == pytest.approx(one[key], abs=1e-9), (program, key)
        assert one["num_features"] % 8 != 0, program  # the tail really is uneven across 2 processes x batch 4
    ner_features = json.loads((tmp_path / "ner_2" / "metrics.json").read_text())["predict"]["num_features"]
    assert ner_features == 12
