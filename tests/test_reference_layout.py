"""The reference character layout equals what the CharBERT authors' own code builds.

Their feature builders (`processors/glue.py`, `utils_ner.py`, `squad.py`) and their pretraining
script's `build_char_inputs` (`run_lm_finetuning.py`) are called on real sentences from
../shared/data; our `CharBertTokenizer(..., char_layout="reference")` (and the pretraining
collator) must give the same character ids (after mapping their ids to ours), start and end
positions, padding included, on every row except the documented differences (docs/design.md,
"Reference character layout"), which the test finds and checks are the only ones:

* HASH: a token with a `#` at either end (BERT's lone `#`, BPE pieces such as `Ġ#`): their
  `strip("##")` removes every such `#` (a lone `#` vanishes, shifting every later span); we
  remove only the WordPiece prefix `##`.
* UNK: an [UNK] token: their fine-tuning code writes a single 0 (SQuAD: the whitespace word
  around it); we write the characters of the text it covers.

On a row with such a token both layouts agree on every token before it.
"""

from __future__ import annotations

import ast
import contextlib
import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import corpus_lines, mrpc_pairs, shared_data
from reference import CHAR_VOCAB, REFERENCE_DIR, AuthorsCodeMissing, authors_processors

from charbert import CharBertTokenizer, CharVocab
from charbert.chars import PAD_ID, UNK_ID, align
from charbert.pretraining.collator import PretrainingCollator
from charbert.pretraining.vocab import WordVocab
from charbert.tiny import train_tokenizer
from charbert.tokenization import pad_char_features

MAX_LENGTH = 96
N_SENTENCES = 200


# ---- the authors' code -------------------------------------------------------------------


@pytest.fixture(scope="module")
def authors():
    """Their `processors` package (glue, utils_ner, squad, tokenization_bert) and their pretraining script's
    `build_char_inputs`."""
    try:
        processors = authors_processors()
    except AuthorsCodeMissing as err:
        pytest.skip(str(err))
    build_char_inputs = _their_method(REFERENCE_DIR / "run_lm_finetuning.py", "TextDataset", "build_char_inputs")
    return SimpleNamespace(**vars(processors), build_char_inputs=build_char_inputs)


