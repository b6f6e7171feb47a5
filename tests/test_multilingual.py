"""Text outside English, as XLM-RoBERTa users bring it: Cyrillic, Greek, CJK (Chinese without spaces,
Japanese kana) and Devanagari. The character vocabulary and `pretrain.vocab` keep every script; a word
is what `charbert.pretraining.vocab.split_words` says (one CJK ideograph per word); the character channel spells
every token of a SentencePiece tokenizer in its own script; the pretraining collator's NLM labels are
the original words; the attack generator edits words of every script in their own script."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from charbert import CharBertForPreTraining, CharBertTokenizer
from charbert.chars import CharVocab
from charbert.noise import PRETRAIN_RULES, PRUTHI_RULES, apply_operation, is_eligible, noise_words
from charbert.pretraining.collator import PretrainingCollator
from charbert.pretraining.vocab import WordVocab, words_of
from charbert.tiny import make_tiny_checkpoint, train_tokenizer

LINES = [
    "Москва — столица России, и в ней живут миллионы людей.",
    "Привет, мир! Мы пишем код на русском языке каждый день.",
    "Γειά σου κόσμε, η γλώσσα μας είναι ελληνική και όμορφη.",
    "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας από παλιά.",
    "我喜欢学习语言，中文没有空格。北京是中国的首都。",
    "東京タワーに行きます。日本語の文章です。",
    "हिन्दी भाषा भारत में बोली जाती है।",
    "English words sit beside them, with numbers like 2024.",
] * 6


@pytest.fixture(scope="module")
def xlmr_dir(tmp_path_factory, tiny_texts):
    """A tiny XLM-RoBERTa whose SentencePiece tokenizer and character vocabulary saw every script."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_xlmr_multi"), "xlm-roberta", tiny_texts[:400] + LINES,
                                vocab_size=700, hidden_size=32, char_vocab=True)


def test_words_of_every_script():
    assert words_of("Привет, мир!") == ["Привет", ",", "мир", "!"]
    assert words_of("Γειά σου κόσμε") == ["Γειά", "σου", "κόσμε"]
    assert words_of("北京是首都。") == ["北", "京", "是", "首", "都", "。"]  # no spaces: one ideograph per word
    assert words_of("東京タワーに行きます") == ["東", "京", "タワーに", "行", "きます"]  # kana runs stay whole
    assert words_of("हिन्दी भाषा") == ["हिन्दी", "भाषा"]  # vowel signs (combining marks) stay in their word


def test_pretrain_vocab_keeps_every_script(tmp_path):
    from pretrain.vocab import main

    corpus = tmp_path / "multi.txt"
    corpus.write_text("\n".join(LINES), encoding="utf-8")
    assert main(["--train_file", str(corpus), "--output_dir", str(tmp_path / "vocab")]) == 0
    words = WordVocab.load(tmp_path / "vocab")
    for word in ("москва", "привет", "κόσμε", "αθήνα", "北", "京", "タワーに", "हिन्दी", "english"):
        assert word in words, word
    assert "北京是中国的首都" not in words
    chars = CharVocab.load(tmp_path / "vocab")
    text = "".join(LINES)
    assert all(chars.decode(chars.encode(ch)) == ch for ch in set(text) if not ch.isspace())
    assert json.loads((tmp_path / "vocab" / "char_vocab.json").read_text(encoding="utf-8"))


def test_character_channel_spells_sentencepiece_tokens_in_their_script(xlmr_dir):
    tok = CharBertTokenizer.from_pretrained(xlmr_dir)
    assert tok.tokenizer.convert_ids_to_tokens(tok.tokenizer("Привет мир")["input_ids"])[1].startswith("▁")
    for text in ("Привет, мир!", "Γειά σου κόσμε", "北京是中国的首都。", "हिन्दी भाषा"):
        enc = tok.tokenizer(text, return_offsets_mapping=True)
        chars = tok(text)
        ids = chars["char_input_ids"]
        spelled = "".join(tok.char_vocab.decode([i]) for i in ids[1:])  # after the [SPECIAL] placeholder
        assert spelled == text  # the row is the text, in its own script, no [UNK]
        for k, (a, b) in enumerate(enc["offset_mapping"]):
            if b > a and text[a:b].strip():
                first = tok.char_vocab.decode([ids[chars["char_start_positions"][k]]])
                last = tok.char_vocab.decode([ids[chars["char_end_positions"][k]]])
                piece = text[a:b].strip()
                assert (first, last) == (piece[0], piece[-1]), (text, k, piece)


def test_collator_labels_the_original_words_of_every_script(xlmr_dir):
    tok = CharBertTokenizer.from_pretrained(xlmr_dir)
    vocab = WordVocab.build(LINES, max_size=500)
    collator = PretrainingCollator(tok, vocab, max_seq_length=64, noise_probability=0.5)
    batch = collator(LINES[:8], rng=np.random.default_rng(0))
    labelled = batch["nlm_labels"][batch["nlm_labels"] != -100].tolist()
    assert labelled
    words = {vocab.word(i) for i in labelled}
    assert any(any("\u0400" <= ch <= "\u04ff" for ch in w) for w in words)  # Cyrillic words were noised and labelled
    assert all(w == "[UNK]" or w in vocab for w in words)
    # MLM and NLM never share a position, and every batch runs the model
    assert not ((batch["labels"] != -100) & (batch["nlm_labels"] != -100)).any()
    model = CharBertForPreTraining.from_pretrained(xlmr_dir, word_vocab_size=len(vocab), char_vocab_size=len(tok.char_vocab))
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


def test_attacks_edit_every_script_in_its_own_script():
    rng = np.random.default_rng(0)
    cyrillic = set("абвгдеёжзийклмнопрстуфхцчшщъыьэюя")
    for word, alphabet in (("привет", cyrillic), ("κόσμε", set("κόσμε")), ("हिन्दी", set("हिन्दी"))):
        assert is_eligible(word, PRUTHI_RULES)
        for op in ("add", "replace"):
            edited = apply_operation(word, op, rng, PRUTHI_RULES)
            assert edited != word and set(edited.lower()) <= alphabet | set(word), (word, op, edited)
        assert apply_operation(word, "drop", rng, PRUTHI_RULES) is not None
        assert apply_operation(word, "keyboard", rng, PRUTHI_RULES) is None  # QWERTY only: no keyboard edit
    # English is untouched by the rule: the default alphabet is written into Latin words
    assert set(apply_operation("keyboard", "add", rng, PRUTHI_RULES)) <= set("abcdefghijklmnopqrstuvwxyz")
    # 'all' falls back on another edit where keyboard has none, so every eligible word changes
    new, changed = noise_words(["привет", "мир", "κόσμε"], rng, PRETRAIN_RULES, 1.0, ("keyboard", "drop"))
    assert changed == [0, 1, 2] and all(a != b for a, b in zip(new, ["привет", "мир", "κόσμε"]))


def test_tiny_sentencepiece_tokenizer_is_a_unigram_with_metaspace(tiny_texts):
    tok = train_tokenizer(tiny_texts[:200], "xlm-roberta", 300)
    data = json.loads(tok.backend_tokenizer.to_str())
    assert data["model"]["type"] == "Unigram" and data["pre_tokenizer"]["type"] == "Metaspace"
    assert tok.cls_token == "<s>" and tok.mask_token == "<mask>"
