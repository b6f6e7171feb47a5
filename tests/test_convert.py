"""`python -m charbert.convert` on tiny checkpoints made with the authors' code: what it writes, how it
loads (nothing newly initialised), how their vocabularies are remapped, and each error.

Function equality with their model is tests/test_parity_model.py; this file checks the folder.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from reference import (
    CHAR_VOCAB,
    TERM_VOCAB,
    authors_code_or_skip,
    build_authors_model,
    save_authors_checkpoint,
    vocab_tokens,
)
from transformers import AutoModel, AutoModelForPreTraining, BertConfig, BertForMaskedLM

from charbert import CharBertConfig, CharBertTokenizer
from charbert.chars import PAD_ID, UNK_ID
from charbert.convert import (
    PROG,
    ConversionError,
    convert,
    main,
    map_char_vocab,
    map_term_vocab,
    read_lines,
)
from charbert.pretraining.vocab import WordVocab

VOCAB_SIZE = 120


@pytest.fixture(scope="module")
def authors_dirs(tmp_path_factory):
    """Their pretraining model (CharBertForMaskedLM / RobertaForMaskedLM) saved in their format, per backbone."""
    authors_code_or_skip()
    dirs = {}
    for backbone in ("bert", "roberta"):
        model = build_authors_model(backbone, "pretraining", VOCAB_SIZE, seed=1)
        dirs[backbone] = save_authors_checkpoint(model, tmp_path_factory.mktemp(f"authors_{backbone}"), backbone, vocab_tokens(backbone, VOCAB_SIZE))
    return dirs


def copy_checkpoint(src, dst):
    shutil.copytree(src, dst)
    return dst


def run_cli_error(capsys, *argv) -> str:
    """Run the CLI, expect exit 2 and one `prog: error: ...` line on stderr; return that line."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{PROG}: error: ") and "\n" not in err, err
    return err


# ---- vocabularies --------------------------------------------------------------------------


def test_their_char_vocab_is_read_like_their_loader():
    authors_code_or_skip()
    lines = read_lines(CHAR_VOCAB["bert"], "character vocabulary")
    assert len(lines) == 1001 and lines[0] == " " and lines[104] == lines[105] == "" and lines[-1] == "<unk>"
    mapping = map_char_vocab(lines)
    # Unreachable: the two empty lines and the whitespace their BERT tokenizer splits on (we fold it onto " ").
    assert sorted(mapping.dropped) == sorted(["", "", "\u2009", "\u202f", "\u3000"])
    assert len(mapping.vocab) == 5 + 1001 - 6  # our 5 special ids + every reachable character of theirs
    assert mapping.their_to_ours[0] == PAD_ID and mapping.their_to_ours[1000] == UNK_ID
    assert mapping.rows[PAD_ID] == 0 and mapping.rows[UNK_ID] == 1000
    assert mapping.rows[mapping.vocab.char_to_id[" "]] == 0  # their id 0 is the space
    for their_id, char in enumerate(lines):  # every reachable character keeps its own row
        ours = mapping.their_to_ours[their_id]
        if ours > UNK_ID:
            assert mapping.vocab.chars[ours - 5] == char and mapping.rows[ours] == their_id
    roberta = map_char_vocab(read_lines(CHAR_VOCAB["roberta"], "character vocabulary"))
    assert roberta.dropped == [] and "\u0120" in roberta.vocab.char_to_id  # byte-level BPE's Ġ is a character


def test_later_repeat_of_a_line_wins(tmp_path):
    file = tmp_path / "chars"
    file.write_text(" \na\nb\na\n<unk>\n", encoding="utf-8")
    mapping = map_char_vocab(read_lines(file, "character vocabulary"))
    assert mapping.rows[mapping.vocab.char_to_id["a"]] == 3 and mapping.their_to_ours[1] == -1
    assert mapping.dropped == ["a"]


