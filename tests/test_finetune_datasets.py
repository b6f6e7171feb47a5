"""--dataset_name in the fine-tuning programs: a save_to_disk dataset with the Hub's columns trains and
scores exactly like the same data from files."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli

datasets = pytest.importorskip("datasets", reason="the datasets extra is not installed")

COMMON = ("--charbert", "--max_seq_length", "48", "--max_train_steps", "3", "--per_device_train_batch_size", "8",
          "--seed", "2")


def _record(out) -> dict:
    return json.loads((out / "metrics.json").read_text())


def _same_run(a: dict, b: dict) -> None:
    assert a["train"]["train_loss"] == b["train"]["train_loss"]
    assert a["train"]["num_features"] == b["train"]["num_features"]
    skip = {"file", "predictions"}
    assert {k: v for k, v in a["eval"].items() if k not in skip} == {k: v for k, v in b["eval"].items() if k not in skip}


@pytest.fixture(scope="module")
def mrpc_dataset(task_files, tmp_path_factory):
    from charbert.tasks.glue import read_glue

    def split(path):
        examples = read_glue("mrpc", path)
        return datasets.Dataset.from_dict(
            {"sentence1": [e.text_a for e in examples], "sentence2": [e.text_b for e in examples],
             "label": [int(e.label) for e in examples], "idx": list(range(len(examples)))},
            features=datasets.Features({"sentence1": datasets.Value("string"), "sentence2": datasets.Value("string"),
                                        "label": datasets.ClassLabel(names=["not_equivalent", "equivalent"]),
                                        "idx": datasets.Value("int32")}))

    folder = tmp_path_factory.mktemp("mrpc_dataset")
    datasets.DatasetDict({"train": split(task_files["mrpc_train"]), "validation": split(task_files["mrpc_dev"])}
                         ).save_to_disk(str(folder))
    return folder


@pytest.mark.slow
def test_glue_dataset_name_equals_files(mrpc_dataset, task_files, bert_dir, tmp_path):
    files, data = tmp_path / "files", tmp_path / "data"
    assert run_cli("glue", "--task_name", "mrpc", "--train_file", task_files["mrpc_train"], "--validation_file",
                   task_files["mrpc_dev"], "--model_name_or_path", bert_dir, "--output_dir", files, *COMMON) == 0
    assert run_cli("glue", "--task_name", "mrpc", "--dataset_name", mrpc_dataset, "--model_name_or_path", bert_dir,
                   "--output_dir", data, *COMMON) == 0
    _same_run(_record(files), _record(data))
    assert _record(data)["eval"]["file"] == f"{mrpc_dataset}[validation]"


@pytest.mark.slow
def test_ner_dataset_name_equals_files(task_files, bert_dir, tmp_path):
    from charbert.tasks.ner import label_list, read_conll

    train, dev = read_conll(task_files["ner_train"]), read_conll(task_files["ner_dev"])
    names = label_list(train)
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names))})

    def split(sentences):
        return datasets.Dataset.from_dict({"tokens": [s.tokens for s in sentences],
                                           "ner_tags": [[names.index(t) for t in s.tags] for s in sentences]},
                                          features=features)

    folder = tmp_path / "conll"
    datasets.DatasetDict({"train": split(train), "validation": split(dev)}).save_to_disk(str(folder))
    files, data = tmp_path / "files", tmp_path / "data"
    assert run_cli("ner", "--train_file", task_files["ner_train"], "--validation_file", task_files["ner_dev"],
                   "--model_name_or_path", bert_dir, "--output_dir", files, *COMMON) == 0
    assert run_cli("ner", "--dataset_name", folder, "--text_column_name", "tokens", "--label_column_name", "ner_tags",
                   "--model_name_or_path", bert_dir, "--output_dir", data, *COMMON) == 0
    _same_run(_record(files), _record(data))
    assert _record(data)["labels"] == names


def test_dataset_errors_are_one_line(mrpc_dataset, bert_dir, tmp_path, capsys):
    assert run_cli("glue", "--task_name", "mrpc", "--dataset_name", mrpc_dataset, "--text_column_name", "a,b",
                   "--model_name_or_path", bert_dir, "--output_dir", tmp_path / "x") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no column 'a', 'b'" in err[0] and err[0].startswith("python -m finetune.glue: error:")
    assert run_cli("glue", "--task_name", "mrpc", "--dataset_name", mrpc_dataset, "--train_file", "t.tsv",
                   "--model_name_or_path", bert_dir, "--output_dir", tmp_path / "y") == 2
    assert "not both" in capsys.readouterr().err
    assert run_cli("squad", "--dataset_name", mrpc_dataset, "--model_name_or_path", bert_dir,
                   "--output_dir", tmp_path / "z") == 2
    assert "has no column 'id', 'question', 'context', 'answers'" in capsys.readouterr().err


@pytest.mark.slow
def test_squad_dataset_name_equals_files(task_files, bert_dir, tmp_path):
    from charbert.tasks.squad import read_squad

    def split(path):
        examples = read_squad(path)
        return datasets.Dataset.from_dict({
            "id": [e.id for e in examples], "title": [e.title for e in examples],
            "context": [e.context for e in examples], "question": [e.question for e in examples],
            "answers": [{"text": [a["text"] for a in e.answers], "answer_start": [a["answer_start"] for a in e.answers]}
                        for e in examples]})

    folder = tmp_path / "squad"
    datasets.DatasetDict({"train": split(task_files["squad_v2_train"]), "validation": split(task_files["squad_v2_dev"])}
                         ).save_to_disk(str(folder))
    files, data = tmp_path / "files", tmp_path / "data"
    flags = ("--version_2_with_negative", "--doc_stride", "16", "--max_query_length", "16")
    assert run_cli("squad", "--train_file", task_files["squad_v2_train"], "--validation_file", task_files["squad_v2_dev"],
                   "--model_name_or_path", bert_dir, "--output_dir", files, *COMMON, *flags) == 0
    assert run_cli("squad", "--dataset_name", folder, "--model_name_or_path", bert_dir, "--output_dir", data,
                   *COMMON, *flags) == 0
    _same_run(_record(files), _record(data))
