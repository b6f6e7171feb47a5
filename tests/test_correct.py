"""The typo correctors: formats kept byte for byte, the dictionary baseline by hand, and the NLM head of a
tiny CharBERT pretrained on a toy corpus restoring hand-made typos."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from conftest import run_cli

from charbert.pretraining.vocab import WordVocab
from charbert.robustness.attacks import rewrite_column_file, rewrite_glue_file, rewrite_squad_file, rewrite_text_file
from charbert.robustness.correct import DictionaryCorrector, NlmCorrector, correction_scores, match_case
from charbert.tasks.ner import read_conll
from charbert.tasks.squad import read_squad

FIXES = {"presidnet": "president", "budegt": "budget", "Germny": "Germany"}


def fix(sentences):  # a hand-made corrector: a Rewrite that knows three typos
    return [[FIXES.get(w, w) for w in words] for words in sentences]


def test_text_and_column_files_keep_everything_but_the_corrected_words(tmp_path):
    text = "\ufeffThe presidnet, (budegt) ok!\r\n  spaced   out\t words \n\nGermny's end"
    (tmp_path / "in.txt").write_bytes(text.encode("utf-8"))
    stats = rewrite_text_file(tmp_path / "in.txt", tmp_path / "out.txt", fix)
    expected = text.replace("presidnet", "president").replace("budegt", "budget")
    assert (tmp_path / "out.txt").read_bytes() == expected.encode("utf-8")  # "Germny's": core "Germny's", unknown
    assert stats["changed"] == 2

    conll = "-DOCSTART- -X- -X- O\n\nThe DT B-NP O\npresidnet NN I-NP O\nS & P NNP I-NP B-ORG\n\nGermny NNP B-NP B-LOC\n"
    (tmp_path / "in.conll").write_text(conll, encoding="utf-8")
    stats = rewrite_column_file(tmp_path / "in.conll", tmp_path / "out.conll", fix, task="ner")
    assert (tmp_path / "out.conll").read_text(encoding="utf-8") == \
        conll.replace("presidnet", "president").replace("Germny", "Germany")
    assert stats == {"sentences": 2, "tokens": 4, "changed": 2}
    assert [s.tags for s in read_conll(tmp_path / "out.conll")] == [s.tags for s in read_conll(tmp_path / "in.conll")]


def test_glue_and_squad_files_keep_labels_and_answer_offsets(tmp_path):
    tsv = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tThe presidnet spoke.\tA budegt, yes\n"
    (tmp_path / "in.tsv").write_text(tsv, encoding="utf-8")
    rewrite_glue_file("mrpc", tmp_path / "in.tsv", tmp_path / "out.tsv", fix)
    assert (tmp_path / "out.tsv").read_text(encoding="utf-8") == \
        tsv.replace("presidnet", "president").replace("budegt", "budget")

    context = "Germny passed the budegt in 2019 after the presidnet agreed."
    start = context.index("the presidnet")
    squad = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": [
        {"id": "q1", "question": "Who agreed to the budegt?", "answers": [{"text": "the presidnet", "answer_start": start}]},
        {"id": "q2", "question": "When?", "answers": [{"text": "2019", "answer_start": context.index("2019")}]}]}]}]}
    (tmp_path / "in.json").write_text(json.dumps(squad), encoding="utf-8")
    stats = rewrite_squad_file(tmp_path / "in.json", tmp_path / "out.json", fix, rewrite_context=True)
    examples = read_squad(tmp_path / "out.json")  # checks context[start:start + len(text)] == text
    assert examples[0].context == "Germany passed the budget in 2019 after the president agreed."
    assert examples[0].question == "Who agreed to the budget?"
    assert examples[0].answers == [{"text": "the president", "answer_start": examples[0].context.index("the president")}]
    assert examples[1].answers[0]["text"] == "2019" and stats["answers_changed"] == 1


def test_dictionary_baseline_and_case():
    vocab = WordVocab(["the", "germany", "german", "president", "budget", "germans"])
    c = DictionaryCorrector(vocab)
    assert c.correct_sentences([["Germny", "GERMAN", "budgte", "prsdnt", "the", "42", "Zebra"]]) == \
        [["Germany", "GERMAN", "budget", "prsdnt", "the", "42", "Zebra"]]
    assert c.correct_word("germanx") == "germany"  # german, germans, germany: one edit each; the most frequent
    assert match_case("europe", "EUROPE") == "EUROPE" and match_case("paris", "Pari") == "Paris"
    scores = correction_scores([["a", "bb", "cc"]], [["a", "xb", "cc"]], [["a", "bb", "cz"]])
    assert scores == {"attacked_words": 1, "restored": 1.0, "clean_words": 2, "wrongly_changed": 0.5,
                      "words_correct": 2 / 3}  # "a" and "bb" equal the clean text, "cz" does not


def test_nlm_rewrite_rule_on_hand_made_predictions(bert_dir):
    """rewrite(): threshold, unknown words only by default (the head learnt noised words only), case kept."""
    from charbert import CharBertForPreTraining, CharBertTokenizer

    vocab = WordVocab(["the", "germany", "budget"])
    model = CharBertForPreTraining.from_pretrained(bert_dir, word_vocab_size=len(vocab))
    corrector = NlmCorrector(model, CharBertTokenizer.from_pretrained(bert_dir), vocab, threshold=0.5)
    sentence = [["the", "Germny", "budgte", "42"]]
    g, b = vocab.id("germany"), vocab.id("budget")
    predictions = [np.array([[g, 0.9], [g, 0.9], [b, 0.4], [g, 0.99]])]  # (best id, probability) per word
    assert corrector.rewrite(sentence, predictions) == [["the", "Germany", "budgte", "42"]]
    assert corrector.rewrite(sentence, predictions, threshold=0.3) == [["the", "Germany", "budget", "42"]]
    assert corrector.rewrite(sentence, predictions, only_unknown=False) == [["germany", "Germany", "budgte", "42"]]


# ---- the NLM head of a tiny pretrained CharBERT --------------------------------------------------

WORDS = {"subj": ["the president", "the government", "the minister", "the company", "the committee"],
         "verb": ["announced", "rejected", "approved", "discussed", "criticised"],
         "obj": ["the proposal", "the agreement", "the budget", "the decision", "the report"],
         "when": ["yesterday", "today", "recently", "quickly", "finally"]}


@pytest.fixture(scope="module")
def toy_pretrained(tmp_path_factory):
    """A tiny CharBERT pretrained (MLM + NLM, half the words noised) for a few hundred steps on toy sentences."""
    from charbert.tiny import make_tiny_checkpoint

    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS[k]) for k in ("subj", "verb", "obj", "when")) + " ." for _ in range(2000)]
    root = tmp_path_factory.mktemp("toy_nlm")
    bert = make_tiny_checkpoint(root / "bert", "bert", texts, vocab_size=200, hidden_size=32, max_len=64)
    (root / "train.txt").write_text("\n".join(texts), encoding="utf-8")
    (root / "vocab").mkdir()
    WordVocab.build(texts).save(root / "vocab")
    from pretrain.__main__ import main

    assert main(["--model_name_or_path", str(bert), "--train_file", str(root / "train.txt"), "--word_vocab",
                 str(root / "vocab"), "--max_seq_length", "32", "--per_device_train_batch_size", "16",
                 "--learning_rate", "3e-3", "--max_train_steps", "300", "--noise_probability", "0.5",
                 "--logging_steps", "100", "--output_dir", str(root / "pre"), "--seed", "1"]) == 0
    return root / "pre"


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_nlm_head_restores_hand_made_typos(toy_pretrained, tmp_path, capsys):
    corrector = NlmCorrector.from_pretrained(toy_pretrained, threshold=0.5)
    clean = [["The", "president", "approved", "the", "budget", "yesterday", "."],
             ["the", "government", "rejected", "the", "report", "today", "."]]
    typos = [["The", "presidnet", "approved", "the", "budegt", "yesterday", "."], clean[1]]
    assert corrector.correct_sentences(typos) == clean  # typos restored, clean words and "." untouched

    (tmp_path / "in.txt").write_text("The presidnet approved the budegt yesterday .\nthe government rejected the "
                                     "report today .\n", encoding="utf-8")
    assert run_cli("correct", "--model_name_or_path", toy_pretrained, "--input", tmp_path / "in.txt",
                   "--output", tmp_path / "out.txt") == 0
    assert (tmp_path / "out.txt").read_text(encoding="utf-8") == \
        "The president approved the budget yesterday .\nthe government rejected the report today .\n"
    assert "changed 2 words" in capsys.readouterr().out
    assert run_cli("correct", "--model_name_or_path", tmp_path, "--input", tmp_path / "in.txt",
                   "--output", tmp_path / "x.txt") == 2
    assert "config.json" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_robustness_report_gains_corrected_rows(toy_pretrained, task_files, bert_dir, tmp_path):
    model = tmp_path / "ner"
    assert run_cli("ner", "--model_name_or_path", bert_dir, "--train_file", task_files["ner_train"], "--output_dir",
                   model, "--max_train_steps", "4", "--per_device_train_batch_size", "8", "--seed", "3") == 0
    out = tmp_path / "report"
    assert run_cli("robustness", "--task", "ner", "--model_name_or_path", model, "--test_file", task_files["ner_dev"],
                   "--attacks", "swap", "--output_dir", out, "--correct_with", toy_pretrained,
                   "--per_device_eval_batch_size", "4") == 0
    report = json.loads((out / "report.json").read_text())
    assert report["corrected"] == ["clean corrected", "swap corrected"]
    (entry,) = report["models"]
    assert set(entry["scores"]) == {"clean", "swap", "clean corrected", "swap corrected"}
    corrected = read_conll(out / "corrected" / "swap.corrected.txt")
    assert [s.tags for s in corrected] == [s.tags for s in read_conll(task_files["ner_dev"])]
    assert "| swap corrected |" in (out / "report.md").read_text()


def test_per_word_probabilities_are_the_mean_over_each_words_subwords():
    rng = np.random.default_rng(0)
    probs = rng.random((6, 50)).astype(np.float32)  # 6 tokens, 50 vocabulary entries
    token_word = [None, 0, 0, 1, None, 3]  # word 2 has no subword; word 0 has two
    out = NlmCorrector._per_word(probs, token_word, 4)
    mean0 = probs[1:3].mean(0)
    np.testing.assert_allclose(out[0], [mean0.argmax(), mean0.max()], rtol=1e-6)
    np.testing.assert_allclose(out[1], [probs[3].argmax(), probs[3].max()], rtol=1e-6)
    np.testing.assert_allclose(out[2], [-1, 0])
    np.testing.assert_allclose(out[3], [probs[5].argmax(), probs[5].max()], rtol=1e-6)
    assert (NlmCorrector._per_word(probs[:2], token_word, 4)[1:] == [[-1, 0]] * 3).all()  # tokens past the row
