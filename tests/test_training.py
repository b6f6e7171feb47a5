"""Tests for charbert.training: exact resume, atomic checkpoints, accumulation, multi-process."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import free_port, gloo_available
from torch import nn
from transformers.utils import ModelOutput

from charbert.training import (
    EVAL_EPOCH,
    OPTIMIZERS,
    CheckpointError,
    IndexedCollator,
    IndexedDataset,
    TrainingConfig,
    TrainState,
    add_training_args,
    build_optimizer,
    collator_rng,
    list_checkpoints,
    read_log,
    resolve_checkpoint,
    save_model,
    train,
    training_config_from_args,
)

REPO = Path(__file__).resolve().parents[1]
VOCAB = 100
MASK_ID = 3
SEQ = 12


# ----------------------------------------------------------------------------- toy parts


def make_token_dataset(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"idx": i, "input_ids": rng.integers(5, VOCAB, SEQ)} for i in range(n)]


class ToyMaskCollator:
    """Masks ~30% of tokens at random -- from the rng the training loop hands in."""

    needs_rng = True

    def __init__(self, with_idx: bool = True, prob: float = 0.3):
        self.with_idx = with_idx
        self.prob = prob

    def __call__(self, examples, rng):
        ids = torch.tensor(np.stack([e["input_ids"] for e in examples]), dtype=torch.long)
        mask = torch.from_numpy(rng.random(ids.shape) < self.prob)
        mask[:, 0] = True  # at least one label per row
        batch = {
            "input_ids": torch.where(mask, torch.full_like(ids, MASK_ID), ids),
            "attention_mask": torch.ones_like(ids),
            "labels": torch.where(mask, ids, torch.full_like(ids, -100)),
        }
        if self.with_idx:
            batch["idx"] = torch.tensor([e["idx"] for e in examples])
        return batch


class CrashingCollator(ToyMaskCollator):
    """Simulates a kill: raises on the n-th call."""

    def __init__(self, crash_on_call: int):
        super().__init__(with_idx=False)
        self.calls = 0
        self.crash_on_call = crash_on_call

    def __call__(self, examples, rng):
        self.calls += 1
        if self.calls == self.crash_on_call:
            raise KeyboardInterrupt("simulated kill")
        return super().__call__(examples, rng)


@dataclass
class ToyOutput(ModelOutput):
    loss: torch.Tensor | None = None
    mlm_loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class RecordingModel(nn.Module):
    """Tiny token classifier; remembers which dataset indices and masks it was fed."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 16)
        self.LayerNorm = nn.LayerNorm(16)
        self.out = nn.Linear(16, VOCAB)
        self.seen: list[list[int]] = []
        self.masks: dict[str, list[list[int]]] = {}
        self.train_modes: list[bool] = []

    def forward(self, input_ids, attention_mask=None, labels=None, idx=None):
        if idx is not None and self.training:
            key = ",".join(map(str, idx.tolist()))
            self.seen.append(idx.tolist())
            self.masks[key] = (labels != -100).int().tolist()
        self.train_modes.append(self.training)
        logits = self.out(self.LayerNorm(self.emb(input_ids)))
        mlm = nn.functional.cross_entropy(logits.view(-1, VOCAB), labels.view(-1), ignore_index=-100)
        aux = (logits.float() ** 2).mean() * 1e-3
        return ToyOutput(loss=mlm + aux, mlm_loss=mlm, aux_loss=aux, logits=logits)


def tiny_bert():
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=32)  # dropout 0.1: resume must restore RNG
    return BertForMaskedLM(cfg)


