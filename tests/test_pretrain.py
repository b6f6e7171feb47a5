"""Pretraining: packing, the MLM + NLM collator, the pretrain program (default job, resume, 2 processes, bad input)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import corpus_lines

from charbert import CharBertForPreTraining, CharBertTokenizer
from charbert.chars import MASK_ID
from charbert.pretraining.blocks import LINE_SEPARATOR, PackedBlocks, pack_corpus, pack_lines
from charbert.pretraining.collator import PretrainingCollator, apply_word_edits, choose_whole_words
from charbert.pretraining.vocab import WordVocab, split_words
from charbert.training import read_log

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def blocks(tiny_texts) -> list[str]:
    return [t for t in tiny_texts if len(t.split()) > 20][:400]


@pytest.fixture(scope="module")
def tok(bert_dir) -> CharBertTokenizer:
    return CharBertTokenizer.from_pretrained(bert_dir)


@pytest.fixture(scope="module")
def word_vocab(tiny_texts) -> WordVocab:
    return WordVocab.build(tiny_texts, max_size=800)


# ---- packing --------------------------------------------------------------------------------


def test_packing_keeps_lines_whole_and_separated(tok, tiny_texts, tmp_path):
    lines = tiny_texts[:300]
    packed = list(pack_lines(lines, tok.tokenizer, max_tokens=60))
    rebuilt = LINE_SEPARATOR.join(packed).split(LINE_SEPARATOR)
    # every line appears whole, in order, separated from its neighbours (long lines split into pieces)
    joined = " ".join(lines)
    assert " ".join(rebuilt).split() == joined.split(), "no text lost, duplicated or reordered"
    for block in packed:
        assert len(tok.tokenizer(block, add_special_tokens=False)["input_ids"]) <= 60
    short = [ln for ln in lines if len(tok.tokenizer(ln, add_special_tokens=False)["input_ids"]) <= 60]
    assert set(short) <= set(rebuilt), "a line that fits is never cut"


def test_pack_corpus_files_gz_and_cache(tok, tiny_texts, tmp_path):
    (tmp_path / "a.txt").write_text("\n".join(tiny_texts[:50]) + "\n\n\n", encoding="utf-8")
    with gzip.open(tmp_path / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(tiny_texts[50:100]))
    (tmp_path / "c.txt").write_bytes(b"valid line one\n\xff\xfe broken bytes\nvalid line two\n")
    data = pack_corpus([str(tmp_path / "*.txt*")], tok.tokenizer, tmp_path / "cache", 100, show_progress=False)
    assert isinstance(data, PackedBlocks) and len(data) > 5
    text = LINE_SEPARATOR.join(data[i] for i in range(len(data)))
    assert tiny_texts[0] in text and tiny_texts[99] in text and "valid line two" in text
    assert data.meta["read_stats"]["skipped_non_utf8"] == 1 and data.meta["read_stats"]["empty_lines"] == 2
    again = pack_corpus([str(tmp_path / "*.txt*")], tok.tokenizer, tmp_path / "cache", 100, show_progress=False)
    assert again.directory == data.directory, "a finished build is reused"
    with pytest.raises(FileNotFoundError):
        pack_corpus([str(tmp_path / "missing.txt")], tok.tokenizer, tmp_path / "cache", 100)


# ---- the collator ---------------------------------------------------------------------------


def test_apply_word_edits_and_whole_word_choice():
    text = "Hello, big world"
    spans = split_words(text)
    edited, starts = apply_word_edits(text, spans, ["Helo", ",", "bigg", "world"])
    assert edited == "Helo, bigg world" and starts.tolist() == [0, 4, 6, 11]
    token_word = np.array([-1, 0, 0, 1, 2, 2, 2, -1])
    for seed in range(20):
        chosen = choose_whole_words(token_word, np.array([0, 1, 2]), target=2, rng=np.random.default_rng(seed))
        words = set(token_word[chosen].tolist())
        # word 2 (3 tokens) would overshoot the target; a chosen word always has all its tokens
        assert words in ({0}, {1}) and chosen.sum() == sum(int((token_word == w).sum()) for w in words)


def collate_many(collator, blocks, seed=0, batch=16):
    rng = np.random.default_rng(seed)
    return [collator(blocks[i : i + batch], rng=rng) for i in range(0, len(blocks), batch)]


def test_collator_rates_disjointness_and_labels(tok, word_vocab, blocks):
    collator = PretrainingCollator(tok, word_vocab, max_seq_length=128)
    batches = collate_many(collator, blocks)
    real = mlm = nlm = masked = randomised = 0
    for b in batches:
        labels, nlm_labels = b["labels"], b["nlm_labels"]
        special = torch.isin(b["input_ids"], torch.tensor(tok.all_special_ids)) & (labels == -100)
        real += int((b["attention_mask"].bool() & ~special).sum())
        mlm += int((labels != -100).sum())
        nlm += int((nlm_labels != -100).sum())
        assert not ((labels != -100) & (nlm_labels != -100)).any(), "MLM and NLM positions never overlap"
        chosen = labels != -100
        masked += int((b["input_ids"][chosen] == tok.mask_token_id).sum())
        randomised += int(((b["input_ids"] != labels) & chosen & (b["input_ids"] != tok.mask_token_id)).sum())
        # characters of every MLM-chosen token are hidden
        for row, pos in chosen.nonzero().tolist():
            s, e = b["char_start_positions"][row, pos], b["char_end_positions"][row, pos]
            assert (b["char_input_ids"][row, s : e + 1] == MASK_ID).all()
    assert abs(mlm / real - 0.10) < 0.01, mlm / real
    assert 0.08 < nlm / real < 0.25, nlm / real  # 15% of words; noised words often split into several subwords
    assert abs(masked / mlm - 0.8) < 0.03 and abs(randomised / mlm - 0.1) < 0.03


def test_collator_nlm_labels_on_every_subword_of_noised_words(tok, word_vocab, blocks):
    collator = PretrainingCollator(tok, word_vocab, max_seq_length=128, noise_probability=0.15)
    rng = np.random.default_rng(3)
    block = blocks[0]
    batch = collator([block], rng=rng)
    # redo the same draws to know which words were noised
    from charbert.noise import PRETRAIN_RULES, noise_words

    spans = split_words(block)
    words = [block[s:e] for s, e in spans]
    new_words, changed = noise_words(words, np.random.default_rng(3), PRETRAIN_RULES, 0.15)
    edited, starts = apply_word_edits(block, spans, new_words)
    enc = tok.tokenizer(edited, truncation=True, max_length=128, return_offsets_mapping=True)
    nlm = batch["nlm_labels"][0].tolist()
    n_checked = 0
    for t, (s, e) in enumerate(enc["offset_mapping"]):
        if e <= s:
            continue
        w = int(np.searchsorted(starts, s, side="right") - 1)
        if w in changed:
            assert nlm[t] == word_vocab.id(words[w]), (words[w], new_words[w])
            n_checked += 1
        else:
            assert nlm[t] == -100
    assert n_checked >= 3


def test_collator_is_deterministic_and_objectives(tok, word_vocab, blocks):
    collator = PretrainingCollator(tok, word_vocab, max_seq_length=64)
    a = collator(blocks[:4], rng=np.random.default_rng(7))
    b = collator(blocks[:4], rng=np.random.default_rng(7))
    c = collator(blocks[:4], rng=np.random.default_rng(8))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["labels"], c["labels"])
    adv = PretrainingCollator(tok, None, max_seq_length=64, objective="advbert")(blocks[:4], rng=np.random.default_rng(7))
    assert {"input_ids", "attention_mask", "labels"} <= set(adv) <= {"input_ids", "attention_mask", "token_type_ids", "labels"}
    mlm = PretrainingCollator(tok, None, max_seq_length=64, objective="mlm")(blocks[:4], rng=np.random.default_rng(7))
    clean = tok.tokenizer(blocks[:4], truncation=True, max_length=64, padding=True, return_tensors="pt")["input_ids"]
    unchanged = mlm["labels"] == -100
    assert torch.equal(mlm["input_ids"][unchanged], clean[unchanged]), "no noise for plain MLM"
    with pytest.raises(ValueError, match="word vocabulary"):
        PretrainingCollator(tok, None, objective="charbert")


@pytest.mark.data
def test_collator_on_real_corpus_runs_the_model(tok, word_vocab, bert_dir):
    lines = corpus_lines(48)
    collator = PretrainingCollator(tok, word_vocab, max_seq_length=96)
    batch = collator(lines[:8], rng=np.random.default_rng(0))
    model = CharBertForPreTraining.from_pretrained(bert_dir, char_vocab_size=len(tok.char_vocab), word_vocab_size=len(word_vocab))
    out = model(**batch)
    assert torch.isfinite(out.loss) and out.mlm_logits.shape[0] == int((batch["labels"] != -100).sum())


# ---- the program ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_job(tmp_path_factory, tiny_texts, bert_dir, word_vocab):
    """A corpus, a vocabulary folder and a tiny plain BERT to start from."""
    root = tmp_path_factory.mktemp("pretrain_job")
    (root / "train.txt").write_text("\n".join(tiny_texts[:600]), encoding="utf-8")
    (root / "valid.txt").write_text("\n".join(tiny_texts[600:700]), encoding="utf-8")
    vocab = root / "vocab"
    vocab.mkdir()
    word_vocab.save(vocab)
    return root


def pretrain_args(job: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", str(job.parent / "model"), "--train_file", str(job / "train.txt"),
        "--validation_file", str(job / "valid.txt"), "--word_vocab", str(job / "vocab"),
        "--max_seq_length", "64", "--per_device_train_batch_size", "4", "--learning_rate", "1e-3",
        "--logging_steps", "1", "--output_dir", str(out), "--seed", "3", "--max_eval_blocks", "8", *extra,
    ]


@pytest.fixture(scope="module")
def job(small_job, bert_dir):
    model = small_job.parent / "model"
    if not model.exists():
        shutil.copytree(bert_dir, model)
    return small_job


@pytest.mark.slow
def test_exact_resume_reproduces_losses(job, tmp_path):
    from pretrain.__main__ import main

    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert main(pretrain_args(job, full, "--max_train_steps", "8", "--checkpointing_steps", "4")) == 0
    shutil.copytree(full / "step_4", resumed / "step_4")
    assert main(pretrain_args(job, resumed, "--max_train_steps", "8", "--checkpointing_steps", "4",
                              "--resume_from_checkpoint", "latest")) == 0
    a = {r["step"]: r for r in read_log(full / "log.jsonl") if "loss" in r}
    b = {r["step"]: r for r in read_log(resumed / "log.jsonl") if "loss" in r}
    assert set(range(5, 9)) <= set(b)
    for step in range(5, 9):
        for key in ("loss", "mlm_loss", "nlm_loss"):
            assert abs(a[step][key] - b[step][key]) < 1e-5, (step, key)
    # the final model is a loadable CharBERT with its tokenizer and vocabularies
    model = CharBertForPreTraining.from_pretrained(full)
    tok = CharBertTokenizer.from_pretrained(full)
    assert WordVocab.load(full).words == WordVocab.load(job / "vocab").words
    assert model.config.word_vocab_size == len(WordVocab.load(full)) and len(tok.char_vocab) <= model.config.char_vocab_size


def test_stop_after_steps_splits_a_run_into_sittings(job, tmp_path, capsys):
    """--stop_after_steps 5 of 8 ends the sitting with a checkpoint at step 5 and no final model; resuming
    from it finishes the run with the losses of an uninterrupted one (the schedule kept its 8 steps)."""
    from pretrain.__main__ import main

    def losses(out):
        return {r["step"]: (r["loss"], r["lr"]) for r in read_log(out / "log.jsonl") if "loss" in r}

    full, split = tmp_path / "full", tmp_path / "split"
    assert main(pretrain_args(job, full, "--max_train_steps", "8", "--checkpointing_steps", "4")) == 0
    assert main(pretrain_args(job, split, "--max_train_steps", "8", "--checkpointing_steps", "4",
                              "--stop_after_steps", "5")) == 0
    assert "Stopped after step 5" in capsys.readouterr().out
    assert (split / "step_5").is_dir() and not (split / "model.safetensors").exists()
    assert set(losses(split)) == set(range(1, 6))
    # a stop at or before the step the run resumes at is one line, not an empty sitting
    assert main(pretrain_args(job, split, "--max_train_steps", "8", "--stop_after_steps", "5",
                              "--resume_from_checkpoint", "latest")) == 2
    assert "--stop_after_steps 5" in capsys.readouterr().err
    assert main(pretrain_args(job, split, "--max_train_steps", "8", "--checkpointing_steps", "4",
                              "--resume_from_checkpoint", "latest")) == 0
    a, b = losses(full), losses(split)
    assert set(b) == set(range(1, 9))
    for step in range(1, 9):
        assert b[step] == pytest.approx(a[step], abs=1e-5), step
    assert (split / "model.safetensors").exists()


@pytest.mark.slow
def test_dataloader_workers_give_the_same_batches_and_resume_exactly(job, tmp_path):
    """--dataloader_num_workers 2 trains on the same batches as 0 workers (the collator's draws are keyed
    by seed, epoch and the batch's block indices, not by the process that collates), and a run stopped
    at its step-4 checkpoint and resumed with workers reproduces the rest."""
    from pretrain.__main__ import main

    def losses(out):
        return {r["step"]: (r["loss"], r["mlm_loss"], r["nlm_loss"]) for r in read_log(out / "log.jsonl") if "loss" in r}

    runs = {}
    for workers in (0, 2):
        out = tmp_path / f"workers{workers}"
        assert main(pretrain_args(job, out, "--max_train_steps", "8", "--checkpointing_steps", "4",
                                  "--dataloader_num_workers", str(workers))) == 0
        runs[workers] = out
    zero, two = losses(runs[0]), losses(runs[2])
    assert set(zero) == set(two) == set(range(1, 9))
    for step in range(1, 9):
        assert two[step] == pytest.approx(zero[step], abs=1e-6), step
    a = CharBertForPreTraining.from_pretrained(runs[0]).state_dict()
    b = CharBertForPreTraining.from_pretrained(runs[2]).state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), "the same batches make the same weights"

    resumed = tmp_path / "resumed"
    shutil.copytree(runs[2] / "step_4", resumed / "step_4")  # what a run killed after step 4 leaves
    assert main(pretrain_args(job, resumed, "--max_train_steps", "8", "--checkpointing_steps", "4",
                              "--dataloader_num_workers", "2", "--resume_from_checkpoint", "latest")) == 0
    again = losses(resumed)
    for step in range(5, 9):
        assert again[step] == pytest.approx(two[step], abs=1e-6), step


@pytest.mark.slow
def test_default_job_shortened(tmp_path, capsys):
    from pretrain.__main__ import main

    out = tmp_path / "default"
    assert main(["--max_train_steps", "4", "--eval_steps", "4", "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Default job" in printed and str(out) in printed
    model = CharBertForPreTraining.from_pretrained(out)
    summary = read_log(out / "log.jsonl")
    assert any("eval_nlm_accuracy" in r for r in summary)
    assert model.config.hidden_size == 128


def test_bad_input_is_reported(job, tmp_path, capsys):
    from pretrain.__main__ import main

    out = tmp_path / "bad"
    args = pretrain_args(job, out, "--max_train_steps", "1")
    missing = [a if not a.endswith("train.txt") else str(tmp_path / "nope.txt") for a in args]
    assert main(missing) == 2 and "nope.txt" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("")
    empty = [a if not a.endswith("train.txt") else str(tmp_path / "empty.txt") for a in args]
    assert main(empty) == 2 and "empty" in capsys.readouterr().err
    too_long = [a if a != "64" else "4096" for a in args]
    assert main(too_long) == 2 and "max_seq_length" in capsys.readouterr().err
    # a CharBERT checkpoint with another word vocabulary
    trained = tmp_path / "trained"
    assert main(pretrain_args(job, trained, "--max_train_steps", "1")) == 0
    other = tmp_path / "other_vocab"
    WordVocab(["alpha", "beta"]).save(other)
    mismatch = pretrain_args(job, out, "--max_train_steps", "1")
    mismatch[mismatch.index("--model_name_or_path") + 1] = str(trained)
    mismatch[mismatch.index("--word_vocab") + 1] = str(other)
    capsys.readouterr()
    assert main(mismatch) == 2 and "word vocabulary" in capsys.readouterr().err
    # resuming from a checkpoint of another model
    other_ckpt = tmp_path / "ckpt_other"
    (other_ckpt / "step_1").mkdir(parents=True)
    (other_ckpt / "step_1" / "trainer_state.json").write_text(json.dumps({"global_step": 1}))
    resume = pretrain_args(job, other_ckpt, "--max_train_steps", "2", "--resume_from_checkpoint", "latest")
    assert main(resume) == 2 and "step_1" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_with_torchrun(job, tmp_path):
    out = tmp_path / "dist"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "pretrain",
           *pretrain_args(job, out, "--max_train_steps", "4", "--checkpointing_steps", "2")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("step_")) == ["step_2", "step_4"]
    assert not list(out.glob(".tmp-*"))
    assert len(list((out / "step_4").glob("random_states_*.pkl"))) == 2, "both ranks saved their RNG state"
    log = [r for r in read_log(out / "log.jsonl") if "loss" in r]
    assert [r["step"] for r in log] == [1, 2, 3, 4], "one log, written by the main process"
    assert CharBertForPreTraining.from_pretrained(out).config.word_vocab_size == 801


# ---- RoBERTa (byte-level BPE) end to end, both character layouts ---------------------------


def test_whole_words_of_g_prefixed_pieces():
    """Word ids of a hand-made sentence's pieces, with trimmed and untrimmed `Ġ` offsets."""
    from charbert.pretraining.collator import token_words

    text = "Tokenization isn't hard"
    word_ends = np.array([e for _, e in split_words(text)])  # Tokenization | isn | ' | t | hard
    # <s> Token ization Ġisn 't Ġhard </s>, trimmed offsets (the `Ġ` piece starts at its letter)
    trimmed = np.array([[0, 0], [0, 5], [5, 12], [13, 16], [16, 18], [19, 23], [0, 0]])
    real = np.array([False, True, True, True, True, True, False])
    assert token_words(trimmed, real, word_ends).tolist() == [-1, 0, 0, 1, 2, 4, -1]
    untrimmed = trimmed.copy()
    untrimmed[[3, 5], 0] -= 1  # the span starts at the space before the word
    assert token_words(untrimmed, real, word_ends).tolist() == [-1, 0, 0, 1, 2, 4, -1]
    # a trailing-space piece belongs to no word
    assert token_words(np.array([[23, 24]]), np.array([True]), word_ends).tolist() == [-1]


@pytest.fixture(scope="module")
def roberta_word_vocab(tiny_texts) -> WordVocab:
    return WordVocab.build(tiny_texts, max_size=800)


@pytest.mark.parametrize("layout", ["offsets", "reference"])
def test_roberta_collator_whole_words_and_nlm_labels(roberta_dir, roberta_word_vocab, blocks, layout):
    """Every piece of a noised word carries its NLM label; MLM picks whole words of `Ġ` pieces; the
    chosen tokens' characters are hidden as the layout does it."""
    from charbert.pretraining.collator import token_words

    plain = CharBertTokenizer.from_pretrained(roberta_dir)
    tok = CharBertTokenizer(plain.tokenizer, plain.char_vocab, char_layout=layout)
    assert tok.continuation_prefix is None
    collator = PretrainingCollator(tok, roberta_word_vocab, max_seq_length=96, noise_probability=0.3, mlm_probability=0.15)
    from charbert.noise import PRETRAIN_RULES, noise_words

    n_noised = n_multi_piece = 0
    for b, block in enumerate(blocks[:6]):
        batch = collator([block], rng=np.random.default_rng(b))
        rng = np.random.default_rng(b)
        spans = split_words(block)
        words = [block[s:e] for s, e in spans]
        new_words, changed = noise_words(words, rng, PRETRAIN_RULES, 0.3)
        edited, starts = apply_word_edits(block, spans, new_words)
        enc = tok.tokenizer(edited, truncation=True, max_length=96, return_offsets_mapping=True)
        offsets = np.array(enc["offset_mapping"])
        real = np.array([s is not None for s in enc.sequence_ids(0)]) & (offsets[:, 1] > offsets[:, 0])
        word = token_words(offsets, real, starts + np.array([len(w) for w in new_words]))
        nlm, labels = batch["nlm_labels"][0].numpy(), batch["labels"][0].numpy()
        for w in set(word[real].tolist()):
            pieces = word == w
            if w in changed:
                assert (nlm[pieces] == roberta_word_vocab.id(words[w])).all()
                n_noised += 1
                n_multi_piece += int(pieces.sum() > 1)
            else:
                assert (nlm[pieces] == -100).all()
            chosen = labels[pieces] != -100
            assert chosen.all() or not chosen.any(), "MLM takes whole words"
        hidden = labels != -100
        chars, s, e = (batch[k][0].numpy() for k in ("char_input_ids", "char_start_positions", "char_end_positions"))
        if layout == "offsets":
            assert all((chars[s[t] : e[t] + 1] == MASK_ID).all() for t in np.flatnonzero(hidden))
        else:
            assert batch["char_input_ids"].shape[1] == 6 * batch["input_ids"].shape[1]
            assert all(s[t] == e[t] and chars[s[t]] == 0 for t in np.flatnonzero(hidden))
    assert n_noised >= 5 and n_multi_piece >= 1


def _charbert_start(source: Path, out: Path, word_vocab: WordVocab, layout: str) -> Path:
    """A CharBERT folder built on a plain checkpoint with the given character layout."""
    tok = CharBertTokenizer.from_pretrained(source)
    model = CharBertForPreTraining.from_pretrained(source, char_vocab_size=len(tok.char_vocab), word_vocab_size=len(word_vocab),
                                                   char_layout=layout)
    model.save_pretrained(out)
    CharBertTokenizer(tok.tokenizer, tok.char_vocab, char_layout=layout).save_pretrained(out)
    word_vocab.save(out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["offsets", "reference"])
def test_pretrain_program_on_tiny_roberta(roberta_dir, roberta_word_vocab, small_job, tmp_path, layout):
    from pretrain.__main__ import main

    start = _charbert_start(roberta_dir, tmp_path / "start", roberta_word_vocab, layout)
    args = pretrain_args(small_job, tmp_path / "out", "--max_train_steps", "3", "--eval_steps", "3")
    args[args.index("--model_name_or_path") + 1] = str(start)
    args[args.index("--word_vocab") + 1] = str(start)
    assert main(args) == 0
    log = [r for r in read_log(tmp_path / "out" / "log.jsonl") if "loss" in r]
    assert len(log) == 3 and all(np.isfinite(r["loss"]) and r["nlm_loss"] > 0 for r in log)
    assert CharBertTokenizer.from_pretrained(tmp_path / "out").char_layout == layout
    assert CharBertForPreTraining.from_pretrained(tmp_path / "out").config.char_layout == layout


@pytest.mark.slow
def test_converted_roberta_checkpoint_continues_pretraining(small_job, tmp_path):
    """The authors' RoBERTa CharBERT, converted, pretrains on from its own weights (reference layout)."""
    import reference
    from safetensors.torch import load_file

    from charbert.convert import convert
    from pretrain.__main__ import main

    reference.authors_code_or_skip()
    tokens = reference.vocab_tokens("roberta", 200)
    theirs = reference.build_authors_model("roberta", "pretraining", vocab_size=len(tokens))
    authors_dir = reference.save_authors_checkpoint(theirs, tmp_path / "authors", "roberta", tokens)
    converted = convert(authors_dir, reference.CHAR_VOCAB["roberta"], reference.TERM_VOCAB, tmp_path / "converted")
    assert CharBertTokenizer.from_pretrained(converted).char_layout == "reference"
    args = pretrain_args(small_job, tmp_path / "out", "--max_train_steps", "2", "--learning_rate", "0", "--max_seq_length", "32")
    args[args.index("--model_name_or_path") + 1] = str(converted)
    args[args.index("--word_vocab") + 1] = str(converted)
    assert main(args) == 0
    log = [r for r in read_log(tmp_path / "out" / "log.jsonl") if "loss" in r]
    assert len(log) == 2 and all(np.isfinite(r["loss"]) for r in log)
    before, after = load_file(str(converted / "model.safetensors")), load_file(str(tmp_path / "out" / "model.safetensors"))
    assert all(".pooler." in k for k in set(before) - set(after)) and set(after) <= set(before)  # pretraining has no pooler
    assert all(torch.equal(before[k], after[k]) for k in after), "it started from its own weights"


def test_collator_pauses_the_garbage_collector_while_it_builds_a_batch(tok, word_vocab, blocks, monkeypatch):
    import gc

    from charbert.pretraining import collator as collator_module

    seen = []
    original = collator_module.align_offsets_batch

    def recording(*args, **kwargs):
        seen.append(gc.isenabled())
        return original(*args, **kwargs)

    monkeypatch.setattr(collator_module, "align_offsets_batch", recording)
    collator = PretrainingCollator(tok, word_vocab, max_seq_length=64)
    was_enabled = gc.isenabled()
    try:
        gc.enable()
        batch = collator(blocks[:4], rng=np.random.default_rng(0))
        assert seen == [False] and gc.isenabled() and batch["char_input_ids"].shape[0] == 4
    finally:
        (gc.enable if was_enabled else gc.disable)()


@pytest.mark.slow
def test_plain_checkpoint_gets_the_measured_recipe_unless_told_otherwise(job, tmp_path, capsys):
    from pretrain.__main__ import PLAIN_CHECKPOINT_RECIPE, main

    def run(out, *extra):
        assert main(pretrain_args(job, out, "--max_train_steps", "1", "--checkpointing_steps", "1", *extra)) == 0
        config = CharBertForPreTraining.from_pretrained(out).config
        trainer = json.loads((out / "step_1" / "trainer_state.json").read_text())["config"]
        return config, trainer

    config, trainer = run(tmp_path / "recipe")
    assert config.new_module_init == PLAIN_CHECKPOINT_RECIPE["new_module_init"] == "identity"
    assert config.share_fusion is False and trainer["new_module_lr_multiplier"] == 5.0
    config, trainer = run(tmp_path / "authors", "--new_module_init", "reference", "--share_fusion", "true",
                          "--new_module_lr_multiplier", "1")
    assert (config.new_module_init, config.share_fusion, trainer["new_module_lr_multiplier"]) == ("reference", True, 1.0)
    # Continuing a CharBERT checkpoint: nothing is new, so no recipe (and a start flag is an error).
    _, trainer = run(tmp_path / "again", "--model_name_or_path", str(tmp_path / "recipe"))
    assert trainer["new_module_lr_multiplier"] == 1.0
    assert main(pretrain_args(job, tmp_path / "x", "--model_name_or_path", str(tmp_path / "recipe"),
                              "--new_module_init", "identity")) != 0
    assert main(pretrain_args(job, tmp_path / "y", "--objective", "advbert", "--share_fusion", "false")) != 0
    assert "--share_fusion" in capsys.readouterr().err
