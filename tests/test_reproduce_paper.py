"""experiments/reproduce_paper.py: the authors' recipes through our programs, the paper's table beside ours.

The end-to-end run uses tiny models on CPU with shrunk recipes (flags of the script) and tiny
data sets in each task's format, with attacked copies laid out as the authors publish theirs.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "reproduce_paper.py"


@pytest.fixture(scope="module")
def rp():
    spec = importlib.util.spec_from_file_location("reproduce_paper", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up while the module runs
    spec.loader.exec_module(module)
    return module


def mangle(word: str) -> str:
    """A stand-in for the authors' attack: the inner characters of a word of 4+ letters reversed."""
    return word[0] + word[-2:0:-1] + word[-1] if len(word) > 3 and word.isalpha() else word


def mangle_text(text: str) -> str:
    return " ".join(mangle(w) for w in text.split(" "))


def write_qnli(path: Path, texts: list[str], start: int, n: int) -> None:
    lines = ["index\tquestion\tsentence\tlabel"]
    for i in range(n):
        question = " ".join(texts[start + i].split()[:8]) + " ?"
        sentence = texts[start + i + (0 if i % 2 else 1)]
        lines.append(f"{i}\t{question}\t{sentence}\t{'entailment' if i % 2 else 'not_entailment'}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_attacked(data: Path, root: Path) -> Path:
    """The authors' layout: data/attack_datasets/CharAttack_{NER,QNLI,Squad_Q}/ (file names ours)."""
    ner = root / "CharAttack_NER"
    ner.mkdir(parents=True)
    lines = (data / "conll2003/test.txt").read_text(encoding="utf-8").splitlines()
    (ner / "test.txt").write_text("\n".join(" ".join([mangle(line.split()[0]), *line.split()[1:]])
                                            if line.strip() and not line.startswith("-DOCSTART-") else line
                                            for line in lines) + "\n", encoding="utf-8")
    (ner / "README.md").write_text("not a data file\n")
    qnli = root / "CharAttack_QNLI"
    qnli.mkdir()
    rows = (data / "glue/QNLI/dev.tsv").read_text(encoding="utf-8").splitlines()
    (qnli / "dev.tsv").write_text("\n".join([rows[0]] + ["\t".join([f[0], mangle_text(f[1]), mangle_text(f[2]), f[3]])
                                                         for f in (r.split("\t") for r in rows[1:])]) + "\n")
    squad = root / "CharAttack_Squad_Q"
    squad.mkdir()
    content = json.loads((data / "squad/dev-v2.0.json").read_text(encoding="utf-8"))
    for article in content["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                qa["question"] = mangle_text(qa["question"])
    (squad / "dev-v2.0.json").write_text(json.dumps(content), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, task_files, tiny_texts) -> Path:
    """The script's --data_dir layout, from the tiny task files."""
    root = tmp_path_factory.mktemp("paper_data")
    for target, source in (("conll2003/train.txt", "ner_train"), ("conll2003/test.txt", "ner_dev"),
                           ("squad/train-v2.0.json", "squad_v2_train"), ("squad/dev-v2.0.json", "squad_v2_dev")):
        (root / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(task_files[source], root / target)
    (root / "glue/QNLI").mkdir(parents=True)
    write_qnli(root / "glue/QNLI/train.tsv", tiny_texts, 0, 24)
    write_qnli(root / "glue/QNLI/dev.tsv", tiny_texts, 100, 10)
    return root


def authors_checkpoint_converted(out: Path) -> Path | None:
    """A tiny pretraining checkpoint of the authors' own code, saved in their format and converted
    with ``python -m charbert.convert`` (what a user does with the released weights); None when
    their code (../shared/reference) or the converter is absent."""
    try:
        from reference import (
            CHAR_VOCAB,
            TERM_VOCAB,
            AuthorsCodeMissing,
            build_authors_model,
            save_authors_checkpoint,
            vocab_tokens,
        )

        from charbert.convert import main as convert_main
    except ImportError:
        return None
    try:
        theirs = build_authors_model("bert", "pretraining", vocab_size=120)
    except AuthorsCodeMissing:
        return None
    original = save_authors_checkpoint(theirs, out / "original", "bert", vocab_tokens("bert", 120))
    converted = out / "converted"
    assert convert_main(["--original_checkpoint", str(original), "--char_vocab", str(CHAR_VOCAB["bert"]),
                         "--term_vocab", str(TERM_VOCAB), "--output_dir", str(converted)]) == 0
    return converted


@pytest.fixture(scope="module")
def charbert_dir(tmp_path_factory, bert_dir) -> Path:
    """The CharBERT of the run: a converted authors' checkpoint, else (no authors' code on this
    machine) a tiny CharBERT of ours on the tiny BERT, of the same kind (a pretraining checkpoint)."""
    from charbert import CharBertForPreTraining, CharBertTokenizer

    out = tmp_path_factory.mktemp("tiny_charbert")
    converted = authors_checkpoint_converted(out)
    if converted is not None:
        return converted
    tokenizer = CharBertTokenizer.from_pretrained(bert_dir)
    model = CharBertForPreTraining.from_pretrained(bert_dir, char_vocab_size=len(tokenizer.char_vocab),
                                                   word_vocab_size=50)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def args_of(rp, *argv):
    return rp.build_parser().parse_args(["--bert", "b", "--charbert", "c", *map(str, argv)])


def test_recipes_are_the_authors(rp):
    args = args_of(rp)
    assert (args.ner_num_train_epochs, args.ner_learning_rate, args.ner_per_device_train_batch_size) == (3, 3e-5, 6)
    assert (args.qnli_num_train_epochs, args.qnli_per_device_train_batch_size, args.qnli_max_seq_length) == (8, 16, 128)
    assert (args.squad_num_train_epochs, args.squad_per_device_train_batch_size, args.squad_max_seq_length,
            args.squad_doc_stride) == (2, 4, 384, 128)
    command = rp.finetune_command(args, "squad", "m", Path("t.json"), Path("o"))
    assert command[2] == "finetune.squad" and "--version_2_with_negative" in command
    assert command[command.index("--learning_rate") + 1] == "3e-05"
    shrunk = rp.finetune_command(args_of(rp, "--max_train_steps", "2", "--qnli_max_seq_length", "32"), "qnli", "m",
                                 Path("t.tsv"), Path("o"))
    assert shrunk[shrunk.index("--max_train_steps") + 1] == "2" and shrunk[shrunk.index("--max_seq_length") + 1] == "32"
    assert shrunk[shrunk.index("--task_name") + 1] == "qnli"


def fails_with(capsys, message: str, function, *args) -> None:
    """`function(*args)` stops the script with one line `reproduce_paper: error: ...message...`, exit code 2."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        function(*args)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("reproduce_paper: error: ") and message in err, err


def test_attacked_sets_from_the_authors_folder_and_from_flags(rp, data_dir, tmp_path, capsys):
    root = write_attacked(data_dir, tmp_path / "attack_datasets")
    sets = rp.attacked_sets(args_of(rp, "--attacked_dir", root), ["qnli", "ner", "squad"])
    assert sets == {"qnli": {"CharAttack": root / "CharAttack_QNLI/dev.tsv"},
                    "ner": {"CharAttack": root / "CharAttack_NER/test.txt"},  # README.md is not a data file
                    "squad": {"CharAttack": root / "CharAttack_Squad_Q/dev-v2.0.json"}}
    extra = rp.attacked_sets(args_of(rp, "--attacked_file", f"ner:mine={root / 'CharAttack_NER/test.txt'}"), ["ner"])
    assert extra == {"ner": {"mine": root / "CharAttack_NER/test.txt"}}
    for bad, message in ((["--attacked_file", "ner:x"], "expected TASK:NAME=PATH"),
                         (["--attacked_file", "pos:x=y"], "expected TASK:NAME=PATH"),
                         (["--attacked_file", f"ner:x={tmp_path / 'none.txt'}"], "none.txt not found"),
                         (["--attacked_file", f"squad:x={root / 'CharAttack_Squad_Q/dev-v2.0.json'}"], "not in --tasks"),
                         (["--attacked_dir", tmp_path / "nowhere"], "no such folder")):
        fails_with(capsys, message, rp.attacked_sets, args_of(rp, *bad), ["ner"])
    fails_with(capsys, "--tasks 'ner,pos'", rp.selected_tasks, args_of(rp, "--tasks", "ner,pos"))


def test_an_unconverted_or_swapped_checkpoint_is_refused(rp, bert_dir, charbert_dir, tmp_path, capsys):
    authors_folder = tmp_path / "charbert-bert-wiki"  # what the authors release: model_type "bert"
    authors_folder.mkdir()
    (authors_folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    for bert, charbert, message in ((bert_dir, authors_folder, "convert the authors' folder first"),
                                    (charbert_dir, charbert_dir, "is a CharBERT checkpoint"),
                                    (tmp_path / "none", charbert_dir, "no config.json")):
        fails_with(capsys, message, rp.main, ["--bert", str(bert), "--charbert", str(charbert),
                                              "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()  # nothing ran


def test_paper_table_puts_our_rows_under_the_papers(rp):
    results = {task: {"attacks": ["swap", "all"], "attacked_files": {"CharAttack": "x"},
                      "scores": {"BERT": {"clean": 90.0, "swap": 50.0, "all": 40.0, "CharAttack": 60.0},
                                 "CharBERT": {"clean": 91.0, "swap": 70.0, "all": 65.0, "CharAttack": 75.0}}}
               for task in ("qnli", "ner")}
    lines = rp.paper_table(results, ["qnli", "ner"])
    assert lines[0] == "| model | QNLI | CoNLL2003 NER |"
    assert lines[2] == "| BERT (paper) | 90.70/63.40 | 91.24/60.79 |"
    assert lines[3] == "| BERT (ours, the passed attacked sets) | 90.00/60.00 | 90.00/60.00 |"
    assert lines[4] == "| BERT (ours, our attack) | 90.00/40.00 | 90.00/40.00 |"  # 'all': a random type per word
    assert lines[5] == "| CharBERT (paper) | 91.70/80.10 | 91.81/76.14 |"
    results["ner"]["attacks"] = ["swap"]  # without 'all': the mean of the types run
    assert rp.paper_table(results, ["qnli", "ner"])[7] == "| CharBERT (ours, our attack) | 91.00/65.00 | 91.00/70.00 |"


@pytest.mark.slow
def test_end_to_end_on_tiny_models(rp, data_dir, bert_dir, charbert_dir, tmp_path, capsys):
    attacked = write_attacked(data_dir, tmp_path / "attack_datasets")
    out = tmp_path / "run"
    argv = ["--bert", bert_dir, "--charbert", charbert_dir, "--data_dir", data_dir, "--output_dir", out,
            "--attacked_dir", attacked, "--attacks", "swap,all", "--max_train_steps", "2",
            "--ner_max_seq_length", "64", "--qnli_max_seq_length", "64", "--squad_max_seq_length", "64",
            "--squad_doc_stride", "16", "--squad_max_query_length", "16", "--per_device_eval_batch_size", "16"]
    assert rp.main([str(a) for a in argv]) == 0
    table = json.loads((out / "paper_table.json").read_text())
    assert table["shrunk"] == {"max_train_steps": 2}
    for task in ("qnli", "ner", "squad"):
        scores = table["ours"][task]["scores"]
        assert set(scores) == {"BERT", "CharBERT"}
        for model in scores.values():
            assert set(model) == {"clean", "swap", "all", "CharAttack"}
            assert all(0.0 <= v <= 100.0 for v in model.values())
    # the passed file's score is the task program's own score on it
    record = json.loads((out / "attacked/ner/CharAttack/CharBERT/metrics.json").read_text())
    assert table["ours"]["ner"]["scores"]["CharBERT"]["CharAttack"] == pytest.approx(100 * record["predict"]["f1"])
    trained = json.loads((out / "finetune/qnli/CharBERT/metrics.json").read_text())
    assert trained["train"]["global_step"] == 2 and trained["args"]["learning_rate"] == 3e-5
    assert trained["args"]["per_device_train_batch_size"] == 16
    md = (out / "paper_table.md").read_text()
    assert "| CharBERT (paper) | 91.70/80.10 | 91.81/76.14 | 78.60/56.30 |" in md and "Shrunk run" in md
    # re-running resumes: every stage is skipped and the table is the same
    capsys.readouterr()
    assert rp.main([str(a) for a in argv]) == 0
    printed = capsys.readouterr().out
    assert "finetune_ner_BERT: done before, skipped" in printed and ": finished in" not in printed
    assert json.loads((out / "paper_table.json").read_text())["ours"] == table["ours"]
