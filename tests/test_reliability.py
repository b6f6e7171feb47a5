"""Reliability contracts (issue 11): same seed = same run, exact or refused resumes, locked
output and cache folders, vocabularies that belong to their checkpoint, bounded memory on any
input, and one-line errors instead of tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from charbert.training import read_log
from charbert.vocab import WordVocab

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
from charbert.data import pack_corpus
tok = AutoTokenizer.from_pretrained(sys.argv[1])
while time.time() < float(sys.argv[4]):  # start together
    time.sleep(0.001)
blocks = pack_corpus([sys.argv[2]], tok, sys.argv[3], 24, show_progress=False)
print(json.dumps({"n": len(blocks), "all": sum(len(blocks[i]) for i in range(len(blocks)))}))
"""


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
