"""What a run is built from: the Accelerator, the optimizer and the learning-rate schedule."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .arguments import TrainingConfig

logger = logging.getLogger("charbert.training")


def world_size_from_env() -> int:
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        value = os.environ.get(name)
        if value and value.isdigit():
            return int(value)
    return 1


def _has_accelerator_device() -> bool:
    accel = getattr(torch, "accelerator", None)
    if accel is not None and hasattr(accel, "is_available"):
        return bool(accel.is_available())
    return torch.cuda.is_available()


def create_accelerator(config: TrainingConfig, **kwargs):
    """The Accelerator :func:`train` would create; build it yourself to use it before training
    (e.g. ``main_process_first`` around preprocessing) and pass it to :func:`train`."""
    from accelerate import Accelerator

    if world_size_from_env() > 1 and not _has_accelerator_device():
        # Under plain torchrun on a CPU-only machine accelerate only goes distributed (gloo)
        # with cpu=True; otherwise every rank would silently train its own copy.
        kwargs.setdefault("cpu", True)
    if config.mixed_precision is not None:  # None: accelerate's config file / environment decides
        kwargs.setdefault("mixed_precision", config.mixed_precision)
    kwargs.setdefault("gradient_accumulation_steps", config.gradient_accumulation_steps)
    kwargs.setdefault("log_with", config.report_to or None)
    kwargs.setdefault("project_dir", config.output_dir)
    return Accelerator(**kwargs)


def check_accelerator(accelerator, config: TrainingConfig):
    """The accelerator :func:`train` uses: the given one (accumulation set from ``config``) or a new one."""
    if accelerator is None:
        accelerator = create_accelerator(config)
    elif accelerator.gradient_accumulation_steps != config.gradient_accumulation_steps:
        accelerator.gradient_accumulation_steps = config.gradient_accumulation_steps
    if accelerator.num_processes == 1 and world_size_from_env() > 1:
        raise RuntimeError(
            f"Launched with WORLD_SIZE={world_size_from_env()} but the Accelerator runs a single process: every "
            "rank would train its own copy. Create it with create_accelerator(config) or Accelerator(cpu=True) on "
            "CPU-only machines (or use `accelerate launch --cpu`)."
        )
    return accelerator


# Where torch's fused AdamW kernel exists (torch.optim.AdamW(fused=True)).
FUSED_ADAMW_DEVICES = ("cpu", "cuda", "mps", "xpu")


def _is_no_decay(name: str, param: torch.Tensor) -> bool:
    lowered = name.lower()
    return param.ndim <= 1 or "bias" in lowered or "norm" in lowered  # norm covers LayerNorm/layer_norm


def new_parameter_names(model: torch.nn.Module) -> set[str]:
    """Names of the parameters the checkpoint did not provide: `model.loading_info["initialized_keys"]`,
    which CharBERT built on a plain checkpoint and the task programs' loader set (empty when unknown)."""
    info = getattr(model, "loading_info", None) or {}
    keys = set(info.get("initialized_keys", ()))
    return {name for name, _ in model.named_parameters() if name in keys}


def uses_new_module_groups(config: TrainingConfig) -> bool:
    """Whether the optimizer splits the new modules from the loaded weights (only for the levers that need it,
    so a run without them keeps its two groups and its checkpoints resume as before)."""
    return config.new_module_lr_multiplier != 1.0 or config.freeze_backbone_steps > 0


