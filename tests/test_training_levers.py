"""The optimizer levers for new modules: --new_module_lr_multiplier and --freeze_backbone_steps."""

from __future__ import annotations

import shutil

import pytest
import torch
from test_training import RecordingModel, ToyMaskCollator, make_token_dataset, step_losses

from charbert.training import TrainingConfig, build_optimizer, train
from charbert.training.setup import backbone_lr_factor

NEW = ("out.weight", "out.bias")  # the toy model's "head the checkpoint did not have"


def toy_model(seed: int = 0) -> RecordingModel:
    torch.manual_seed(seed)
    model = RecordingModel()
    model.loading_info = {"initialized_keys": list(NEW)}
    return model


def test_default_optimizer_keeps_its_two_groups(tmp_path):
    groups = build_optimizer(toy_model(), TrainingConfig(output_dir=str(tmp_path))).param_groups
    assert len(groups) == 2 and all("new_module" not in g for g in groups)


def test_new_modules_get_their_own_learning_rate(tmp_path):
    config = TrainingConfig(output_dir=str(tmp_path), learning_rate=1e-3, new_module_lr_multiplier=5.0,
                            weight_decay=0.01)
    model = toy_model()
    groups = build_optimizer(model, config).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        in_group = {names[id(p)] for p in group["params"]}
        assert in_group <= set(NEW) if group["new_module"] else not in_group & set(NEW)
        assert group["lr"] == pytest.approx(5e-3 if group["new_module"] else 1e-3)
        assert group["weight_decay"] == (0.0 if any(n.endswith("bias") or "Norm" in n for n in in_group) else 0.01)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_levers_need_to_know_what_is_new(tmp_path):
    model = RecordingModel()  # no loading_info: it came whole from somewhere
    with pytest.raises(ValueError, match="no new modules"):
        build_optimizer(model, TrainingConfig(output_dir=str(tmp_path), freeze_backbone_steps=2))
    for bad in (dict(new_module_lr_multiplier=0.0), dict(freeze_backbone_steps=-1)):
        with pytest.raises(ValueError):
            TrainingConfig(output_dir=str(tmp_path), **bad)


def test_backbone_factor_is_zero_then_warms_up():
    assert [backbone_lr_factor(s, 3, 4) for s in range(9)] == [0, 0, 0, 0.25, 0.5, 0.75, 1, 1, 1]
    assert [backbone_lr_factor(s, 2, 0) for s in range(4)] == [0, 0, 1, 1]


def test_frozen_loaded_weights_do_not_move_and_then_train(tmp_path):
    data = make_token_dataset(24)
    common = dict(per_device_train_batch_size=8, learning_rate=1e-2, logging_steps=1, seed=4, freeze_backbone_steps=3,
                  new_module_lr_multiplier=2.0, weight_decay=0.1)
    model = toy_model()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, data, TrainingConfig(output_dir=str(tmp_path / "a"), max_train_steps=3, **common), ToyMaskCollator())
    for name, param in model.named_parameters():
        moved = not torch.equal(param, start[name])
        assert moved == (name in NEW), name  # weight decay included: frozen means untouched
    model = toy_model()
    train(model, data, TrainingConfig(output_dir=str(tmp_path / "b"), max_train_steps=5, **common), ToyMaskCollator())
    assert not torch.equal(model.emb.weight, start["emb.weight"])  # steps 4-5 train the loaded weights too


def test_exact_resume_with_both_levers(tmp_path):
    data = make_token_dataset(40)
    common = dict(max_train_steps=8, checkpointing_steps=2, logging_steps=1, per_device_train_batch_size=8,
                  learning_rate=5e-3, warmup_ratio=0.25, seed=11, freeze_backbone_steps=3, new_module_lr_multiplier=3.0)
    run_a = tmp_path / "A"
    model_a = toy_model()
    train(model_a, data, TrainingConfig(output_dir=str(run_a), **common), ToyMaskCollator())
    losses_a = step_losses(run_a / "log.jsonl")
    for resume_at in ("step_2", "step_4"):  # inside the frozen steps, then while the backbone warms up
        run_b = tmp_path / f"B_{resume_at}"
        shutil.copytree(run_a, run_b)
        model_b = toy_model(seed=99)  # everything must come from the checkpoint
        train(model_b, data, TrainingConfig(output_dir=str(run_b), resume_from_checkpoint=resume_at, **common),
              ToyMaskCollator())
        losses_b = step_losses(run_b / "log.jsonl")
        first = int(resume_at.split("_")[1]) + 1
        for step in range(first, 9):
            assert losses_b[step]["loss"] == pytest.approx(losses_a[step]["loss"], abs=1e-6), (resume_at, step)
        for (name, a), b in zip(model_a.named_parameters(), model_b.parameters()):
            assert torch.allclose(a, b, atol=1e-6), (resume_at, name)
