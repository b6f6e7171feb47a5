"""Word splitter, word vocabulary, corpus reading and the `python -m pretrain.vocab` command."""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from charbert.chars import CharVocab
from charbert.pretraining.corpus import ReadStats, expand_paths, iter_lines
from charbert.pretraining.vocab import (
    WORD_VOCAB_FILE,
    WordCounter,
    WordVocab,
    count_corpus,
    normalize_word,
    split_words,
    words_of,
)
from pretrain.vocab import main

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


def words(text: str) -> list[str]:
    return [text[s:e] for s, e in split_words(text)]


# ---- split_words ----------------------------------------------------------------------------


def test_split_words_punctuation_and_symbols():
    text = "Don't stop, C# rocks!"
    assert split_words(text) == [(0, 3), (3, 4), (4, 5), (6, 10), (10, 11), (12, 13), (13, 14), (15, 20), (20, 21)]
    assert words(text) == ["Don", "'", "t", "stop", ",", "C", "#", "rocks", "!"]
    assert words_of(text) == words(text)


def test_split_words_emoji_cjk_and_digits():
    assert words("I ❤ 😀😀 now") == ["I", "❤", "😀", "😀", "now"]
    # CJK ideographs are one word each (no spaces to find words by), as BERT's tokenizer splits them;
    # kana and Hangul runs stay whole.
    assert words("你好，世界。") == ["你", "好", "，", "世", "界", "。"]
    assert words("東京タワーに行く 서울에 갑니다") == ["東", "京", "タワーに", "行", "く", "서울에", "갑니다"]
    assert words("snake_case x2 3.14 --") == ["snake_case", "x2", "3", ".", "14", "-", "-"]
    assert words("") == [] and words(" \t\n\u3000\u00a0 ") == []


def test_split_words_keeps_combining_marks_in_their_word():
    # plain \w+ would cut all of these apart: Python's \w does not match combining marks
    assert words("Hindi हिन्दी ok") == ["Hindi", "हिन्दी", "ok"]
    assert words("cafe\u0301 now") == ["cafe\u0301", "now"]  # decomposed é
    assert words("I ❤\ufe0f it") == ["I", "❤\ufe0f", "it"]  # emoji + variation selector
    # on text without combining marks or CJK ideographs the split is exactly \w+|[^\w\s]
    text = "Ünïcödé, straße; naïve — Привет 😀 ©2024 «quotes» x_y"
    assert words(text) == re.findall(r"\w+|[^\w\s]", text)


@pytest.mark.parametrize(
    "text",
    ["Don't stop, C# rocks!", "  tabs\tand\nnewlines \r\n ", "a\u2028b\u0085c", "हिन्दी e\u0301 ❤\ufe0f 你好 😀"],
)
def test_split_words_spans_cover_every_non_space_once(text):
    spans = split_words(text)
    covered = [False] * len(text)
    prev_end = 0
    for s, e in spans:
        assert prev_end <= s < e  # in order, non-overlapping, non-empty
        prev_end = e
        assert not any(ch.isspace() for ch in text[s:e])
        for i in range(s, e):
            covered[i] = True
    assert all(covered[i] != text[i].isspace() for i in range(len(text)))


def test_normalize_word():
    assert normalize_word("The") == "the" and normalize_word("ÉCOLE") == "école"


# ---- WordVocab -------------------------------------------------------------------------------

SMALL_TEXT = [
    "The cat sat on the mat.",
    "A dog sat on a log!",
    "The end, the END.",
]
# counts: the 4, . 2, a 2, end 2, on 2, sat 2, ! 1, , 1, cat 1, dog 1, log 1, mat 1


def test_word_vocab_build_order_ties_and_unk():
    vocab = WordVocab.build(SMALL_TEXT)
    assert vocab.words == ("the", ".", "a", "end", "on", "sat", "!", ",", "cat", "dog", "log", "mat")
    assert len(vocab) == 13 and vocab.word(0) == "[UNK]" and vocab.id("[UNK]") == 0
    assert vocab.id("The") == vocab.id("THE") == 1 and vocab.word(1) == "the"
    assert vocab.id("zebra") == 0 and "zebra" not in vocab and "Cat" in vocab
    np.testing.assert_array_equal(vocab.ids(["The", "zebra", "mat", "."]), [1, 0, 12, 2])
    assert vocab.ids([]).dtype == np.int64 and vocab.ids([]).shape == (0,)
    with pytest.raises(IndexError):
        vocab.word(13)


