"""Reliability contracts: same seed = same run, exact or refused resumes, locked
output and cache folders, vocabularies that belong to their checkpoint, bounded memory on any
input, and one-line errors instead of tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from charbert.pretraining.vocab import WordVocab
from charbert.training import read_log

REPO = Path(__file__).resolve().parents[1]


def env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TOKENIZERS_PARALLELISM="false")


def run_program(*argv: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=REPO, env=env(), capture_output=True, text=True,
                          timeout=timeout)


def error_line(proc: subprocess.CompletedProcess, prog: str) -> str:
    """The program failed with exit code 2 and one `prog: error: ...` line, no traceback."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"{prog}: error: "), line
    return line


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_texts, bert_dir) -> Path:
    """A corpus, a word/char vocabulary folder and a tiny plain BERT to pretrain from."""
    import shutil

    root = tmp_path_factory.mktemp("reliability_job")
    (root / "train.txt").write_text("\n".join(tiny_texts[:300]), encoding="utf-8")
    vocab = root / "vocab"
    vocab.mkdir()
    WordVocab.build(tiny_texts, max_size=400).save(vocab)
    shutil.copytree(bert_dir, root / "model")
    return root


def pretrain_argv(job: Path, out: Path, *extra: str) -> list[str]:
    return ["pretrain", "--model_name_or_path", str(job / "model"), "--train_file", str(job / "train.txt"),
            "--word_vocab", str(job / "vocab"), "--max_seq_length", "32", "--per_device_train_batch_size", "4",
            "--learning_rate", "1e-3", "--logging_steps", "1", "--max_train_steps", "3", "--output_dir", str(out),
            *extra]


def losses(out: Path) -> list[tuple]:
    return [(r["step"], r["loss"], r.get("mlm_loss"), r.get("nlm_loss")) for r in read_log(out / "log.jsonl")
            if "loss" in r]


# ---- 1. same command, same seed: the same run -------------------------------------------


@pytest.mark.slow
def test_same_command_twice_gives_identical_losses(job, tmp_path):
    # From a plain BERT: the character modules and heads are new, so they must be seeded too.
    first = run_program(*pretrain_argv(job, tmp_path / "a"))
    second = run_program(*pretrain_argv(job, tmp_path / "b"))
    assert first.returncode == 0 and second.returncode == 0, first.stderr[-2000:] + second.stderr[-2000:]
    assert len(losses(tmp_path / "a")) == 3
    assert losses(tmp_path / "a") == losses(tmp_path / "b")  # every logged loss, exactly


# ---- 7. bounded memory on any input -------------------------------------------------------


