"""The one training loop shared by CharBERT pretraining and every fine-tuning task.

Command-line programs parse their own task flags plus :func:`add_training_args` (generated
from the fields of :class:`TrainingConfig`), turn the namespace into a config with
:func:`training_config_from_args`, build a model, a map-style dataset and a collator, and call
:func:`train`.  Names follow the transformers ``run_*_no_trainer.py`` examples.

Modules
-------
* :mod:`.arguments`   -- :class:`TrainingConfig` (each flag's default, help and check) and the flags.
* :mod:`.determinism` -- data order and collator randomness as functions of (seed, epoch, indices).
* :mod:`.checkpoints` -- :class:`TrainState`, atomic checkpoint saves, discovery, ``log.jsonl``, save_model.
* :mod:`.metrics`     -- loss meters, reductions over processes, evaluation.
* :mod:`.setup`       -- the Accelerator, the optimizer, the schedule.
* :mod:`.loop`        -- :func:`train`.

What this package guarantees
----------------------------
* accelerate owns devices, processes, mixed precision and gradient accumulation, so
  ``accelerate launch --mixed_precision bf16 prog.py ...`` or ``torchrun`` just work.
* Data order is a pure function of ``(seed, epoch)``; collator randomness (masking, noise) is
  a pure function of ``(seed, epoch, dataset indices of the batch)`` -- see
  :func:`collator_rng`.  Neither depends on resumption, number of processes or workers.
* Checkpoints are written atomically (``.tmp-NAME`` then rename) and a run resumed from
  ``step_k`` reproduces the uninterrupted run's per-step losses after step k.

Caveats
-------
* Only ``needs_rng`` collators are covered by the exact-resume guarantee: a collator drawing
  from global RNGs (e.g. transformers' DataCollatorForLanguageModeling) still trains, but its
  draws depend on the process history.
* With several processes accelerate keeps batches even: when ``len(dataset)`` is not a
  multiple of ``per_device_train_batch_size * num_processes`` the last batches of an epoch are
  topped up with examples from the start of that epoch.
* A resumed run's first log record covers only the steps since the checkpoint.
"""

from __future__ import annotations

from .arguments import (
    LR_SCHEDULER_TYPES,
    OPTIMIZERS,
    TrainingConfig,
    add_dataclass_arguments,
    add_training_args,
    training_config_from_args,
)
from .checkpoints import (
    LOG_NAME,
    STATE_FORMAT_VERSION,
    TRAINER_STATE_NAME,
    CheckpointError,
    TrainState,
    list_checkpoints,
    read_log,
    read_trainer_state,
    resolve_checkpoint,
    save_model,
)
from .determinism import EVAL_EPOCH, EpochShuffleSampler, IndexedCollator, IndexedDataset, collator_rng
from .loop import TrainResult, stopped_line, train
from .metrics import evaluate_loss
from .setup import build_optimizer, create_accelerator, num_warmup_steps

__all__ = [
    "EVAL_EPOCH",
    "LOG_NAME",
    "LR_SCHEDULER_TYPES",
    "OPTIMIZERS",
    "STATE_FORMAT_VERSION",
    "TRAINER_STATE_NAME",
    "CheckpointError",
    "EpochShuffleSampler",
    "IndexedCollator",
    "IndexedDataset",
    "TrainResult",
    "TrainState",
    "TrainingConfig",
    "add_dataclass_arguments",
    "add_training_args",
    "build_optimizer",
    "collator_rng",
    "create_accelerator",
    "evaluate_loss",
    "list_checkpoints",
    "num_warmup_steps",
    "read_log",
    "read_trainer_state",
    "resolve_checkpoint",
    "save_model",
    "stopped_line",
    "train",
    "training_config_from_args",
]