def _their_method(path: Path, class_name: str, name: str):
    """One method of their script, compiled from its source (the script itself imports nltk and
    transformers 2.4, which are not here)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == name)
    namespace: dict = {}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102 (their code, read-only)
    return namespace[name]


def their_char_vocab(backbone: str) -> tuple[Path, CharVocab, np.ndarray]:
    """Their char vocabulary file, our CharVocab of its characters, and their id -> our id.

    Read as their loader does: line i is id i (a later repeat wins). Their 0 (space, separator,
    padding) is our [PAD]; their last line `<unk>` our [UNK]; ids no character reaches map to -1.
    """
    path = CHAR_VOCAB[backbone]
    lines = [line.rstrip("\n") for line in path.open(encoding="utf-8").readlines()]
    chars = list(dict.fromkeys(c for c in lines[1:] if len(c) == 1))
    vocab = CharVocab(chars)
    their_ids = {c: i for i, c in enumerate(lines)}
    remap = np.full(len(lines), -1, dtype=np.int64)
    for c, i in their_ids.items():
        remap[i] = PAD_ID if i == 0 else UNK_ID if c == "<unk>" else vocab.char_to_id[c] if len(c) == 1 else -1
    return path, vocab, remap


class FastAsTheirs:
    """The transformers-2.4 tokenizer methods their processors call, answered by a fast tokenizer
    (they ship no RoBERTa tokenizer of their own)."""

    def __init__(self, fast):
        self.fast = fast
        for name in ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token", "pad_token_id"):
            setattr(self, name, getattr(fast, name))

    def tokenize(self, text, add_prefix_space=False):
        return self.fast.tokenize((" " if add_prefix_space else "") + text)

    def convert_tokens_to_ids(self, tokens):
        return self.fast.convert_tokens_to_ids(tokens)

    def convert_ids_to_tokens(self, ids):
        return self.fast.convert_ids_to_tokens(ids)

    def encode_plus(self, text, text_pair=None, add_special_tokens=True, max_length=None):
        enc = self.fast(text, text_pair, truncation=True, max_length=max_length)
        return {"input_ids": enc["input_ids"], "token_type_ids": enc.get("token_type_ids", [0] * len(enc["input_ids"]))}


# ---- our side and the comparison -----------------------------------------------------------


@pytest.fixture(scope="module", params=["bert", "roberta"])
def setup(request, authors, tmp_path_factory):
    """(backbone, our reference-layout tokenizer, the tokenizer their code gets, vocab file, remap)."""
    backbone = request.param
    from charbert.tasks.squad import read_squad

    contexts = list(dict.fromkeys(ex.context for ex in read_squad(shared_data("squad/v1.1-dev.json"))[:300]))
    fast = train_tokenizer(corpus_lines(400) + contexts, backbone, vocab_size=800)
    vocab_file, char_vocab, remap = their_char_vocab(backbone)
    if backbone == "bert":  # their own WordPiece tokenizer on the same vocabulary
        folder = tmp_path_factory.mktemp("bert_vocab")
        (folder / "vocab.txt").write_text("\n".join(sorted(fast.get_vocab(), key=fast.get_vocab().get)) + "\n", encoding="utf-8")
        theirs = authors.BertTokenizer(str(folder / "vocab.txt"), do_lower_case=False)
    else:
        theirs = FastAsTheirs(fast)
    return SimpleNamespace(backbone=backbone, ours=CharBertTokenizer(fast, char_vocab, char_layout="reference"),
                           theirs=theirs, vocab_file=str(vocab_file), remap=remap)


def bug_tokens(tokens: list[str], unk_token: str) -> list[int]:
    """Positions of the tokens where their layout is documented to be wrong (HASH, UNK)."""
    return [k for k, t in enumerate(tokens) if t == unk_token or (t.startswith("##") and t[2:] or t) != t.strip("#")]


def compare(ours: dict, theirs_chars, theirs_starts, theirs_ends, remap, tokens, unk_token) -> str:
    """'same', or the documented difference found ('bug'); fails on any other difference."""
    theirs_chars = remap[np.asarray(theirs_chars)]
    assert (theirs_chars >= 0).all()
    ours_chars, starts, ends = (np.asarray(ours[k]).astype(np.int64) for k in ("char_input_ids", "char_start_positions", "char_end_positions"))
    assert ours_chars.shape == theirs_chars.shape and starts.shape == ends.shape == (len(theirs_starts),)
    bugs = bug_tokens(tokens, unk_token)
    if not bugs:
        assert ours_chars.tolist() == theirs_chars.tolist()
        assert starts.tolist() == list(theirs_starts) and ends.tolist() == list(theirs_ends)
        return "same"
    first = bugs[0]  # everything before the first documented bug token agrees
    assert starts[:first].tolist() == list(theirs_starts[:first]) and ends[:first].tolist() == list(theirs_ends[:first])
    assert ours_chars[: starts[first]].tolist() == theirs_chars[: starts[first]].tolist()
    assert (ours_chars.tolist(), starts.tolist()) != (theirs_chars.tolist(), list(theirs_starts)), "a listed bug case did not differ"
    return "bug"


def first_row(batch) -> dict:
    return {k: v[0] for k, v in batch.items()}


def _quiet(fn, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):  # their glue.py prints every example's tokens
        return fn(*args, **kwargs)


HAND_MADE = [("C# and F# are # not ##", None), ("Émile naïve ☃ snowman", "Tom's #1 ✓")]


def test_glue_single_and_pair_layout(setup, authors):
    """Their GLUE features (pad tokens laid out like special tokens), 100 corpus sentences + 100 MRPC pairs."""
    # (truncation is left out: the two tokenizer generations break longest_first ties differently)
    fits = [(a, b) for a, b in [(t, None) for t in corpus_lines(N_SENTENCES)] + mrpc_pairs(2 * N_SENTENCES)
            if len(setup.ours.tokenizer(a, b)["input_ids"]) <= MAX_LENGTH]
    examples = fits[: N_SENTENCES // 2] + [ab for ab in fits if ab[1] is not None][: N_SENTENCES // 2] + HAND_MADE
    assert len(examples) == N_SENTENCES + len(HAND_MADE)
    theirs = _quiet(
        authors.glue.glue_convert_examples_to_features,
        [authors.utils.InputExample(str(i), a, b, "0") for i, (a, b) in enumerate(examples)], setup.theirs,
        max_length=MAX_LENGTH, label_list=["0", "1"], output_mode="classification", pad_token=setup.ours.pad_token_id,
        char_vocab_file=setup.vocab_file, model_type=setup.backbone,
    )
    outcome = []
    for (a, b), feature in zip(examples, theirs):
        ours = first_row(setup.ours(a, b, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt"))
        assert ours["input_ids"].tolist() == feature.input_ids  # same tokens: any difference below is the layout's
        tokens = setup.ours.convert_ids_to_tokens(ours["input_ids"].tolist())
        outcome.append(compare(ours, feature.char_input_ids, feature.start_ids, feature.end_ids, setup.remap, tokens, setup.ours.unk_token))
    assert outcome.count("same") >= N_SENTENCES // 2 and outcome[-2:] == ["bug", "bug"]


@pytest.mark.slow
def test_ner_word_lists_layout(setup, authors):
    """Their NER features (padding tokens point at the last position) on 200 CoNLL sentences."""
    from charbert.tasks.ner import read_conll

    sentences = [s for s in read_conll(shared_data("conll2003/dev.txt")) if s.tokens][:N_SENTENCES]
    labels = sorted({t for s in sentences for t in s.tags})
    tok = setup.ours
    theirs = authors.utils_ner.convert_examples_to_features(
        [authors.utils_ner.InputExample(str(i), list(s.tokens), list(s.tags)) for i, s in enumerate(sentences)], labels,
        MAX_LENGTH, setup.theirs, cls_token=tok.cls_token, sep_token=tok.sep_token, pad_token=tok.pad_token_id,
        cls_token_segment_id=0, char_vocab_file=setup.vocab_file, model_type=setup.backbone,
    )
    outcome = []
    prefix = " " if setup.backbone == "roberta" else ""  # their RoBERTa NER tokenises each word with a prefix space
    for s, feature in zip(sentences, theirs):
        ours = first_row(tok(prefix + " ".join(s.tokens), padding="max_length", truncation=True, max_length=MAX_LENGTH,
                             padded_tokens_last=True, return_tensors="pt"))
        assert ours["input_ids"].tolist() == feature.input_ids
        tokens = tok.convert_ids_to_tokens(ours["input_ids"].tolist())
        outcome.append(compare(ours, feature.char_input_ids, feature.start_ids, feature.end_ids, setup.remap, tokens, tok.unk_token))
    assert outcome.count("same") >= N_SENTENCES // 2


@pytest.mark.slow
def test_squad_question_context_layout(setup, authors):
    """Their SQuAD features (question + context in one window, padding at the last position)."""
    if setup.backbone != "bert":
        pytest.skip("their SQuAD code needs their transformers-2.4 tokenizer; they ship only the WordPiece one")
    from charbert.tasks.squad import read_squad

    max_length, tok = 256, setup.ours
    examples = []
    for ex in read_squad(shared_data("squad/v1.1-dev.json")):
        if len(tok(ex.question, ex.context)["input_ids"]) <= max_length and len(tok.tokenize(ex.question)) <= 64:
            examples.append(ex)
        if len(examples) == 20:
            break
    theirs = _quiet(
        authors.squad.squad_convert_examples_to_features,
        [authors.squad.SquadExample(ex.id, ex.question, ex.context, None, None, None) for ex in examples], setup.theirs,
        max_seq_length=max_length, doc_stride=128, max_query_length=64, is_training=False, char_vocab_file=setup.vocab_file,
    )
    assert len(theirs) == len(examples)  # one window each
    outcome = []
    for ex, feature in zip(examples, theirs):
        ours = first_row(tok(ex.question, ex.context, padding="max_length", truncation="only_second", max_length=max_length,
                             padded_tokens_last=True, return_tensors="pt"))
        assert ours["input_ids"].tolist() == feature.input_ids
        tokens = tok.convert_ids_to_tokens(ours["input_ids"].tolist())
        outcome.append(compare(ours, feature.char_ids, feature.start_ids, feature.end_ids, setup.remap, tokens, tok.unk_token))
    assert outcome.count("same") >= len(examples) // 2


def test_pretraining_layout_with_masked_tokens(setup, authors):
    """Their `build_char_inputs`: MLM-chosen tokens become a single 0; [UNK] spells its word there too."""
    if setup.backbone != "bert":
        pytest.skip("their pretraining script writes RoBERTa's <s>/</s> as characters (it checks for [CLS]/[SEP]): not a layout to match")
    tok = setup.ours
    collator = PretrainingCollator(tok, WordVocab(["the"]), max_seq_length=MAX_LENGTH, mlm_probability=0.15, noise_probability=0.0)
    rng = np.random.default_rng(0)
    char2ids = authors.utils.load_char_to_ids_dict(setup.vocab_file)
    outcome, n_chosen = [], 0
    for text in corpus_lines(N_SENTENCES)[-50:]:
        batch = collator([text], rng)
        input_ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
        n_chosen += sum(label != -100 for label in labels)
        enc = tok.tokenizer(text, truncation=True, max_length=MAX_LENGTH, return_offsets_mapping=True)
        words = {k - 1: text[s:e] for k, (i, (s, e)) in enumerate(zip(enc["input_ids"], enc["offset_mapping"])) if i == tok.unk_token_id}
        dataset = SimpleNamespace(tokenizer=setup.theirs, char2ids_dict=char2ids,
                                  args=SimpleNamespace(block_size=len(input_ids), char_maxlen_for_word=6, output_debug=False))
        chars, starts, ends = authors.build_char_inputs(dataset, input_ids, words, 0, None, [-1 if x == -100 else x for x in labels])
        ours = {k: batch[k][0] for k in ("char_input_ids", "char_start_positions", "char_end_positions")}
        # their pretraining spells an [UNK] by its word, as we do: only HASH tokens are bugs here
        tokens = ["x" if t == tok.unk_token else t for t in tok.convert_ids_to_tokens(enc["input_ids"])]
        outcome.append(compare(ours, chars, starts, ends, setup.remap, tokens, tok.unk_token))
    assert n_chosen >= 50 and outcome.count("same") >= 40


class _Crafted:
    """A tokenizer stand-in for their GLUE code that returns fixed subword strings."""

    unk_token, sep_token, pad_token, cls_token, mask_token = "[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]"

    def __init__(self, tokens):
        self.tokens = tokens

    def encode_plus(self, text, text_pair=None, add_special_tokens=True, max_length=None):
        return {"input_ids": list(range(len(self.tokens))), "token_type_ids": [0] * len(self.tokens)}

    def convert_ids_to_tokens(self, ids):
        return [self.tokens[i] for i in ids]


def test_cut_at_six_characters_per_token(authors):
    """Rows of long subwords cut at 6 L characters anywhere (inside a token, at its 0, between
    tokens): our positions and characters equal theirs."""
    vocab_file, char_vocab, remap = their_char_vocab("bert")
    rng = np.random.default_rng(0)
    letters = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    cuts = set()
    for _ in range(60):
        words = ["".join(rng.choice(letters, size=rng.integers(1, 16))) for _ in range(rng.integers(1, 10))]
        tokens = ["[CLS]"] + [w if k == 0 or rng.random() < 0.5 else "##" + w for k, w in enumerate(words)] + ["[SEP]"]
        [feature] = _quiet(authors.glue.glue_convert_examples_to_features, [authors.utils.InputExample("0", "unused", None, "0")],
                           _Crafted(tokens), max_length=len(tokens), label_list=["0"], output_mode="classification",
                           char_vocab_file=str(vocab_file))
        sequence_ids = [None] + [0] * len(words) + [None]
        chars, starts, ends = align(np.zeros((len(tokens), 2)), sequence_ids, ("",), char_vocab, layout="reference",
                                    tokens=tokens, continuation_prefix="##")
        ours = first_row(pad_char_features([{"char_input_ids": chars, "char_start_positions": starts, "char_end_positions": ends}],
                                           char_layout="reference"))
        assert compare(ours, feature.char_input_ids, feature.start_ids, feature.end_ids, remap, tokens, "[UNK]") == "same"
        cuts.add(int((starts == 6 * len(tokens) - 1).sum()) > 0)
    assert cuts == {True, False}  # rows that were cut and rows that were not


# ---- end to end: text -> tokenizer -> converted model equals text -> their processors -> their model ----


def _max_diff(a, b) -> float:
    """Largest absolute difference, relative to the expected tensor's scale where that exceeds 1 (logits)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max()) / max(1.0, float(b.abs().max()))


