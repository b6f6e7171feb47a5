"""Character-attack sets: word rules, determinism, file formats, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from charbert.noise import ENGLISH_STOPWORDS, PRUTHI_RULES, QWERTY_NEIGHBOURS, is_eligible
from charbert.robustness.attacks import (
    attack_column_file,
    attack_glue_file,
    attack_squad_file,
    attack_text,
    attack_words,
)
from charbert.tasks.errors import TaskDataError
from charbert.tasks.glue import read_glue
from charbert.tasks.ner import read_conll
from charbert.tasks.pos import read_pos
from charbert.tasks.squad import read_squad
from finetune.attack import main

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CONLL_DEV = DATA / "conll2003" / "dev.txt"
MRPC_DEV = DATA / "glue" / "MRPC" / "dev.tsv"
SQUAD_DEV = DATA / "squad" / "v1.1-dev.json"
UD_DEV = DATA / "pos" / "ud_en_ewt" / "en_ewt-ud-dev.conllu"


def _need(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"real data file {path} not present (shared data not downloaded)")


WORDS = ["the", "cat", "house", "Keyboard", "elephant", "through", "abc", "question", "running", "of"]


# --------------------------------------------------------------------------- word rules


@pytest.mark.parametrize("attack", ["drop", "add", "swap", "keyboard", "all"])
def test_word_rules(attack):
    rng = np.random.default_rng(0)
    for _ in range(30):
        new, changed = attack_words(WORDS, attack, rng)
        assert len(new) == len(WORDS)
        for i, (old, w) in enumerate(zip(WORDS, new)):
            if not is_eligible(old, PRUTHI_RULES):
                assert w == old and i not in changed  # short words and stop-words untouched
                continue
            assert i in changed and w != old
            assert w[0] == old[0] and w[-1] == old[-1]
            if attack == "drop":
                assert len(w) == len(old) - 1
            elif attack == "add":
                assert len(w) == len(old) + 1
            elif attack in ("swap", "keyboard"):
                assert len(w) == len(old)
                diff = [k for k in range(len(old)) if old[k] != w[k]]
                if attack == "swap":
                    assert len(diff) == 2 and diff[1] == diff[0] + 1
                    assert (w[diff[0]], w[diff[1]]) == (old[diff[1]], old[diff[0]])
                else:
                    assert len(diff) == 1
                    k = diff[0]
                    assert w[k].lower() in QWERTY_NEIGHBOURS[old[k].lower()]
    assert {"the", "through", "of"} <= ENGLISH_STOPWORDS


def test_qwerty_facts():
    assert "h" in QWERTY_NEIGHBOURS["g"] and "f" in QWERTY_NEIGHBOURS["g"]
    assert "s" in QWERTY_NEIGHBOURS["a"] and "q" in QWERTY_NEIGHBOURS["a"]
    assert "p" not in QWERTY_NEIGHBOURS["a"]


def test_attack_text_keeps_spacing_and_punctuation():
    rng = np.random.default_rng(3)
    text = 'The  "house," stands (tall)  today.'
    new, n_words, n_changed = attack_text(text, "swap", rng)
    assert n_words == 5 and n_changed == 4  # house, stands, tall, today (not the stop-word)
    assert new.split(" ") and len(new) == len(text)
    assert new.startswith('The  "h') and '," s' in new and new.endswith(".")
    assert [len(p) for p in new.split(" ")] == [len(p) for p in text.split(" ")]


def test_unknown_attack():
    with pytest.raises(ValueError, match="allowed"):
        attack_words(["house"], "flip", np.random.default_rng(0))


# --------------------------------------------------------------------------- NER / POS

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
to TO B-VP O
boycott VB I-VP O
British JJ B-NP B-MISC
lamb NN I-NP O
. . O O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

-DOCSTART- -X- -X- O

BRUSSELS NNP B-NP B-LOC
1996-08-22 CD I-NP O
"""

CONLLU = """# sent_id = 1
# text = Everything remains fantastic here.
1\tEverything\teverything\tPRON\tNN\t_\t2\tnsubj\t2:nsubj\t_
2\tremains\tremain\tVERB\tVBZ\t_\t0\troot\t0:root\t_
3-4\tdon't\t_\t_\t_\t_\t_\t_\t_\t_
3\tfantastic\tfantastic\tADJ\tJJ\t_\t2\txcomp\t2:xcomp\tSpaceAfter=No
4\there\there\tADV\tRB\t_\t2\tadvmod\t2:advmod\t_

# sent_id = 2
1\tWonderful\twonderful\tADJ\tJJ\t_\t0\troot\t0:root\t_
"""


