"""End-to-end fine-tuning runs on tiny models: train a few steps, evaluate, write predictions and
metrics.json, save; reload the saved model with --do_predict and get the same metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli, shared_data

from charbert.tasks.ner import read_conll
from charbert.tasks.pos import read_conllu
from charbert.tasks.squad import read_squad

TRAIN = ["--max_train_steps", "4", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "4",
         "--learning_rate", "1e-3", "--logging_steps", "2", "--seed", "3"]


pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]  # every test runs a program end to end


def metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text(encoding="utf-8"))


def check_record(record: dict, charbert: bool, head: str) -> None:
    assert record["command"].startswith("python -m finetune.")
    assert record["seed"] == 3 or "--seed" not in record["command"]
    assert {"torch", "transformers", "charbert"} <= set(record["versions"])
    assert record["model"]["charbert"] is charbert
    assert record["model"]["model_class"].startswith("CharBert") is charbert
    assert record["model"]["head"] == head


def check_saved(out: Path, charbert: bool) -> None:
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "metrics.json", "log.jsonl"} <= names
    assert ("char_vocab.json" in names) is charbert


def reload_and_predict(program, out, test_file, tmp_path, *extra):
    pred = tmp_path / "pred"
    rc = run_cli(program, "--do_predict", "--test_file", test_file, "--model_name_or_path", out, "--output_dir", pred,
                 "--per_device_eval_batch_size", "4", *extra)
    assert rc == 0
    return pred, metrics(pred)


def same_numbers(a: dict, b: dict, keys) -> None:
    for key in keys:
        assert a[key] == pytest.approx(b[key], abs=1e-9), key


# ----------------------------------------------------------------------------- GLUE


@pytest.mark.parametrize("task,backbone,charbert", [("mrpc", "bert", True), ("sst2", "roberta", False),
                                                    ("stsb", "bert", False)])
def test_glue_end_to_end(task, backbone, charbert, task_files, bert_dir, roberta_dir, tmp_path):
    ckpt = bert_dir if backbone == "bert" else roberta_dir
    out = tmp_path / "run"
    rc = run_cli("glue", "--task_name", task, "--train_file", task_files[f"{task}_train"], "--validation_file",
                 task_files[f"{task}_dev"], "--model_name_or_path", ckpt, "--output_dir", out, "--max_seq_length", "64",
                 *(["--charbert"] if charbert else []), *TRAIN)
    assert rc == 0
    record = metrics(out)
    check_record(record, charbert, "new")
    check_saved(out, charbert)
    assert record["train"]["global_step"] == 4 and record["train"]["num_examples"] == 48
    keys = {"mrpc": ["accuracy", "f1"], "sst2": ["accuracy"], "stsb": ["pearson", "spearmanr"]}[task]
    assert set(keys) <= set(record["eval"]) and record["eval"]["num_examples"] == 13
    lines = (out / "eval_predictions.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and [ln.split("\t")[0] for ln in lines[1:]] == [str(i) for i in range(13)]
    if task == "stsb":
        assert record["labels"] is None and len({ln.split("\t")[1] for ln in lines[1:]}) > 1  # real-valued scores
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(out)
        assert config.num_labels == 1 and config.problem_type == "regression"
    else:
        assert {ln.split("\t")[1] for ln in lines[1:]} <= {"0", "1"}

    pred, again = reload_and_predict("glue", out, task_files[f"{task}_dev"], tmp_path, "--task_name", task,
                                     "--max_seq_length", "64")
    check_record(again, charbert, "loaded")  # a saved CharBERT is recognised without --charbert
    same_numbers(again["predict"], record["eval"], keys)
    assert (pred / "predict_predictions.tsv").read_text() == (out / "eval_predictions.tsv").read_text()


# ----------------------------------------------------------------------------- SQuAD


@pytest.mark.parametrize("version,backbone,charbert", [("v1", "bert", True), ("v2", "roberta", False)])
def test_squad_end_to_end(version, backbone, charbert, task_files, bert_dir, roberta_dir, tmp_path):
    ckpt = bert_dir if backbone == "bert" else roberta_dir
    out = tmp_path / "run"
    v2 = ["--version_2_with_negative"] if version == "v2" else []
    qa = ["--max_seq_length", "64", "--doc_stride", "16", "--max_query_length", "16", "--max_answer_length", "8",
          "--n_best_size", "10", *v2]
    rc = run_cli("squad", "--train_file", task_files[f"squad_{version}_train"], "--validation_file",
                 task_files[f"squad_{version}_dev"], "--model_name_or_path", ckpt, "--output_dir", out,
                 *(["--charbert"] if charbert else []), *qa, *TRAIN)
    assert rc == 0
    record = metrics(out)
    check_record(record, charbert, "new")
    check_saved(out, charbert)
    dev = read_squad(task_files[f"squad_{version}_dev"])
    ev = record["eval"]
    assert ev["total"] == len(dev) == 12 and ev["missing"] == 0 and 0 <= ev["f1"] <= 100
    assert ev["num_features"] > len(dev)  # long contexts were split into windows
    predictions = json.loads((out / "eval_predictions.json").read_text())
    contexts = {ex.id: ex.context for ex in dev}
    assert set(predictions) == set(contexts)
    assert all(text in contexts[qid] for qid, text in predictions.items())
    nbest = json.loads((out / "eval_nbest_predictions.json").read_text())
    assert set(nbest) == set(contexts) and all(len(v) <= 10 + (version == "v2") for v in nbest.values())
    assert any(nbest.values())
    if version == "v2":
        assert {"HasAns_exact", "NoAns_exact"} <= set(ev)
        odds = json.loads((out / "eval_null_odds.json").read_text())
        assert set(odds) == set(contexts)
    else:
        assert not (out / "eval_null_odds.json").exists()

    pred, again = reload_and_predict("squad", out, task_files[f"squad_{version}_dev"], tmp_path, *qa)
    check_record(again, charbert, "loaded")
    same_numbers(again["predict"], ev, ["exact", "f1", "total"])
    assert json.loads((pred / "predict_predictions.json").read_text()) == predictions


# ----------------------------------------------------------------------------- NER and POS


@pytest.mark.parametrize("backbone,charbert", [("bert", True), ("roberta", False)])
def test_ner_end_to_end(backbone, charbert, task_files, bert_dir, roberta_dir, tmp_path):
    ckpt = bert_dir if backbone == "bert" else roberta_dir
    out = tmp_path / "run"
    rc = run_cli("ner", "--train_file", task_files["ner_train"], "--validation_file", task_files["ner_dev"],
                 "--model_name_or_path", ckpt, "--output_dir", out, "--max_seq_length", "64",
                 *(["--charbert"] if charbert else []), *TRAIN)
    assert rc == 0
    record = metrics(out)
    check_record(record, charbert, "new")
    check_saved(out, charbert)
    assert record["labels"] == ["O", "B-LOC", "B-PER", "I-LOC", "I-PER"]
    ev = record["eval"]
    assert {"precision", "recall", "f1", "accuracy", "per_type"} <= set(ev)
    dev = read_conll(task_files["ner_dev"])
    assert ev["num_words"] == sum(len(s.tokens) for s in dev)
    assert ev["truncated_words"] > 100 and ev["fallback_tag"] == "O"  # the long sentence is cut at 64 tokens
    # predictions are aligned token for token with the input file
    blocks = (out / "eval_predictions.txt").read_text().strip("\n").split("\n\n")
    assert len(blocks) == len(dev)
    for block, sent in zip(blocks, dev):
        rows = [line.split(" ") for line in block.split("\n")]
        assert [r[0] for r in rows] == sent.tokens and [r[1] for r in rows] == sent.tags
        assert all(r[2] in record["labels"] for r in rows)
    assert all(r.split(" ")[2] == "O" for r in blocks[-1].split("\n")[-100:])  # truncated words get "O"

    pred, again = reload_and_predict("ner", out, task_files["ner_dev"], tmp_path, "--max_seq_length", "64")
    check_record(again, charbert, "loaded")
    assert again["labels"] == record["labels"]  # the label list travels with the model
    same_numbers(again["predict"], ev, ["precision", "recall", "f1", "accuracy", "truncated_words"])
    assert (pred / "predict_predictions.txt").read_text() == (out / "eval_predictions.txt").read_text()


def test_pos_end_to_end_conllu_and_token_tag_files(task_files, bert_dir, tmp_path):
    out = tmp_path / "run"
    rc = run_cli("pos", "--train_file", task_files["pos_train"], "--validation_file", task_files["pos_dev"],
                 "--model_name_or_path", bert_dir, "--charbert", "--output_dir", out, "--max_seq_length", "64",
                 "--label_all_tokens", *TRAIN)
    assert rc == 0
    record = metrics(out)
    check_record(record, True, "new")
    assert record["labels"] == ["NOUN", "NUM", "PROPN", "PUNCT", "VERB"]
    dev = read_conllu(task_files["pos_dev"])
    lines = [ln for ln in (out / "eval_predictions.tsv").read_text().split("\n") if ln]
    assert [ln.split("\t")[:2] for ln in lines] == [[t, g] for s in dev for t, g in zip(s.tokens, s.tags)]
    assert record["eval"]["truncated_words"] > 0

    # the same sentences as token<TAB>tag lines score the same with the reloaded model
    tsv = tmp_path / "dev.tsv"
    tsv.write_text("\n\n".join("\n".join(f"{t}\t{g}" for t, g in zip(s.tokens, s.tags)) for s in dev) + "\n")
    pred, again = reload_and_predict("pos", out, tsv, tmp_path, "--max_seq_length", "64")
    check_record(again, True, "loaded")
    same_numbers(again["predict"], record["eval"], ["accuracy", "truncated_words"])
    assert (pred / "predict_predictions.tsv").read_text() == (out / "eval_predictions.tsv").read_text()


def test_label_file_checkpointing_and_exact_resume(task_files, bert_dir, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("O\nB-PER\nI-PER\nB-LOC\nI-LOC\nB-ORG\nI-ORG\n")
    common = ["--train_file", task_files["ner_train"], "--validation_file", task_files["ner_dev"], "--labels", labels,
              "--model_name_or_path", bert_dir, "--charbert", "--max_seq_length", "64", *TRAIN]
    full_dir = tmp_path / "full"
    assert run_cli("ner", *common, "--output_dir", full_dir, "--checkpointing_steps", "2") == 0
    full = metrics(full_dir)
    assert full["labels"] == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]  # the file's order
    assert (full_dir / "step_2" / "trainer_state.json").is_file()

    # a run resumed from the step-2 checkpoint ends where the uninterrupted run ended
    resumed_dir = tmp_path / "resumed"
    assert run_cli("ner", *common, "--output_dir", resumed_dir, "--resume_from_checkpoint", full_dir / "step_2") == 0
    resumed = metrics(resumed_dir)
    assert resumed["train"]["global_step"] == 4
    same_numbers(resumed["eval"], full["eval"], ["precision", "recall", "f1", "accuracy"])
    assert (resumed_dir / "eval_predictions.txt").read_text() == (full_dir / "eval_predictions.txt").read_text()

    # a run in two sittings (--stop_after_steps): the first saves no model and no scores, the second ends
    # where the uninterrupted run ended
    split_dir = tmp_path / "split"
    assert run_cli("ner", *common, "--output_dir", split_dir, "--stop_after_steps", "2") == 0
    assert (split_dir / "step_2").is_dir()
    assert not (split_dir / "model.safetensors").exists() and not (split_dir / "metrics.json").exists()
    assert run_cli("ner", *common, "--output_dir", split_dir, "--resume_from_checkpoint", "latest") == 0
    same_numbers(metrics(split_dir)["eval"], full["eval"], ["precision", "recall", "f1", "accuracy"])


def test_unlabelled_test_files_get_predictions_only(task_files, bert_dir, tmp_path):
    # GLUE: the official test layout (index + sentence, no label column)
    out = tmp_path / "sst2"
    assert run_cli("glue", "--task_name", "sst2", "--train_file", task_files["sst2_train"], "--model_name_or_path",
                   bert_dir, "--output_dir", out, "--max_seq_length", "64", *TRAIN) == 0
    assert "eval" not in metrics(out)  # no validation file: trained and saved only
    sentences = [ln.split("\t")[0] for ln in task_files["sst2_dev"].read_text().splitlines()[1:]]
    test = tmp_path / "test.tsv"
    test.write_text("index\tsentence\n" + "".join(f"{i}\t{s}\n" for i, s in enumerate(sentences)))
    pred, record = reload_and_predict("glue", out, test, tmp_path, "--task_name", "sst2", "--max_seq_length", "64")
    assert record["predict"]["labelled"] is False and "accuracy" not in record["predict"]
    assert len((pred / "predict_predictions.tsv").read_text().splitlines()) == len(sentences) + 1

    # NER: a token-only file
    out = tmp_path / "ner"
    assert run_cli("ner", "--train_file", task_files["ner_train"], "--model_name_or_path", bert_dir, "--charbert",
                   "--output_dir", out, "--max_seq_length", "64", *TRAIN) == 0
    dev = read_conll(task_files["ner_dev"])
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("\n\n".join("\n".join(s.tokens) for s in dev) + "\n")
    pred, record = reload_and_predict("ner", out, tokens, tmp_path / "x", "--max_seq_length", "64")
    assert record["predict"]["labelled"] is False and "f1" not in record["predict"]
    rows = [ln.split(" ") for ln in (pred / "predict_predictions.txt").read_text().split("\n") if ln]
    assert [r[0] for r in rows] == [t for s in dev for t in s.tokens] and all(len(r) == 2 for r in rows)


# ----------------------------------------------------------------------------- real data


def test_tiny_model_beats_majority_on_real_sst2(tmp_path):
    """A small from-scratch BERT (2 layers, hidden 64, WordPiece trained on SST-2 sentences) trained
    one epoch on 8,000 SST-2 sentences reaches ~71-72% dev accuracy (seed 1: 71.3% in this test, ~8 s);
    the majority class is 50.9%."""
    from charbert.tasks.glue import read_glue
    from charbert.tiny import make_tiny_checkpoint

    train_file, dev_file = shared_data("glue/SST-2/train.tsv"), shared_data("glue/SST-2/dev.tsv")
    sentences = [ex.text_a for ex in read_glue("sst2", train_file)[:20000]]
    ckpt = make_tiny_checkpoint(tmp_path / "ckpt", "bert", sentences, vocab_size=2000, hidden_size=64, layers=2,
                                max_len=64)
    out = tmp_path / "run"
    rc = run_cli("glue", "--task_name", "sst2", "--train_file", train_file, "--max_train_samples", "8000",
                 "--validation_file", dev_file, "--model_name_or_path", ckpt, "--output_dir", out,
                 "--num_train_epochs", "1", "--per_device_train_batch_size", "32", "--per_device_eval_batch_size", "64",
                 "--learning_rate", "1e-3", "--warmup_ratio", "0.1", "--max_seq_length", "64", "--seed", "1")
    assert rc == 0
    dev = read_glue("sst2", dev_file)
    majority = max(sum(ex.label == "1" for ex in dev), sum(ex.label == "0" for ex in dev)) / len(dev)
    accuracy = metrics(out)["eval"]["accuracy"]
    assert majority == pytest.approx(0.509, abs=1e-3)
    assert accuracy > majority + 0.10, (accuracy, majority)
