"""The training flags: one dataclass, :class:`TrainingConfig`, from which the command-line flags
are generated.  Each default, help text and check is written once, on its field."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

LR_SCHEDULER_TYPES = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
)

MIXED_PRECISION_TYPES = ("no", "fp16", "bf16")


def parse_checkpointing_steps(value: Any) -> int | str | None:
    """``None`` | positive int | ``"epoch"``; anything else is a clear error."""
    error = ValueError(f"checkpointing_steps must be a positive integer or 'epoch', got {value!r}")
    if value is None:
        return None
    if isinstance(value, bool):
        raise error
    if isinstance(value, int):
        if value <= 0:
            raise error
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("", "none"):
            return None
        if text.lower() == "epoch":
            return "epoch"
        if text.isdigit() and int(text) > 0:
            return int(text)
    raise error


def parse_report_to(value: Any) -> list[str]:
    """Normalise --report_to ('none', 'tensorboard', 'all', 'a,b' or a list) to a list of names."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    names = [str(v).strip().lower() for v in items if str(v).strip()]
    return [] if not names or names == ["none"] else [n for n in names if n != "none"]


def check_trackers_available(report_to: list[str]) -> None:
    # accelerate silently drops an unavailable tracker; a run that was asked to write
    # tensorboard logs must fail at start, not after hours without curves.
    if "tensorboard" in report_to:
        from accelerate.utils import is_tensorboard_available

        if not is_tensorboard_available():
            raise ImportError("--report_to tensorboard needs the `tensorboard` package: pip install tensorboard")


OPTIMIZERS = ("adamw_torch_fused", "adamw_torch")


def _default_optimizer() -> str:
    """Fused AdamW from torch 2.8 on, as transformers' Trainer chooses (its CPU kernel arrived in 2.4)."""
    import torch

    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    return "adamw_torch_fused" if (major, minor) >= (2, 8) else "adamw_torch"


def _help(text: str = "", **extra: Any) -> dict[str, Any]:
    """Field metadata: the flag's help text (and argparse extras such as ``choices``)."""
    return {"help": text, **extra}


