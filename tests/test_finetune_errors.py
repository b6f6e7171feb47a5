"""Bad input to the fine-tuning programs: one clear line on stderr (file:line where it applies),
exit code 2, no traceback -- never a silently wrong score."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli
from test_finetune_e2e import TRAIN

from charbert.tasks.loading import ModelSetupError, check_head, inspect_checkpoint

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fails(capsys, program, *argv) -> str:
    """Run the program, expect exit code 2, return its error line."""
    rc = run_cli(program, *argv)
    err = capsys.readouterr().err
    assert rc == 2, err[-2000:]
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"python -m finetune.{program}: error: ")
    return line


def test_unseen_dev_label_names_file_and_line(capsys, task_files, bert_dir, tmp_path):
    dev = tmp_path / "dev.txt"
    lines = task_files["ner_dev"].read_text().splitlines()
    k = next(i for i, ln in enumerate(lines) if ln.endswith(" O") and not ln.startswith("-DOCSTART-"))
    lines[k] = lines[k][:-1] + "B-ORG"
    dev.write_text("\n".join(lines) + "\n")
    line = fails(capsys, "ner", "--train_file", task_files["ner_train"], "--validation_file", dev,
                 "--model_name_or_path", bert_dir, "--output_dir", tmp_path / "out", *TRAIN)
    assert f"{dev}:{k + 1}: label 'B-ORG' never occurs in the training data" in line
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_squad_answer_offset_mismatch(capsys, task_files, bert_dir, tmp_path):
    data = json.loads(task_files["squad_v1_dev"].read_text())
    qa = data["data"][0]["paragraphs"][0]["qas"][1]
    qa["answers"][0]["answer_start"] += 1
    bad = tmp_path / "dev.json"
    bad.write_text(json.dumps(data))
    line = fails(capsys, "squad", "--train_file", task_files["squad_v1_train"], "--validation_file", bad,
                 "--model_name_or_path", bert_dir, "--output_dir", tmp_path / "out", "--max_seq_length", "64",
                 "--doc_stride", "16", "--max_query_length", "16", *TRAIN)
    assert str(bad) in line and f"question id {qa['id']!r}" in line and "does not match its text" in line


def test_v2_data_without_the_v2_flag(capsys, task_files, bert_dir, tmp_path):
    line = fails(capsys, "squad", "--train_file", task_files["squad_v2_train"], "--model_name_or_path", bert_dir,
                 "--output_dir", tmp_path / "out", "--max_seq_length", "64", "--doc_stride", "16")
    assert "unanswerable" in line and "--version_2_with_negative" in line


def test_empty_sentence_and_malformed_tsv_line(capsys, task_files, bert_dir, tmp_path):
    lines = task_files["mrpc_dev"].read_text().splitlines()
    empty = tmp_path / "empty.tsv"
    cols = lines[3].split("\t")
    cols[4] = "  "
    empty.write_text("\n".join(lines[:3] + ["\t".join(cols)] + lines[4:]) + "\n")
    common = ["--task_name", "mrpc", "--train_file", task_files["mrpc_train"], "--model_name_or_path", bert_dir,
              "--output_dir", tmp_path / "out", *TRAIN]
    line = fails(capsys, "glue", *common, "--validation_file", empty)
    assert f"{empty}:4: the second sentence is empty" in line

    malformed = tmp_path / "malformed.tsv"
    malformed.write_text("\n".join(lines[:5] + ["1\t7\t8\tonly one sentence"] + lines[5:]) + "\n")
    line = fails(capsys, "glue", *common, "--validation_file", malformed)
    assert f"{malformed}:6: expected 5 tab-separated columns for mrpc, found 4" in line


def test_checkpoint_with_another_tasks_head(capsys, task_files, bert_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    seq = tmp_path / "seq_cls"
    AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=3).save_pretrained(seq)
    AutoTokenizer.from_pretrained(bert_dir).save_pretrained(seq)
    args = ["--train_file", task_files["ner_train"], "--validation_file", task_files["ner_dev"],
            "--model_name_or_path", seq, "--output_dir", tmp_path / "out", "--max_seq_length", "64", *TRAIN]
    line = fails(capsys, "ner", *args)
    assert "BertForSequenceClassification checkpoint" in line and "token-classification head" in line
    assert "--new_head" in line
    # asked for explicitly, the old head is dropped and a new one trained
    assert run_cli("ner", *args, "--new_head") == 0
    record = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert record["model"]["head"] == "new" and "classifier" in record["model"]["initialized"]


def test_head_fine_tuned_for_another_task(capsys, task_files, bert_dir, tmp_path):
    out = tmp_path / "sst2"
    assert run_cli("glue", "--task_name", "sst2", "--train_file", task_files["sst2_train"], "--model_name_or_path",
                   bert_dir, "--output_dir", out, "--max_seq_length", "64", *TRAIN) == 0
    capsys.readouterr()
    # same label set ("0"/"1"), other task: refused rather than scoring MRPC with a sentiment head
    line = fails(capsys, "glue", "--task_name", "mrpc", "--do_predict", "--test_file", task_files["mrpc_dev"],
                 "--model_name_or_path", out, "--output_dir", tmp_path / "pred", "--max_seq_length", "64")
    assert "was fine-tuned for glue/sst2, not glue/mrpc" in line


def test_head_label_checks():
    """check_head: same head with another label count or label names is refused; a plain checkpoint is fine."""

    import tempfile

    with tempfile.TemporaryDirectory() as d:
        cfg = {"model_type": "bert", "architectures": ["BertForTokenClassification"],
               "id2label": {"0": "O", "1": "B-PER", "2": "I-PER"}}
        (Path(d) / "config.json").write_text(json.dumps(cfg))
        info = inspect_checkpoint(d)
        assert info.head == "token_classification" and info.id2label == {0: "O", 1: "B-PER", 2: "I-PER"}
        check_head(info, "token_classification", "ner", 3, ["O", "B-PER", "I-PER"])
        with pytest.raises(ModelSetupError, match="3 labels but ner needs 5"):
            check_head(info, "token_classification", "ner", 5, None)
        with pytest.raises(ModelSetupError, match="was trained with the labels"):
            check_head(info, "token_classification", "ner", 3, ["O", "B-LOC", "I-LOC"])
        check_head(info, "token_classification", "ner", 5, None, new_head=True)
        # CharBERT built on it takes only the backbone: any head is fine
        check_head(inspect_checkpoint(d, charbert=True), "sequence_classification", "glue", 2, None)
        cfg["architectures"] = ["BertForMaskedLM"]
        (Path(d) / "config.json").write_text(json.dumps(cfg))
        check_head(inspect_checkpoint(d), "question_answering", "squad", 0, None)


def test_predict_needs_a_fine_tuned_checkpoint(capsys, task_files, bert_dir, tmp_path):
    line = fails(capsys, "ner", "--do_predict", "--test_file", task_files["ner_dev"], "--model_name_or_path", bert_dir,
                 "--output_dir", tmp_path / "out")
    assert "no trained token-classification head" in line and "BertForMaskedLM" in line


def test_missing_files_and_flags(capsys, task_files, bert_dir, tmp_path):
    line = fails(capsys, "pos", "--train_file", tmp_path / "nope.conllu", "--model_name_or_path", bert_dir,
                 "--output_dir", tmp_path / "out")
    assert "nope.conllu: no such file" in line
    line = fails(capsys, "pos", "--train_file", task_files["pos_train"], "--model_name_or_path", tmp_path,
                 "--output_dir", tmp_path / "out")
    assert "No model checkpoint at" in line
    line = fails(capsys, "glue", "--task_name", "mrpc", "--model_name_or_path", bert_dir, "--output_dir", tmp_path)
    assert "nothing to do" in line
    line = fails(capsys, "glue", "--task_name", "mrqc", "--train_file", task_files["mrpc_train"],
                 "--model_name_or_path", bert_dir, "--output_dir", tmp_path)
    assert "unknown GLUE task 'mrqc'" in line
    line = fails(capsys, "squad", "--train_file", task_files["squad_v1_train"], "--model_name_or_path", bert_dir,
                 "--output_dir", tmp_path / "out", "--max_seq_length", "64", "--doc_stride", "60")
    assert "--doc_stride 60 leaves no room" in line
    line = fails(capsys, "glue", "--task_name", "mrpc", "--train_file", task_files["mrpc_train"],
                 "--model_name_or_path", bert_dir, "--output_dir", tmp_path, "--max_seq_length", "512")
    assert "exceeds what" in line and "(128 tokens)" in line


@pytest.mark.slow
def test_cli_process_exit_code_and_single_error_line(task_files, bert_dir, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("EU B-ORG\nrejects O\nGerman B-MISC extra\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "finetune.ner", "--train_file", str(bad), "--model_name_or_path",
                           str(bert_dir), "--output_dir", str(tmp_path / "out")], env=env, capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"python -m finetune.ner: error: {bad}:3: expected 2 whitespace-separated columns (as on line 1), found 3"]
    assert proc.stdout == ""
