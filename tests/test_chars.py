"""Character vocabulary and the alignment routine (offsets -> character ids + token spans)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import corpus_lines

from charbert import CharBertTokenizer, CharVocab, hide_characters
from charbert.chars import MASK_ID, MAX_CHARS_PER_TOKEN, PAD_ID, SEP_ID, SPECIAL_ID, UNK_ID

HARD_TEXTS = [
    "C# is not C ## nor #",
    "#",
    "## ###hash tags",
    "Café naïve résumé — “quoted” façade",
    "emoji 😀👍🏽 and CJK 漢字 and combining e\u0301 marks",
    "control\x07chars\x00here and tabs\tand\u00a0nbsp",
    "x" * 500 + " long word",
    "",
    "   leading and trailing spaces   ",
    "under_score snake_case_name 3.14159 1,000,000",
]


# ---- the vocabulary ----------------------------------------------------------------------


def test_vocab_build_save_load_roundtrip(tmp_path):
    vocab = CharVocab.build(["abcabc", "aab ", "xyz\n"], max_size=8)
    # 5 specials + 3 most frequent: a (4), b (3), c (2); space is always kept -> replaces the last
    assert vocab.chars == ["a", "b", " "]
    path = vocab.save(tmp_path)
    assert path.name == "char_vocab.json" and '"chars"' in path.read_text(encoding="utf-8")
    again = CharVocab.load(tmp_path)
    assert again == vocab and len(again) == 8
    text = "ab c\tz"
    assert again.encode(text).tolist() == vocab.encode(text).tolist()


def test_vocab_unknown_and_whitespace():
    vocab = CharVocab.build(["hello world"])
    ids = vocab.encode("h\u00a0é😀\t\u3000o")
    space = vocab.char_to_id[" "]
    assert ids.tolist() == [vocab.char_to_id["h"], space, UNK_ID, UNK_ID, space, space, vocab.char_to_id["o"]]


@pytest.mark.parametrize("text", HARD_TEXTS + ["\ud800 lone surrogate"])
def test_vocab_never_crashes(text):
    vocab = CharVocab.default()
    ids = vocab.encode(text)
    assert ids.shape == (len(text),) and ids.dtype == np.int64
    assert ids.min(initial=5) >= 0 and ids.max(initial=0) < len(vocab)


def test_vocab_load_rejects_bad_files(tmp_path):
    (tmp_path / "a.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not a readable character vocabulary"):
        CharVocab.load(tmp_path / "a.json")
    (tmp_path / "b.json").write_text('{"chars": ["a"]}', encoding="utf-8")
    with pytest.raises(ValueError, match="not a charbert character vocabulary"):
        CharVocab.load(tmp_path / "b.json")
    with pytest.raises(FileNotFoundError):
        CharVocab.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="twice"):
        CharVocab(["a", "a"])


# ---- alignment ---------------------------------------------------------------------------


def check_alignment(tok: CharBertTokenizer, texts, pairs=None, **kwargs):
    """For every non-special token, the characters between its start and end are exactly the
    characters its offsets cover (a token longer than MAX_CHARS_PER_TOKEN: its first and last
    characters); special tokens point at the placeholder. Returns #tokens checked."""
    enc = tok(texts, pairs, return_offsets_mapping=True, **kwargs)
    checked = 0
    sample_of_row = enc.get("overflow_to_sample_mapping")
    for row in range(len(enc["input_ids"])):
        sample = sample_of_row[row] if sample_of_row is not None else row
        chars = np.asarray(enc["char_input_ids"][row])
        assert chars[0] == SPECIAL_ID
        segments = (texts[sample],) if pairs is None else (texts[sample], pairs[sample])
        for t, (seg, (s, e)) in enumerate(zip(enc.sequence_ids(row), enc["offset_mapping"][row])):
            start, end = enc["char_start_positions"][row][t], enc["char_end_positions"][row][t]
            if seg is None:
                assert start == end == 0, "special/padding tokens point at the placeholder"
                continue
            assert 1 <= start <= end < len(chars)
            if e > s:
                text = segments[seg][s:e]
                if len(text) > MAX_CHARS_PER_TOKEN:
                    text = text[: (MAX_CHARS_PER_TOKEN + 1) // 2] + text[len(text) - MAX_CHARS_PER_TOKEN // 2 :]
                expected = tok.char_vocab.encode(text)
                assert chars[start : end + 1].tolist() == expected.tolist(), (segments[seg][s:e], t)
                checked += 1
        if pairs is not None and 1 in enc.sequence_ids(row):
            assert SEP_ID in chars.tolist(), "the two segments are separated"
    return checked


def test_alignment_hand_cases(backbone_dir):
    tok = CharBertTokenizer.from_pretrained(backbone_dir)
    assert check_alignment(tok, HARD_TEXTS) > 50


def test_alignment_hash_tokens_do_not_shift_spans(bert_dir):
    """The authors' strip('##') shifted every later span after a '#' token; offsets cannot."""
    tok = CharBertTokenizer.from_pretrained(bert_dir)
    text = "C# and ## then words"
    enc = tok(text, return_offsets_mapping=True)
    ids = enc["char_input_ids"]
    pieces = [tok.char_vocab.decode(ids[s : e + 1]) for s, e in zip(enc["char_start_positions"], enc["char_end_positions"])]
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    assert pieces[0] == "[SPECIAL]" and pieces[-1] == "[SPECIAL]"
    assert "".join(pieces[1:-1]) == text.replace(" ", "")
    # every word piece, '#' tokens and '##'-continuations included, sees exactly its own characters
    for piece, token in zip(pieces[1:-1], tokens[1:-1]):
        assert piece == (token[2:] if token.startswith("##") and len(token) > 2 else token)


def test_alignment_unk_token_keeps_its_characters(bert_dir):
    tok = CharBertTokenizer.from_pretrained(bert_dir)
    text = "漢字 😀"
    enc = tok(text, return_offsets_mapping=True)
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    assert "[UNK]" in tokens
    i = tokens.index("[UNK]")
    s, e = enc["offset_mapping"][i]
    span = enc["char_input_ids"][enc["char_start_positions"][i] : enc["char_end_positions"][i] + 1]
    assert e > s and span == tok.char_vocab.encode(text[s:e]).tolist()


def test_alignment_pairs_truncation_and_windows(backbone_dir):
    tok = CharBertTokenizer.from_pretrained(backbone_dir)
    questions = ["What does C# mean?", "Who wrote it?"]
    contexts = [" ".join(HARD_TEXTS[:4]) * 3, "A fairly long context about modules, " * 10]
    assert check_alignment(tok, questions, contexts) > 20
    assert check_alignment(tok, questions, contexts, truncation="only_second", max_length=24) > 10
    n = check_alignment(
        tok, questions, contexts, truncation="only_second", max_length=32, stride=8, return_overflowing_tokens=True, padding=True
    )
    assert n > 40
    enc = tok(contexts, truncation=True, max_length=10)
    assert all(len(ids) == 10 for ids in enc["input_ids"])
    # the character sequence covers only what the kept tokens cover
    assert all(len(c) < len(t) for c, t in zip(enc["char_input_ids"], contexts))


@pytest.mark.data
def test_alignment_property_on_real_corpus(backbone_dir):
    tok = CharBertTokenizer.from_pretrained(backbone_dir)
    lines = corpus_lines(300)
    assert check_alignment(tok, lines, truncation=True, max_length=128) > 3000
    assert check_alignment(tok, lines[:100], lines[100:200], truncation=True, max_length=128) > 2000


def test_padded_batch_tensors(bert_dir):
    tok = CharBertTokenizer.from_pretrained(bert_dir)
    batch = tok(["short", "a much longer sentence here"], padding=True, return_tensors="pt")
    assert batch["char_input_ids"].shape == batch["char_attention_mask"].shape
    assert batch["char_start_positions"].shape == batch["input_ids"].shape
    lengths = batch["char_attention_mask"].sum(1)
    assert lengths.tolist() == [1 + len("short"), 1 + len("a much longer sentence here")]
    assert (batch["char_input_ids"][0, lengths[0] :] == PAD_ID).all()
    # padding tokens point at the placeholder
    assert (batch["char_start_positions"][batch["attention_mask"] == 0] == 0).all()
    single = tok("one text")
    assert isinstance(single["input_ids"][0], int) and isinstance(single["char_input_ids"][0], int)


def test_slow_tokenizer_is_rejected():
    class Slow:
        is_fast = False

    with pytest.raises(ValueError, match="fast"):
        CharBertTokenizer(Slow())


def test_tokenizer_save_load_roundtrip(bert_dir, tmp_path, tiny_texts):
    tok = CharBertTokenizer.from_pretrained(bert_dir, char_vocab=None)
    tok.char_vocab = CharVocab.build(tiny_texts, max_size=64)
    tok.save_pretrained(tmp_path)
    again = CharBertTokenizer.from_pretrained(tmp_path)
    assert again.char_vocab == tok.char_vocab
    a, b = tok(HARD_TEXTS[:3]), again(HARD_TEXTS[:3])
    assert {k: a[k] for k in a} == {k: b[k] for k in b}


# ---- hiding masked tokens' characters ----------------------------------------------------


def test_hide_characters_single_and_batch():
    chars = np.arange(10, 20)
    starts, ends = np.array([0, 1, 4, 7]), np.array([0, 3, 6, 9])
    hidden = np.array([False, True, False, True])
    out = hide_characters(chars, starts, ends, hidden)
    assert out.tolist() == [10, MASK_ID, MASK_ID, MASK_ID, 14, 15, 16, MASK_ID, MASK_ID, MASK_ID]
    assert chars.tolist() == list(range(10, 20)), "input untouched"
    batch = hide_characters(np.stack([chars, chars]), np.stack([starts, starts]), np.stack([ends, ends]), np.stack([hidden, ~hidden]))
    assert batch[0].tolist() == out.tolist()
    assert batch[1].tolist() == [MASK_ID, 11, 12, 13, MASK_ID, MASK_ID, MASK_ID, 17, 18, 19]
    assert torch.as_tensor(batch).dtype == torch.int64


# ---- the reference (authors') layout -------------------------------------------------------


def test_char_layout_is_saved_and_restored(bert_dir, tmp_path):
    tok = CharBertTokenizer.from_pretrained(bert_dir)
    assert tok.char_layout == "offsets"  # new models keep ours
    CharBertTokenizer(tok.tokenizer, tok.char_vocab, char_layout="reference").save_pretrained(tmp_path / "ref")
    assert CharBertTokenizer.from_pretrained(tmp_path / "ref").char_layout == "reference"
    assert CharBertTokenizer.from_pretrained(tmp_path / "ref", char_layout="offsets").char_layout == "offsets"
    assert CharVocab.load(tmp_path / "ref") == tok.char_vocab  # the vocabulary file still reads as one
    # a folder whose tokenizer files do not name it: the model's config.json decides
    tok.tokenizer.save_pretrained(tmp_path / "cfg")
    tok.char_vocab.save(tmp_path / "cfg")
    (tmp_path / "cfg" / "config.json").write_text('{"model_type": "charbert", "char_layout": "reference"}', encoding="utf-8")
    assert CharBertTokenizer.from_pretrained(tmp_path / "cfg").char_layout == "reference"
    with pytest.raises(ValueError, match="char_layout must be one of"):
        CharBertTokenizer(tok.tokenizer, tok.char_vocab, char_layout="authors")


def test_reference_layout_hand_case(backbone_dir):
    """Each token's characters then a 0; special tokens "0 0"; `#` kept, [UNK] spelled; 6 L once padded."""
    plain = CharBertTokenizer.from_pretrained(backbone_dir)
    tok = CharBertTokenizer(plain.tokenizer, plain.char_vocab, char_layout="reference")
    text = "C# and # then 漢字 words"
    enc = tok(text)
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    chars, starts, ends = (np.asarray(enc[k]) for k in ("char_input_ids", "char_start_positions", "char_end_positions"))
    prefix = tok.continuation_prefix
    assert (prefix == "##") == (backbone_dir.name.startswith("tiny_bert"))
    for k, (token, s, e) in enumerate(zip(tokens, starts, ends)):
        following = chars[e + 1] if e + 1 < len(chars) else PAD_ID
        assert following == PAD_ID, "every token is followed by a 0"
        if k in (0, len(tokens) - 1):
            assert s == e and chars[s] == PAD_ID, "a special token is a single 0"
        elif token == tok.unk_token:
            a, b = tok.tokenizer(text, return_offsets_mapping=True)["offset_mapping"][k]
            assert chars[s : e + 1].tolist() == tok.char_vocab.encode(text[a:b]).tolist(), "[UNK] keeps its characters"
        else:
            spelled = token[len(prefix):] if prefix and token.startswith(prefix) and len(token) > len(prefix) else token
            assert chars[s : e + 1].tolist() == tok.char_vocab.encode(spelled).tolist()
        if k:
            assert s == ends[k - 1] + 2, "no token vanishes: spans never shift"
    assert "#" in tokens or "Ġ#" in tokens  # the case the authors' strip("##") got wrong was checked above
    padded = tok([text, "short"], padding="max_length", max_length=40, return_tensors="pt")
    assert padded["char_input_ids"].shape == (2, 6 * 40)
    n_real = int(padded["attention_mask"][1].sum())  # the mask ends after the last real token's 0, padding laid out or not
    for row in (padded, tok([text, "short"], padding="max_length", max_length=40, return_tensors="pt", padded_tokens_last=True)):
        assert row["char_attention_mask"][1].sum() == row["char_end_positions"][1, n_real - 1] + 2
    cut = tok(["word " + "😀" * 80], truncation=True, padding="max_length", max_length=12, return_tensors="pt")
    assert cut["char_input_ids"].shape == (1, 72)
    if prefix:  # BERT: the emoji word is one [UNK] of 80 characters, so the row is cut at 6 L
        assert cut["char_end_positions"][0, -1] == 71 and cut["char_attention_mask"][0].sum() == 72


def test_reference_layout_hides_masked_tokens_as_a_single_zero(bert_dir):
    plain = CharBertTokenizer.from_pretrained(bert_dir)
    tok = CharBertTokenizer(plain.tokenizer, plain.char_vocab, char_layout="reference")
    enc = tok.tokenizer(["tokenization matters here"], return_offsets_mapping=True)
    n = len(enc["input_ids"][0])
    hidden = np.zeros(n, dtype=bool)
    hidden[1] = True
    chars, starts, ends = tok.align_row(enc, 0, ("tokenization matters here",), hidden=hidden)
    _, clear_starts, _ = tok.align_row(enc, 0, ("tokenization matters here",))
    assert starts[1] == ends[1] and chars[starts[1]] == PAD_ID and chars[starts[1] + 1] == PAD_ID
    assert MASK_ID not in chars.tolist()
    shift = (clear_starts[2] - clear_starts[1]) - 2  # the hidden token's characters are gone, later spans move up
    assert (starts[2:] == clear_starts[2:] - shift).all()
    offsets_chars, _, _ = plain.align_row(enc, 0, ("tokenization matters here",), hidden=hidden)
    assert MASK_ID in offsets_chars.tolist()  # ours keeps the length and writes [MASK]


def test_task_collator_pads_the_reference_layout_to_six_per_token(bert_dir):
    from charbert.tasks.features import TaskCollator

    plain = CharBertTokenizer.from_pretrained(bert_dir)
    tok = CharBertTokenizer(plain.tokenizer, plain.char_vocab, char_layout="reference")
    rows = [{k: v for k, v in tok(text).items()} for text in ("a short one", "a somewhat longer sentence than that")]
    batch = TaskCollator(tok.pad_token_id, char_layout=tok.char_layout)(rows)
    n_tokens = batch["input_ids"].shape[1]
    assert batch["char_input_ids"].shape == (2, 6 * n_tokens)
    short = len(rows[0]["input_ids"])
    assert (batch["char_start_positions"][0, short:] == 6 * n_tokens - 1).all(), "padded tokens point at the last position"
    assert batch["char_attention_mask"][0].sum() == len(rows[0]["char_input_ids"])


def test_finetuning_collator_follows_the_checkpoints_char_layout(bert_dir, tmp_path):
    """Fine-tuning data of a reference-layout checkpoint is padded the reference way (6 L), as finetune.common
    builds its collator (load_task_tokenizer + task_collator); an offsets checkpoint to its longest row."""
    import shutil

    from charbert.tasks.features import word_features
    from charbert.tasks.loading import inspect_checkpoint, load_task_tokenizer, task_collator
    from charbert.tasks.ner import Sentence

    plain = CharBertTokenizer.from_pretrained(bert_dir)
    CharBertTokenizer(plain.tokenizer, plain.char_vocab, char_layout="reference").save_pretrained(tmp_path)
    shutil.copy(bert_dir / "config.json", tmp_path / "config.json")
    sentences = [Sentence(text.split(), None, 0) for text in ("a short one", "a somewhat longer sentence than that")]
    for folder, layout in ((bert_dir, "offsets"), (tmp_path, "reference")):
        tok = load_task_tokenizer(inspect_checkpoint(folder, charbert=True))
        assert tok.char_layout == layout
        rows, _ = word_features(tok, sentences, 32)
        batch = task_collator(tok)(rows)
        n_tokens = batch["input_ids"].shape[1]
        width = 6 * n_tokens if layout == "reference" else max(len(r["char_input_ids"]) for r in rows)
        assert batch["char_input_ids"].shape == (2, width)
        assert batch["char_attention_mask"].sum(1).tolist() == [len(r["char_input_ids"]) for r in rows]


def test_long_tokens_and_gaps_keep_their_two_ends():
    from charbert.chars import align

    vocab = CharVocab.default()
    word = "a" + "x" * 98 + "z"  # one 100-character token
    text = f"hi {word}{' ' * 50}yo"
    offsets = np.array([[0, 0], [0, 2], [3, 103], [153, 155], [0, 0]])
    ids, starts, ends = align(offsets, [None, 0, 0, 0, None], [text], vocab, max_chars_per_token=6)
    assert vocab.decode(ids) == "[SPECIAL]hi axxxxz" + " " * 6 + "yo"  # long token and gap: 3 first + 3 last
    assert vocab.decode(ids[starts[2] : ends[2] + 1]) == "axxxxz"
    assert vocab.decode(ids[starts[3] : ends[3] + 1]) == "yo" and starts[0] == ends[0] == ends[4] == 0
    uncapped, _, _ = align(offsets, [None, 0, 0, 0, None], [text], vocab, max_chars_per_token=None)
    assert len(uncapped) == 1 + len(text)
    cut, cut_starts, cut_ends = align(offsets, [None, 0, 0, 0, None], [text], vocab, max_chars_per_token=6,
                                      max_chars_per_sequence=8)
    assert len(cut) == 8 and cut_starts.max() <= 7 and cut_ends.max() <= 7 and cut_ends[2] == 7


def test_tokenizer_batches_keep_the_character_limits(bert_dir):
    """The batched fast path and the capped routine agree: a 5,000-character word costs at most
    max_chars_per_token characters, and a short sentence in the same batch is untouched."""
    tok = CharBertTokenizer.from_pretrained(bert_dir)
    long_word = "a" + "b" * 4998 + "c"
    batch = tok(["a short one", f"x {long_word} y"])
    capped = batch["char_input_ids"][1]
    assert len(capped) <= 1 + 3 * tok.max_chars_per_token
    assert batch["char_input_ids"][0] == tok(["a short one"])["char_input_ids"][0]
    decoded = tok.char_vocab.decode(capped)
    assert "a" + "b" * (tok.max_chars_per_token // 2 - 1) in decoded and decoded.rstrip().endswith("c y")


# ---- the one "offsets" routine over a batch: the limits inside it --------------------------

# (texts, offsets, sequence_ids, hidden, the row by hand with max_chars_per_token=6 and max_chars_per_sequence=9)
_WORD = "a" + "x" * 98 + "z"
_LIMITED_ROWS = [
    ((f"hi {_WORD}",), [[0, 0], [0, 2], [3, 103], [0, 0]], [None, 0, 0, None], None,
     ("[SPECIAL]hi axxxx", [0, 1, 4, 0], [0, 2, 8, 0])),  # a capped token (3 + 3 kept), then cut at 9
    (("yo" + " " * 50 + "ok",), [[0, 0], [0, 2], [52, 54], [0, 0]], [None, 0, 0, None], [False, False, True, False],
     ("[SPECIAL]yo     [MASK]", [0, 1, 8, 0], [0, 2, 8, 0])),  # a capped gap; "ok" is past the cut, hidden there
    (("",), [[0, 0], [0, 0]], [None, None], None, ("[SPECIAL]", [0, 0], [0, 0])),  # an empty text
    (("ab cd", "ef"), [[0, 0], [0, 2], [3, 5], [0, 0], [0, 2], [0, 0]], [None, 0, 0, None, 1, None],
     [False, True, False, False, False, False], ("[SPECIAL][MASK][MASK] cd[SEP]ef", [0, 1, 4, 0, 7, 0], [0, 2, 5, 0, 8, 0])),
    (("abcdefghij",), [[0, 0], [0, 10], [0, 0]], [None, 0, None], None, ("[SPECIAL]abchij", [0, 1, 0], [0, 6, 0])),
]


def test_batch_routine_applies_the_limits_as_each_row_alone():
    """One call over a batch mixing a capped token, a capped gap, rows past the sequence cut, hidden tokens,
    a pair and an empty text: each row is what the hand-worked layout says, and what the row gives alone."""
    from charbert.chars import align, align_offsets_batch

    vocab = CharVocab.default()
    limits = {"max_chars_per_token": 6, "max_chars_per_sequence": 9}
    offsets = np.concatenate([np.array(r[1]) for r in _LIMITED_ROWS])
    row_of_token = np.concatenate([np.full(len(r[2]), i) for i, r in enumerate(_LIMITED_ROWS)])
    segment = np.array([-1 if s is None else s for r in _LIMITED_ROWS for s in r[2]])
    hidden = np.concatenate([r[3] or [False] * len(r[2]) for r in _LIMITED_ROWS])
    chars, row_starts, starts, ends = align_offsets_batch(offsets, row_of_token, segment, [r[0] for r in _LIMITED_ROWS], vocab,
                                                          len(_LIMITED_ROWS), hidden, **limits)
    token_bounds = np.concatenate([[0], np.cumsum([len(r[2]) for r in _LIMITED_ROWS])])
    for i, (texts, row_offsets, sequence_ids, row_hidden, (text, want_starts, want_ends)) in enumerate(_LIMITED_ROWS):
        row_chars = chars[row_starts[i]:row_starts[i + 1]]
        tokens = slice(token_bounds[i], token_bounds[i + 1])
        assert vocab.decode(row_chars) == text and len(row_chars) <= limits["max_chars_per_sequence"]
        assert starts[tokens].tolist() == want_starts and ends[tokens].tolist() == want_ends
        alone = align(np.array(row_offsets), sequence_ids, texts, vocab,
                      hidden=None if row_hidden is None else np.array(row_hidden), **limits)
        assert [a.tolist() for a in alone] == [row_chars.tolist(), want_starts, want_ends]
    # Without the limits the same batch keeps every character.
    uncapped, row_starts, _, _ = align_offsets_batch(offsets, row_of_token, segment, [r[0] for r in _LIMITED_ROWS], vocab,
                                                     len(_LIMITED_ROWS), max_chars_per_token=None)
    assert np.diff(row_starts).tolist() == [1 + len(_LIMITED_ROWS[0][0][0]), 1 + 54, 1, 1 + 5 + 1 + 2, 1 + 10]


def test_overlapping_and_out_of_order_tokens_keep_the_limits():
    """Tokens sharing characters (byte-level BPE splits one character into several tokens) and a hand-made
    sequence_ids list with segment B first: the layout is that of the tokens in segment order."""
    from charbert.chars import align

    vocab = CharVocab.default()
    text = "ab" + " " * 12 + "cdefghijk"
    offsets = np.array([[0, 0], [0, 2], [1, 2], [14, 23], [14, 15], [0, 0]])
    ids, starts, ends = align(offsets, [None, 0, 0, 0, 0, None], [text], vocab, max_chars_per_token=4)
    assert vocab.decode(ids) == "[SPECIAL]ab    cdjk"  # the gap and the long token keep 2 + 2
    assert starts.tolist() == [0, 1, 2, 7, 7, 0] and ends.tolist() == [0, 2, 2, 10, 7, 0]
    pair = ["ab", "cd"]
    in_order = align(np.array([[0, 0], [0, 2], [0, 0], [0, 2], [0, 0]]), [None, 0, None, 1, None], pair, vocab)
    swapped = align(np.array([[0, 0], [0, 2], [0, 0], [0, 2], [0, 0]]), [None, 1, None, 0, None], pair, vocab)
    assert vocab.decode(in_order[0]) == vocab.decode(swapped[0]) == "[SPECIAL]ab[SEP]cd"
    assert swapped[1].tolist() == [0, 4, 0, 1, 0] and swapped[2].tolist() == [0, 5, 0, 2, 0]


@pytest.mark.parametrize("limits", [(4, None), (6, 24), (None, 10)])
def test_tokenizer_batch_with_limits_equals_its_rows_alone(backbone_dir, limits):
    """`tok(batch)` with tight character limits gives every row what the row gives alone (pairs, empty texts,
    mask tokens, long words and gaps, overflowing windows)."""
    max_chars_per_token, max_chars_per_sequence = limits
    tok = CharBertTokenizer.from_pretrained(backbone_dir, max_chars_per_token=max_chars_per_token,
                                            max_chars_per_sequence=max_chars_per_sequence)
    texts = ["a short one", "", f"x {'b' * 40} y", "gap" + " " * 30 + "here", f"the {tok.mask_token} word", "tab\t\t\tend"]
    pairs = ["q", "an answer", "", "more  text", f"{tok.mask_token}", "z" * 25]
    for args, kwargs in (((texts,), {}), ((texts, pairs), {}),
                         (([t[:6] for t in texts], pairs), {"truncation": "only_second", "max_length": 18, "stride": 2,
                                                            "return_overflowing_tokens": True})):
        batch = tok(*args, **kwargs)
        samples = batch.get("overflow_to_sample_mapping") or range(len(texts))
        for row, sample in enumerate(samples):
            alone = tok(*(a[sample] for a in args), **kwargs)
            window = 0 if "overflow_to_sample_mapping" not in batch else row - list(samples).index(sample)
            for key in ("input_ids", "char_input_ids", "char_start_positions", "char_end_positions"):
                got = batch[key][row]
                want = alone[key][window] if "overflow_to_sample_mapping" in alone else alone[key]
                assert got == want, (key, row)
            if max_chars_per_sequence is not None:
                assert len(batch["char_input_ids"][row]) <= max_chars_per_sequence
