"""Readers of charbert.tasks on the shared data and on malformed inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from charbert.tasks.errors import TaskDataError
from charbert.tasks.glue import GLUE_TASKS, get_glue_task, read_glue
from charbert.tasks.ner import Sentence, check_labels, label_list, read_conll, to_iob2, write_conll
from charbert.tasks.pos import read_conllu, read_pos, read_token_tag
from charbert.tasks.squad import read_squad

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"../shared/data not found: {DATA} (real task data lives beside the repo)")
    return DATA


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# ---------------------------------------------------------------------------
# Shared data: exact counts from ../shared/data/README.md
# ---------------------------------------------------------------------------


@pytest.mark.data
@pytest.mark.parametrize(
    "task, folder, n_train, n_dev",
    [
        ("cola", "CoLA", 8551, 1043),
        ("sst-2", "SST-2", 67349, 872),
        ("mrpc", "MRPC", 3668, 408),
        ("rte", "RTE", 2490, 277),
    ],
)
@pytest.mark.slow  # reads a whole real data set
def test_glue_counts(data_dir, task, folder, n_train, n_dev):
    spec = get_glue_task(task)
    for split, n in (("train", n_train), ("dev", n_dev)):
        examples = read_glue(task, data_dir / "glue" / folder / f"{split}.tsv")
        assert len(examples) == n
        assert all(ex.label in spec.labels for ex in examples)
        assert all(ex.text_a for ex in examples)
        assert all((ex.text_b is not None) == spec.is_pair for ex in examples)
        assert len({ex.guid for ex in examples}) == n


@pytest.mark.data
def test_glue_rte_concatenated_train(data_dir):
    # train.tsv = train + val; both halves must be read, each with 4 fields.
    examples = read_glue("rte", data_dir / "glue" / "RTE" / "train.tsv")
    assert examples[0].text_a.startswith("No Weapons of Mass Destruction")
    assert {ex.label for ex in examples} == {"entailment", "not_entailment"}


@pytest.mark.data
def test_glue_quotes_are_literal(data_dir):
    # MRPC text has unbalanced quotes; csv's default quoting would merge lines.
    examples = read_glue("mrpc", data_dir / "glue" / "MRPC" / "dev.tsv")
    assert examples[0].text_b.startswith('"The foodservice pie business')
    assert examples[-1].line == 409


@pytest.mark.slow  # reads a whole real data set
@pytest.mark.data
def test_conll2003_counts(data_dir):
    train = read_conll(data_dir / "conll2003" / "train.txt")
    dev = read_conll(data_dir / "conll2003" / "dev.txt")
    assert (len(train), len(dev)) == (14041, 3250)
    labels = label_list(train)
    assert labels == ["O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER"]
    check_labels(dev, labels, data_dir / "conll2003" / "dev.txt")
    assert train[0].tokens[:2] == ["EU", "rejects"] and train[0].tags[0] == "B-ORG"
    # The files are IOB2 already: conversion must not change any tag.
    raw = read_conll(data_dir / "conll2003" / "dev.txt", convert_to_iob2=False)
    assert [s.tags for s in raw] == [s.tags for s in dev]
    assert all(len(s.tokens) == len(s.tags) == len(s.token_lines) for s in dev)


@pytest.mark.data
@pytest.mark.parametrize("name, n_train, n_dev", [("v1.1", 8123, 1302), ("v2.0", 3708, 1105)])
def test_squad_counts(data_dir, name, n_train, n_dev):
    train = read_squad(data_dir / "squad" / f"{name}-train.json")
    dev = read_squad(data_dir / "squad" / f"{name}-dev.json")
    assert (len(train), len(dev)) == (n_train, n_dev)
    for ex in dev:
        for a in ex.answers:
            assert ex.context[a["answer_start"]:a["answer_start"] + len(a["text"])] == a["text"]
    n_impossible = sum(ex.is_impossible for ex in dev)
    assert (n_impossible > 0) == (name == "v2.0")
    assert all(not ex.answers for ex in dev if ex.is_impossible)


@pytest.mark.slow  # reads a whole real data set
@pytest.mark.data
def test_ud_ewt_counts(data_dir):
    folder = data_dir / "pos" / "ud_en_ewt"
    train = read_pos(folder / "en_ewt-ud-train.conllu")
    dev = read_conllu(folder / "en_ewt-ud-dev.conllu")
    assert (len(train), len(dev)) == (12544, 2001)
    assert len(label_list(train)) == 17  # the 17 UPOS tags
    assert dev[0].tokens == ["From", "the", "AP", "comes", "this", "story", ":"]
    assert dev[0].tags == ["ADP", "DET", "PROPN", "VERB", "DET", "NOUN", "PUNCT"]
    xpos = read_conllu(folder / "en_ewt-ud-dev.conllu", tag_column="xpos")
    assert xpos[0].tags == ["IN", "DT", "NNP", "VBZ", "DT", "NN", ":"]
    check_labels(dev, label_list(train), folder / "en_ewt-ud-dev.conllu")


@pytest.mark.data
def test_ptb_sample_counts(data_dir):
    folder = data_dir / "pos" / "ptb_wsj_sample"
    train = read_pos(folder / "train.txt")
    dev = read_token_tag(folder / "dev.txt")
    assert (len(train), len(dev)) == (3401, 276)
    assert dev[0].tokens[:2] == ["Hadson", "Corp."] and dev[0].tags[:2] == ["NNP", "NNP"]


# ---------------------------------------------------------------------------
# GLUE: malformed and special inputs
# ---------------------------------------------------------------------------


def test_glue_task_table():
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}
    assert get_glue_task("SST-2") is GLUE_TASKS["sst2"]
    assert get_glue_task("sts-b").is_regression and GLUE_TASKS["stsb"].labels is None
    assert GLUE_TASKS["mnli"].labels == ("contradiction", "entailment", "neutral")
    assert GLUE_TASKS["mnli"].dev_files == ("dev_matched.tsv", "dev_mismatched.tsv")
    assert GLUE_TASKS["rte"].label2id == {"entailment": 0, "not_entailment": 1}
    with pytest.raises(ValueError, match="unknown GLUE task"):
        get_glue_task("squad")


def test_glue_bad_column_count_names_file_and_line(tmp_path):
    p = write(tmp_path, "train.tsv", "sentence\tlabel\ngood movie\t1\nbad\tmovie\t0\n")
    with pytest.raises(TaskDataError, match=r"train\.tsv:3: expected 2 tab-separated columns"):
        read_glue("sst2", p)
    p = write(tmp_path, "cola.tsv", "gj04\t1\t\tFine.\ngj04\t1\tOops.\n")
    with pytest.raises(TaskDataError, match=r"cola\.tsv:2: expected 4"):
        read_glue("cola", p)


def test_glue_unknown_label(tmp_path):
    p = write(tmp_path, "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tc\td\tneutral\n")
    with pytest.raises(TaskDataError, match=r"dev\.tsv:3: label 'neutral' is not a rte label"):
        read_glue("rte", p)
    p = write(tmp_path, "sts.tsv", "sentence1\tsentence2\tscore\na\tb\t4.5\nc\td\thigh\n")
    with pytest.raises(TaskDataError, match=r"sts\.tsv:3: .*not a number"):
        read_glue("stsb", p)


def test_glue_missing_header_column(tmp_path):
    p = write(tmp_path, "x.tsv", "text\tlabel\nok\t1\n")
    with pytest.raises(TaskDataError, match=r"x\.tsv:1: header lacks column\(s\) \['sentence'\]"):
        read_glue("sst2", p)


def test_glue_repeated_header_and_quotes(tmp_path):
    header = "index\tsentence1\tsentence2\tlabel\n"
    text = header + '0\tHe said "hi.\tA "quote\tentailment\n' + header + "5\tx\ty\tnot_entailment\n\n"
    examples = read_glue("rte", write(tmp_path, "train.tsv", text))
    assert [(e.text_a, e.text_b, e.label, e.line) for e in examples] == [
        ('He said "hi.', 'A "quote', "entailment", 2),
        ("x", "y", "not_entailment", 4),
    ]


def test_glue_stsb_and_mnli_by_header(tmp_path):
    sts = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n" \
          "0\tmain\tf\t2012\t1\tnone\tnone\tA plane.\tAn air plane.\t5.000\n"
    [ex] = read_glue("sts-b", write(tmp_path, "sts.tsv", sts))
    assert (ex.text_a, ex.text_b, ex.label) == ("A plane.", "An air plane.", 5.0)
    cols = ["index", "promptID", "pairID", "genre", "s1_bp", "s2_bp", "s1_p", "s2_p",
            "sentence1", "sentence2", "label1", "gold_label"]
    row = ["0", "1", "2", "g", "", "", "", "", "P.", "H.", "neutral", "neutral"]
    [ex] = read_glue("mnli", write(tmp_path, "mnli.tsv", "\t".join(cols) + "\n" + "\t".join(row) + "\n"))
    assert (ex.text_a, ex.text_b, ex.label) == ("P.", "H.", "neutral")


def test_glue_unlabelled_test_files(tmp_path):
    # Official test files: CoLA has a header here (unlike train/dev), no label column anywhere.
    cola = read_glue("cola", write(tmp_path, "cola_test.tsv", "index\tsentence\n0\tBill left.\n"), labelled=False)
    assert [(e.text_a, e.label) for e in cola] == [("Bill left.", None)]
    rte = read_glue("rte", write(tmp_path, "rte_test.tsv", "index\tsentence1\tsentence2\n0\tA\tB\n"), labelled=False)
    assert [(e.text_a, e.text_b, e.label) for e in rte] == [("A", "B", None)]
    # A labelled headerless file read without labels keeps working.
    [ex] = read_glue("cola", write(tmp_path, "cola_dev.tsv", "gj04\t1\t\tFine.\n"), labelled=False)
    assert (ex.text_a, ex.label) == ("Fine.", None)
    with pytest.raises(TaskDataError, match="header lacks"):
        read_glue("rte", tmp_path / "rte_test.tsv")  # labelled=True needs the label column


def test_glue_empty_and_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        read_glue("sst2", tmp_path / "nope.tsv")
    with pytest.raises(TaskDataError, match=r"empty\.tsv: file is empty"):
        read_glue("sst2", write(tmp_path, "empty.tsv", "\n  \n"))
    with pytest.raises(TaskDataError, match="no examples"):
        read_glue("sst2", write(tmp_path, "header.tsv", "sentence\tlabel\n"))


def test_task_data_error_is_value_error():
    assert issubclass(TaskDataError, ValueError)


# ---------------------------------------------------------------------------
# SQuAD
# ---------------------------------------------------------------------------


def squad_file(tmp_path: Path, qas, context="The cat sat on the mat.", version="1.1") -> Path:
    data = {"version": version, "data": [{"title": "T", "paragraphs": [{"context": context, "qas": qas}]}]}
    p = tmp_path / "squad.json"
    p.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return p


def test_squad_reads_v2(tmp_path):
    qas = [
        {"id": "a", "question": "Who sat?", "answers": [{"text": "The cat", "answer_start": 0}]},
        {"id": "b", "question": "Who flew?", "answers": [], "is_impossible": True,
         "plausible_answers": [{"text": "mat", "answer_start": 19}]},
    ]
    a, b = read_squad(squad_file(tmp_path, qas, version="v2.0"))
    assert (a.id, a.title, a.answers, a.is_impossible) == ("a", "T", [{"text": "The cat", "answer_start": 0}], False)
    assert b.is_impossible and b.answers == [] and b.plausible_answers[0]["text"] == "mat"


def test_squad_bad_offset_names_the_id(tmp_path):
    qas = [{"id": "q-42", "question": "Where?", "answers": [{"text": "mat", "answer_start": 18}]}]
    with pytest.raises(TaskDataError, match=r"squad\.json: question id 'q-42': answers\[0\] answer_start=18"):
        read_squad(squad_file(tmp_path, qas))


def test_squad_blank_question_and_inconsistent_flags(tmp_path):
    qas = [{"id": "q7", "question": "  \t", "answers": [{"text": "cat", "answer_start": 4}]}]
    with pytest.raises(TaskDataError, match="'q7': question is empty or whitespace-only"):
        read_squad(squad_file(tmp_path, qas))
    qas = [{"id": "q8", "question": "?", "answers": [{"text": "cat", "answer_start": 4}], "is_impossible": True}]
    with pytest.raises(TaskDataError, match="'q8': is_impossible is true"):
        read_squad(squad_file(tmp_path, qas))
    qas = [{"id": "q9", "question": "?", "answers": []}]
    with pytest.raises(TaskDataError, match="'q9': no answers"):
        read_squad(squad_file(tmp_path, qas))
    assert read_squad(squad_file(tmp_path, qas), labelled=False)[0].answers == []
    qas = [{"id": "d", "question": "?", "answers": [{"text": "cat", "answer_start": 4}]}] * 2
    with pytest.raises(TaskDataError, match="'d': duplicate"):
        read_squad(squad_file(tmp_path, qas))


def test_squad_bad_json_empty_missing(tmp_path):
    with pytest.raises(TaskDataError, match=r"bad\.json:3: invalid JSON"):
        read_squad(write(tmp_path, "bad.json", '{"data": [\n\n  {,]}\n'))
    with pytest.raises(TaskDataError, match="is empty"):
        read_squad(write(tmp_path, "empty.json", ""))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_squad(tmp_path / "missing.json")
    with pytest.raises(TaskDataError, match="'data' list"):
        read_squad(write(tmp_path, "list.json", "[]"))


# ---------------------------------------------------------------------------
# CoNLL NER
# ---------------------------------------------------------------------------

CONLL = """-DOCSTART- -X- -X- O