def test_their_term_vocab_becomes_ours_with_unk_first():
    authors_code_or_skip()
    lines = read_lines(TERM_VOCAB, "term vocabulary")
    mapping = map_term_vocab(lines)
    assert len(mapping.vocab) == len(lines) == 30001 and mapping.dropped == []
    assert mapping.rows[WordVocab.UNK_ID] == 30000  # their <unk> is last
    assert mapping.vocab.id(lines[0]) == 1 and mapping.rows[1] == 0


# ---- conversion ----------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["bert", "roberta"])
def test_converted_folder_loads_with_nothing_new(tmp_path, authors_dirs, backbone, one_torch_thread):
    out = convert(authors_dirs[backbone], CHAR_VOCAB[backbone], TERM_VOCAB, tmp_path / "out")
    for name in ("model.safetensors", "config.json", "char_vocab.json", "word_vocab.txt", "tokenizer.json", "README.md"):
        assert (out / name).is_file(), name

    config = CharBertConfig.from_pretrained(out)
    assert (config.backbone_type, config.char_layout, config.char_padding) == (backbone, "reference", "reference")
    assert not (config.char_token_norm or config.fusion_activation or config.fusion_bias) and config.share_fusion
    assert config.char_vocab_size == len(map_char_vocab(read_lines(CHAR_VOCAB[backbone], "chars")).vocab)
    assert config.word_vocab_size == 30001 and config.architectures == ["CharBertForPreTraining"]

    for auto in (AutoModel, AutoModelForPreTraining):
        _, report = auto.from_pretrained(out, output_loading_info=True)
        if auto is AutoModel:  # the base model has no pretraining heads: only those may be left over
            report = dict(report, unexpected_keys={k for k in report["unexpected_keys"] if not k.startswith(("mlm_head.", "nlm_head."))})
        assert not any(report[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), report

    tokenizer = CharBertTokenizer.from_pretrained(out)
    assert tokenizer.char_layout == "reference"
    assert tokenizer.char_vocab == map_char_vocab(read_lines(CHAR_VOCAB[backbone], "chars")).vocab
    assert WordVocab.load(out) == map_term_vocab(read_lines(TERM_VOCAB, "terms")).vocab
    model = AutoModelForPreTraining.from_pretrained(out).eval()
    batch = tokenizer(["Hello there.", "A b"], padding=True, return_tensors="pt")
    with torch.no_grad():
        out_logits = model(**batch).mlm_logits
    assert out_logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(out_logits).all()

    card = (out / "README.md").read_text(encoding="utf-8")
    expected_class = "CharBertForMaskedLM" if backbone == "bert" else "RobertaForMaskedLM"
    assert expected_class in card and "char_padding" in card
    from charbert.model_card import read_model_card

    info = read_model_card(out)["charbert"]
    assert info["source"] == str(authors_dirs[backbone]) and info["word_vocab_size"] == 30001
    assert info["char_vocab_size"] == config.char_vocab_size


@pytest.mark.slow
def test_bert_tokenizer_is_cased_unless_told(tmp_path, authors_dirs):
    def first_piece(out):
        return CharBertTokenizer.from_pretrained(out).tokenize("Hello")[0]

    assert first_piece(convert(authors_dirs["bert"], CHAR_VOCAB["bert"], TERM_VOCAB, tmp_path / "cased")) == "H"
    lower_dir = copy_checkpoint(authors_dirs["bert"], tmp_path / "lower")
    (lower_dir / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}), encoding="utf-8")
    assert first_piece(convert(lower_dir, CHAR_VOCAB["bert"], TERM_VOCAB, tmp_path / "lower_out")) == "h"
    argv = ["--original_checkpoint", lower_dir, "--char_vocab", CHAR_VOCAB["bert"], "--term_vocab", TERM_VOCAB]
    assert main([str(a) for a in argv + ["--output_dir", tmp_path / "forced", "--no-do_lower_case"]]) == 0
    assert first_piece(tmp_path / "forced") == "H"
    assert main([str(a) for a in argv[:2] + ["--char_vocab", CHAR_VOCAB["bert"], "--term_vocab", TERM_VOCAB,
                                             "--output_dir", tmp_path / "lowered", "--do_lower_case"]]) == 0
    assert first_piece(tmp_path / "lowered") == "h"