@dataclass
class TrainingConfig:
    """Every knob of :func:`~charbert.training.train`; each field is a command-line flag of the
    same name (see :func:`add_training_args`)."""

    output_dir: str = field(metadata=_help("Where checkpoints, log.jsonl and the model go."))
    seed: int = field(default=42, metadata=_help("Seeds data order, collator randomness and dropout."))
    per_device_train_batch_size: int = field(default=8, metadata=_help("Training batch size per process."))
    per_device_eval_batch_size: int = field(default=8, metadata=_help("Evaluation batch size per process."))
    learning_rate: float = field(default=5e-5, metadata=_help("Peak AdamW learning rate."))
    weight_decay: float = field(
        default=0.0, metadata=_help("AdamW weight decay (never applied to biases and norm weights)."))
    adam_beta1: float = field(default=0.9, metadata=_help("AdamW beta1."))
    adam_beta2: float = field(default=0.999, metadata=_help("AdamW beta2."))
    adam_epsilon: float = field(default=1e-8, metadata=_help("AdamW epsilon."))
    optim: str = field(default_factory=_default_optimizer, metadata=_help(
        "AdamW implementation, named as transformers' Trainer names them: 'adamw_torch_fused' (one kernel per "
        "parameter; the default from torch 2.8 on, as the Trainer's) or 'adamw_torch' (the per-tensor loop).",
        choices=OPTIMIZERS))
    new_module_lr_multiplier: float = field(default=1.0, metadata=_help(
        "Learning rate of the modules the checkpoint did not provide (CharBERT on a plain checkpoint: the character "
        "encoder, the fusion, the NLM head, and the MLM head when the checkpoint has none; a task head when it is "
        "new), as a multiple of --learning_rate; the loaded weights keep --learning_rate."))
    freeze_backbone_steps: int = field(default=0, metadata=_help(
        "Train only the new modules (see --new_module_lr_multiplier) for the first N optimizer steps: the loaded "
        "weights get no update and no optimizer state, and are left out of gradient clipping; after that they "
        "train too, their learning rate warming up again over the run's warmup steps."))
    max_grad_norm: float = field(default=1.0, metadata=_help("Gradient clipping norm (<= 0 disables)."))
    num_train_epochs: int = field(default=3, metadata=_help("Epochs to train (unless --max_train_steps is given)."))
    max_train_steps: int | None = field(
        default=None, metadata=_help("Total optimizer steps; overrides --num_train_epochs when given."))
    gradient_accumulation_steps: int = field(
        default=1, metadata=_help("Batches accumulated into one optimizer step."))
    lr_scheduler_type: str = field(
        default="linear", metadata=_help("Learning-rate schedule after warmup.", choices=LR_SCHEDULER_TYPES))
    num_warmup_steps: int = field(default=0, metadata=_help("Linear warmup steps."))
    warmup_ratio: float = field(
        default=0.0, metadata=_help("Warmup as a fraction of max_train_steps, used when --num_warmup_steps is 0."))
    checkpointing_steps: int | str | None = field(
        default=None, metadata=_help("Save a resumable checkpoint every N optimizer steps, or 'epoch'."))
    resume_from_checkpoint: str | None = field(
        default=None, metadata=_help("A checkpoint folder, or 'latest' for the newest complete one in --output_dir."))
    allow_inexact_resume: bool = field(default=False, metadata=_help(
        "Resume from a checkpoint that lacks a file the loop restores (e.g. random_states_0.pkl), with a warning "
        "that the run will not reproduce the uninterrupted one; without it such a checkpoint is an error.",
        action="store_true"))
    stop_after_steps: int | None = field(default=None, metadata=_help(
        "End this sitting after N optimizer steps in all, with a resumable checkpoint there, while the learning-rate "
        "schedule keeps the run's full length: a long run in several sittings (e.g. time-limited machines). Resume "
        "with --resume_from_checkpoint latest; the final model is saved only at the run's last step."))
    save_total_limit: int | None = field(default=None, metadata=_help("Keep only the N newest checkpoints."))
    keep_checkpoints_at: list[int] = field(default_factory=list, metadata=_help(
        "Also save a checkpoint at these optimizer steps and never prune them (--save_total_limit counts only the "
        "others): the points of a budget curve.", nargs="+"))
    logging_steps: int = field(default=50, metadata=_help("Log the training loss every N optimizer steps."))
    eval_steps: int | None = field(
        default=None, metadata=_help("Evaluate every N optimizer steps (default: at the end of every epoch)."))
    report_to: str | list[str] = field(
        default="none", metadata=_help("Trackers for accelerate: none, tensorboard, all, or a comma-separated list."))
    dataloader_num_workers: int = field(default=0, metadata=_help("DataLoader worker processes (0: load in-process)."))
    mixed_precision: str | None = field(
        default=None, metadata=_help("accelerate's autocast: no, fp16 (with a gradient scaler; V100-class GPUs) or bf16 "
                                     "(CPUs, A100/H100); weights stay fp32 (default: accelerate's config/env).",
                                     choices=MIXED_PRECISION_TYPES))
    gradient_checkpointing: bool = field(
        default=False, metadata=_help("Recompute each layer's activations in the backward pass (less memory, ~30% slower)."))
    torch_compile: bool = field(
        default=False, metadata=_help("torch.compile the prepared model (dynamic shapes: batches are padded per batch)."))

    def __post_init__(self) -> None:
        if not self.output_dir:
            raise ValueError("output_dir is required (--output_dir)")
        self.output_dir = str(self.output_dir)
        self.checkpointing_steps = parse_checkpointing_steps(self.checkpointing_steps)
        self.report_to = parse_report_to(self.report_to)
        check_trackers_available(self.report_to)
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                     "logging_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.keep_checkpoints_at = sorted({int(step) for step in self.keep_checkpoints_at or ()})
        if any(step < 1 for step in self.keep_checkpoints_at):
            raise ValueError(f"keep_checkpoints_at must be steps >= 1, got {self.keep_checkpoints_at}")
        for name in ("max_train_steps", "eval_steps", "save_total_limit", "stop_after_steps"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        if self.num_train_epochs < 1 and self.max_train_steps is None:
            raise ValueError("num_train_epochs must be >= 1 when max_train_steps is not given")
        if self.num_warmup_steps < 0 or not 0.0 <= self.warmup_ratio <= 1.0:
            raise ValueError("num_warmup_steps must be >= 0 and warmup_ratio in [0, 1]")
        if not self.new_module_lr_multiplier > 0:
            raise ValueError(f"new_module_lr_multiplier must be > 0, got {self.new_module_lr_multiplier}")
        if self.freeze_backbone_steps < 0:
            raise ValueError(f"freeze_backbone_steps must be >= 0, got {self.freeze_backbone_steps}")
        if self.dataloader_num_workers < 0:
            raise ValueError("dataloader_num_workers must be >= 0")
        if self.lr_scheduler_type not in LR_SCHEDULER_TYPES:
            raise ValueError(f"lr_scheduler_type must be one of {LR_SCHEDULER_TYPES}, got {self.lr_scheduler_type!r}")
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISION_TYPES:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION_TYPES}, got {self.mixed_precision!r}")
        if self.resume_from_checkpoint in ("", "none", "None"):
            self.resume_from_checkpoint = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _flag_type(annotation: str) -> type:
    """The argparse type of a field annotation such as ``"int | None"`` (values that may be a
    string are parsed by the dataclass itself, so they stay ``str`` here)."""
    names = {part.strip() for part in str(annotation).split("|")} - {"None"}
    for candidate in (str, float, int):
        if candidate.__name__ in names or f"list[{candidate.__name__}]" in names:  # a list: nargs gives its length
            return candidate
    return str


def add_dataclass_arguments(parser, cls, title: str | None = None) -> None:
    """One ``--name`` flag per field of the dataclass ``cls`` (type, default and help from the field).

    Fields without a default get ``default=None``: the dataclass reports them as missing, so
    programs may still fill them in after parsing (e.g. pretrain's default job).
    """
    group = parser.add_argument_group(title) if title else parser
    for f in fields(cls):
        default = f.default_factory() if f.default_factory is not MISSING else None if f.default is MISSING else f.default
        extra = {k: v for k, v in f.metadata.items() if k != "help"}
        help_text = f.metadata.get("help", "")
        if "bool" in str(f.type):  # switches: --flag turns them on
            group.add_argument(f"--{f.name}", action="store_true", default=bool(default), help=help_text or None)
            continue
        if default is not None:
            help_text = f"{help_text} (default: %(default)s)".strip()
        if extra.get("action") != "store_true":  # a switch takes no value, hence no type
            extra["type"] = _flag_type(f.type)
        group.add_argument(f"--{f.name}", default=default, help=help_text or None, **extra)


def add_training_args(parser: argparse.ArgumentParser) -> None:
    """Add the shared training flags (same names as transformers' no_trainer examples)."""
    add_dataclass_arguments(parser, TrainingConfig, "training")


def training_config_from_args(args: argparse.Namespace) -> TrainingConfig:
    """Build a :class:`TrainingConfig` from a namespace; flags missing from it keep their defaults."""
    kwargs = {f.name: getattr(args, f.name) for f in fields(TrainingConfig) if hasattr(args, f.name)}
    kwargs.setdefault("output_dir", None)
    return TrainingConfig(**kwargs)
