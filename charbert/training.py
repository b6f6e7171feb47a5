"""The one training loop shared by CharBERT pretraining and every fine-tuning task.

Command-line programs parse their own task flags plus :func:`add_training_args`, turn the
namespace into a :class:`TrainingConfig` with :func:`training_config_from_args`, build a
model, a map-style dataset and a collator, and call :func:`train`.  Names follow the
transformers ``run_*_no_trainer.py`` examples.

What this module guarantees
---------------------------
* accelerate owns devices, processes, mixed precision and gradient accumulation, so
  ``accelerate launch --mixed_precision bf16 prog.py ...`` or ``torchrun`` just work.
* Data order is a pure function of ``(seed, epoch)``; collator randomness (masking, noise) is
  a pure function of ``(seed, epoch, dataset indices of the batch)`` -- see
  :func:`collator_rng`.  Neither depends on resumption, number of processes or workers.
* Checkpoints are written atomically (``.tmp-NAME`` then rename) and a run resumed from
  ``step_k`` reproduces the uninterrupted run's per-step losses after step k.

Checkpoint layout (``output_dir``)::

    log.jsonl                 one JSON record per log/eval event (see read_log)
    step_4/                   accelerate.save_state(): model.safetensors, optimizer.bin,
                              scheduler.bin, random_states_<rank>.pkl (+ scaler.pt)
        trainer_state.json    written last; its presence marks the checkpoint complete
    epoch_0/                  same, for --checkpointing_steps epoch
    .tmp-step_8/              a save in progress (or killed); always ignored

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

import argparse
import contextlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

logger = logging.getLogger(__name__)

TRAINER_STATE_NAME = "trainer_state.json"
LOG_NAME = "log.jsonl"
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
STATE_FORMAT_VERSION = 1
# Evaluation batches draw collator randomness with this pseudo-epoch, so the masking of an
# eval example is the same at every evaluation and eval losses are comparable over time.
EVAL_EPOCH = 2**31 - 1
LR_SCHEDULER_TYPES = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
)


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete or unreadable (the message names the path)."""


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


def _parse_checkpointing_steps(value: Any) -> int | str | None:
    """``None`` | positive int | ``"epoch"``; anything else is a clear error."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"checkpointing_steps must be a positive integer or 'epoch', got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"checkpointing_steps must be a positive integer or 'epoch', got {value!r}")
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("", "none"):
            return None
        if text.lower() == "epoch":
            return "epoch"
        if text.isdigit() and int(text) > 0:
            return int(text)
    raise ValueError(f"checkpointing_steps must be a positive integer or 'epoch', got {value!r}")


def _parse_report_to(value: Any) -> list[str]:
    """Normalise --report_to ('none', 'tensorboard', 'all', 'a,b' or a list) to a list of names."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    names = [str(v).strip().lower() for v in items if str(v).strip()]
    return [] if not names or names == ["none"] else [n for n in names if n != "none"]