# ---- errors --------------------------------------------------------------------------------


def cli_args(src, backbone="bert", out="out", char_vocab=None, term_vocab=None):
    return ["--original_checkpoint", src, "--char_vocab", char_vocab or CHAR_VOCAB[backbone],
            "--term_vocab", term_vocab or TERM_VOCAB, "--output_dir", out]


def test_error_not_an_authors_checkpoint(tmp_path, authors_dirs, capsys):
    assert "no checkpoint folder" in run_cli_error(capsys, *cli_args(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "not an authors' CharBERT checkpoint" in run_cli_error(capsys, *cli_args(empty))
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(authors_dirs["bert"] / "config.json", no_weights)
    assert "no pytorch_model.bin" in run_cli_error(capsys, *cli_args(no_weights))
    converted = convert(authors_dirs["bert"], CHAR_VOCAB["bert"], TERM_VOCAB, tmp_path / "converted")
    assert "already a charbert checkpoint" in run_cli_error(capsys, *cli_args(converted))
    other = copy_checkpoint(authors_dirs["bert"], tmp_path / "other")
    torch.save({"encoder.weight": torch.zeros(2)}, other / "pytorch_model.bin")
    assert "not an authors' CharBERT checkpoint" in run_cli_error(capsys, *cli_args(other))


def test_error_plain_bert_passed_by_mistake(tmp_path, capsys):
    plain = tmp_path / "plain"
    plain.mkdir()
    config = BertConfig(vocab_size=VOCAB_SIZE, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    torch.save(BertForMaskedLM(config).state_dict(), plain / "pytorch_model.bin")
    (plain / "config.json").write_text(config.to_json_string(), encoding="utf-8")
    assert "plain BERT checkpoint" in run_cli_error(capsys, *cli_args(plain))


def test_error_vocabulary_sizes(tmp_path, authors_dirs, capsys):
    chars = read_lines(CHAR_VOCAB["bert"], "chars")
    short_chars = tmp_path / "short_chars"
    short_chars.write_text("\n".join(chars[:500] + ["<unk>"]) + "\n", encoding="utf-8")
    err = run_cli_error(capsys, *cli_args(authors_dirs["bert"], char_vocab=short_chars))
    assert "character embedding has 1001 rows" in err and "501 lines" in err
    err = run_cli_error(capsys, *cli_args(authors_dirs["roberta"], "roberta", char_vocab=CHAR_VOCAB["bert"]))
    assert "character embedding has 1050 rows" in err  # the BERT char vocab given for the RoBERTa model
    terms = read_lines(TERM_VOCAB, "terms")
    short_terms = tmp_path / "short_terms"
    short_terms.write_text("\n".join(terms[:100] + ["<unk>"]) + "\n", encoding="utf-8")
    err = run_cli_error(capsys, *cli_args(authors_dirs["bert"], term_vocab=short_terms))
    assert "NLM decoder has 30001 rows" in err and "101 words" in err


def test_error_missing_files(tmp_path, authors_dirs, capsys):
    assert "no character vocabulary" in run_cli_error(capsys, *cli_args(authors_dirs["bert"], char_vocab=tmp_path / "none"))
    no_vocab = copy_checkpoint(authors_dirs["bert"], tmp_path / "no_vocab")
    (no_vocab / "vocab.txt").unlink()
    assert "no vocab.txt" in run_cli_error(capsys, *cli_args(no_vocab))
    no_merges = copy_checkpoint(authors_dirs["roberta"], tmp_path / "no_merges")
    (no_merges / "merges.txt").unlink()
    assert "merges.txt" in run_cli_error(capsys, *cli_args(no_merges, "roberta"))
    argv = ["--original_checkpoint", authors_dirs["bert"], "--char_vocab", CHAR_VOCAB["bert"], "--output_dir", tmp_path / "o"]
    assert "--term_vocab is required" in run_cli_error(capsys, *argv)


def test_error_tampered_fusion_alias(tmp_path, authors_dirs, capsys):
    tampered = copy_checkpoint(authors_dirs["bert"], tmp_path / "tampered")
    state = torch.load(tampered / "pytorch_model.bin", weights_only=True)
    aliases = [k for k in state if k.startswith("bert.encoder.fusion_layer_list.")]
    assert len(aliases) == 2 * 2  # weight + bias, one entry per layer: the same Conv1d
    assert torch.equal(state["bert.encoder.fusion_layer_list.0.weight"], state["bert.encoder.fusion_layer_list.1.weight"])
    state["bert.encoder.fusion_layer_list.1.weight"] = state["bert.encoder.fusion_layer_list.1.weight"].clone() + 1e-3
    torch.save(state, tampered / "pytorch_model.bin")
    err = run_cli_error(capsys, *cli_args(tampered))
    assert "fusion_layer_list.1.weight differs from bert.encoder.fusion_layer_list.0.weight" in err


def test_error_leftover_tensor_is_named(tmp_path, authors_dirs, capsys):
    extra = copy_checkpoint(authors_dirs["bert"], tmp_path / "extra")
    state = torch.load(extra / "pytorch_model.bin", weights_only=True)
    state["bert.encoder.extra_gate.weight"] = torch.zeros(3)
    torch.save(state, extra / "pytorch_model.bin")
    assert "bert.encoder.extra_gate.weight" in run_cli_error(capsys, *cli_args(extra))


def test_error_ambiguous_bert_classifier_needs_head(tmp_path, authors_dirs, capsys, one_torch_thread):
    model = build_authors_model("bert", "token_classification", VOCAB_SIZE)
    src = save_authors_checkpoint(model, tmp_path / "ner", "bert", vocab_tokens("bert", VOCAB_SIZE))
    assert "--head token_classification" in run_cli_error(capsys, *cli_args(src))
    assert main([str(a) for a in cli_args(src, out=tmp_path / "ok")] + ["--head", "token_classification"]) == 0
    assert json.loads((tmp_path / "ok" / "config.json").read_text())["architectures"] == ["CharBertForTokenClassification"]
    with pytest.raises(ConversionError, match="holds a `classifier`"):
        convert(src, CHAR_VOCAB["bert"], TERM_VOCAB, tmp_path / "bad", head="question_answering")
    with pytest.raises(ConversionError, match="holds their pretraining head"):
        convert(authors_dirs["bert"], CHAR_VOCAB["bert"], TERM_VOCAB, tmp_path / "bad", head="question_answering")


# ---- where users' checkpoints are: hub repos, mirrors, the cache ------------------------


def test_output_dir_in_the_original_is_refused(tmp_path, authors_dirs, capsys):
    src = copy_checkpoint(authors_dirs["bert"], tmp_path / "release")
    config_before = (src / "config.json").read_text()
    for out in (src, src / "converted", src / "a" / ".." / "b"):
        err = run_cli_error(capsys, *cli_args(src, out=out))
        assert "--original_checkpoint" in err and "overwrite the authors' config.json" in err, err
    assert (src / "config.json").read_text() == config_before and not (src / "converted").exists()
    assert not (src / "tokenizer_config.json").exists()


def test_unreadable_weights_say_what_they_are_in_one_plain_line(tmp_path, authors_dirs, capsys):
    import os
    import pickle

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    whole = copy_checkpoint(authors_dirs["bert"], tmp_path / "whole")
    torch.save(torch.nn.Linear(2, 2), whole / "pytorch_model.bin")  # a whole model, not a state dict
    payload = copy_checkpoint(authors_dirs["bert"], tmp_path / "payload")
    (payload / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    for src in (whole, payload):
        err = run_cli_error(capsys, *cli_args(src))
        assert "holds pickled Python objects" in err and "not loaded, for safety" in err, err
        assert ("torch.nn.modules.linear.Linear" if src == whole else "system") in err
        assert "\x1b" not in err and "weights_only" not in err and "two options" not in err
    assert not marker.exists()  # nothing ran
    truncated = copy_checkpoint(authors_dirs["bert"], tmp_path / "truncated")
    data = (truncated / "pytorch_model.bin").read_bytes()
    (truncated / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    garbage = copy_checkpoint(authors_dirs["bert"], tmp_path / "garbage")
    (garbage / "pytorch_model.bin").write_bytes(b"not a checkpoint " * 50)
    for src in (truncated, garbage):
        err = run_cli_error(capsys, *cli_args(src))
        assert "is not a readable PyTorch state dict (truncated or corrupt?)" in err and "\x1b" not in err, err


def test_missing_vocabulary_names_what_is_needed_and_tokenizer_name_supplies_it(tmp_path, authors_dirs, capsys):
    no_vocab = copy_checkpoint(authors_dirs["bert"], tmp_path / "no_vocab")
    (no_vocab / "vocab.txt").unlink()
    err = run_cli_error(capsys, *cli_args(no_vocab))
    assert "bert-base-cased's (vocab.txt, 28,996 entries)" in err and "--tokenizer_name bert-base-cased" in err, err
    assert "copy it from the release folder" not in err
    pieces = tmp_path / "bert-pieces"
    pieces.mkdir()
    shutil.copy(authors_dirs["bert"] / "vocab.txt", pieces)
    assert main([str(a) for a in cli_args(no_vocab, out=tmp_path / "ok")] + ["--tokenizer_name", str(pieces)]) == 0
    assert CharBertTokenizer.from_pretrained(tmp_path / "ok").tokenize("Hello")[0] == "H"
    err = run_cli_error(capsys, *cli_args(no_vocab, out=tmp_path / "o2"), "--tokenizer_name", tmp_path)
    assert f"--tokenizer_name {tmp_path}: {tmp_path} has no vocab.txt" in err
    no_bpe = copy_checkpoint(authors_dirs["roberta"], tmp_path / "no_bpe")
    (no_bpe / "vocab.json").unlink()
    err = run_cli_error(capsys, *cli_args(no_bpe, "roberta"))
    assert "roberta-base's (vocab.json + merges.txt, 50,265 entries)" in err and "--tokenizer_name roberta-base" in err


def test_lower_casing_a_visibly_cased_vocabulary_warns(tmp_path, authors_dirs, caplog):
    from charbert.convert import visibly_cased

    assert visibly_cased(vocab_tokens("bert", VOCAB_SIZE)) and not visibly_cased(["[PAD]", "[UNK]", "the", "##s"])
    lower_dir = copy_checkpoint(authors_dirs["bert"], tmp_path / "lower")
    (lower_dir / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}), encoding="utf-8")
    with caplog.at_level("WARNING", logger="charbert.convert"):
        convert(lower_dir, CHAR_VOCAB["bert"], TERM_VOCAB, tmp_path / "out")
    assert any("do_lower_case=true" in r.getMessage() and "upper-case pieces" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="charbert.convert"):  # asked for on the command line: no warning
        convert(lower_dir, CHAR_VOCAB["bert"], TERM_VOCAB, tmp_path / "out2", do_lower_case=True)
    assert not [r for r in caplog.records if "do_lower_case" in r.getMessage()]


@pytest.mark.slow
def test_model_card_says_converted_from_the_source_as_named(tmp_path, authors_dirs):
    from types import SimpleNamespace

    from charbert.convert import base_model_of, read_authors_checkpoint
    from charbert.model_card import read_model_card

    out = convert(authors_dirs["roberta"], CHAR_VOCAB["roberta"], TERM_VOCAB, tmp_path / "out")
    card = (out / "README.md").read_text(encoding="utf-8")
    assert f"converted from the CharBERT authors' release `{authors_dirs['roberta']}`" in card
    assert "trained with the `charbert` package" not in card and "base model: `None`" not in card
    assert read_model_card(out)["charbert"]["source"] == str(authors_dirs["roberta"])
    ckpt = read_authors_checkpoint(authors_dirs["bert"])
    base = SimpleNamespace(vocab_size=28996, hidden_size=768, num_hidden_layers=12)
    assert base_model_of(ckpt, base) == "bert-base-cased"
    ckpt.backbone = "roberta"
    assert base_model_of(ckpt, SimpleNamespace(vocab_size=50265, hidden_size=768, num_hidden_layers=12)) == "roberta-base"
    assert base_model_of(ckpt, SimpleNamespace(vocab_size=VOCAB_SIZE, hidden_size=32, num_hidden_layers=2)) is None


@pytest.mark.slow  # subprocesses (huggingface_hub reads HF_HUB_OFFLINE at import)
def test_hub_names_and_a_safetensors_mirror_from_the_offline_cache(tmp_path, authors_dirs):
    from safetensors.torch import load_file, save_file
    from test_hub_names import add_to_hub_cache, run_offline

    hub = tmp_path / "hub"
    release = copy_checkpoint(authors_dirs["bert"], tmp_path / "release")
    config = json.loads((release / "config.json").read_text())
    (release / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))  # as the hub copies say
    add_to_hub_cache(hub, "imvladikon/charbert-bert-wiki", release, revision="v1")
    mirror = copy_checkpoint(release, tmp_path / "mirror")
    state = torch.load(mirror / "pytorch_model.bin", weights_only=True)
    save_file({k: v.clone().contiguous() for k, v in state.items()}, str(mirror / "model.safetensors"))
    (mirror / "pytorch_model.bin").unlink()
    add_to_hub_cache(hub, "org/charbert-mirror", mirror)
    pieces = tmp_path / "pieces"  # a tokenizer repo (as bert-base-cased is) for a release without vocab.txt
    pieces.mkdir()
    shutil.copy(release / "vocab.txt", pieces)
    add_to_hub_cache(hub, "org/bert-pieces", pieces)
    no_vocab = copy_checkpoint(release, tmp_path / "no_vocab")
    (no_vocab / "vocab.txt").unlink()

    outs = {}
    for name, extra in (("imvladikon/charbert-bert-wiki", ["--revision", "v1"]), ("org/charbert-mirror", []),
                        (str(no_vocab), ["--tokenizer_name", "org/bert-pieces"])):
        outs[name] = tmp_path / name.split("/")[1]
        done = run_offline(tmp_path, hub, "-m", "charbert.convert", "--original_checkpoint", name, *extra,
                           "--char_vocab", str(CHAR_VOCAB["bert"]), "--term_vocab", str(TERM_VOCAB),
                           "--output_dir", str(outs[name]))
        assert done.returncode == 0, done.stderr[-3000:]
    card = (outs["imvladikon/charbert-bert-wiki"] / "README.md").read_text()
    assert "converted from the CharBERT authors' release `imvladikon/charbert-bert-wiki@v1`" in card
    a, *others = (load_file(str(out / "model.safetensors")) for out in outs.values())
    assert all(a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) for b in others)

    # The unconverted hub copy never loads as plain BERT, by hub name either.
    done = run_offline(tmp_path, hub, "-c", "import charbert\nfrom transformers import AutoModel\n"
                       "AutoModel.from_pretrained('org/charbert-mirror')")
    assert done.returncode != 0 and "unconverted CharBERT checkpoint" in done.stderr
    assert "python -m charbert.convert --original_checkpoint" in done.stderr
    done = run_offline(tmp_path, hub, "-m", "charbert.convert", "--original_checkpoint", "org/absent",
                       "--char_vocab", str(CHAR_VOCAB["bert"]), "--output_dir", str(tmp_path / "x"))
    assert done.returncode == 2 and "no checkpoint folder at org/absent, and as a hub name" in done.stderr