def _check_column_output(src: Path, out: Path, token_col: int, sep) -> None:
    a = src.read_text(encoding="utf-8").split("\n")
    b = out.read_text(encoding="utf-8").split("\n")
    assert len(a) == len(b)
    for la, lb in zip(a, b):
        if not la.strip() or la.startswith("-DOCSTART-") or la.startswith("#"):
            assert la == lb
            continue
        fa, fb = la.split(sep), lb.split(sep)
        assert len(fa) == len(fb)
        assert [f for i, f in enumerate(fa) if i != token_col] == [f for i, f in enumerate(fb) if i != token_col]
        assert fb[token_col] and not any(ch.isspace() for ch in fb[token_col])


def test_conll_file(tmp_path):
    src = tmp_path / "dev.txt"
    src.write_text(CONLL, encoding="utf-8")
    out = tmp_path / "out.txt"
    stats = attack_column_file(src, out, "all", seed=1, task="ner")
    assert stats == {"sentences": 3, "tokens": 13, "changed": stats["changed"]}
    assert stats["changed"] >= 5
    _check_column_output(src, out, 0, " ")
    gold, new = read_conll(src), read_conll(out)
    assert [s.tags for s in gold] == [s.tags for s in new]
    assert [len(s) for s in gold] == [len(s) for s in new]


def test_conllu_and_token_tag_files(tmp_path):
    src = tmp_path / "dev.conllu"
    src.write_text(CONLLU, encoding="utf-8")
    out = tmp_path / "out.conllu"
    stats = attack_column_file(src, out, "keyboard", seed=2, task="pos")
    assert stats["sentences"] == 2 and stats["tokens"] == 5 and stats["changed"] == 4  # 'here' is a stop-word
    _check_column_output(src, out, 1, "\t")
    assert "don't" in out.read_text(encoding="utf-8")
    assert [s.tags for s in read_pos(src)] == [s.tags for s in read_pos(out)]

    tt = tmp_path / "dev.txt"
    tt.write_text("Hadson\tNNP\nCorp.\tNNP\nsaid\tVBD\n\nProfits\tNNS\nrose\tVBD\n", encoding="utf-8")
    out2 = tmp_path / "out2.txt"
    attack_column_file(tt, out2, "drop", seed=0, task="pos")
    _check_column_output(tt, out2, 0, "\t")
    assert [s.tags for s in read_pos(tt)] == [s.tags for s in read_pos(out2)]


def test_determinism(tmp_path):
    src = tmp_path / "dev.txt"
    src.write_text(CONLL * 5, encoding="utf-8")
    outs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        outs[name] = tmp_path / f"{name}.txt"
        attack_column_file(src, outs[name], "all", seed=seed)
    assert outs["a"].read_bytes() == outs["b"].read_bytes()
    assert outs["a"].read_bytes() != outs["c"].read_bytes()


def test_crlf_and_rate(tmp_path):
    src = tmp_path / "dev.txt"
    src.write_bytes(CONLL.replace("\n", "\r\n").encode())
    out = tmp_path / "out.txt"
    stats = attack_column_file(src, out, "swap", seed=0, word_rate=0.0)
    assert stats["changed"] == 0 and out.read_bytes() == src.read_bytes()
    attack_column_file(src, out, "swap", seed=0)
    assert out.read_bytes().count(b"\r\n") == src.read_bytes().count(b"\r\n")


@pytest.mark.slow  # reads a whole real data set
def test_real_conll_dev(tmp_path):
    _need(CONLL_DEV)
    out = tmp_path / "dev.all.txt"
    attack_column_file(CONLL_DEV, out, "all", seed=1, task="ner")
    _check_column_output(CONLL_DEV, out, 0, " ")
    gold, new = read_conll(CONLL_DEV), read_conll(out)
    assert [s.tags for s in gold] == [s.tags for s in new]
    assert [len(s) for s in gold] == [len(s) for s in new]
    eligible = changed = 0
    for g, n in zip(gold, new):
        for a, b in zip(g.tokens, n.tokens):
            if len(a) >= 4 and a.lower() not in ENGLISH_STOPWORDS:
                eligible += 1
                changed += a != b
            elif not is_eligible(a, PRUTHI_RULES):
                assert a == b
    assert changed / eligible > 0.3


