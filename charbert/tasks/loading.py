"""Which model a fine-tuning run builds from ``--model_name_or_path``, and loading it.

The rule (one place):

* a **CharBERT checkpoint** (``model_type == "charbert"``) -> the CharBertFor... head class,
  with :class:`~charbert.CharBertTokenizer` (its ``char_vocab.json``);
* a **plain BERT/RoBERTa/... checkpoint** -> the ordinary ``AutoModelFor...`` class with the
  plain fast tokenizer (the baseline);
* a plain BERT/RoBERTa checkpoint **with** ``charbert=True`` (``--charbert``) -> CharBERT
  built on it: backbone weights loaded, character encoder, fusion and head new.

Heads: a checkpoint whose architecture carries the task's head (``...ForTokenClassification``
for NER) is loaded with it, after checking its label set; a checkpoint without a task head
(a pretraining or plain encoder checkpoint) gets a new head, reported in the returned
:class:`LoadReport`.  A head of *another* task (a sequence-classification checkpoint given to
NER) is an error, unless ``new_head=True`` asks to drop it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from ..backbones import BACKBONES, supported
from ..checkpoint import (
    check_converted,
    check_tokenizer_files,
    check_vocab_fingerprints,
    load_weights,
    max_sequence_length,
    read_config_dict,
    resolve_checkpoint,
)
from ..cli import quiet_transformers

logger = logging.getLogger(__name__)

SEQUENCE_CLASSIFICATION = "sequence_classification"
TOKEN_CLASSIFICATION = "token_classification"
QUESTION_ANSWERING = "question_answering"
_ARCH_SUFFIX = {
    "ForSequenceClassification": SEQUENCE_CLASSIFICATION,
    "ForTokenClassification": TOKEN_CLASSIFICATION,
    "ForQuestionAnswering": QUESTION_ANSWERING,
}
_HEAD_MODULES = {SEQUENCE_CLASSIFICATION: ("classifier",), TOKEN_CLASSIFICATION: ("classifier",),
                 QUESTION_ANSWERING: ("qa_outputs",)}
_HEAD_WORDS = {SEQUENCE_CLASSIFICATION: "sequence-classification", TOKEN_CLASSIFICATION: "token-classification",
               QUESTION_ANSWERING: "question-answering"}


class ModelSetupError(ValueError):
    """The checkpoint cannot serve this task as asked (wrong head, label set, tokenizer...)."""


def _default_label_names(id2label: dict[int, str]) -> bool:
    return all(str(v) == f"LABEL_{k}" for k, v in id2label.items())


@dataclass
class CheckpointInfo:
    """What ``config.json`` says about a checkpoint folder."""

    path: Path
    model_type: str
    build_charbert: bool  # the run builds CharBERT (a CharBERT checkpoint, or --charbert)
    architecture: str | None
    head: str | None  # the task head the checkpoint carries, None for an encoder/pretraining one
    num_labels: int
    id2label: dict[int, str] | None  # None when the names are transformers' defaults (LABEL_0...)
    finetuning_task: str | None = None  # what the head was fine-tuned for (config.finetuning_task)

    @property
    def is_charbert_checkpoint(self) -> bool:
        return self.model_type == "charbert"

    def head_loads(self, head: str) -> bool:
        """Will loading for ``head`` take the checkpoint's head weights? (Never when CharBERT is
        built on a plain checkpoint: only the backbone is taken from it.)"""
        return self.head == head and (self.is_charbert_checkpoint or not self.build_charbert)


def inspect_checkpoint(path, charbert: bool = False) -> CheckpointInfo:
    path = resolve_checkpoint(path)  # a folder, or a hub name's snapshot (the cache when offline)
    config = read_config_dict(path)
    model_type = config.get("model_type")
    check_converted(path, model_type or "")  # the authors' tensors under any config: convert them first
    if not model_type:
        raise ModelSetupError(f"{path / 'config.json'} has no model_type.")
    if charbert and model_type != "charbert" and model_type not in BACKBONES:
        raise ModelSetupError(f"--charbert builds CharBERT on a {supported()} checkpoint; {path} holds {model_type!r}.")
    archs = config.get("architectures") or []
    arch = archs[0] if archs else None
    head = next((kind for suffix, kind in _ARCH_SUFFIX.items() if arch and arch.endswith(suffix)), None)
    raw = config.get("id2label") or {}
    id2label = {int(k): str(v) for k, v in raw.items()}
    num_labels = len(id2label) if id2label else int(config.get("num_labels", 2))
    return CheckpointInfo(
        path=path, model_type=model_type, build_charbert=charbert or model_type == "charbert", architecture=arch,
        head=head, num_labels=num_labels, id2label=None if not id2label or _default_label_names(id2label) else id2label,
        finetuning_task=config.get("finetuning_task"),
    )


def check_head(info: CheckpointInfo, head: str, task: str, num_labels: int, labels: list[str] | None = None,
               new_head: bool = False) -> None:
    """Fail clearly when the checkpoint's head cannot serve ``head`` for ``task`` with these labels.

    ``task`` is the task's name as stored in ``config.finetuning_task`` (e.g. ``glue/mrpc``): a head
    fine-tuned for another task is refused even when the label count happens to match.
    """
    if new_head or info.head is None:
        return
    if info.head != head and (info.is_charbert_checkpoint or not info.build_charbert):
        raise ModelSetupError(
            f"{info.path} is a {info.architecture} checkpoint: its {_HEAD_WORDS[info.head]} head "
            f"({info.num_labels} labels) cannot serve {task}, which needs a {_HEAD_WORDS[head]} head"
            + (f" with {num_labels} labels" if head != QUESTION_ANSWERING else "")
            + ". Give a checkpoint without a task head (pretrained), or pass --new_head to drop its head and train a new one."
        )
    if not info.head_loads(head):
        return
    if info.finetuning_task and info.finetuning_task != task:
        raise ModelSetupError(
            f"{info.path} was fine-tuned for {info.finetuning_task}, not {task}: its head would score the wrong task. "
            "Pass --new_head to train a new head for this task."
        )
    if head == QUESTION_ANSWERING:
        return
    if info.num_labels != num_labels:
        raise ModelSetupError(
            f"{info.path} has a {_HEAD_WORDS[head]} head with {info.num_labels} labels but {task} needs "
            f"{num_labels}; pass --new_head to train a new head."
        )
    if labels is not None and info.id2label is not None:
        theirs = [info.id2label[i] for i in range(len(info.id2label))]
        if theirs != list(labels):
            raise ModelSetupError(
                f"{info.path} was trained with the labels {theirs}, not {list(labels)} (in this order); "
                "pass --labels with the checkpoint's label list, or --new_head to train a new head."
            )


@dataclass
class LoadReport:
    """How the model of a run was made (written to metrics.json)."""

    model_name_or_path: str
    model_class: str
    charbert: bool
    backbone: str
    checkpoint_architecture: str | None
    head: str  # "loaded" from the checkpoint, or "new" (initialised)
    initialized: list[str] = field(default_factory=list)  # newly initialised modules
    num_parameters: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _head_classes(head: str):
    from transformers import (
        AutoModelForQuestionAnswering,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    from ..modeling import (
        CharBertForQuestionAnswering,
        CharBertForSequenceClassification,
        CharBertForTokenClassification,
    )

    return {
        SEQUENCE_CLASSIFICATION: (AutoModelForSequenceClassification, CharBertForSequenceClassification),
        TOKEN_CLASSIFICATION: (AutoModelForTokenClassification, CharBertForTokenClassification),
        QUESTION_ANSWERING: (AutoModelForQuestionAnswering, CharBertForQuestionAnswering),
    }[head]


def _reinit_head(model: nn.Module, head: str) -> None:
    std = getattr(model.config, "initializer_range", 0.02)
    for name in _HEAD_MODULES[head]:
        module = getattr(model, name, None)
        if module is None:
            continue
        for sub in module.modules():
            if isinstance(sub, nn.Linear):
                nn.init.normal_(sub.weight, std=std)
                if sub.bias is not None:
                    nn.init.zeros_(sub.bias)
            elif isinstance(sub, nn.LayerNorm):
                nn.init.ones_(sub.weight)
                nn.init.zeros_(sub.bias)


def _modules_of(keys) -> list[str]:
    return sorted({k.rsplit(".", 1)[0] for k in keys})


def load_task_model(info: CheckpointInfo, head: str, *, id2label: dict[int, str] | None = None,
                    num_labels: int | None = None, problem_type: str | None = None,
                    new_head: bool = False):
    """Build the model for ``head`` from the checkpoint; returns ``(model, LoadReport)``.

    Call :func:`check_head` first (the label checks live there). An ONNX export folder
    (``python -m charbert.serving.export``) gives its ONNX Runtime model (prediction only).
    """
    from ..serving.onnx_runtime import is_onnx_export

    if is_onnx_export(info.path):
        return _load_onnx_model(info, head, new_head)
    plain_cls, charbert_cls = _head_classes(head)
    kwargs: dict = {}
    if id2label is not None:
        kwargs["id2label"] = {int(k): v for k, v in id2label.items()}
        kwargs["label2id"] = {v: int(k) for k, v in id2label.items()}
    elif num_labels is not None:
        kwargs["num_labels"] = num_labels
    if problem_type is not None:
        kwargs["problem_type"] = problem_type
    takes_head = info.head is not None and (info.is_charbert_checkpoint or not info.build_charbert)
    if new_head and takes_head:
        kwargs["ignore_mismatched_sizes"] = True
    model_cls = charbert_cls if info.build_charbert else plain_cls
    with quiet_transformers():  # we report what was loaded and what is new ourselves
        result = load_weights(model_cls, info.path, output_loading_info=True, **kwargs)
    model, loading = result if isinstance(result, tuple) else (result, None)
    if loading is not None:
        initialized = _modules_of(set(loading.get("missing_keys", ())) | {k[0] if isinstance(k, tuple) else k for k in loading.get("mismatched_keys", ())})
    else:  # CharBERT built on a plain checkpoint reports itself
        initialized = _modules_of(getattr(model, "loading_info", {}).get("initialized_keys", ()))
    head_loaded = info.head_loads(head) and not new_head
    if new_head and takes_head:
        _reinit_head(model, head)
        initialized = sorted(set(initialized) | set(_HEAD_MODULES[head]))
    # What the training levers (--new_module_lr_multiplier, --freeze_backbone_steps) treat as new.
    model.loading_info = {**getattr(model, "loading_info", {}), "initialized_keys": sorted(
        name for name, _ in model.named_parameters() if name.rsplit(".", 1)[0] in set(initialized))}
    report = LoadReport(
        model_name_or_path=str(info.path),
        model_class=type(model).__name__,
        charbert=info.build_charbert,
        backbone=getattr(model.config, "backbone_type", model.config.model_type),
        checkpoint_architecture=info.architecture,
        head="loaded" if head_loaded else "new",
        initialized=initialized,
        num_parameters=sum(p.numel() for p in model.parameters()),
    )
    if not head_loaded:
        logger.warning("%s: new %s head initialised (%s)", info.path, _HEAD_WORDS[head], ", ".join(_HEAD_MODULES[head]))
    return model, report


def _load_onnx_model(info: CheckpointInfo, head: str, new_head: bool):
    """The ONNX Runtime model of an export folder, which must carry the task's head."""
    from ..serving.onnx_runtime import MissingExtraError, OnnxModel

    if new_head or not info.head_loads(head):
        raise ModelSetupError(f"{info.path} is an ONNX export of {info.architecture}: it can only predict with its own "
                              f"head, and has no trained {_HEAD_WORDS[head]} head to use")
    try:
        model = OnnxModel.from_pretrained(info.path)
    except MissingExtraError as err:
        raise ModelSetupError(str(err)) from None
    report = LoadReport(model_name_or_path=str(info.path), model_class=f"OnnxModel({model.architecture})",
                        charbert=info.build_charbert, backbone=getattr(model.config, "backbone_type", info.model_type),
                        checkpoint_architecture=info.architecture, head="loaded")
    logger.info("%s: ONNX Runtime model %s", info.path, model.onnx_file)
    return model, report


