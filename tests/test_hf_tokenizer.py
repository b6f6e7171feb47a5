"""CharBertTokenizerFast as a Hugging Face tokenizer: AutoTokenizer gives it for CharBERT folders, its
call returns every model input, `pad` / DataCollatorWithPadding give the batches of the direct call,
save/load round trips exactly, plain BERT/RoBERTa folders load with the default character vocabulary."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, DataCollatorWithPadding

from charbert import CHAR_INPUT_NAMES, CharBertTokenizer, CharBertTokenizerFast, CharVocab
from charbert.chars import MASK_ID

TEXTS = ["Hello there, world.", "A b", "Tokenization matters: C# and ## then naïve words!", "x"]
PAIRS = ["Second segment here.", "and more", "c", "a much longer second segment than the first one"]


def charbert_folder(plain_dir, tmp_path, layout: str):
    """A CharBERT-style tokenizer folder (what our programs save) built on a plain checkpoint's tokenizer."""
    tok = CharBertTokenizerFast.from_pretrained(plain_dir, char_layout=layout)
    out = tmp_path / f"tok_{layout}"
    tok.save_pretrained(out)
    config = json.loads((plain_dir / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({"model_type": "charbert", "backbone_type": config["model_type"]}))
    return out


def features_of(batch) -> list[dict]:
    return [{k: v[i] for k, v in batch.items()} for i in range(len(batch["input_ids"]))]


def assert_same_batch(a, b):
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), key


@pytest.mark.parametrize("layout", ["offsets", "reference"])
def test_auto_tokenizer_gives_charbert_tokenizer_with_every_model_input(backbone_dir, tmp_path, layout):
    folder = charbert_folder(backbone_dir, tmp_path, layout)
    tok = AutoTokenizer.from_pretrained(folder)
    assert type(tok) is CharBertTokenizerFast and tok.char_layout == layout
    assert set(CHAR_INPUT_NAMES) <= set(tok.model_input_names)
    assert ("token_type_ids" in tok.model_input_names) is (backbone_dir.name.startswith("tiny_bert"))
    one = tok(TEXTS[0])
    assert set(CHAR_INPUT_NAMES) <= set(one) and isinstance(one["char_input_ids"][0], int)
    assert len(one["char_start_positions"]) == len(one["input_ids"])
    batch = tok(TEXTS, PAIRS, padding=True, return_tensors="pt")
    assert set(tok.model_input_names) == set(batch)
    width = batch["input_ids"].shape[1]
    assert batch["char_start_positions"].shape == (4, width)
    if layout == "reference":
        assert batch["char_input_ids"].shape == (4, 6 * width)
    # the positions index real characters of their own row
    assert (batch["char_end_positions"] < batch["char_input_ids"].shape[1]).all()
    np_batch = tok(TEXTS, padding=True, return_tensors="np")
    assert isinstance(np_batch["char_input_ids"], np.ndarray)


@pytest.mark.parametrize("layout", ["offsets", "reference"])
def test_pad_and_data_collator_equal_the_direct_batched_call(backbone_dir, tmp_path, layout):
    tok = AutoTokenizer.from_pretrained(charbert_folder(backbone_dir, tmp_path, layout))
    # reference layout: padding tokens point at the last position, what padding features gives
    extra = {"padded_tokens_last": True} if layout == "reference" else {}
    for pairs in (None, PAIRS):
        direct = tok(TEXTS, pairs, padding=True, truncation=True, max_length=24, return_tensors="pt", **extra)
        features = features_of(tok(TEXTS, pairs, truncation=True, max_length=24))
        assert len({len(f["input_ids"]) for f in features}) > 1  # unequal lengths
        assert_same_batch(tok.pad(features, return_tensors="pt"), direct)
        assert_same_batch(DataCollatorWithPadding(tok)(features), direct)
        # already-padded features pad to the same batch again (the mask, not the row length, counts)
        assert_same_batch(tok.pad(features_of(direct), return_tensors="pt"), direct)
    mult = tok.pad(features_of(tok(TEXTS)), pad_to_multiple_of=8, return_tensors="pt")
    assert mult["input_ids"].shape[1] % 8 == 0 and mult["char_start_positions"].shape == mult["input_ids"].shape
    if layout == "offsets":
        assert mult["char_input_ids"].shape[1] % 8 == 0


