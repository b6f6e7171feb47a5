"""Inputs of the robustness tools: the --max_words budget, messy outside files (misspelt -DOCSTART-,
tokens with spaces, misalignment), AdvGLUE records, and length-sorted evaluation."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from charbert.noise import PRUTHI_RULES, is_eligible
from charbert.robustness.attacks import attack_column_file, attack_words
from charbert.robustness.tasks import get_attack_task
from charbert.tasks.errors import TaskDataError
from charbert.tasks.glue import get_glue_task, glue_file_has_labels, read_advglue, read_glue
from charbert.tasks.ner import read_conll, write_conll

WORDS = "the government announced yesterday that seven ministers would travel through northern regions".split()


@pytest.mark.parametrize("k", [0, 1, 2, 5, 100])
def test_max_words_attacks_exactly_min_k_eligible_and_is_seeded(k):
    eligible = sum(is_eligible(w, PRUTHI_RULES) for w in WORDS)
    assert eligible == 8
    for seed in range(5):
        new, changed = attack_words(WORDS, "drop", np.random.default_rng(seed), max_words=k)
        assert len(changed) == min(k, eligible) and all(is_eligible(WORDS[i], PRUTHI_RULES) for i in changed)
        assert attack_words(WORDS, "drop", np.random.default_rng(seed), max_words=k) == (new, changed)
    picks = {tuple(attack_words(WORDS, "drop", np.random.default_rng(s), max_words=2)[1]) for s in range(10)}
    assert len(picks) > 1  # chosen at random, not always the first eligible words
    with pytest.raises(ValueError, match="max_words"):
        attack_words(WORDS, "drop", np.random.default_rng(0), max_words=-1)


def test_max_words_per_sentence_in_a_column_file(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("\n\n".join("\n".join(f"{w} NN O O" for w in WORDS[i:] + WORDS[:i]) for i in range(4)) + "\n")
    stats = attack_column_file(src, tmp_path / "out.txt", "swap", seed=3, max_words=2, task="ner")
    assert stats["changed"] == 4 * 2
    for clean, attacked in zip(read_conll(src), read_conll(tmp_path / "out.txt")):
        assert sum(a != b for a, b in zip(clean.tokens, attacked.tokens)) == 2


CONLL = ("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n-DOCSTART- -X- -X- O\n\n"
         "Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n")


def test_misspelt_docstart_is_neither_a_sentence_nor_scored(tmp_path):
    (tmp_path / "a.txt").write_text(CONLL)
    (tmp_path / "b.txt").write_text(CONLL.replace("-DOCSTART-", "-DCOSTART-", 1).replace("-DOCSTART-", "-DOCSTRAT"))
    stats = {}
    intact, attacked = read_conll(tmp_path / "a.txt"), read_conll(tmp_path / "b.txt", stats=stats)
    assert [s.tokens for s in attacked] == [s.tokens for s in intact] == [["EU", "rejects"], ["Peter", "Blackburn"]]
    assert stats == {"repaired_lines": 0, "misspelt_docstart_lines": 2}
    # a real token that merely looks alike is kept
    (tmp_path / "c.txt").write_text("-DOCSTART- -X- -X- O\n\n-DOCSTARTED- NN B-NP B-MISC\n")
    assert read_conll(tmp_path / "c.txt")[0].tokens == ["-DOCSTARTED-"]


def test_tokens_with_spaces_are_repaired_and_counted(tmp_path):
    (tmp_path / "s.txt").write_text("S & P NNP I-NP I-ORG\nrose VBD B-VP O\n\nC $ NNP I-NP O\nint' l JJ I-NP O\n... I : O O\n")
    with pytest.raises(TaskDataError, match=r"s\.txt:2: expected 6 whitespace-separated columns"):
        read_conll(tmp_path / "s.txt")  # the first line sets the columns: a file that starts with one is ambiguous
    (tmp_path / "t.txt").write_text("Shares NNS B-NP O\n" + (tmp_path / "s.txt").read_text())
    stats = {}
    sents = read_conll(tmp_path / "t.txt", stats=stats)
    assert sents[0].tokens == ["Shares", "S & P", "rose"] and sents[0].tags == ["O", "B-ORG", "O"]
    assert sents[1].tokens == ["C $", "int' l", "... I"] and stats["repaired_lines"] == 4
    write_conll(tmp_path / "pred.txt", sents, [s.tags for s in sents])  # one column per token
    assert (tmp_path / "pred.txt").read_text().splitlines()[1] == "S_&_P B-ORG B-ORG"
    attack_column_file(tmp_path / "t.txt", tmp_path / "t.swap.txt", "swap", seed=1, task="ner")
    assert [s.tokens[1] for s in read_conll(tmp_path / "t.swap.txt")][:1] == ["S & P"]  # left as it is
    (tmp_path / "u.txt").write_text("EU B-ORG\nGerman B-MISC extra\n")  # token tag: ambiguous, strict
    with pytest.raises(TaskDataError, match=r"u\.txt:2: expected 2"):
        read_conll(tmp_path / "u.txt")


def test_an_attacked_file_whose_first_token_holds_a_space_takes_the_clean_files_columns(tmp_path):
    from finetune.ner import NerFinetune

    clean = tmp_path / "clean.txt"
    clean.write_text("S&P NNP I-NP I-ORG\nrose VBD B-VP O\n\nC$ NNP I-NP O\n")
    attacked = tmp_path / "attacked.txt"
    attacked.write_text("S & P NNP I-NP I-ORG\nrose VBD B-VP O\n\nC $ NNP I-NP O\n")
    with pytest.raises(TaskDataError, match=r"attacked\.txt:2: expected 6 whitespace-separated columns"):
        read_conll(attacked)  # alone, the file is ambiguous
    task = get_attack_task("ner")
    task_args = argparse.Namespace(tag_column=-1, test_file=str(clean))
    assert task.check_outside(argparse.Namespace(), task_args, str(clean), str(attacked)) == {"repaired_lines": 2}
    assert [s.tokens for s in task.read_sentences(task_args, str(attacked))] == [["S & P", "rose"], ["C $"]]
    # the fine-tuning program scores it the same way (finetune.robustness sets aligned_with)
    split = NerFinetune().read(argparse.Namespace(tag_column=-1, aligned_with=str(clean)), str(attacked), "predict")
    assert split.data[0].tags == ["B-ORG", "O"] and split.data[0].tokens[0] == "S & P"
    bad = tmp_path / "bad.txt"
    bad.write_text("S&P NNP I-NP I-ORG\nrose VBD O\n")
    with pytest.raises(TaskDataError, match=r"bad\.txt:2: expected 4 whitespace-separated columns \(as in the clean"):
        task.read_sentences(task_args, str(bad))


def test_outside_file_must_align_token_for_token(tmp_path):
    task = get_attack_task("ner")
    ns = argparse.Namespace(tag_column=-1)
    (tmp_path / "clean.txt").write_text(CONLL)
    (tmp_path / "ok.txt").write_text(CONLL.replace("rejects", "rjeects").replace("-DOCSTART-", "-DCOSTART-"))
    assert task.check_outside(None, ns, tmp_path / "clean.txt", tmp_path / "ok.txt") == {"misspelt_docstart_lines": 2}
    (tmp_path / "tag.txt").write_text(CONLL.replace("Blackburn NNP I-NP I-PER", "Blackburn NNP I-NP O"))
    with pytest.raises(TaskDataError, match=r"tag\.txt:9: does not align token for token"):
        task.check_outside(None, ns, tmp_path / "clean.txt", tmp_path / "tag.txt")
    (tmp_path / "short.txt").write_text(CONLL.replace("rejects VBZ B-VP O\n", ""))
    with pytest.raises(TaskDataError, match=r"short\.txt:3: does not align.*a sentence ends"):
        task.check_outside(None, ns, tmp_path / "clean.txt", tmp_path / "short.txt")


ADVGLUE = {
    "sst2": [{"idx": 0, "label": 1, "sentence": "a gerat film"}],
    "qqp": [{"idx": 3, "label": 0, "question1": "How old?", "question2": "How tall?"}],
    "mnli": [{"idx": 1, "label": 0, "premise": "P0", "hypothesis": "H0"},
             {"idx": 2, "label": 2, "premise": "P2", "hypothesis": "H2"}],
    "mnli-mm": [{"idx": 5, "label": 1, "premise": "Pm", "hypothesis": "Hm"}],
    "qnli": [{"idx": 4, "label": 1, "question": "Q?", "sentence": "S."}],
    "rte": [{"idx": 6, "label": 0, "sentence1": "A", "sentence2": "B"}],
}


def test_advglue_records_map_to_fields_and_glue_labels(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(ADVGLUE))
    expected = {("sst2", None): [("a gerat film", None, "1")], ("qqp", None): [("How old?", "How tall?", "0")],
                ("mnli", None): [("P0", "H0", "entailment"), ("P2", "H2", "contradiction")],
                ("mnli", "mnli-mm"): [("Pm", "Hm", "neutral")], ("qnli", None): [("Q?", "S.", "not_entailment")],
                ("rte", None): [("A", "B", "entailment")]}
    for (task, split), records in expected.items():
        got = read_advglue(path, task, split)
        assert [(e.text_a, e.text_b, e.label) for e in got] == records
    mnli = get_glue_task("mnli")
    assert [mnli.label2id[e.label] for e in read_glue("mnli", path)] == [1, 0]  # GLUE's order, not the file's
    assert glue_file_has_labels("sst2", path) and read_glue("sst-2", path)[0].guid == "advglue-sst2-0"
    with pytest.raises(ValueError, match="belongs to mnli"):
        read_advglue(path, "rte", "mnli-mm")
    path.write_text(json.dumps({"rte": [{"idx": 0, "label": 0, "sentence1": "A"}]}))
    with pytest.raises(TaskDataError, match=r"rte\[0\] lacks one of the fields"):
        read_glue("rte", path)
    with pytest.raises(TaskDataError, match="no AdvGLUE split 'sst2'"):
        read_glue("sst2", path)


@pytest.mark.usefixtures("one_torch_thread")
def test_length_sorted_evaluation_equals_unsorted(bert_dir, tiny_texts):
    from accelerate import Accelerator
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from charbert.tasks.features import FeatureDataset, TaskCollator, word_features
    from charbert.tasks.inference import eval_dataloader, gather_predictions
    from charbert.tasks.ner import Sentence

    words = " ".join(tiny_texts[:40]).split()
    sizes = [3, 17, 1, 40, 8, 25, 2, 11, 30, 5, 9]  # not sorted, batches of 4 mix lengths
    sentences, pos = [], 0
    for n in sizes:
        sentences.append(Sentence(words[pos:pos + n], None, 0))
        pos += n
    model = AutoModelForTokenClassification.from_pretrained(bert_dir, num_labels=3)
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    rows, _ = word_features(tokenizer, sentences, 64)
    dataset, collate, accelerator = FeatureDataset(rows), TaskCollator(tokenizer.pad_token_id), Accelerator(cpu=True)
    runs = []
    for sort in (False, True):
        loader = eval_dataloader(accelerator, dataset, collate, 4, sort_by_length=sort)
        (logits,) = gather_predictions(model, accelerator, loader, lambda out: (out.logits,))
        runs.append([row[: len(r["input_ids"])] for row, r in zip(logits, rows)])  # cut the padding
    lengths = [len(rows[i]["input_ids"]) for i in loader.eval_order]
    assert lengths == sorted(lengths, reverse=True) and loader.eval_order != sorted(loader.eval_order)
    for unsorted, sorted_ in zip(*runs):
        assert unsorted.shape == sorted_.shape
        np.testing.assert_allclose(sorted_, unsorted, atol=1e-6, rtol=0)


def test_the_authors_attacked_qnli_tsv_is_read_and_checked_against_the_clean_dev(tmp_path):
    clean = tmp_path / "dev.tsv"
    clean.write_text("index\tquestion\tsentence\tlabel\n0\tWhat is it?\tIt is a cat.\tentailment\n"
                     "1\tWho came?\tNobody.\tnot_entailment\n")
    theirs = tmp_path / "attacked.tsv"
    theirs.write_text(clean.read_text().replace("What", "Waht").replace("Nobody", "Nbody"))
    args = argparse.Namespace(task_name="qnli", max_predict_samples=None)
    task = get_attack_task("glue")
    assert [e.text_a for e in read_glue("qnli", theirs)] == ["Waht is it?", "Who came?"]
    assert task.check_outside(args, None, clean, theirs) == {}
    theirs.write_text(clean.read_text().replace("\tnot_entailment", "\tentailment"))
    with pytest.raises(TaskDataError, match=r"attacked\.tsv:3: label 'entailment'"):
        task.check_outside(args, None, clean, theirs)