@dataclass
class TrainingConfig:
    """Every knob of :func:`train`; field names equal the command-line flags of :func:`add_training_args`."""

    output_dir: str
    seed: int = 42
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    num_train_epochs: int = 3
    max_train_steps: int | None = None
    gradient_accumulation_steps: int = 1
    lr_scheduler_type: str = "linear"
    num_warmup_steps: int = 0
    warmup_ratio: float = 0.0
    checkpointing_steps: int | str | None = None
    resume_from_checkpoint: str | None = None
    save_total_limit: int | None = None
    logging_steps: int = 50
    eval_steps: int | None = None
    report_to: str | list[str] = "none"
    dataloader_num_workers: int = 0

    def __post_init__(self) -> None:
        if not self.output_dir:
            raise ValueError("output_dir is required (--output_dir)")
        self.output_dir = str(self.output_dir)
        self.checkpointing_steps = _parse_checkpointing_steps(self.checkpointing_steps)
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                     "logging_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_train_steps", "eval_steps", "save_total_limit"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        if self.num_train_epochs < 1 and self.max_train_steps is None:
            raise ValueError("num_train_epochs must be >= 1 when max_train_steps is not given")
        if self.num_warmup_steps < 0 or not 0.0 <= self.warmup_ratio <= 1.0:
            raise ValueError("num_warmup_steps must be >= 0 and warmup_ratio in [0, 1]")
        if self.dataloader_num_workers < 0:
            raise ValueError("dataloader_num_workers must be >= 0")
        if self.lr_scheduler_type not in LR_SCHEDULER_TYPES:
            raise ValueError(f"lr_scheduler_type must be one of {LR_SCHEDULER_TYPES}, got {self.lr_scheduler_type!r}")
        if self.resume_from_checkpoint in ("", "none", "None"):
            self.resume_from_checkpoint = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def add_training_args(parser: argparse.ArgumentParser) -> None:
    """Add the shared training flags (same names as transformers' no_trainer examples)."""
    g = parser.add_argument_group("training")
    g.add_argument("--output_dir", type=str, default=None, help="Where checkpoints, log.jsonl and the model go.")
    g.add_argument("--seed", type=int, default=42, help="Seeds data order, collator randomness and dropout.")
    g.add_argument("--per_device_train_batch_size", type=int, default=8)
    g.add_argument("--per_device_eval_batch_size", type=int, default=8)
    g.add_argument("--learning_rate", type=float, default=5e-5)
    g.add_argument("--weight_decay", type=float, default=0.0,
                   help="AdamW weight decay (never applied to biases and norm weights).")
    g.add_argument("--adam_beta1", type=float, default=0.9)
    g.add_argument("--adam_beta2", type=float, default=0.999)
    g.add_argument("--adam_epsilon", type=float, default=1e-8)
    g.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm (<= 0 disables).")
    g.add_argument("--num_train_epochs", type=int, default=3)
    g.add_argument("--max_train_steps", type=int, default=None,
                   help="Total optimizer steps; overrides --num_train_epochs when given.")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument("--lr_scheduler_type", type=str, default="linear", choices=LR_SCHEDULER_TYPES)
    g.add_argument("--num_warmup_steps", type=int, default=0)
    g.add_argument("--warmup_ratio", type=float, default=0.0,
                   help="Warmup as a fraction of max_train_steps, used when --num_warmup_steps is 0.")
    g.add_argument("--checkpointing_steps", type=str, default=None,
                   help="Save a resumable checkpoint every N optimizer steps, or 'epoch'.")
    g.add_argument("--resume_from_checkpoint", type=str, default=None,
                   help="A checkpoint folder, or 'latest' for the newest complete one in --output_dir.")
    g.add_argument("--save_total_limit", type=int, default=None,
                   help="Keep only the N newest checkpoints.")
    g.add_argument("--logging_steps", type=int, default=50)
    g.add_argument("--eval_steps", type=int, default=None,
                   help="Evaluate every N optimizer steps (default: at the end of every epoch).")
    g.add_argument("--report_to", type=str, default="none",
                   help="Trackers for accelerate: none, tensorboard, all, or a comma-separated list.")
    g.add_argument("--dataloader_num_workers", type=int, default=0)


def training_config_from_args(args: argparse.Namespace) -> TrainingConfig:
    """Build a :class:`TrainingConfig` from a namespace; flags missing from it keep their defaults."""
    kwargs = {f.name: getattr(args, f.name) for f in fields(TrainingConfig) if hasattr(args, f.name)}
    if kwargs.get("output_dir") is None:
        raise ValueError("--output_dir is required")
    return TrainingConfig(**kwargs)


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    global_step: int
    epochs_completed: int
    train_loss: float  # mean per-batch loss over the whole run (resumed runs included)
    last_eval: dict[str, float] = field(default_factory=dict)
    log_path: Path | None = None
    wall_time_s: float = 0.0


# --------------------------------------------------------------------------------------
# Deterministic data order and collator randomness
# --------------------------------------------------------------------------------------


def _derive_seed(*entropy: int) -> int:
    """A 63-bit seed that is a stable function of the given non-negative integers."""
    words = np.random.SeedSequence([int(e) for e in entropy]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def collator_rng(seed: int, epoch: int, indices) -> np.random.Generator:
    """The generator handed to a ``needs_rng`` collator for one batch.

    It is ``np.random.default_rng(np.random.SeedSequence([seed, epoch, *indices]))`` where
    ``indices`` are the dataset indices of the batch's examples in batch order; evaluation
    batches use ``epoch = EVAL_EPOCH``.
    """
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), *(int(i) for i in indices)]))


class EpochShuffleSampler(Sampler[int]):
    """Random permutation of ``range(num_examples)`` drawn from a generator seeded by (seed, epoch).

    Unlike ``RandomSampler`` it holds no generator state, so the order of an epoch is the same
    in an uninterrupted run, after a resume, and on every process.
    """

    def __init__(self, num_examples: int, seed: int, shuffle: bool = True):
        self.num_examples = int(num_examples)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def permutation(self, epoch: int | None = None) -> list[int]:
        epoch = self.epoch if epoch is None else int(epoch)
        if not self.shuffle:
            return list(range(self.num_examples))
        gen = torch.Generator()
        gen.manual_seed(_derive_seed(self.seed, epoch))
        return torch.randperm(self.num_examples, generator=gen).tolist()

    def __iter__(self):
        return iter(self.permutation())

    def __len__(self) -> int:
        return self.num_examples