EU NNP I-NP I-ORG
rejects VBZ I-VP O
German JJ I-NP I-MISC
call NN I-NP O


Peter NNP I-NP I-PER
Blackburn NNP I-NP I-PER
Smith NNP I-NP B-PER
"""


def test_conll_reads_and_converts_iob1(tmp_path):
    sents = read_conll(write(tmp_path, "iob1.txt", CONLL))
    assert len(sents) == 2  # DOCSTART and the double blank line make no sentence
    assert sents[0].tokens == ["EU", "rejects", "German", "call"]
    assert sents[0].tags == ["B-ORG", "O", "B-MISC", "O"]
    assert sents[0].line == 3 and sents[1].line == 9
    assert sents[1].tags == ["B-PER", "I-PER", "B-PER"]
    assert sents[1].token_lines == [9, 10, 11]
    raw = read_conll(tmp_path / "iob1.txt", convert_to_iob2=False)
    assert raw[0].tags[0] == "I-ORG"
    with pytest.raises(TaskDataError, match=r"iob1\.txt:3: tag 'NNP' is not an IOB tag"):
        read_conll(tmp_path / "iob1.txt", tag_column=1)  # the chosen column must hold IOB tags


def test_to_iob2():
    assert to_iob2(["I-PER", "I-PER", "O", "I-LOC", "I-ORG", "B-ORG", "I-ORG"]) == [
        "B-PER", "I-PER", "O", "B-LOC", "B-ORG", "B-ORG", "I-ORG"]
    assert to_iob2(["B-PER", "I-PER", "O"]) == ["B-PER", "I-PER", "O"]


def test_conll_bad_column_count_names_file_and_line(tmp_path):
    p = write(tmp_path, "bad.txt", "EU NNP I-NP B-ORG\nrejects VBZ O\n")
    with pytest.raises(TaskDataError, match=r"bad\.txt:2: expected 4 whitespace-separated columns"):
        read_conll(p)


def test_conll_bad_tag_unlabelled_and_empty(tmp_path):
    with pytest.raises(TaskDataError, match=r"s\.txt:1: tag 'S-PER' is not an IOB tag"):
        read_conll(write(tmp_path, "s.txt", "Bob S-PER\n"))
    sents = read_conll(write(tmp_path, "raw.txt", "Hello\nworld\n\nBye\n"), labelled=False)
    assert [(s.tokens, s.tags) for s in sents] == [(["Hello", "world"], None), (["Bye"], None)]
    with pytest.raises(TaskDataError, match="token and tag column are the same"):
        read_conll(tmp_path / "raw.txt")
    with pytest.raises(TaskDataError, match="is empty"):
        read_conll(write(tmp_path, "e.txt", "\n\n"))
    with pytest.raises(TaskDataError, match="no sentences"):
        read_conll(write(tmp_path, "d.txt", "-DOCSTART- -X- O O\n\n"))
    with pytest.raises(FileNotFoundError, match="gone.txt"):
        read_conll(tmp_path / "gone.txt")


def test_check_labels_names_file_and_line(tmp_path):
    train = read_conll(write(tmp_path, "train.txt", "EU B-ORG\nsays O\n"))
    dev_path = write(tmp_path, "dev.txt", "Bob B-PER\n\nEU B-ORG\nin O\nParis B-LOC\n")
    dev = read_conll(dev_path)
    with pytest.raises(TaskDataError, match=r"dev\.txt:1: label 'B-PER' never occurs .*\['B-LOC', 'B-PER'\]"):
        check_labels(dev, label_list(train), dev_path)
    with pytest.raises(TaskDataError, match=r"dev\.txt: label 'X'"):
        check_labels([["O", "X"]], ["O"], dev_path)
    check_labels(train, label_list(train), dev_path)  # no error


def test_write_conll_round_trip(tmp_path):
    sents = read_conll(write(tmp_path, "in.txt", "EU B-ORG\nsays O\n\n\nHi O\n"))
    out = tmp_path / "out.txt"
    write_conll(out, sents, [["B-ORG", "B-MISC"], ["O"]])
    assert out.read_text() == "EU B-ORG B-ORG\nsays O B-MISC\n\nHi O O\n"
    back = read_conll(out)  # the predictions are the last column
    assert [s.tags for s in back] == [["B-ORG", "B-MISC"], ["O"]]
    with pytest.raises(ValueError, match=r"sentence 1 \(line 5\): 1 tokens but 2"):
        write_conll(out, sents, [["O", "O"], ["O", "O"]])


def test_label_list():
    assert label_list([["B-PER", "O"], ["I-PER", "B-LOC"]]) == ["O", "B-LOC", "B-PER", "I-PER"]
    assert label_list([Sentence(["a"], ["NN"], 1)]) == ["NN"]


# ---------------------------------------------------------------------------
# POS
# ---------------------------------------------------------------------------

CONLLU = (
    "# sent_id = 1\n"
    "# text = I can't.\n"
    "1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t_\t_\n"
    "2-3\tcan't\t_\t_\t_\t_\t_\t_\t_\t_\n"
    "2\tca\tcan\tAUX\tMD\t_\t0\troot\t_\t_\n"
    "3\tn't\tnot\tPART\tRB\t_\t2\tadvmod\t_\t_\n"
    "3.1\tgo\tgo\tVERB\tVB\t_\t_\t_\t2:conj\t_\n"
    "4\t.\t.\tPUNCT\t.\t_\t2\tpunct\t_\t_\n"
    "\n"
    "# sent_id = 2\n"
    "1\tNew York\tNew York\tPROPN\tNNP\t_\t0\troot\t_\t_\n"
)


def test_conllu_skips_comments_ranges_and_empty_nodes(tmp_path):
    p = write(tmp_path, "x.conllu", CONLLU)
    a, b = read_conllu(p)
    assert a.tokens == ["I", "ca", "n't", "."] and a.tags == ["PRON", "AUX", "PART", "PUNCT"]
    assert a.line == 3 and a.token_lines == [3, 5, 6, 8]
    assert b.tokens == ["New York"]  # FORM may contain a space
    assert read_pos(p, tag_column="xpos")[0].tags == ["PRP", "MD", "RB", "."]
    with pytest.raises(ValueError, match="'upos' or 'xpos'"):
        read_conllu(p, tag_column="lemma")


def test_conllu_bad_column_count(tmp_path):
    p = write(tmp_path, "bad.conllu", "1\tI\tI\tPRON\tPRP\t_\t0\troot\t_\t_\n2\tgo\tgo\tVERB\n")
    with pytest.raises(TaskDataError, match=r"bad\.conllu:2: expected 10 tab-separated CoNLL-U columns, found 4"):
        read_conllu(p)
    p = write(tmp_path, "notag.conllu", "1\tI\tI\t_\tPRP\t_\t0\troot\t_\t_\n")
    with pytest.raises(TaskDataError, match=r"notag\.conllu:1: token 'I' has no UPOS"):
        read_conllu(p)


def test_token_tag_reader(tmp_path):
    p = write(tmp_path, "wsj.txt", "Pierre\tNNP\nVinken\tNNP\n\n\nIt\tPRP\n")
    sents = read_pos(p)  # not .conllu -> token<TAB>tag
    assert [(s.tokens, s.tags, s.line) for s in sents] == [
        (["Pierre", "Vinken"], ["NNP", "NNP"], 1), (["It"], ["PRP"], 5)]
    with pytest.raises(TaskDataError, match=r"bad\.txt:2: expected 'token<TAB>tag'"):
        read_token_tag(write(tmp_path, "bad.txt", "a\tDT\nb NN\n"))
    with pytest.raises(TaskDataError, match="is empty"):
        read_token_tag(write(tmp_path, "empty.txt", ""))