def test_character_mask_marks_each_rows_real_characters(bert_dir):
    tok = CharBertTokenizerFast.from_pretrained(bert_dir)
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    lengths = [len(tok(t)["char_input_ids"]) for t in TEXTS]
    assert batch["char_attention_mask"].sum(1).tolist() == lengths
    assert (batch["char_input_ids"][batch["char_attention_mask"] == 0] == 0).all()


def test_save_load_round_trip_is_exact(backbone_dir, tmp_path):
    vocab = CharVocab(list("abcdefghijklmnopqrstuvwxyz ,."))
    tok = CharBertTokenizerFast.from_pretrained(backbone_dir, char_vocab=vocab, char_layout="reference")
    tok.model_max_length = 77
    tok.save_pretrained(tmp_path / "a")
    again = CharBertTokenizer.from_pretrained(tmp_path / "a")
    assert again.char_vocab == vocab and again.char_layout == "reference" and again.model_max_length == 77
    assert again.special_tokens_map == tok.special_tokens_map and again.model_input_names == tok.model_input_names
    assert again.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
    assert_same_batch(again(TEXTS, PAIRS, padding=True, return_tensors="pt"), tok(TEXTS, PAIRS, padding=True, return_tensors="pt"))
    again.save_pretrained(tmp_path / "b")
    for name in ("tokenizer_config.json", "char_vocab.json"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text(), name
    a, b = (json.loads((tmp_path / d / "tokenizer.json").read_text()) for d in "ab")
    for state in ("padding", "truncation"):  # the backend keeps the last call's settings, as any fast tokenizer
        a.pop(state), b.pop(state)
    assert a == b


def test_plain_folder_loads_with_default_characters_and_keeps_its_settings(tmp_path, tiny_texts):
    from charbert.tiny import train_tokenizer

    plain = train_tokenizer(tiny_texts[:300], "bert", 400, lowercase=True)
    plain.model_max_length = 99
    plain.save_pretrained(tmp_path / "plain")
    tok = CharBertTokenizerFast.from_pretrained(tmp_path / "plain")
    assert tok.char_vocab == CharVocab.default() and tok.char_layout == "offsets" and tok.model_max_length == 99
    assert tok("Hello World")["input_ids"] == plain("Hello World")["input_ids"]  # lower-casing lives in tokenizer.json
    assert tok.convert_ids_to_tokens(tok("Hello")["input_ids"])[1].islower()
    # the characters are the original text's, not the lower-cased subwords'
    enc = tok("Hello")
    assert tok.char_vocab.decode(enc["char_input_ids"][enc["char_start_positions"][1]:][:1]) == "H"


def test_existing_wrapper_form_and_subword_twin(bert_dir):
    plain = AutoTokenizer.from_pretrained(bert_dir)
    tok = CharBertTokenizer(plain, CharVocab.default(), char_layout="offsets")
    assert isinstance(tok, CharBertTokenizerFast) and tok.model_max_length == plain.model_max_length
    assert tok(TEXTS)["input_ids"] == plain(TEXTS)["input_ids"]
    assert set(tok.tokenizer(TEXTS[0])) == set(plain(TEXTS[0]))  # the subword-only twin: no character fields


def test_mask_tokens_hide_their_characters(bert_dir):
    tok = CharBertTokenizerFast.from_pretrained(bert_dir)
    enc = tok(f"The {tok.mask_token} is here")
    k = enc["input_ids"].index(tok.mask_token_id)
    span = enc["char_input_ids"][enc["char_start_positions"][k]: enc["char_end_positions"][k] + 1]
    assert span and set(span) == {MASK_ID}


def test_split_words_input_is_refused_clearly(bert_dir):
    tok = CharBertTokenizerFast.from_pretrained(bert_dir)
    with pytest.raises(ValueError, match="pre-split"):
        tok(["a", "b"], is_split_into_words=True)


def test_batched_alignment_equals_the_per_row_routine(backbone_dir, tiny_texts):
    """The vectorised "offsets" layout of a whole batch is `chars.align` row by row (pairs, empty texts,
    overflowing windows, hidden tokens)."""
    from charbert.chars import align

    tok = CharBertTokenizerFast.from_pretrained(backbone_dir)
    texts = [*tiny_texts[:30], "", "  spaced   out  ", f"a {tok.mask_token} b"]
    pairs = [*tiny_texts[30:60], "x", "", "y z"]
    rng = np.random.default_rng(0)
    for a, b, extra in ((texts, None, {}), (texts, pairs, {}),
                        ([q[:20] for q in texts], pairs, {"truncation": "only_second", "max_length": 32, "stride": 4,
                                        "return_overflowing_tokens": True})):
        enc = tok.tokenizer(a, b, return_offsets_mapping=True, **extra)
        rows = range(len(enc["input_ids"]))
        hidden = [rng.random(len(enc["input_ids"][r])) < 0.2 for r in rows]
        for flags in (None, hidden):
            columns = tok.char_columns(enc, a, b, hidden=flags)
            sample = enc.get("overflow_to_sample_mapping") or list(rows)
            for r in rows:
                seg = (a[sample[r]],) if b is None else (a[sample[r]], b[sample[r]])
                row_hidden = flags[r] if flags is not None else np.array(enc["input_ids"][r]) == tok.mask_token_id
                expected = align(enc["offset_mapping"][r], enc.sequence_ids(r), seg, tok.char_vocab, hidden=row_hidden)
                for got, want in zip(columns, expected):
                    assert list(got[r]) == want.tolist(), (r, seg)
    # the template shortcut for single texts gives what the rows' own special-token masks give
    enc = tok.tokenizer(texts, return_offsets_mapping=True)
    assert tok.char_columns(enc, texts, special_template=tok._special_template(True)) == tok.char_columns(enc, texts)


@pytest.mark.parametrize("layout", ["offsets", "reference"])
def test_task_collator_pads_task_features_like_the_tokenizer(bert_dir, layout):
    from charbert.tasks.features import TaskCollator, glue_features
    from charbert.tasks.glue import GlueExample

    tok = CharBertTokenizerFast.from_pretrained(bert_dir, char_layout=layout)
    examples = [GlueExample(guid=str(i), text_a=a, text_b=b, label="1", line=i + 1) for i, (a, b) in enumerate(zip(TEXTS, PAIRS))]
    rows = glue_features(tok, examples, max_length=24, label2id={"1": 1})
    batch = TaskCollator(tok)(rows)
    assert torch.equal(batch.pop("labels"), torch.ones(4, dtype=torch.long))
    padded = tok.pad([{k: v for k, v in r.items() if k != "labels"} for r in rows], return_tensors="pt")
    assert_same_batch(batch, padded)


def test_offsets_read_from_rust_when_the_caller_did_not_ask_for_them(bert_dir, tiny_texts):
    """Without return_offsets_mapping the alignment reads the offsets from the Rust encodings (the
    base class builds no offset lists): same character fields, and no offset_mapping in the output."""
    tok = CharBertTokenizerFast.from_pretrained(bert_dir)
    texts = [*tiny_texts[:20], "", "naïve C# ## x"]
    plain = tok(texts)
    with_offsets = tok(texts, return_offsets_mapping=True)
    assert "offset_mapping" not in plain
    assert with_offsets["offset_mapping"] == tok.tokenizer(texts, return_offsets_mapping=True)["offset_mapping"]
    for key in CHAR_INPUT_NAMES:
        assert plain[key] == with_offsets[key], key
    enc = tok.tokenizer(texts)  # no offsets in the encoding's dict: char_columns reads the Rust side
    assert tok.char_columns(enc, texts) == tok.char_columns(tok.tokenizer(texts, return_offsets_mapping=True), texts)


def test_a_call_pauses_the_garbage_collector_and_restores_it(bert_dir, monkeypatch):
    import gc

    tok = CharBertTokenizerFast.from_pretrained(bert_dir)
    seen = []
    original = CharBertTokenizerFast.char_columns

    def recording(self, *args, **kwargs):
        seen.append(gc.isenabled())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CharBertTokenizerFast, "char_columns", recording)
    was_enabled = gc.isenabled()
    try:
        gc.enable()
        tok(TEXTS)
        assert seen == [False] and gc.isenabled()  # paused inside, on again after
        with pytest.raises(TypeError, match="takes strings"):
            tok(["fine", 3])
        assert gc.isenabled()  # an error inside the call leaves it on too
        gc.disable()
        tok(TEXTS)
        assert not gc.isenabled()  # a collector the caller turned off stays off
    finally:
        (gc.enable if was_enabled else gc.disable)()


def test_str_subclasses_pass_and_other_types_are_refused_in_pairs_too(bert_dir):
    class Text(str):
        pass

    tok = CharBertTokenizerFast.from_pretrained(bert_dir)
    assert tok([Text("Hello there")])["char_input_ids"] == tok(["Hello there"])["char_input_ids"]
    with pytest.raises(TypeError, match="got NoneType"):
        tok(["a", "b"], ["c", None])