@pytest.mark.slow  # subprocesses
def test_a_one_megabyte_line_runs_in_bounded_memory(bert_dir):
    script = str(REPO / "tests" / "memory_script.py")
    peaks = {}
    for kind in ("normal", "long"):
        proc = subprocess.run([sys.executable, script, str(bert_dir), kind], cwd=REPO, env=env(),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        peaks[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
    # The million characters of the one [UNK] token are cut to its two ends: the batch has as
    # many character positions as the normal one, and the process peaks close to it (without
    # the cap the GRU over 1M characters took > 20 GB).
    assert peaks["long"]["chars"] <= peaks["normal"]["chars"] + 20
    assert peaks["long"]["peak_mb"] < 1.5 * peaks["normal"]["peak_mb"], peaks


# ---- 3. one run per output folder ---------------------------------------------------------

LOCK_SCRIPT = """
import sys, time
from charbert.training.lock import lock_output_dir
lock_output_dir(sys.argv[1])
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


@pytest.mark.slow  # subprocesses
def test_a_second_run_into_the_same_output_dir_is_refused(job, tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", LOCK_SCRIPT, str(out), "120"], cwd=REPO, env=env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = run_program(*pretrain_argv(job, out))
        line = error_line(second, "python -m pretrain")
        assert "in use by another run" in line and f"PID {holder.pid}" in line and str(out) in line
        assert not (out / "log.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    # The holder was killed: the kernel dropped its lock, so the folder is free again.
    again = subprocess.run([sys.executable, "-c", LOCK_SCRIPT, str(out), "0"], cwd=REPO, env=env(),
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "locked" in again.stdout, again.stderr


def test_lock_is_reentrant_in_a_process_and_output_dir_must_be_a_folder(tmp_path):
    from charbert.training.lock import OutputDirError, lock_output_dir, release_output_dir

    lock_output_dir(tmp_path / "run")
    lock_output_dir(tmp_path / "run")  # the program took it, then train() asks again
    release_output_dir(tmp_path / "run")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(OutputDirError, match="is a file"):
        lock_output_dir(tmp_path / "a_file")


# ---- 4. two processes building one packed cache -------------------------------------------

PACK_SCRIPT = """
import json, sys, time
from transformers import AutoTokenizer
from charbert.pretraining.blocks import pack_corpus
tok = AutoTokenizer.from_pretrained(sys.argv[1])
while time.time() < float(sys.argv[4]):  # start together
    time.sleep(0.001)
blocks = pack_corpus([sys.argv[2]], tok, sys.argv[3], 24, show_progress=False)
print(json.dumps({"n": len(blocks), "all": sum(len(blocks[i]) for i in range(len(blocks)))}))
"""


@pytest.mark.slow  # subprocesses
def test_two_processes_building_one_cache(bert_dir, tiny_texts, tmp_path):
    import time

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(tiny_texts[:1500]) * 3, encoding="utf-8")
    cache = tmp_path / "cache"
    start = str(time.time() + 8)
    procs = [subprocess.Popen([sys.executable, "-c", PACK_SCRIPT, str(bert_dir), str(corpus), str(cache), start],
                              cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[0] == results[1] and results[0]["n"] > 100  # both read the same complete cache
    assert [p.name for p in cache.iterdir()] == [next(cache.iterdir()).name]  # one folder, no leftovers


# ---- 2. a resume is exact, or refused -----------------------------------------------------


def test_resume_needs_every_file_the_loop_restores(tmp_path, caplog):
    from test_training import RecordingModel, ToyMaskCollator, make_token_dataset

    from charbert.training import CheckpointError, TrainingConfig, train

    out = tmp_path / "run"
    common = dict(output_dir=str(out), max_train_steps=4, per_device_train_batch_size=4)
    train(RecordingModel(), make_token_dataset(24), TrainingConfig(checkpointing_steps=2, **common), ToyMaskCollator())
    (out / "step_2" / "random_states_0.pkl").unlink()
    (out / "step_4" / "random_states_0.pkl").write_bytes(b"garbage")
    for step, problem in (("step_2", "random_states_0.pkl is missing"), ("step_4", r"random_states_0.pkl \(unreadable")):
        resume = TrainingConfig(resume_from_checkpoint=str(out / step), **common)
        with pytest.raises(CheckpointError, match=f"{step} is incomplete: .*{problem}.*--allow_inexact_resume"):
            train(RecordingModel(), make_token_dataset(24), resume, ToyMaskCollator())
    (out / "step_2" / "optimizer.bin").unlink()
    with pytest.raises(CheckpointError, match=r"optimizer.bin is missing or unreadable \(and 1 more\)"):
        train(RecordingModel(), make_token_dataset(24), TrainingConfig(resume_from_checkpoint="step_2", **common),
              ToyMaskCollator())
    # On purpose: a warning, and the run continues.
    inexact = TrainingConfig(resume_from_checkpoint=str(out / "step_4"), allow_inexact_resume=True,
                             **{**common, "max_train_steps": 6})
    with caplog.at_level("WARNING", logger="charbert.training"):
        assert train(RecordingModel(), make_token_dataset(24), inexact, ToyMaskCollator()).global_step == 6
    assert "will not be exact" in caplog.text
    # A file given as the checkpoint folder says so.
    with pytest.raises(CheckpointError, match="is a file; give a checkpoint folder"):
        train(RecordingModel(), make_token_dataset(24),
              TrainingConfig(resume_from_checkpoint=str(out / "log.jsonl"), **common), ToyMaskCollator())


# ---- 5, 6, 8, 9: vocabularies, tokenizers, weights, flags: one line each ------------------


def pretrain_fails(capsys, argv: list[str]) -> str:
    from conftest import reset_accelerate

    from pretrain.__main__ import main

    reset_accelerate()
    capsys.readouterr()
    rc = main(argv[1:])  # argv[0] is the module name
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("python -m pretrain: error: "), line
    return line


def finetune_fails(capsys, *argv) -> str:
    from conftest import run_cli

    capsys.readouterr()
    rc = run_cli("glue", "--task_name", "mrpc", *argv)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("python -m finetune.glue: error: "), line
    return line


def copy_without(src: Path, dst: Path, *names: str) -> Path:
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*names))
    return dst


@pytest.fixture(scope="module")
def trained(job, tmp_path_factory) -> Path:
    """A CharBERT checkpoint pretrained for one step (it records its vocabularies' fingerprints)."""
    from conftest import reset_accelerate

    from pretrain.__main__ import main

    out = tmp_path_factory.mktemp("trained") / "run"
    reset_accelerate()
    assert main(pretrain_argv(job, out, "--max_train_steps", "1")[1:]) == 0
    return out


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory, roberta_dir) -> Path:
    """A tiny GPT-2 (a decoder: no padding token, not a masked LM)."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    out = tmp_path_factory.mktemp("gpt2")
    GPT2TokenizerFast(vocab_file=str(roberta_dir / "vocab.json"), merges_file=str(roberta_dir / "merges.txt")).save_pretrained(out)
    GPT2LMHeadModel(GPT2Config(vocab_size=600, n_positions=64, n_embd=32, n_layer=1, n_head=2)).save_pretrained(out)
    return out


def test_vocabulary_fingerprints_are_saved_and_checked(job, trained, task_files, tmp_path, capsys, caplog):
    from charbert.chars import CharVocab
    from charbert.configuration import CharBertConfig

    config = CharBertConfig.from_pretrained(trained)
    assert config.char_vocab_hash == CharVocab.load(trained).fingerprint()
    assert config.word_vocab_hash == WordVocab.load(job / "vocab").fingerprint()
    # Another word vocabulary of the same size: pretraining refuses it...
    words = WordVocab.load(job / "vocab").words
    other = tmp_path / "other"
    other.mkdir()
    WordVocab(list(reversed(words))).save(other)
    argv = pretrain_argv(job, tmp_path / "out", "--max_train_steps", "1")
    argv[argv.index("--model_name_or_path") + 1] = str(trained)
    argv[argv.index("--word_vocab") + 1] = str(other)
    line = pretrain_fails(capsys, argv)
    assert "word vocabulary is not the one" in line and "--allow_vocab_mismatch" in line
    # ... unless told it is on purpose.
    from conftest import reset_accelerate

    from pretrain.__main__ import main

    reset_accelerate()
    with caplog.at_level("WARNING"):
        assert main([*argv[1:], "--allow_vocab_mismatch", "--output_dir", str(tmp_path / "on_purpose")]) == 0
    assert "using it anyway" in caplog.text
    # A smaller char_vocab.json from elsewhere, in a CharBERT folder, for fine-tuning.
    swapped = copy_without(trained, tmp_path / "swapped")
    CharVocab(list("abcdefgh ")).save(swapped)
    line = finetune_fails(capsys, "--model_name_or_path", swapped, "--train_file", task_files["mrpc_train"],
                          "--output_dir", tmp_path / "ft")
    assert "character vocabulary is not the one" in line


def test_checkpoint_without_tokenizer_files(job, trained, bert_dir, task_files, tmp_path, capsys):
    bare = copy_without(trained, tmp_path / "bare", "tokenizer*", "vocab.txt", "special_tokens_map.json")
    argv = pretrain_argv(job, tmp_path / "out", "--max_train_steps", "1")
    argv[argv.index("--model_name_or_path") + 1] = str(bare)
    line = pretrain_fails(capsys, argv)
    assert f"{bare} has no tokenizer files" in line and "--tokenizer_name" in line
    plain = copy_without(bert_dir, tmp_path / "plain", "tokenizer*", "vocab.txt", "special_tokens_map.json")
    line = finetune_fails(capsys, "--model_name_or_path", plain, "--train_file", task_files["mrpc_train"],
                          "--output_dir", tmp_path / "ft")
    assert f"{plain} has no tokenizer files" in line
    from conftest import run_cli

    assert run_cli("glue", "--task_name", "mrpc", "--model_name_or_path", plain, "--tokenizer_name", bert_dir,
                   "--train_file", task_files["mrpc_train"], "--max_train_steps", "1",
                   "--output_dir", tmp_path / "ft_ok") == 0


@pytest.mark.parametrize("damage", ["truncated", "garbage", "no_weights", "sizes"])
def test_damaged_weights_are_one_line(damage, job, bert_dir, task_files, tmp_path, capsys):
    model = copy_without(bert_dir, tmp_path / "model")
    weights = model / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "garbage":
        weights.write_bytes(b"\xff" * 4096)
    elif damage == "no_weights":
        weights.unlink()
    else:
        config = json.loads((model / "config.json").read_text())
        config.update(hidden_size=64, intermediate_size=100)
        (model / "config.json").write_text(json.dumps(config))
    expected = {"truncated": f"{weights} is not a readable weights file", "garbage": f"{weights} is not a readable",
                "no_weights": f"{model} has no model weights", "sizes": "config.json does not match the weights"}[damage]
    argv = pretrain_argv(job, tmp_path / "out", "--max_train_steps", "1")
    argv[argv.index("--model_name_or_path") + 1] = str(model)
    assert expected in pretrain_fails(capsys, argv)
    assert expected in finetune_fails(capsys, "--model_name_or_path", model, "--train_file", task_files["mrpc_train"],
                                      "--output_dir", tmp_path / "ft")


def test_programs_say_what_is_wrong(job, gpt2_dir, task_files, tmp_path, capsys):
    # A GPT-2 checkpoint: not an encoder (finetune), not a masked LM (pretrain --objective mlm).
    line = finetune_fails(capsys, "--model_name_or_path", gpt2_dir, "--train_file", task_files["mrpc_train"],
                          "--output_dir", tmp_path / "ft")
    assert "no padding token" in line and "'gpt2' is not an encoder" in line
    argv = pretrain_argv(job, tmp_path / "out", "--objective", "mlm")
    argv[argv.index("--model_name_or_path") + 1] = str(gpt2_dir)
    line = pretrain_fails(capsys, argv)
    assert "trains a plain bert / roberta / xlm-roberta" in line and "holds a 'gpt2' model" in line
    # Flags: the smallest --max_seq_length named.
    for value in ("0", "-5", "9"):
        argv = pretrain_argv(job, tmp_path / "out")
        argv[argv.index("--max_seq_length") + 1] = value
        assert f"--max_seq_length must be >= 11 (with --packing_slack 0.1); got {value}" in pretrain_fails(capsys, argv)
    # --resume_from_checkpoint an existing file; --output_dir a file.
    argv = pretrain_argv(job, tmp_path / "out", "--resume_from_checkpoint", str(job / "train.txt"))
    assert f"--resume_from_checkpoint {job / 'train.txt'} is a file" in pretrain_fails(capsys, argv)
    (tmp_path / "a_file").write_text("x")
    assert f"--output_dir {tmp_path / 'a_file'} is a file" in pretrain_fails(capsys, pretrain_argv(job, tmp_path / "a_file"))
    assert "is a file" in finetune_fails(capsys, "--model_name_or_path", job / "model", "--train_file",
                                         task_files["mrpc_train"], "--output_dir", tmp_path / "a_file")
    # A FIFO as --train_file.
    fifo = tmp_path / "fifo.txt"
    os.mkfifo(fifo)
    argv = pretrain_argv(job, tmp_path / "out")
    argv[argv.index("--train_file") + 1] = str(fifo)
    assert f"{fifo} is not a regular file" in pretrain_fails(capsys, argv)
    # A byte that is not UTF-8 in a task file: file and line.
    bad = tmp_path / "bad.tsv"
    lines = Path(task_files["mrpc_train"]).read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b" ", b" \xff ", 1)
    bad.write_bytes(b"\n".join(lines))
    line = finetune_fails(capsys, "--model_name_or_path", job / "model", "--train_file", bad, "--output_dir", tmp_path / "ft")
    assert f"{bad}:4: not valid UTF-8 (byte 0xff)" in line


def test_output_dir_turning_read_only_mid_run_names_the_last_checkpoint(tmp_path, monkeypatch):
    from test_training import RecordingModel, ToyMaskCollator, make_token_dataset

    from charbert.training import CheckpointError, TrainingConfig, checkpoints, train

    real_save = checkpoints.save_checkpoint

    def save_then_fail(accelerator, output_dir, name, state, limit, *keep):
        if name == "step_4":
            raise OSError(30, "Read-only file system")
        return real_save(accelerator, output_dir, name, state, limit, *keep)

    monkeypatch.setattr("charbert.training.loop.save_checkpoint", save_then_fail)
    out = tmp_path / "run"
    config = TrainingConfig(output_dir=str(out), max_train_steps=6, checkpointing_steps=2, per_device_train_batch_size=4)
    with pytest.raises(CheckpointError, match=f"Could not write checkpoint step_4 in {out} .Read-only file system.; "
                                              f"the last intact checkpoint is {out / 'step_2'}"):
        train(RecordingModel(), make_token_dataset(24), config, ToyMaskCollator())


# ---- the contract: SIGKILL at random moments, then resume = the uninterrupted run ---------


def loss_records(out: Path) -> dict[int, tuple]:
    keys = ("loss", "mlm_loss", "nlm_loss")
    return {r["step"]: tuple(r.get(k) for k in keys) for r in read_log(out / "log.jsonl") if "loss" in r}


def logged_steps(out: Path) -> int:
    log = out / "log.jsonl"
    return sum(1 for line in log.read_text().splitlines() if '"loss"' in line) if log.exists() else 0


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_bitwise_exact(job, tmp_path):
    import random
    import signal
    import time

    from safetensors.torch import load_file

    steps = ["--max_train_steps", "12", "--checkpointing_steps", "2"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert run_program(*pretrain_argv(job, full, *steps)).returncode == 0
    rng = random.Random(11)
    kills = 0
    for _ in range(3):  # kill at a random logged step of each attempt (sometimes in the middle of a save)
        target = logged_steps(killed) + rng.randint(1, 4)
        proc = subprocess.Popen([sys.executable, "-m", *pretrain_argv(job, killed, *steps, "--resume_from_checkpoint",
                                                                        "latest")],
                                cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while proc.poll() is None and logged_steps(killed) < target and time.time() < deadline:
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 2, "the runs ended before they could be killed"
    final = run_program(*pretrain_argv(job, killed, *steps, "--resume_from_checkpoint", "latest"))
    assert final.returncode == 0, final.stderr[-3000:]
    assert loss_records(killed) == loss_records(full)  # every step's losses, bit for bit
    assert sorted(loss_records(full)) == list(range(1, 13))
    a, b = load_file(full / "model.safetensors"), load_file(killed / "model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