class RegressionModel(nn.Module):
    """Deterministic (no dropout) model for the gradient-accumulation equivalence."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.lin = nn.Linear(8, 6)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 1)

    def forward(self, x, y, attention_mask=None):
        pred = self.head(torch.tanh(self.norm(self.lin(x)))).squeeze(-1)
        return ToyOutput(loss=((pred - y) ** 2).mean())


def regression_dataset(n=32):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 8, generator=g)
    y = x @ torch.randn(8, generator=g) + 0.1
    return [{"x": x[i], "y": y[i]} for i in range(n)]


def stack_collate(examples):
    return {"x": torch.stack([e["x"] for e in examples]), "y": torch.stack([e["y"] for e in examples]),
            "attention_mask": torch.ones(len(examples), 3, dtype=torch.long)}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models run fastest single-threaded; extra threads only spin when the machine is busy."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def step_losses(log_path) -> dict[int, dict]:
    return {r["step"]: r for r in read_log(log_path) if "loss" in r}


# ----------------------------------------------------------------------------- exact resume


def test_exact_resume_after_kill_reproduces_losses(tmp_path):
    data = make_token_dataset(40)  # 5 batches/epoch; 12 steps cross two epoch boundaries
    common = dict(max_train_steps=12, checkpointing_steps=4, logging_steps=1, per_device_train_batch_size=8,
                  learning_rate=2e-3, warmup_ratio=0.25, weight_decay=0.01, seed=123)

    run_a = tmp_path / "A"
    res_a = train(tiny_bert(), data, TrainingConfig(output_dir=str(run_a), **common), ToyMaskCollator(False))
    assert res_a.global_step == 12 and res_a.epochs_completed == 2
    assert sorted(p.name for p in run_a.iterdir() if p.is_dir()) == ["step_12", "step_4", "step_8"]
    losses_a = step_losses(run_a / "log.jsonl")
    assert sorted(losses_a) == list(range(1, 13))

    # Run B is "killed" while fetching the data of step 11: step_8 is its newest checkpoint.
    run_b = tmp_path / "B"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_bert(), data, TrainingConfig(output_dir=str(run_b), **common), CrashingCollator(11))
    assert (run_b / "step_8" / "trainer_state.json").exists() and not (run_b / "step_12").exists()
    # A save killed midway and a folder without trainer_state.json are never "latest".
    (run_b / ".tmp-step_12").mkdir()
    shutil.copy(run_b / "step_8" / "trainer_state.json", run_b / ".tmp-step_12" / "trainer_state.json")
    (run_b / "step_99").mkdir()
    assert resolve_checkpoint(run_b, "latest") == run_b / "step_8"
    assert [s for s, _ in list_checkpoints(run_b)] == [4, 8]

    res_b = train(tiny_bert(), data, TrainingConfig(output_dir=str(run_b), resume_from_checkpoint="latest", **common),
                  ToyMaskCollator(False))
    losses_b = step_losses(run_b / "log.jsonl")
    assert sorted(losses_b) == list(range(1, 13))
    for step in range(1, 13):
        assert losses_b[step]["loss"] == pytest.approx(losses_a[step]["loss"], abs=1e-6), step
        assert losses_b[step]["lr"] == pytest.approx(losses_a[step]["lr"], abs=1e-12), step
    assert res_b.global_step == 12 and res_b.epochs_completed == 2
    assert res_b.train_loss == pytest.approx(res_a.train_loss, abs=1e-6)  # running mean survives the resume
    assert not (run_b / ".tmp-step_12").exists()  # stale partial save cleaned at start
    state = json.loads((run_b / "step_12" / "trainer_state.json").read_text())
    assert state["global_step"] == 12 and state["config"]["seed"] == 123

    # Resuming by explicit path (relative to output_dir) into a copy gives the same tail as well.
    run_c = tmp_path / "C"
    shutil.copytree(run_a, run_c)
    train(tiny_bert(), data, TrainingConfig(output_dir=str(run_c), resume_from_checkpoint="step_4", **common),
          ToyMaskCollator(False))
    losses_c = step_losses(run_c / "log.jsonl")
    for step in range(5, 13):
        assert losses_c[step]["loss"] == pytest.approx(losses_a[step]["loss"], abs=1e-6), step


def test_exact_resume_with_gradient_accumulation(tmp_path):
    # 5 batches/epoch with accumulation 2 -> 3 optimizer steps/epoch (the last one syncs at the
    # end of the loader); step_4 sits 2 batches into epoch 1.
    data = make_token_dataset(20)
    common = dict(max_train_steps=8, checkpointing_steps=2, logging_steps=1, per_device_train_batch_size=4,
                  gradient_accumulation_steps=2, learning_rate=5e-3, seed=3)
    run_a = tmp_path / "A"
    torch.manual_seed(0)
    train(RecordingModel(), data, TrainingConfig(output_dir=str(run_a), **common), ToyMaskCollator())
    state = json.loads((run_a / "step_4" / "trainer_state.json").read_text())
    assert (state["epoch"], state["global_batches_in_epoch"], state["epochs_completed"]) == (1, 2, 1)
    run_b = tmp_path / "B"
    shutil.copytree(run_a, run_b)
    torch.manual_seed(99)  # different init: everything must come from the checkpoint
    train(RecordingModel(), data, TrainingConfig(output_dir=str(run_b), resume_from_checkpoint=str(run_b / "step_4"),
                                                 **common), ToyMaskCollator())
    losses_a, losses_b = step_losses(run_a / "log.jsonl"), step_losses(run_b / "log.jsonl")
    assert sorted(losses_b) == list(range(1, 9))
    for step in range(5, 9):
        assert losses_b[step]["loss"] == pytest.approx(losses_a[step]["loss"], abs=1e-6), step


def test_trainer_state_json_roundtrips_through_train_state(tmp_path):
    cfg = TrainingConfig(output_dir=str(tmp_path), max_train_steps=4, checkpointing_steps=2, logging_steps=1,
                         per_device_train_batch_size=4, seed=5)
    train(RecordingModel(), make_token_dataset(12), cfg, ToyMaskCollator(), eval_fn=lambda model, acc: {"score": 0.5})
    saved = json.loads((tmp_path / "step_2" / "trainer_state.json").read_text())
    state = TrainState.from_dict(saved)
    assert state.to_dict() == saved  # every key the checkpoint holds is a TrainState field
    assert (state.global_step, state.epoch, state.global_batches_in_epoch, state.epochs_completed) == (2, 0, 2, 0)
    assert state.train_loss_count == 2 and state.train_loss_sum > 0 and state.config["seed"] == 5
    assert "loss" in state.last_metrics and state.eval_metrics() == {}
    after_epoch = TrainState.from_dict(json.loads((tmp_path / "step_4" / "trainer_state.json").read_text()))
    assert (after_epoch.epoch, after_epoch.global_batches_in_epoch) == (1, 1)
    assert after_epoch.eval_metrics() == {"eval_score": 0.5}  # the end-of-epoch evaluation at step 3
    # A minimal state written by hand (or by an older version) reads with defaults.
    old = TrainState.from_dict({"global_step": 7, "epoch": 2, "unknown_key": 1})
    assert (old.global_step, old.epochs_completed, old.train_loss_count, old.last_metrics) == (7, 2, 0, {})


def test_latest_without_checkpoints_starts_fresh(tmp_path):
    assert resolve_checkpoint(tmp_path / "nothing", "latest") is None
    assert resolve_checkpoint(tmp_path, None) is None
    res = train(RecordingModel(), make_token_dataset(8), TrainingConfig(
        output_dir=str(tmp_path), resume_from_checkpoint="latest", max_train_steps=2, per_device_train_batch_size=4,
    ), ToyMaskCollator())
    assert res.global_step == 2


# ----------------------------------------------------------------------------- checkpoints


def test_save_total_limit_and_corrupt_checkpoints(tmp_path):
    out = tmp_path / "run"
    cfg = TrainingConfig(output_dir=str(out), max_train_steps=10, checkpointing_steps=2, save_total_limit=2,
                         per_device_train_batch_size=4, logging_steps=5)
    train(RecordingModel(), make_token_dataset(24), cfg, ToyMaskCollator())
    assert sorted(p.name for p in out.iterdir() if p.name != ".lock") == ["log.jsonl", "step_10", "step_8"]

    with pytest.raises(CheckpointError, match="step_3.*does not exist"):
        resolve_checkpoint(out, str(out / "step_3"))
    incomplete = out / "step_12"
    incomplete.mkdir()
    with pytest.raises(CheckpointError, match=f"{incomplete}.*trainer_state.json"):
        resolve_checkpoint(out, str(incomplete))
    (incomplete / "trainer_state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="step_12.*unreadable"):
        resolve_checkpoint(out, str(incomplete))
    assert resolve_checkpoint(out, "latest") == out / "step_10"

    # A complete-looking checkpoint whose weights file is truncated: clear error naming it.
    weights = out / "step_8" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    cfg_resume = TrainingConfig(output_dir=str(out), max_train_steps=10, per_device_train_batch_size=4,
                                resume_from_checkpoint=str(out / "step_8"))
    with pytest.raises(CheckpointError, match="step_8.*could not be loaded"):
        train(RecordingModel(), make_token_dataset(24), cfg_resume, ToyMaskCollator())


def test_epoch_checkpoints_and_eval(tmp_path):
    out = tmp_path / "run"
    calls = []

    def eval_fn(model, accelerator):
        assert not model.training
        calls.append(len(calls))
        return {"accuracy": 0.5 + len(calls), "eval_f1": torch.tensor(0.25)}

    model = RecordingModel()
    cfg = TrainingConfig(output_dir=str(out), num_train_epochs=2, checkpointing_steps="epoch",
                         per_device_train_batch_size=4, logging_steps=1)
    res = train(model, make_token_dataset(12), cfg, ToyMaskCollator(), eval_fn=eval_fn)
    assert res.global_step == 6 and res.epochs_completed == 2
    assert calls == [0, 1]  # end of each epoch; the final step is the end of epoch 2 (no double eval)
    assert res.last_eval == {"eval_accuracy": 2.5, "eval_f1": 0.25}
    assert model.training and all(model.train_modes)  # eval_fn saw eval mode, training resumed in train mode
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["epoch_0", "epoch_1"]
    state = json.loads((out / "epoch_0" / "trainer_state.json").read_text())
    assert (state["global_step"], state["epoch"], state["global_batches_in_epoch"]) == (3, 1, 0)
    records = read_log(res.log_path)
    assert [r["eval_accuracy"] for r in records if "eval_accuracy" in r] == [1.5, 2.5]
    train_rec = [r for r in records if "loss" in r]
    assert len(train_rec) == 6
    for r in train_rec:  # *_loss fields of the output are logged; loss = mlm + aux
        assert r["loss"] == pytest.approx(r["mlm_loss"] + r["aux_loss"], rel=1e-5)
        assert r["tokens_per_s"] > 0 and r["lr"] >= 0 and r["elapsed"] >= 0


def test_default_eval_loss_with_eval_dataset(tmp_path):
    cfg = TrainingConfig(output_dir=str(tmp_path), max_train_steps=3, eval_steps=2, per_device_train_batch_size=4,
                         per_device_eval_batch_size=5)
    res = train(RecordingModel(), make_token_dataset(16), cfg, ToyMaskCollator(), eval_dataset=make_token_dataset(7))
    assert set(res.last_eval) == {"eval_loss", "eval_mlm_loss", "eval_aux_loss"}
    evals = [r for r in read_log(res.log_path) if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 3]


# ----------------------------------------------------------------------------- accumulation


def test_gradient_accumulation_matches_large_batch(tmp_path):
    def run(batch, accum, name):
        model = RegressionModel()
        cfg = TrainingConfig(output_dir=str(tmp_path / name), per_device_train_batch_size=batch,
                             gradient_accumulation_steps=accum, num_train_epochs=2, learning_rate=1e-2,
                             weight_decay=0.1, num_warmup_steps=2, max_grad_norm=0.5, logging_steps=1)
        res = train(model, regression_dataset(32), cfg, stack_collate)
        return res, {k: v.detach().clone() for k, v in model.state_dict().items()}

    res_small, params_small = run(4, 2, "accum")
    res_big, params_big = run(8, 1, "big")
    assert res_small.global_step == res_big.global_step == 8
    for key in params_big:
        assert torch.allclose(params_small[key], params_big[key], atol=1e-6), key
    assert not torch.allclose(params_big["lin.weight"], RegressionModel().lin.weight)  # it did train


def test_optimizer_groups_exclude_bias_and_norm():
    model = RecordingModel()
    opt = build_optimizer(model, TrainingConfig(output_dir="x", weight_decay=0.1))
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    no_decay = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert decay == {"emb.weight", "out.weight"}
    assert no_decay == {"LayerNorm.weight", "LayerNorm.bias", "out.bias"}


def test_fused_adamw_is_the_default_and_steps_like_the_per_tensor_loop():
    from transformers import TrainingArguments

    models = {name: RegressionModel() for name in OPTIMIZERS}  # the same weights (it seeds itself)
    torch.manual_seed(0)
    trainer_default = TrainingArguments(output_dir="x", use_cpu=True, report_to=[]).optim
    assert TrainingConfig(output_dir="x").optim == getattr(trainer_default, "value", trainer_default)  # the Trainer's
    x, y = torch.randn(32, 8), torch.randn(32)
    for name, model in models.items():
        opt = build_optimizer(model, TrainingConfig(output_dir="x", optim=name, weight_decay=0.1, learning_rate=1e-2))
        assert all(g["fused"] is (name == "adamw_torch_fused") for g in opt.param_groups)
        for _ in range(5):
            opt.zero_grad()
            model(x, y).loss.backward()
            opt.step()
    fused, loop = (dict(models[n].named_parameters()) for n in OPTIMIZERS)
    for key in fused:
        assert torch.allclose(fused[key], loop[key], atol=1e-6), key
    assert not torch.allclose(fused["lin.weight"], RegressionModel().lin.weight)  # it did train
    with torch.device("meta"):
        on_meta = RegressionModel()
    with pytest.raises(ValueError, match="--optim adamw_torch$"):
        build_optimizer(on_meta, TrainingConfig(output_dir="x"))


# ----------------------------------------------------------------------------- collator protocol


def test_collator_rng_protocol_and_pickling():
    received = {}

    class Spy:
        needs_rng = True

        def __call__(self, examples, rng):
            received["examples"], received["draw"] = examples, rng.random(3)
            return examples

    wrapped = IndexedCollator(Spy(), seed=5, epoch=2)
    items = [IndexedDataset(["a", "b", "c", "d"])[i] for i in (3, 1)]
    assert wrapped(items) == ["d", "b"]
    assert np.array_equal(received["draw"], collator_rng(5, 2, [3, 1]).random(3))
    assert np.array_equal(collator_rng(5, 2, [3, 1]).random(3),
                          np.random.default_rng(np.random.SeedSequence([5, 2, 3, 1])).random(3))
    assert not np.array_equal(collator_rng(5, 3, [3, 1]).random(3), received["draw"])
    assert EVAL_EPOCH > 10**9

    plain = IndexedCollator(lambda examples: len(examples), seed=5)  # no needs_rng: called unchanged
    assert plain([(0, "x"), (1, "y")]) == 2
    restored = pickle.loads(pickle.dumps(IndexedCollator(ToyMaskCollator(), seed=9, epoch=4)))
    assert (restored.seed, restored.epoch, restored.needs_rng) == (9, 4, True)
    assert len(pickle.loads(pickle.dumps(IndexedDataset([1, 2, 3])))) == 3


def test_workers_do_not_change_randomness(tmp_path):
    def run(workers):
        torch.manual_seed(0)
        model = RecordingModel()
        cfg = TrainingConfig(output_dir=str(tmp_path / f"w{workers}"), max_train_steps=4, logging_steps=1,
                             per_device_train_batch_size=4, dataloader_num_workers=workers, seed=11)
        train(model, make_token_dataset(12), cfg, ToyMaskCollator())
        return model, step_losses(tmp_path / f"w{workers}" / "log.jsonl")

    m0, l0 = run(0)
    m2, l2 = run(2)
    assert m0.seen == m2.seen and m0.masks == m2.masks
    assert [l0[s]["loss"] for s in range(1, 5)] == pytest.approx([l2[s]["loss"] for s in range(1, 5)], abs=1e-6)
    # epoch 0 is a permutation of the dataset; epoch 1 a different one
    assert sorted(sum(m0.seen[:3], [])) == list(range(12)) and m0.seen[3] != m0.seen[0]


# ----------------------------------------------------------------------------- args, guards, saving


def test_args_roundtrip_and_guard_rails(tmp_path):
    parser = argparse.ArgumentParser()
    add_training_args(parser)
    args = parser.parse_args(["--output_dir", str(tmp_path), "--checkpointing_steps", "epoch",
                              "--max_train_steps", "7", "--report_to", "none"])
    cfg = training_config_from_args(args)
    assert cfg.checkpointing_steps == "epoch" and cfg.max_train_steps == 7 and cfg.seed == 42
    assert cfg.per_device_train_batch_size == 8 and cfg.learning_rate == 5e-5 and cfg.logging_steps == 50
    assert training_config_from_args(parser.parse_args(["--output_dir", "o", "--checkpointing_steps", "250"])) \
        .checkpointing_steps == 250
    with pytest.raises(ValueError, match="checkpointing_steps"):
        training_config_from_args(parser.parse_args(["--output_dir", "o", "--checkpointing_steps", "sometimes"]))
    with pytest.raises(ValueError, match="output_dir"):
        training_config_from_args(parser.parse_args([]))
    with pytest.raises(ValueError, match="empty"):
        train(RecordingModel(), [], TrainingConfig(output_dir=str(tmp_path)), ToyMaskCollator())


def test_tensorboard_missing_is_a_clear_error(tmp_path):
    from accelerate.utils import is_tensorboard_available

    if is_tensorboard_available():
        pytest.skip("tensorboard is installed")
    with pytest.raises(ImportError, match="tensorboard"):
        train(RecordingModel(), make_token_dataset(4), TrainingConfig(output_dir=str(tmp_path), report_to="tensorboard"),
              ToyMaskCollator())


def test_metrics_reach_accelerate_trackers(tmp_path):
    from accelerate import Accelerator
    from accelerate.tracking import GeneralTracker

    class MemoryTracker(GeneralTracker):
        name, requires_logging_directory = "memory", False

        def __init__(self):
            super().__init__()
            self.config, self.logged, self.finished = None, [], False

        @property
        def tracker(self):
            return self

        def store_init_configuration(self, values):
            self.config = values

        def log(self, values, step=None, **kwargs):
            self.logged.append((step, dict(values)))

        def finish(self):
            self.finished = True

    tracker = MemoryTracker()
    cfg = TrainingConfig(output_dir=str(tmp_path), report_to="all", max_train_steps=4, logging_steps=2,
                         per_device_train_batch_size=4)
    train(RecordingModel(), make_token_dataset(16), cfg, ToyMaskCollator(), accelerator=Accelerator(log_with=[tracker]),
          eval_fn=lambda model, acc: {"score": 1.0})
    assert tracker.config["max_train_steps"] == 4 and tracker.config["checkpointing_steps"] == "None"
    assert [step for step, _ in tracker.logged] == [2, 4, 4]
    assert {"loss", "lr", "tokens_per_s", "mlm_loss"} <= set(tracker.logged[0][1])
    assert tracker.logged[-1][1] == {"eval_score": 1.0} and tracker.finished


def test_save_model_writes_model_tokenizer_and_extra_files(tmp_path):
    from accelerate import Accelerator
    from transformers import BertForMaskedLM

    class FakeTokenizer:
        def save_pretrained(self, directory):
            (Path(directory) / "vocab.txt").write_text("[PAD]\n")

    model = tiny_bert()
    save_model(Accelerator(), model, tmp_path / "final", tokenizer=FakeTokenizer(),
               extra_files={"notes/a.txt": "hi", "b.bin": b"\x00\x01"})
    assert (tmp_path / "final" / "vocab.txt").exists() and (tmp_path / "final" / "config.json").exists()
    assert (tmp_path / "final" / "model.safetensors").exists()
    assert (tmp_path / "final" / "notes" / "a.txt").read_text() == "hi"
    assert (tmp_path / "final" / "b.bin").read_bytes() == b"\x00\x01"
    reloaded = BertForMaskedLM.from_pretrained(tmp_path / "final")
    assert torch.equal(reloaded.bert.embeddings.word_embeddings.weight, model.bert.embeddings.word_embeddings.weight)
    with pytest.raises(ValueError, match="relative"):
        save_model(None, model, tmp_path / "x", extra_files={"../evil": "no"})


# ----------------------------------------------------------------------------- two processes


@pytest.mark.skipif(not gloo_available(), reason="torch.distributed with the gloo backend is unavailable")
@pytest.mark.slow
def test_two_process_run_shards_data_and_syncs(tmp_path):
    out, report = tmp_path / "run", tmp_path / "report"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(REPO / "tests" / "dist_train_script.py"), str(out), str(report)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    ranks = [json.loads((report / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["num_processes"] == 2 and r["global_step"] == 12 for r in ranks)
    per_epoch = ranks[0]["steps_per_epoch"]
    assert per_epoch == 6
    for epoch in range(2):
        seen = [sum(r["batches"][epoch * per_epoch:(epoch + 1) * per_epoch], []) for r in ranks]
        assert not set(seen[0]) & set(seen[1]), f"ranks overlap in epoch {epoch}"
        assert sorted(seen[0] + seen[1]) == list(range(48)), f"epoch {epoch} not covered exactly once"

    p0, p1 = (torch.load(report / f"params{r}.pt") for r in range(2))
    for key in p0:
        assert torch.equal(p0[key], p1[key]), key
    names = sorted(p.name for p in out.iterdir() if p.name != ".lock")  # .lock: the run's lock file
    assert names == ["log.jsonl", "step_12", "step_3", "step_6", "step_9"]  # one folder per step, no .tmp left
    for name in names[1:]:
        files = {p.name for p in (out / name).iterdir()}
        assert {"trainer_state.json", "random_states_0.pkl", "random_states_1.pkl", "model.safetensors"} <= files
    assert sorted(r["step"] for r in read_log(out / "log.jsonl") if "loss" in r) == [2, 4, 6, 8, 10, 12]

    # The same batches get the same collator randomness as in a single-process run.
    single = RecordingModel()
    train(single, make_token_dataset(48), TrainingConfig(
        output_dir=str(tmp_path / "single"), seed=7, per_device_train_batch_size=4, max_train_steps=24,
        logging_steps=100), ToyMaskCollator())
    dist_masks = {**ranks[0]["masks"], **ranks[1]["masks"]}
    assert len(dist_masks) == 24
    assert dist_masks == single.masks