@pytest.mark.parametrize("head", ["pretraining", "sequence_classification"])
def test_text_to_outputs_equals_the_authors_pipeline(setup, authors, tmp_path, head, one_torch_thread):
    """Their model (tiny, every weight random) saved in their format and converted: on real MRPC
    pairs and corpus sentences, our tokenizer (the converted folder's, reference layout) + our
    model give their processors + their model's outputs within 1e-5, padding positions included."""
    import reference
    import torch
    from transformers import AutoModelForPreTraining, AutoModelForSequenceClassification

    from charbert.convert import convert

    reference.authors_code_or_skip()
    backbone, fast = setup.backbone, setup.ours.tokenizer
    tokens = sorted(fast.get_vocab(), key=fast.get_vocab().get)
    theirs = reference.build_authors_model(backbone, head, len(tokens), seed=5, max_len=MAX_LENGTH)
    source = reference.save_authors_checkpoint(theirs, tmp_path / "theirs", backbone, tokens)
    if backbone == "roberta":
        fast.backend_tokenizer.model.save(str(source))  # the BPE merges (vocab.json is the same)
    out = convert(source, reference.CHAR_VOCAB[backbone], reference.TERM_VOCAB, tmp_path / "ours")
    tok = CharBertTokenizer.from_pretrained(out)
    assert tok.char_layout == "reference"  # chosen by the converted folder, nothing passed
    ours = (AutoModelForPreTraining if head == "pretraining" else AutoModelForSequenceClassification).from_pretrained(out).eval()
    their_tokenizer = setup.theirs if backbone == "bert" else FastAsTheirs(tok.tokenizer)

    def clean(a, b):  # rows with a documented layout difference are left out here (checked above)
        enc = tok.tokenizer(a, b)
        return len(enc["input_ids"]) <= MAX_LENGTH and not bug_tokens(tok.convert_ids_to_tokens(enc["input_ids"]), tok.unk_token)

    singles = [(t, None) for t in corpus_lines(60) if clean(t, None)][:6]
    pairs = [ab for ab in mrpc_pairs(60) if clean(*ab)][:6]
    assert len(singles) == len(pairs) == 6
    checked = 0
    for group in (singles, pairs):
        features = _quiet(
            authors.glue.glue_convert_examples_to_features,
            [authors.utils.InputExample(str(i), a, b, "0") for i, (a, b) in enumerate(group)], their_tokenizer,
            max_length=MAX_LENGTH, label_list=["0", "1"], output_mode="classification", pad_token=tok.pad_token_id,
            char_vocab_file=str(reference.CHAR_VOCAB[backbone]), model_type=backbone,
        )
        their_inputs = {name: torch.tensor([getattr(f, field) for f in features]) for name, field in (
            ("char_input_ids", "char_input_ids"), ("start_ids", "start_ids"), ("end_ids", "end_ids"), ("input_ids", "input_ids"),
            ("attention_mask", "attention_mask"), ("token_type_ids", "token_type_ids"))}
        expected = reference.authors_forward(theirs, backbone, their_inputs)
        texts, text_pairs = [a for a, _ in group], None if group[0][1] is None else [b for _, b in group]
        batch = tok(texts, text_pairs, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        assert torch.equal(batch["input_ids"], their_inputs["input_ids"])
        with torch.no_grad():
            got = ours(**batch, output_hidden_states=True)
        diffs = {"word states": _max_diff(got.hidden_states[-1], expected[0]), "char states": _max_diff(got.char_hidden_states[-1], expected[1])}
        if head == "pretraining":
            diffs["MLM logits"] = _max_diff(got.mlm_logits, expected[2])
        else:
            diffs["logits"] = _max_diff(got.logits, expected[2])
        assert max(diffs.values()) < 1e-5, diffs
        assert float(expected[1].abs().max()) > 0.1  # not a vacuous comparison
        checked += len(group)
    assert checked == 12
