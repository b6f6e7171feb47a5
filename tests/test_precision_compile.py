"""--mixed_precision bf16, --gradient_checkpointing and --torch_compile through charbert.training.train on CPU."""

from __future__ import annotations

import json

import pytest
import torch

from charbert.training import TrainingConfig, train
from tests.conftest import reset_accelerate, run_cli


def _tiny_model():
    from benchmarks.gpu_check import SMOKE, charbert_config
    from charbert import CharBertForPreTraining

    torch.manual_seed(0)
    return CharBertForPreTraining(charbert_config(SMOKE))


def _batches(model, n: int = 4) -> list[dict]:
    from benchmarks.gpu_check import synthetic_pretraining_batch

    g = torch.Generator().manual_seed(1)
    # unequal lengths: the compiled model must handle every padded shape
    return [synthetic_pretraining_batch(model.config, 2, 12 + 4 * i, g) for i in range(n)]


def _losses(tmp_path, name: str, **flags) -> tuple[list[float], torch.nn.Module]:
    """Train the tiny model 4 steps (one prepared batch per step) and return the per-step losses."""
    reset_accelerate()  # each run builds its own Accelerator (mixed precision is fixed per state)
    model = _tiny_model()
    batches = _batches(model)
    config = TrainingConfig(output_dir=str(tmp_path / name), per_device_train_batch_size=1, max_train_steps=len(batches),
                            learning_rate=1e-3, logging_steps=1, seed=0, **flags)
    train(model, batches, config, collate_fn=lambda items: items[0])
    log = [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in log if "loss" in r], model


def test_flags_parse():
    import argparse

    from charbert.training import add_training_args, training_config_from_args

    parser = argparse.ArgumentParser()
    add_training_args(parser)
    config = training_config_from_args(parser.parse_args(
        ["--output_dir", "x", "--mixed_precision", "bf16", "--gradient_checkpointing", "--torch_compile"]))
    assert (config.mixed_precision, config.gradient_checkpointing, config.torch_compile) == ("bf16", True, True)
    default = training_config_from_args(parser.parse_args(["--output_dir", "x"]))
    assert (default.mixed_precision, default.gradient_checkpointing, default.torch_compile) == (None, False, False)
    with pytest.raises(SystemExit):
        parser.parse_args(["--output_dir", "x", "--mixed_precision", "fp8"])


def test_bf16_on_cpu_close_to_fp32_with_fp32_weights(tmp_path):
    fp32, _ = _losses(tmp_path, "fp32", mixed_precision="no")
    bf16, model = _losses(tmp_path, "bf16", mixed_precision="bf16")
    assert len(bf16) == len(fp32) == 4
    assert all(torch.isfinite(torch.tensor(bf16)))
    # bf16 keeps ~3 significant digits; the losses (~11-12) agree to a few hundredths
    assert max(abs(a - b) for a, b in zip(fp32, bf16)) < 0.05, (fp32, bf16)
    assert bf16 != fp32  # autocast was on
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # master weights stay fp32


def test_bf16_autocast_dtypes_of_the_parts():
    """Under CPU bf16 autocast: the linear layers and the heads compute in bf16, the GRU and the
    losses in fp32 (autocast runs cross-entropy in fp32), gradients reach the fp32 weights."""
    model = _tiny_model()
    batch = _batches(model, 1)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert out.mlm_logits.dtype == torch.bfloat16
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    gru = model.charbert.char_embeddings
    assert any(p.grad is not None for p in gru.parameters())


@pytest.mark.slow
def test_gradient_checkpointing_gives_the_same_losses(tmp_path):
    plain, _ = _losses(tmp_path, "plain")
    checkpointed, model = _losses(tmp_path, "gc", gradient_checkpointing=True)
    assert model.is_activation_checkpointing
    assert max(abs(a - b) for a, b in zip(plain, checkpointed)) < 1e-5


def test_no_split_modules_per_backbone():
    from charbert import CharBertForSequenceClassification

    model = _tiny_model()
    assert set(model._no_split_modules) == {"BertLayer", "HeterogeneousInteraction", "CharEncoder"}
    head = CharBertForSequenceClassification(model.config)
    assert set(head._no_split_modules) == {"BertLayer", "HeterogeneousInteraction", "CharEncoder"}


@pytest.mark.slow
def test_torch_compile_equals_eager(tmp_path):
    eager, _ = _losses(tmp_path, "eager")
    compiled, _ = _losses(tmp_path, "compiled", torch_compile=True)
    assert max(abs(a - b) for a, b in zip(eager, compiled)) < 1e-4, (eager, compiled)


@pytest.mark.slow
def test_programs_run_bf16(task_files, bert_dir, tmp_path):
    out = tmp_path / "glue"
    assert run_cli("glue", "--task_name", "sst2", "--train_file", task_files["sst2_train"], "--validation_file",
                   task_files["sst2_dev"], "--model_name_or_path", bert_dir, "--charbert", "--max_seq_length", "32",
                   "--max_train_steps", "3", "--per_device_train_batch_size", "8", "--output_dir", out,
                   "--mixed_precision", "bf16", "--gradient_checkpointing") == 0
    record = json.loads((out / "metrics.json").read_text())
    assert record["args"]["mixed_precision"] == "bf16" and torch.isfinite(torch.tensor(record["train"]["train_loss"]))