def test_word_vocab_max_size_and_min_count():
    top3 = WordVocab.build(SMALL_TEXT, max_size=3)
    assert top3.words == ("the", ".", "a") and len(top3) == 4
    frequent = WordVocab.build(SMALL_TEXT, min_count=2)
    assert frequent.words == ("the", ".", "a", "end", "on", "sat")
    assert WordVocab.build(SMALL_TEXT, max_size=100).words == WordVocab.build(SMALL_TEXT).words
    assert len(WordVocab.build(SMALL_TEXT, max_size=0)) == 1
    with pytest.raises(ValueError):
        WordVocab.build(SMALL_TEXT, min_count=0)


def test_word_vocab_from_counts_folds_case_and_drops_impossible_words():
    vocab = WordVocab.from_counts({"The": 3, "the": 2, "cat": 4, "": 9, "two words": 9, "new\nline": 9}, max_size=10)
    assert vocab.words == ("the", "cat")  # the = 3 + 2 beats cat = 4


def test_word_vocab_rejects_bad_entries():
    for bad in (["a", "a"], ["A"], [""], ["a b"], ["x\ny"], ["[UNK]"]):
        with pytest.raises(ValueError):
            WordVocab(bad)


def test_word_vocab_save_load_roundtrip(tmp_path):
    vocab = WordVocab.build(SMALL_TEXT + ["naïve 東京 😀 ❤\ufe0f"])
    path = vocab.save(tmp_path)
    assert path == tmp_path / WORD_VOCAB_FILE
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[0] == "[UNK]" and lines[1] == "the" and lines[-1] == "" and len(lines) == len(vocab) + 1
    assert WordVocab.load(tmp_path) == vocab
    assert WordVocab.load(path) == vocab
    assert vocab != WordVocab(["the"])