class IndexedDataset(Dataset):
    """Wraps a map-style dataset so each item travels with its index: ``(index, example)``.

    A module-level class (not a closure) so it pickles into DataLoader worker processes.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return int(index), self.dataset[index]


class IndexedCollator:
    """Unwraps ``(index, example)`` pairs and calls the user's collator.

    If the collator declares ``needs_rng = True`` it is called as
    ``collate_fn(examples, rng=collator_rng(seed, epoch, indices))``; otherwise as
    ``collate_fn(examples)``.  ``epoch`` is set by the training loop before each epoch's
    iterator is created (workers receive a copy at that moment, so persistent workers are
    not used).
    """

    def __init__(self, collate_fn: Callable, seed: int, epoch: int = 0):
        self.collate_fn = collate_fn
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.needs_rng = bool(getattr(collate_fn, "needs_rng", False))

    def __call__(self, items):
        indices = [i for i, _ in items]
        examples = [ex for _, ex in items]
        if self.needs_rng:
            return self.collate_fn(examples, rng=collator_rng(self.seed, self.epoch, indices))
        return self.collate_fn(examples)


# --------------------------------------------------------------------------------------
# Checkpoint discovery
# --------------------------------------------------------------------------------------


def _read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    path = Path(checkpoint) / TRAINER_STATE_NAME
    if not path.is_file():
        raise CheckpointError(
            f"Checkpoint {checkpoint} is incomplete: it has no {TRAINER_STATE_NAME} "
            "(the save was probably interrupted); pick an older checkpoint or 'latest'."
        )
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"Checkpoint {checkpoint} has an unreadable {TRAINER_STATE_NAME}: {exc}") from exc
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        raise CheckpointError(f"Checkpoint {checkpoint} has a malformed {TRAINER_STATE_NAME} (no global_step)")
    return state


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``output_dir`` as ``(global_step, path)``, oldest first.

    A folder counts only if it holds a readable trainer_state.json; hidden folders
    (``.tmp-*`` saves in progress, ``.trash-*``) are ignored.
    """
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        if child.name.startswith(".") or not child.is_dir():
            continue
        try:
            state = _read_trainer_state(child)
        except CheckpointError:
            continue
        found.append((state["global_step"], child.stat().st_mtime, child))
    found.sort(key=lambda t: (t[0], t[1]))
    return [(step, path) for step, _, path in found]


def resolve_checkpoint(output_dir: str | os.PathLike, resume_from_checkpoint: str | os.PathLike | None) -> Path | None:
    """Turn ``--resume_from_checkpoint`` into a checkpoint folder.

    ``None``/"" -> None; ``"latest"`` -> the complete checkpoint with the highest global step
    in ``output_dir`` (None if there is none yet, so a fresh run just starts); any other value
    is a path (tried as given, then relative to ``output_dir``) that must be a complete
    checkpoint, else :class:`CheckpointError` naming it.
    """
    if resume_from_checkpoint is None or str(resume_from_checkpoint).strip() in ("", "none", "None"):
        return None
    if str(resume_from_checkpoint) == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1][1] if checkpoints else None
    path = Path(resume_from_checkpoint).expanduser()
    if not path.exists() and not path.is_absolute() and (Path(output_dir) / path).exists():
        path = Path(output_dir) / path
    if not path.is_dir():
        raise CheckpointError(f"Checkpoint folder {path} does not exist")
    _read_trainer_state(path)
    return path


