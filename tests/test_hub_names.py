"""Hub names resolve like everywhere in transformers: a hub cache laid out on disk by the test
(models--org--name/snapshots/<hash>/..., refs/<revision>) under a temporary HF_HOME, HF_HUB_OFFLINE=1.
Every run is a subprocess, so huggingface_hub reads the environment as a user's process does; no
network is touched (offline mode refuses it)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def add_to_hub_cache(hub: Path, repo: str, folder: Path, revision: str = "main") -> str:
    """Lay out `folder` as the cached snapshot of `repo` at `revision` (plain files, as a copy would be)."""
    commit = hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()
    repo_dir = hub / ("models--" + repo.replace("/", "--"))
    shutil.copytree(folder, repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / revision).write_text(commit)
    return commit


def run_offline(tmp_path: Path, hub: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_CACHE=str(hub), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    work = tmp_path / "cwd"  # "org/name" must not be a folder here
    work.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture
def hub(tmp_path, bert_dir):
    """org/tiny-bert: a plain BERT; org/tiny-charbert: a CharBERT classifier at main (2 labels) and v1 (3 labels)."""
    from charbert import CharBertForSequenceClassification, CharBertTokenizerFast

    cache = tmp_path / "hub"
    add_to_hub_cache(cache, "org/tiny-bert", bert_dir)
    for revision, labels in (("main", 2), ("v1", 3)):
        out = tmp_path / f"cb_{revision}"
        CharBertForSequenceClassification.from_pretrained(bert_dir, num_labels=labels).save_pretrained(out)
        CharBertTokenizerFast.from_pretrained(bert_dir).save_pretrained(out)
        add_to_hub_cache(cache, "org/tiny-charbert", out, revision)
    return cache


LOAD = """
import json
from transformers import AutoModel, AutoTokenizer
from charbert import CharBertForSequenceClassification, CharBertTokenizerFast
plain = CharBertForSequenceClassification.from_pretrained("org/tiny-bert", num_labels=2)
tok = CharBertTokenizerFast.from_pretrained("org/tiny-bert")
main = CharBertForSequenceClassification.from_pretrained("org/tiny-charbert")
v1 = CharBertForSequenceClassification.from_pretrained("org/tiny-charbert", revision="v1")
auto = AutoTokenizer.from_pretrained("org/tiny-charbert")
enc = auto("Hello world", return_tensors="pt")
logits = main(**enc).logits
print(json.dumps({"plain": type(plain).__name__, "tok": type(tok).__name__, "auto_tok": type(auto).__name__,
                  "main": main.config.num_labels, "v1": v1.config.num_labels, "auto_model": type(AutoModel.from_pretrained("org/tiny-charbert")).__name__,
                  "logits": list(logits.shape), "chars": "char_input_ids" in enc}))
"""


@pytest.mark.slow  # subprocesses
def test_from_pretrained_resolves_hub_names_from_the_offline_cache(tmp_path, hub):
    done = run_offline(tmp_path, hub, "-c", LOAD)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got == {"plain": "CharBertForSequenceClassification", "tok": "CharBertTokenizerFast",
                   "auto_tok": "CharBertTokenizerFast", "main": 2, "v1": 3, "auto_model": "CharBertModel",
                   "logits": [1, 2], "chars": True}


@pytest.mark.slow  # subprocesses
def test_missing_hub_name_offline_is_a_one_line_error(tmp_path, hub):
    done = run_offline(tmp_path, hub, "-c", "from charbert import CharBertModel; CharBertModel.from_pretrained('org/absent')")
    assert done.returncode != 0 and "FileNotFoundError: No model checkpoint at org/absent" in done.stderr


@pytest.mark.slow
def test_program_takes_a_hub_name(tmp_path, hub, task_files):
    out = tmp_path / "run"
    done = run_offline(tmp_path, hub, "-m", "finetune.glue", "--task_name", "sst2", "--model_name_or_path", "org/tiny-bert",
                       "--charbert", "--train_file", str(task_files["sst2_train"]), "--validation_file", str(task_files["sst2_dev"]),
                       "--output_dir", str(out), "--max_seq_length", "32", "--max_train_steps", "2",
                       "--per_device_train_batch_size", "4", "--seed", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "metrics.json").read_text())
    assert record["model"]["charbert"] is True and "accuracy" in record["eval"]
    assert (out / "char_vocab.json").is_file()