def test_word_vocab_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        WordVocab.load(tmp_path / "nowhere")
    bad = tmp_path / "bad.txt"
    bad.write_text("the\ncat\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not a charbert word vocabulary"):
        WordVocab.load(bad)
    bad.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="not a charbert word vocabulary"):
        WordVocab.load(bad)
    bad.write_text("[UNK]\nthe\ncat\nthe\n", encoding="utf-8")
    with pytest.raises(ValueError, match="duplicate word 'the'"):
        WordVocab.load(bad)
    bad.write_text("[UNK]\nthe\n\ncat\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty line"):
        WordVocab.load(bad)
    bad.write_bytes(b"[UNK]\nthe\n\xff\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        WordVocab.load(bad)


def test_pruning_keeps_the_exact_top_words():
    top = [f"top{k}" for k in range(10)]
    texts = []
    for line in range(300):
        frequent = [w for k, w in enumerate(top) for _ in range(20 - k)]  # top0 20x ... top9 11x per line
        rare = [f"rare{line}x{j}" for j in range(5)]  # 1500 distinct words seen once
        texts.append(" ".join(rare[:2] + frequent + rare[2:]))
    counter = WordCounter(max_tracked=50).update(texts)
    assert counter.prunes > 0 and counter.approximate
    assert len(counter.counts) <= 50 + 15  # bounded: the table never holds the 1500 rare words
    assert counter.total == 300 * (sum(range(11, 21)) + 5)
    assert [counter.counts[w] for w in top] == [300 * (20 - k) for k in range(10)]  # exact
    vocab = WordVocab.build(texts, max_size=10, max_tracked=50)
    assert vocab.words == tuple(top)
    assert WordVocab.build(texts, max_size=10) == vocab  # same as without pruning


def test_count_corpus_counts_words_and_chars():
    words, chars = count_corpus(["Ab ab!", "b"])
    assert words.counts == Counter({"ab": 2, "!": 1, "b": 1}) and words.total == 4 and not words.approximate
    assert chars == Counter("Ab ab!b")


# ---- corpus reading --------------------------------------------------------------------------

RAW = b"first line\r\n\n   \nsecond \xc3\xa9 line\nbad \xff byte\nthird\n"
GOOD = ["first line", "second \u00e9 line", "third"]


def test_plain_and_gzip_read_identically_and_bad_bytes_cost_one_line(tmp_path):
    plain = tmp_path / "a.txt"
    plain.write_bytes(RAW)
    packed = tmp_path / "a.txt.gz"
    with gzip.open(packed, "wb") as f:
        f.write(RAW)
    results = []
    for path in (plain, packed):
        stats = ReadStats()
        results.append((list(iter_lines([path], stats)), stats))
    (lines_a, stats_a), (lines_b, stats_b) = results
    assert lines_a == lines_b == GOOD
    assert stats_a == stats_b == ReadStats(lines=3, skipped_non_utf8=1, empty_lines=2, files=1)


def test_iter_lines_across_files_in_order(tmp_path):
    (tmp_path / "b.txt").write_text("\ufeffb1\nb2", encoding="utf-8")  # BOM, no final newline
    (tmp_path / "a.txt").write_text("a1\n", encoding="utf-8")
    paths = expand_paths([str(tmp_path / "*.txt")])
    assert paths == [tmp_path / "a.txt", tmp_path / "b.txt"]
    stats = ReadStats()
    assert list(iter_lines(paths, stats)) == ["a1", "b1", "b2"] and stats.files == 2


def test_expand_paths_errors(tmp_path):
    (tmp_path / "ok.txt").write_text("text\n", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="missing.txt") as err:
        expand_paths([str(tmp_path / "ok.txt"), str(tmp_path / "missing.txt"), str(tmp_path / "*.csv")])
    assert "*.csv" in str(err.value)  # every missing argument is named, not only the first
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand_paths([str(tmp_path / "nothing*")])
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.txt is empty"):
        expand_paths([str(tmp_path / "*.txt")])
    with gzip.open(tmp_path / "empty.gz", "wb"):
        pass
    with pytest.raises(ValueError, match="empty.gz is empty"):
        expand_paths([str(tmp_path / "empty.gz")])
    (tmp_path / "fake.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="fake.gz"):
        expand_paths([str(tmp_path / "fake.gz")])
    with pytest.raises(ValueError, match="directory"):
        expand_paths([str(tmp_path)])
    # the same file through two patterns is read once
    assert expand_paths([str(tmp_path / "ok.txt"), str(tmp_path / "o*.txt")]) == [tmp_path / "ok.txt"]


# ---- the command -----------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_end_to_end(tmp_path, capsys):
    (tmp_path / "one.txt").write_bytes(b"The cat sat on the mat.\n\nA dog sat on a log!\n")
    with gzip.open(tmp_path / "two.txt.gz", "wb") as f:
        f.write(b"The end, the END.\nbroken \xfe line\n")
    out = tmp_path / "out"
    code = main(["--train_file", str(tmp_path / "one.txt"), str(tmp_path / "*.gz"), "--output_dir", str(out),
                 "--word_vocab_size", "5", "--char_vocab_size", "12"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "Skipped 1 line(s) that are not valid UTF-8" in printed and str(out) in printed
    word_vocab = WordVocab.load(out)
    assert word_vocab.words == ("the", ".", "a", "end", "on") and len(word_vocab) == 6
    char_vocab = CharVocab.load(out)
    assert len(char_vocab) == 12 and " " in char_vocab.chars and "e" in char_vocab.chars
    stats = json.loads((out / "vocab_stats.json").read_text(encoding="utf-8"))
    assert stats["lines"] == 3 and stats["skipped_non_utf8"] == 1 and stats["empty_lines"] == 1 and stats["files"] == 2
    assert stats["word_occurrences"] == 20 and stats["distinct_words"] == 12 and stats["word_vocab_size"] == 6
    assert stats["word_coverage"] == pytest.approx(12 / 20, abs=1e-6)  # the 4 + . 2 + a 2 + end 2 + on 2
    assert 0 < stats["char_coverage"] < 1 and stats["char_vocab_size"] == 12


def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys):
    missing = tmp_path / "missing.txt"
    assert main(["--train_file", str(missing), "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    (tmp_path / "empty.txt").write_bytes(b"")
    assert main(["--train_file", str(tmp_path / "empty.txt"), "--output_dir", str(tmp_path / "out")]) == 2
    assert "empty.txt is empty" in capsys.readouterr().err
    (tmp_path / "blank.txt").write_bytes(b"\n  \n\xff\n")
    assert main(["--train_file", str(tmp_path / "blank.txt"), "--output_dir", str(tmp_path / "out")]) == 2
    assert "no text" in capsys.readouterr().err
    assert not (tmp_path / "out" / WORD_VOCAB_FILE).exists()


@pytest.mark.data
@pytest.mark.slow
def test_cli_on_real_brown_corpus(tmp_path, capsys):
    brown = DATA_DIR / "corpus" / "brown.txt"
    if not brown.exists():
        pytest.skip(f"{brown} not found: this test reads the real corpus in ../shared/data (absent on this machine)")
    assert main(["--train_file", str(brown), "--output_dir", str(tmp_path), "--word_vocab_size", "5000"]) == 0
    vocab = WordVocab.load(tmp_path)
    assert len(vocab) == 5001 and "the" in vocab and vocab.word(1) == "the"
    stats = json.loads((tmp_path / "vocab_stats.json").read_text(encoding="utf-8"))
    assert stats["lines"] == 57340 and stats["skipped_non_utf8"] == 0
    assert stats["word_coverage"] > 0.85 and stats["char_coverage"] > 0.999
    assert len(CharVocab.load(tmp_path)) <= 1024