def read_log(log_path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of ``log.jsonl`` as seen by the final timeline.

    A resumed run appends ``{"event": "resume", "step": k}`` and then re-logs steps > k; the
    records of the abandoned attempt after step k are dropped here.
    """
    records: list[dict[str, Any]] = []
    path = Path(log_path)
    if not path.exists():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        if rec.get("event") == "resume":
            records = [r for r in records if r.get("step", 0) <= rec.get("step", 0)]
            continue
        records.append(rec)
    return records


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


def _is_no_decay(name: str, param: torch.Tensor) -> bool:
    lowered = name.lower()
    return param.ndim <= 1 or "bias" in lowered or "norm" in lowered  # norm covers LayerNorm/layer_norm


def build_optimizer(model: torch.nn.Module, config: TrainingConfig) -> torch.optim.AdamW:
    """AdamW with weight decay everywhere except biases, norm weights and other 1-D parameters."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if _is_no_decay(name, param) else decay).append(param)
    groups = [g for g in (
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ) if g["params"]]
    if not groups:
        raise ValueError("The model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                             eps=config.adam_epsilon)


def num_warmup_steps(config: TrainingConfig, max_train_steps: int) -> int:
    if config.num_warmup_steps > 0:
        return config.num_warmup_steps
    return int(math.ceil(config.warmup_ratio * max_train_steps))


def create_accelerator(config: TrainingConfig, **kwargs):
    """The Accelerator :func:`train` would create; build it yourself to use it before training
    (e.g. ``main_process_first`` around preprocessing) and pass it to :func:`train`."""
    from accelerate import Accelerator

    report_to = _parse_report_to(config.report_to)
    _check_trackers_available(report_to)
    if _world_size_from_env() > 1 and not _has_accelerator_device():
        # Under plain torchrun on a CPU-only machine accelerate only goes distributed (gloo)
        # with cpu=True; otherwise every rank would silently train its own copy.
        kwargs.setdefault("cpu", True)
    kwargs.setdefault("gradient_accumulation_steps", config.gradient_accumulation_steps)
    kwargs.setdefault("log_with", report_to or None)
    kwargs.setdefault("project_dir", config.output_dir)
    return Accelerator(**kwargs)


def _world_size_from_env() -> int:
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


def _check_trackers_available(report_to: list[str]) -> None:
    # accelerate silently drops an unavailable tracker; a run that was asked to write
    # tensorboard logs must fail at start, not after hours without curves.
    if "tensorboard" in report_to:
        from accelerate.utils import is_tensorboard_available

        if not is_tensorboard_available():
            raise ImportError("--report_to tensorboard needs the `tensorboard` package: pip install tensorboard")


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _isolated_rng():
    """Run a block (evaluation) without disturbing the training RNG streams.

    Building an eval DataLoader iterator draws from torch's global generator, so without this
    the dropout masks after an evaluation would depend on whether evaluation ran -- and a
    resumed run would diverge from the uninterrupted one.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _call_model(model, batch):
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (list, tuple)):
        return model(*batch)
    return model(batch)


def _aux_losses(outputs) -> dict[str, torch.Tensor]:
    """Scalar tensor fields of a model output whose name ends in ``_loss`` (mlm_loss, ...)."""
    if not isinstance(outputs, Mapping):
        return {}
    found = {}
    for key, value in outputs.items():
        if key.endswith("_loss") and isinstance(value, torch.Tensor) and value.numel() == 1:
            found[key] = value.detach().float().reshape(())
    return found


def _batch_size(batch) -> int:
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else [batch]
    for value in values:
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            return int(value.shape[0])
    return 1


def _count_tokens(batch) -> torch.Tensor | None:
    if isinstance(batch, Mapping):
        mask = batch.get("attention_mask")
        if isinstance(mask, torch.Tensor):
            return mask.detach().sum()
    return None


def _union_keys(accelerator, keys: list[str]) -> list[str]:
    # Collectives below need identical key lists on every rank.
    if accelerator.num_processes == 1:
        return sorted(keys)
    from accelerate.utils import gather_object

    return sorted(set().union(*gather_object([sorted(keys)])))


def _reduce_sum(accelerator, values: list) -> list[float]:
    """Sum a few scalars (python numbers or 0-d tensors) over all processes in one collective."""
    # float64 so long runs' loss sums keep their precision (MPS has no float64: sum on CPU there).
    device = accelerator.device if accelerator.device.type != "mps" else torch.device("cpu")
    packed = torch.stack([torch.as_tensor(v, device=device).to(torch.float64).reshape(()) for v in values])
    if accelerator.num_processes > 1:
        packed = accelerator.reduce(packed, reduction="sum")
    return packed.tolist()


class _Meter:
    """Sums of per-batch losses, auxiliary ``*_loss`` fields and tokens over a logging interval."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.loss_sum = 0.0
        self.loss_count = 0
        self.aux_sum: dict[str, Any] = {}
        self.aux_count: dict[str, int] = {}
        self.tokens = 0
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, aux: dict[str, torch.Tensor], tokens: torch.Tensor | None):
        # Tensors stay on device (no .item() per batch, which would sync a GPU every step).
        self.loss_sum = self.loss_sum + loss.detach().float()
        self.loss_count += 1
        for key, value in aux.items():
            self.aux_sum[key] = self.aux_sum.get(key, 0.0) + value
            self.aux_count[key] = self.aux_count.get(key, 0) + 1
        if tokens is not None:
            self.tokens = self.tokens + tokens

    def reduce(self, accelerator) -> dict[str, float]:
        """Means over the interval and over all processes; tokens summed over processes."""
        keys = _union_keys(accelerator, list(self.aux_sum))
        values = [self.loss_sum, float(self.loss_count), self.tokens]
        for key in keys:
            values += [self.aux_sum.get(key, 0.0), float(self.aux_count.get(key, 0))]
        packed = _reduce_sum(accelerator, values)
        out = {"loss": packed[0] / packed[1] if packed[1] else float("nan"), "tokens": packed[2],
               "seconds": time.perf_counter() - self.start}
        for j, key in enumerate(keys):
            s, c = packed[3 + 2 * j], packed[4 + 2 * j]
            out[key] = s / c if c else float("nan")
        return out


# --------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------


def save_model(accelerator, model, output_dir: str | os.PathLike, tokenizer=None,
               extra_files: dict[str, str | bytes] | None = None) -> None:
    """Save the unwrapped model (safetensors), optionally the tokenizer and extra files.

    Call on every process (the state dict is gathered collectively under FSDP/DeepSpeed);
    only the main process writes.  ``extra_files`` maps a relative file name to its content
    (``str`` written as UTF-8 text, ``bytes`` as is), e.g. ``{"eval_results.json": json.dumps(m)}``.
    ``accelerator`` may be None outside distributed runs.
    """
    if accelerator is None:
        from accelerate.utils import extract_model_from_parallel
        from accelerate import PartialState

        is_main = PartialState().is_main_process
        unwrapped = extract_model_from_parallel(model)
        state_dict = None
    else:
        accelerator.wait_for_everyone()
        is_main = accelerator.is_main_process
        unwrapped = accelerator.unwrap_model(model)
        # Sharded engines need the collective gather on every rank; otherwise the module's
        # own state_dict is used (no copy, and transformers sees the tied weights as tied).
        sharded = str(accelerator.distributed_type).split(".")[-1] in ("DEEPSPEED", "FSDP", "MEGATRON_LM")
        state_dict = accelerator.get_state_dict(model) if sharded else None
    out = Path(output_dir)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        if hasattr(unwrapped, "save_pretrained"):
            # transformers 5 always writes safetensors (the v4 `safe_serialization` flag is gone).
            unwrapped.save_pretrained(out, is_main_process=True, state_dict=state_dict)
        else:
            from safetensors.torch import save_model as st_save_model

            if state_dict is None:
                st_save_model(unwrapped, str(out / "model.safetensors"))
            else:
                from accelerate.utils import save as acc_save

                acc_save(state_dict, out / "model.safetensors", safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
        for name, content in (extra_files or {}).items():
            rel = Path(name)
            if rel.is_absolute() or ".." in rel.parts:
                raise ValueError(f"extra_files names must be relative paths inside output_dir, got {name!r}")
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(str(content), encoding="utf-8")
    if accelerator is not None:
        accelerator.wait_for_everyone()


def _save_checkpoint(accelerator, output_dir: Path, name: str, trainer_state: dict, save_total_limit: int | None):
    """accelerate.save_state into ``.tmp-NAME``, trainer_state.json last, then an atomic rename."""
    final, tmp = output_dir / name, output_dir / f"{TMP_PREFIX}{name}"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # every rank writes its random_states_<rank>.pkl here
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_json_atomic(tmp / TRAINER_STATE_NAME, trainer_state)
        _fsync_dir(tmp)
        trash = None
        if final.exists():  # e.g. a resumed run re-saving a step; a dir cannot be renamed over a non-empty one
            trash = output_dir / f"{TRASH_PREFIX}{name}-{os.getpid()}"
            os.replace(final, trash)
        os.replace(tmp, final)
        _fsync_dir(output_dir)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        if save_total_limit is not None:
            complete = list_checkpoints(output_dir)
            for _, old in complete[: max(0, len(complete) - save_total_limit)]:
                if old.resolve() != final.resolve():
                    shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


# --------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------


def evaluate_loss(model, eval_dataloader, accelerator) -> dict[str, float]:
    """Default evaluation: example-weighted mean ``loss`` and ``*_loss`` fields over the eval set."""
    sums: dict[str, float] = {}
    count = 0
    for batch in eval_dataloader:
        outputs = _call_model(model, batch)
        scalars = {"loss": outputs.loss.detach().float().reshape(()), **_aux_losses(outputs)}
        n = _batch_size(batch)
        # gather_for_metrics drops the examples accelerate duplicated to even out the last batch.
        for key in sorted(scalars):
            gathered = accelerator.gather_for_metrics(scalars[key].repeat(n))
            sums[key] = sums.get(key, 0.0) + float(gathered.double().sum())
            if key == "loss":
                count += gathered.numel()
    return {k: v / max(count, 1) for k, v in sums.items()}


def _run_eval(model, accelerator, eval_fn, eval_dataloader) -> dict[str, float]:
    model.eval()
    try:
        with _isolated_rng(), torch.no_grad():
            if eval_fn is None:
                metrics = evaluate_loss(model, eval_dataloader, accelerator)
            elif eval_dataloader is not None:
                metrics = eval_fn(model, accelerator, eval_dataloader)
            else:
                metrics = eval_fn(model, accelerator)
    finally:
        model.train()
    out = {}
    for key, value in (metrics or {}).items():
        if isinstance(value, torch.Tensor):
            value = value.item()
        with contextlib.suppress(TypeError, ValueError):
            out[key if key.startswith("eval_") else f"eval_{key}"] = float(value)
    return out


# --------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------


def train(model, train_dataset, config: TrainingConfig, collate_fn, eval_fn=None, accelerator=None,
          eval_dataset=None) -> TrainResult:
    """Train ``model`` in place on a map-style ``train_dataset``.

    * ``collate_fn(examples)`` -> batch (a dict passed as ``model(**batch)``); with
      ``collate_fn.needs_rng = True`` it is called as ``collate_fn(examples, rng=...)`` with the
      generator of :func:`collator_rng`.
    * The model returns a ModelOutput with ``.loss``; scalar ``*_loss`` fields are logged too.
    * Evaluation (every ``eval_steps`` optimizer steps, else at each epoch end, and at the end):
      ``eval_fn(model, accelerator)`` -> dict of floats, or, when ``eval_dataset`` is given,
      ``eval_fn(model, accelerator, eval_dataloader)`` with a prepared (sharded) loader built
      with the same collator; with ``eval_dataset`` but no ``eval_fn`` the mean eval loss is
      computed.  eval_fn runs on every process under ``torch.no_grad()`` in eval mode and should
      return the same metrics everywhere (use ``accelerator.gather_for_metrics``).
    * ``accelerator``: pass one from :func:`create_accelerator` (or your own) to use it before
      and after training (e.g. :func:`save_model`); otherwise one is created.
    """
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    wall_start = time.perf_counter()
    if not isinstance(config, TrainingConfig):
        raise TypeError("config must be a TrainingConfig (see training_config_from_args)")
    if not hasattr(train_dataset, "__len__") or not hasattr(train_dataset, "__getitem__"):
        raise TypeError("train_dataset must be a map-style dataset (with __len__ and __getitem__)")
    if len(train_dataset) == 0:
        raise ValueError("train_dataset is empty: nothing to train on")
    if eval_dataset is not None and len(eval_dataset) == 0:
        raise ValueError("eval_dataset is empty")
    report_to = _parse_report_to(config.report_to)
    _check_trackers_available(report_to)

    if accelerator is None:
        accelerator = create_accelerator(config)
    elif accelerator.gradient_accumulation_steps != config.gradient_accumulation_steps:
        accelerator.gradient_accumulation_steps = config.gradient_accumulation_steps
    if accelerator.num_processes == 1 and _world_size_from_env() > 1:
        raise RuntimeError(
            f"Launched with WORLD_SIZE={_world_size_from_env()} but the Accelerator runs a single process: every "
            "rank would train its own copy. Create it with create_accelerator(config) or Accelerator(cpu=True) on "
            "CPU-only machines (or use `accelerate launch --cpu`)."
        )
    output_dir = Path(config.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        for stale in output_dir.glob(f"{TMP_PREFIX}*"):  # leftovers of a save killed midway
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()

    # Fail on a bad --resume_from_checkpoint before any expensive setup.
    checkpoint = resolve_checkpoint(output_dir, config.resume_from_checkpoint)
    resume_state = _read_trainer_state(checkpoint) if checkpoint is not None else None
    if config.resume_from_checkpoint == "latest" and checkpoint is None:
        logger.info("No complete checkpoint in %s yet: starting from scratch", output_dir)

    set_seed(config.seed)

    # ---- data -------------------------------------------------------------------------
    sampler = EpochShuffleSampler(len(train_dataset), config.seed)
    train_collator = IndexedCollator(collate_fn, config.seed)
    # A private generator for the DataLoader's worker base seed: otherwise creating each
    # epoch's iterator would draw from torch's global RNG (used by dropout) and a resumed run
    # would see different dropout masks.
    loader_generator = torch.Generator()
    train_dataloader = DataLoader(
        IndexedDataset(train_dataset), batch_size=config.per_device_train_batch_size, sampler=sampler,
        collate_fn=train_collator, num_workers=config.dataloader_num_workers, generator=loader_generator,
        pin_memory=accelerator.device.type == "cuda",
    )
    eval_dataloader = None
    if eval_dataset is not None:
        eval_dataloader = DataLoader(
            IndexedDataset(eval_dataset), batch_size=config.per_device_eval_batch_size, shuffle=False,
            collate_fn=IndexedCollator(collate_fn, config.seed, epoch=EVAL_EPOCH),
            num_workers=config.dataloader_num_workers, generator=torch.Generator(),
        )

    optimizer = build_optimizer(model, config)
    model, optimizer, train_dataloader = accelerator.prepare(model, optimizer, train_dataloader)
    if eval_dataloader is not None:
        eval_dataloader = accelerator.prepare(eval_dataloader)

    # ---- schedule -----------------------------------------------------------------------
    accum = config.gradient_accumulation_steps
    batches_per_epoch = len(train_dataloader)  # per process, after sharding
    steps_per_epoch = math.ceil(batches_per_epoch / accum)  # accelerate syncs at the end of the loader too
    max_train_steps = config.max_train_steps or config.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(max_train_steps / steps_per_epoch)
    warmup = num_warmup_steps(config, max_train_steps)
    # accelerate steps a prepared scheduler once per process per optimizer step (its
    # batch-size-scales-with-processes convention), hence the factor, as in the HF examples.
    lr_scheduler = get_scheduler(
        config.lr_scheduler_type, optimizer=optimizer,
        num_warmup_steps=warmup * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )
    lr_scheduler = accelerator.prepare(lr_scheduler)

    # ---- resume ---------------------------------------------------------------------------
    completed_steps, start_epoch, skip_batches = 0, 0, 0
    epochs_completed = 0
    total_loss_sum, total_loss_count, elapsed_before = 0.0, 0, 0.0
    last_metrics: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    if resume_state is not None:
        try:
            accelerator.load_state(str(checkpoint))
        except Exception as exc:  # torch/safetensors tracebacks say nothing about which folder
            raise CheckpointError(
                f"Checkpoint {checkpoint} could not be loaded ({type(exc).__name__}: {exc}); it is corrupt or was "
                "written for a different model/optimizer setup"
            ) from exc
        completed_steps = resume_state["global_step"]
        start_epoch = int(resume_state.get("epoch", 0))
        epochs_completed = int(resume_state.get("epochs_completed", start_epoch))
        global_batches = int(resume_state.get("global_batches_in_epoch", 0))
        if global_batches % accelerator.num_processes:
            raise CheckpointError(
                f"Checkpoint {checkpoint} stopped after {global_batches} global batches of epoch {start_epoch}, "
                f"which cannot be split over {accelerator.num_processes} processes; resume with the original "
                f"number of processes ({resume_state.get('num_processes')})"
            )
        skip_batches = global_batches // accelerator.num_processes
        if resume_state.get("per_device_train_batch_size") not in (None, config.per_device_train_batch_size):
            logger.warning("Resuming with a different per_device_train_batch_size: data order will not match")
        total_loss_sum = float(resume_state.get("train_loss_sum", 0.0))
        total_loss_count = int(resume_state.get("train_loss_count", 0))
        elapsed_before = float(resume_state.get("elapsed_s", 0.0))
        last_metrics = dict(resume_state.get("last_metrics") or {})
        last_eval = {k: v for k, v in last_metrics.items() if k.startswith("eval_")}
        newer = [p.name for s, p in list_checkpoints(output_dir) if s > completed_steps]
        if newer:
            logger.warning("Resuming from %s although newer checkpoints exist (%s); they will be overwritten "
                           "as the run reaches them", checkpoint, ", ".join(newer))

    log_path = output_dir / LOG_NAME
    is_main = accelerator.is_main_process

    def write_log(record: dict) -> None:
        if is_main:
            with open(log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")

    if resume_state is not None:
        write_log({"event": "resume", "step": completed_steps, "checkpoint": str(checkpoint)})

    trackers = bool(report_to)
    if trackers and not accelerator.log_with:
        logger.warning("report_to=%s but the Accelerator has no usable tracker (not installed, or an Accelerator "
                       "made without log_with): only log.jsonl is written", report_to)
    if trackers:
        hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in config.to_dict().items()}
        accelerator.init_trackers("charbert", config=hparams)

    run_start = time.perf_counter()

    def epoch_float() -> float:
        return round(completed_steps / steps_per_epoch, 4)

    def log_metrics(values: dict) -> None:
        record = {"step": completed_steps, "epoch": epoch_float(), **values}
        write_log(record)
        if trackers:
            accelerator.log({k: v for k, v in values.items() if isinstance(v, (int, float))}, step=completed_steps)

    def evaluate() -> None:
        nonlocal last_eval, last_eval_step
        if eval_fn is None and eval_dataloader is None:
            return
        last_eval = _run_eval(model, accelerator, eval_fn, eval_dataloader)
        last_eval_step = completed_steps
        last_metrics.update(last_eval)
        log_metrics(dict(last_eval))
        logger.info("step %d: %s", completed_steps, last_eval)

    def checkpoint_now(name: str, epoch: int, batches_done: int) -> None:
        if batches_done >= batches_per_epoch:  # the epoch is over: resume at the next one
            epoch, batches_done = epoch + 1, 0
        run_sum, run_count = _reduce_sum(accelerator, [meter_total.loss_sum, meter_total.loss_count])
        state = {
            "format_version": STATE_FORMAT_VERSION,
            "global_step": completed_steps,
            "epoch": epoch,
            "global_batches_in_epoch": batches_done * accelerator.num_processes,
            "epochs_completed": epoch,  # epochs before the resume position are complete
            "max_train_steps": max_train_steps,
            "num_processes": accelerator.num_processes,
            "per_device_train_batch_size": config.per_device_train_batch_size,
            "gradient_accumulation_steps": accum,
            "train_loss_sum": total_loss_sum + run_sum,
            "train_loss_count": total_loss_count + int(run_count),
            "elapsed_s": elapsed_before + time.perf_counter() - run_start,
            "last_metrics": last_metrics,
            "config": config.to_dict(),
        }
        _save_checkpoint(accelerator, output_dir, name, state, config.save_total_limit)

    meter, meter_total = _Meter(), _Meter()
    last_eval_step = -1
    progress = tqdm(total=max_train_steps, initial=completed_steps, disable=not accelerator.is_local_main_process,
                    desc="train", dynamic_ncols=True)
    model.train()
    grad_norm = None
    done = completed_steps >= max_train_steps
    epoch = start_epoch
    for epoch in range(start_epoch, num_epochs):
        if done:
            break
        # Everything that shapes this epoch's batches is a function of (seed, epoch) only.
        sampler.set_epoch(epoch)
        train_collator.epoch = epoch
        loader_generator.manual_seed(_derive_seed(config.seed, epoch, 1))
        train_dataloader.set_epoch(epoch)
        active = train_dataloader
        batches_done = 0
        if epoch == start_epoch and skip_batches:
            active = accelerator.skip_first_batches(train_dataloader, skip_batches)
            active.set_epoch(epoch)
            batches_done = skip_batches
        for batch in active:
            with accelerator.accumulate(model):
                outputs = _call_model(model, batch)
                loss = outputs.loss
                if loss is None:
                    raise ValueError("The model returned no loss: does the batch carry labels?")
                aux, tokens = _aux_losses(outputs), _count_tokens(batch)
                meter.add(loss, aux, tokens)
                meter_total.add(loss, {}, None)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm and config.max_grad_norm > 0:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            batches_done += 1
            if not accelerator.sync_gradients:
                continue
            completed_steps += 1
            progress.update(1)
            if completed_steps % config.logging_steps == 0 or completed_steps >= max_train_steps:
                stats = meter.reduce(accelerator)
                values = {"loss": stats["loss"], "lr": lr_scheduler.get_last_lr()[0],
                          "tokens_per_s": stats["tokens"] / max(stats["seconds"], 1e-9),
                          "elapsed": elapsed_before + time.perf_counter() - run_start}
                if grad_norm is not None:
                    values["grad_norm"] = float(grad_norm)
                values.update({k: v for k, v in stats.items() if k.endswith("_loss")})
                last_metrics.update(values)
                log_metrics(values)
                progress.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}",
                                     tok_s=f"{values['tokens_per_s']:.0f}")
                meter.reset()
            pause = time.perf_counter()
            if config.eval_steps and completed_steps % config.eval_steps == 0:
                evaluate()  # before checkpointing, so the checkpoint carries its metrics
            if isinstance(config.checkpointing_steps, int) and completed_steps % config.checkpointing_steps == 0:
                checkpoint_now(f"step_{completed_steps}", epoch, batches_done)
            meter.start += time.perf_counter() - pause  # tokens/s measures training, not eval or saving
            if completed_steps >= max_train_steps:
                done = True
                break
        if batches_done >= batches_per_epoch:
            epochs_completed = epoch + 1
            if config.eval_steps is None and last_eval_step != completed_steps:
                evaluate()
            if config.checkpointing_steps == "epoch":
                checkpoint_now(f"epoch_{epoch}", epoch, batches_done)
    progress.close()

    if last_eval_step != completed_steps:
        evaluate()

    run_sum, run_count = _reduce_sum(accelerator, [meter_total.loss_sum, meter_total.loss_count])
    loss_sum, loss_count = total_loss_sum + run_sum, total_loss_count + int(run_count)
    if trackers:
        # Not accelerator.end_training(): it also destroys the process group, which callers
        # still need (e.g. save_model after train under torchrun).
        for tracker in accelerator.trackers:
            tracker.finish()
    accelerator.wait_for_everyone()
    return TrainResult(
        global_step=completed_steps,
        epochs_completed=epochs_completed,
        train_loss=loss_sum / loss_count if loss_count else float("nan"),
        last_eval=dict(last_eval),
        log_path=log_path,
        wall_time_s=time.perf_counter() - wall_start,
    )