def build_optimizer(model: torch.nn.Module, config: TrainingConfig) -> torch.optim.AdamW:
    """AdamW with weight decay everywhere except biases, norm weights and other 1-D parameters.

    With --new_module_lr_multiplier or --freeze_backbone_steps, the parameters the checkpoint did not
    provide (`new_parameter_names`) get groups of their own, marked ``new_module: True``, at
    ``learning_rate x new_module_lr_multiplier``. A model with a ``base_lr_parts()`` method (tensors and
    boolean masks of their elements) keeps those elements at the base rate under the multiplier
    (`damp_updates`), e.g. the subword half of a new weight whose character half is sped up."""
    split = uses_new_module_groups(config)
    new = new_parameter_names(model) if split else set()
    if split and not new:
        if config.freeze_backbone_steps > 0:
            raise ValueError("--freeze_backbone_steps: the model has no new modules to train while the loaded weights "
                             "are frozen (it came whole from its checkpoint)")
        logger.warning("--new_module_lr_multiplier: the model has no new modules (it came whole from its checkpoint)")
    groups: dict[tuple[bool, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        groups.setdefault((name in new, not _is_no_decay(name, param)), []).append(param)
    if not groups:
        raise ValueError("The model has no trainable parameters")
    param_groups = []
    for is_new in (False, True):
        for decays in (True, False):
            params = groups.get((is_new, decays))
            if not params:
                continue
            group = {"params": params, "weight_decay": config.weight_decay if decays else 0.0}
            if split:
                group["new_module"] = is_new
                group["lr"] = config.learning_rate * (config.new_module_lr_multiplier if is_new else 1.0)
            param_groups.append(group)
    fused = config.optim == "adamw_torch_fused"
    if fused:
        devices = {p.device.type for g in param_groups for p in g["params"]} - set(FUSED_ADAMW_DEVICES)
        if devices:
            raise ValueError(f"--optim adamw_torch_fused runs on {', '.join(FUSED_ADAMW_DEVICES)} parameters, not "
                             f"{', '.join(sorted(devices))}: pass --optim adamw_torch")
    optimizer = torch.optim.AdamW(param_groups, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                                  eps=config.adam_epsilon, fused=fused)
    base_lr_parts = getattr(model, "base_lr_parts", None)
    if split and config.new_module_lr_multiplier != 1.0 and callable(base_lr_parts):
        parts = base_lr_parts()
        if parts:
            damp_updates(optimizer, parts, 1.0 / config.new_module_lr_multiplier)
    return optimizer


def damp_updates(optimizer: torch.optim.Optimizer, parts: Sequence[tuple[torch.Tensor, torch.Tensor]],
                 factor: float) -> None:
    """After every optimizer step, the masked elements of each part keep only ``factor`` of the step's change;
    the rest of the tensor moves as the optimizer moved it. AdamW's step does not depend on the gradient's
    scale, so scaling gradients cannot give part of a tensor another learning rate; this does (weight
    decay included). No state outlives a step, so checkpoints are unchanged and a resumed run damps its
    steps the same way."""
    before: list[torch.Tensor] = []

    def keep(opt, args, kwargs):
        before[:] = [param.detach().clone() for param, _ in parts]

    @torch.no_grad()
    def damp(opt, args, kwargs):
        for (param, mask), old in zip(parts, before):
            param.copy_(torch.where(mask, old + factor * (param - old), param))
        before.clear()

    optimizer.register_step_pre_hook(keep)
    optimizer.register_step_post_hook(damp)


def loaded_weights(optimizer) -> list[torch.Tensor]:
    """The parameters of the optimizer's groups that are not new modules (empty without the split)."""
    return [p for g in optimizer.param_groups if g.get("new_module") is False for p in g["params"]]


def backbone_lr_factor(step: int, frozen_steps: int, warmup_steps: int) -> float:
    """Factor on the loaded weights' scheduled learning rate at optimizer step `step` (0-based) under
    --freeze_backbone_steps: 0 while frozen, then a linear warm-up of its own over `warmup_steps`."""
    if step < frozen_steps:
        return 0.0
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step - frozen_steps + 1) / warmup_steps)


def num_warmup_steps(config: TrainingConfig, max_train_steps: int) -> int:
    if config.num_warmup_steps > 0:
        return config.num_warmup_steps
    return int(math.ceil(config.warmup_ratio * max_train_steps))


@dataclass(frozen=True)
class Schedule:
    """How long the run is, in batches (per process, after sharding) and optimizer steps."""

    batches_per_epoch: int
    steps_per_epoch: int
    max_train_steps: int
    num_epochs: int

    @classmethod
    def of(cls, config: TrainingConfig, batches_per_epoch: int) -> Schedule:
        # accelerate syncs at the end of the loader too, hence ceil.
        steps_per_epoch = math.ceil(batches_per_epoch / config.gradient_accumulation_steps)
        max_train_steps = config.max_train_steps or config.num_train_epochs * steps_per_epoch
        return cls(batches_per_epoch, steps_per_epoch, max_train_steps, math.ceil(max_train_steps / steps_per_epoch))


def build_lr_scheduler(optimizer, config: TrainingConfig, schedule: Schedule, num_processes: int):
    from transformers import get_scheduler

    warmup = num_warmup_steps(config, schedule.max_train_steps)
    # accelerate steps a prepared scheduler once per process per optimizer step (its
    # batch-size-scales-with-processes convention), hence the factor, as in the HF examples.
    return get_scheduler(
        config.lr_scheduler_type, optimizer=optimizer,
        num_warmup_steps=warmup * num_processes,
        num_training_steps=schedule.max_train_steps * num_processes,
    )