@pytest.mark.slow  # reads a whole real data set
def test_real_conllu_dev(tmp_path):
    _need(UD_DEV)
    out = tmp_path / "dev.swap.conllu"
    attack_column_file(UD_DEV, out, "swap", seed=1, task="pos")
    _check_column_output(UD_DEV, out, 1, "\t")
    assert [s.tags for s in read_pos(UD_DEV)] == [s.tags for s in read_pos(out)]


# --------------------------------------------------------------------------- GLUE

MRPC = (
    "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    "1\t702876\t702977\tAmrozi accused his brother, whom he called \"the witness\", of deliberately "
    "distorting his evidence.\tReferring to him as only \"the witness\", Amrozi accused his brother of "
    "deliberately distorting his evidence.\n"
    "0\t2108705\t2108831\tYucaipa owned Dominick's before selling the chain to Safeway in 1998 for $2.5 "
    "billion.\tYucaipa bought Dominick's in 1995 for $693 million and sold it to Safeway for $1.8 "
    "billion in 1998.\n"
)


def _check_glue(src: Path, out: Path, text_cols) -> None:
    a = src.read_text(encoding="utf-8").split("\n")
    b = out.read_text(encoding="utf-8").split("\n")
    assert len(a) == len(b) and a[0] == b[0]
    n_changed = 0
    for la, lb in zip(a[1:], b[1:]):
        fa, fb = la.split("\t"), lb.split("\t")
        assert len(fa) == len(fb)
        for i, (x, y) in enumerate(zip(fa, fb)):
            if i in text_cols:
                assert len(x.split(" ")) == len(y.split(" "))
                n_changed += x != y
            else:
                assert x == y
    assert n_changed > 0


def test_glue_mrpc(tmp_path):
    src = tmp_path / "dev.tsv"
    src.write_text(MRPC, encoding="utf-8")
    out = tmp_path / "out.tsv"
    stats = attack_glue_file("mrpc", src, out, "all", seed=1)
    assert stats["examples"] == 2 and stats["changed"] > 5
    _check_glue(src, out, {3, 4})
    assert [e.label for e in read_glue("mrpc", src)] == [e.label for e in read_glue("mrpc", out)]
    line = out.read_text(encoding="utf-8").split("\n")[1]
    assert '"the w' in line and 's",' in line  # stop-word untouched, quotes/comma kept


def test_glue_cola_headerless(tmp_path):
    src = tmp_path / "dev.tsv"
    src.write_text("gj04\t1\t\tOur friends won't buy this analysis.\nclc95\t0\t*\tThey drank the pub.\n",
                   encoding="utf-8")
    out = tmp_path / "out.tsv"
    attack_glue_file("cola", src, out, "drop", seed=0)
    _check_glue_cols = out.read_text(encoding="utf-8").split("\n")
    assert [l.split("\t")[:3] for l in _check_glue_cols] == [l.split("\t")[:3] for l in src.read_text().split("\n")]
    assert _check_glue_cols[0].split("\t")[3] != "Our friends won't buy this analysis."


def test_glue_wrong_columns(tmp_path):
    src = tmp_path / "dev.tsv"
    src.write_text("Quality\t#1 String\n1\tHello there\n", encoding="utf-8")
    with pytest.raises(TaskDataError, match="dev.tsv"):
        attack_glue_file("mrpc", src, tmp_path / "o.tsv", "all", seed=0)


def test_real_mrpc(tmp_path):
    _need(MRPC_DEV)
    out = tmp_path / "dev.tsv"
    attack_glue_file("mrpc", MRPC_DEV, out, "keyboard", seed=1)
    _check_glue(MRPC_DEV, out, {3, 4})
    assert [e.label for e in read_glue("mrpc", MRPC_DEV)] == [e.label for e in read_glue("mrpc", out)]


# --------------------------------------------------------------------------- SQuAD

SQUAD = {
    "version": "1.1",
    "data": [
        {
            "title": "T",
            "paragraphs": [
                {
                    "context": "Architecturally, the school has a Catholic character. Atop the Main "
                    "Building's gold dome is a golden statue of the Virgin Mary.",
                    "qas": [
                        {"id": "q1", "question": "What sits on top of the Main Building?",
                         "answers": [{"text": "a golden statue of the Virgin Mary", "answer_start": 92},
                                     {"text": "golden statue", "answer_start": 94}]},
                        {"id": "q2", "question": "What character does the school have?",
                         "answers": [{"text": "Catholic", "answer_start": 34}]},
                        {"id": "q3", "question": "Which dome?",
                         "answers": [{"text": "gold do", "answer_start": 79}]},
                    ],
                }
            ],
        }
    ],
}