def load_task_tokenizer(info: CheckpointInfo, model=None, tokenizer_name=None, allow_vocab_mismatch: bool = False):
    """CharBertTokenizer for CharBERT runs (char_vocab.json beside the checkpoint, else the default
    character set), the plain fast tokenizer otherwise.

    The subword tokenizer comes from ``tokenizer_name`` (--tokenizer_name) when given, else from
    the checkpoint folder, which must then hold tokenizer files. The character vocabulary's
    fingerprint is checked against the model config's ``char_vocab_hash`` (and recorded in it)."""
    tokenizer_path = check_tokenizer_files(tokenizer_name or info.path)
    if info.build_charbert:
        from ..chars import CHAR_VOCAB_FILE
        from ..tokenization import CharBertTokenizer

        own = Path(info.path) / CHAR_VOCAB_FILE
        tokenizer = CharBertTokenizer.from_pretrained(tokenizer_path, char_vocab=own if own.is_file() else None)
        if model is not None:
            if len(tokenizer.char_vocab) > model.config.char_vocab_size:
                raise ModelSetupError(
                    f"The character vocabulary of {info.path} has {len(tokenizer.char_vocab)} ids but the model only "
                    f"{model.config.char_vocab_size} (char_vocab_size): they do not belong together."
                )
            try:
                check_vocab_fingerprints(model.config, char_vocab=tokenizer.char_vocab,
                                         allow_mismatch=allow_vocab_mismatch, where=info.path,
                                         new_model=not info.is_charbert_checkpoint)
            except ValueError as err:
                raise ModelSetupError(str(err)) from None
            tokenizer.max_chars_per_token = model.config.max_chars_per_token
            tokenizer.max_chars_per_sequence = model.config.max_chars_per_sequence
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path), use_fast=True)
        if not getattr(tokenizer, "is_fast", False):
            raise ModelSetupError(f"{tokenizer_path} has no fast tokenizer (tokenizer.json): fine-tuning needs character offsets.")
    if tokenizer.pad_token_id is None:
        raise ModelSetupError(
            f"The tokenizer of {tokenizer_path} has no padding token: {info.model_type!r} is not an encoder these programs "
            "fine-tune; give a BERT/RoBERTa-style checkpoint (bert, roberta, distilbert, electra, xlm-roberta, ...)"
        )
    return tokenizer


def task_collator(tokenizer):
    """The :class:`~charbert.tasks.features.TaskCollator` for features built by ``tokenizer``: its pad id
    and, for a CharBertTokenizer, its character layout (the reference layout pads characters to 6 L)."""
    from .features import TaskCollator

    return TaskCollator(tokenizer.pad_token_id, char_layout=getattr(tokenizer, "char_layout", "offsets"))


def max_model_length(model) -> int | None:
    """Longest token sequence the model's position embeddings allow."""
    return max_sequence_length(model.config)


__all__ = [
    "SEQUENCE_CLASSIFICATION",
    "TOKEN_CLASSIFICATION",
    "QUESTION_ANSWERING",
    "ModelSetupError",
    "CheckpointInfo",
    "LoadReport",
    "inspect_checkpoint",
    "check_head",
    "load_task_model",
    "load_task_tokenizer",
    "max_model_length",
    "task_collator",
]