def _check_squad(src: Path, out: Path) -> None:
    old, new = json.loads(src.read_text(encoding="utf-8")), json.loads(out.read_text(encoding="utf-8"))
    q_changed = c_changed = 0
    for art_o, art_n in zip(old["data"], new["data"]):
        assert len(art_o["paragraphs"]) == len(art_n["paragraphs"])
        for po, pn in zip(art_o["paragraphs"], art_n["paragraphs"]):
            c_changed += po["context"] != pn["context"]
            assert [q["id"] for q in po["qas"]] == [q["id"] for q in pn["qas"]]
            for qo, qn in zip(po["qas"], pn["qas"]):
                q_changed += qo["question"] != qn["question"]
                assert len(qo["answers"]) == len(qn["answers"])
                for ao, an in zip(qo["answers"], qn["answers"]):
                    s, t = an["answer_start"], an["text"]
                    assert pn["context"][s:s + len(t)] == t
                    assert len(t.split()) == len(ao["text"].split())
                    assert t[:1] == ao["text"][:1] and t[-1:] == ao["text"][-1:]
    assert q_changed > 0 and c_changed > 0
    read_squad(out)


def test_squad_context(tmp_path):
    src = tmp_path / "dev.json"
    src.write_text(json.dumps(SQUAD), encoding="utf-8")
    for attack in ("drop", "add", "all"):
        out = tmp_path / f"{attack}.json"
        stats = attack_squad_file(src, out, attack, seed=1, attack_context=True)
        assert stats["questions"] == 3 and stats["contexts"] == 1
        _check_squad(src, out)
        new = json.loads(out.read_text(encoding="utf-8"))
        # 'gold do' ends inside 'dome': that word is protected and stays.
        assert "dome" in new["data"][0]["paragraphs"][0]["context"]


def test_squad_questions_only(tmp_path):
    src = tmp_path / "dev.json"
    src.write_text(json.dumps(SQUAD), encoding="utf-8")
    out = tmp_path / "q.json"
    attack_squad_file(src, out, "swap", seed=0)
    new = json.loads(out.read_text(encoding="utf-8"))
    para, old_para = new["data"][0]["paragraphs"][0], SQUAD["data"][0]["paragraphs"][0]
    assert para["context"] == old_para["context"]
    assert [q["answers"] for q in para["qas"]] == [q["answers"] for q in old_para["qas"]]
    assert para["qas"][0]["question"] != old_para["qas"][0]["question"]


def test_real_squad_subset(tmp_path):
    _need(SQUAD_DEV)
    data = json.loads(SQUAD_DEV.read_text(encoding="utf-8"))
    data["data"] = data["data"][:3]
    src = tmp_path / "sub.json"
    src.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "out.json"
    attack_squad_file(src, out, "all", seed=1, attack_context=True)
    _check_squad(src, out)


# --------------------------------------------------------------------------- CLI


def test_cli_ok(tmp_path, capsys):
    src = tmp_path / "dev.txt"
    src.write_text(CONLL, encoding="utf-8")
    out = tmp_path / "o.txt"
    assert main(["--task", "ner", "--input", str(src), "--attack", "swap", "--seed", "1", "--output", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "changed" in line and out.exists()


def _cli_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m finetune.attack: error: ") and err.count("\n") == 1
    return err


def test_cli_errors(tmp_path, capsys):
    src = tmp_path / "dev.txt"
    src.write_text(CONLL, encoding="utf-8")
    out = str(tmp_path / "o.txt")
    err = _cli_error(capsys, ["--task", "ner", "--input", str(src), "--attack", "flip", "--output", out])
    assert "flip" in err and "keyboard" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    err = _cli_error(capsys, ["--task", "ner", "--input", str(empty), "--attack", "all", "--output", out])
    assert "empty" in err
    js = tmp_path / "dev.json"
    js.write_text(json.dumps(SQUAD, indent=1), encoding="utf-8")
    err = _cli_error(capsys, ["--task", "ner", "--input", str(js), "--attack", "all", "--output", out])
    assert "dev.json" in err
    err = _cli_error(capsys, ["--task", "glue", "--input", str(src), "--attack", "all", "--output", out])
    assert "task_name" in err
    err = _cli_error(capsys, ["--task", "ner", "--input", str(tmp_path / "missing.txt"), "--attack", "all",
                              "--output", out])
    assert "missing.txt" in err
    _cli_error(capsys, ["--task", "ner", "--attack", "all"])
    assert not Path(out).exists()
