"""Checkpoints of a run: the :class:`TrainState` they carry, atomic saving, discovery, and the log.

Layout of ``output_dir``::

    log.jsonl                 one JSON record per log/eval event (see read_log)
    step_4/                   accelerate.save_state(): model.safetensors, optimizer.bin,
                              scheduler.bin, random_states_<rank>.pkl (+ scaler.pt)
        trainer_state.json    TrainState, written last: its presence marks the checkpoint complete
    epoch_0/                  same, for --checkpointing_steps epoch
    .tmp-step_8/              a save in progress (or killed); always ignored
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

TRAINER_STATE_NAME = "trainer_state.json"
LOG_NAME = "log.jsonl"
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
STATE_FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete or unreadable (the message names the path)."""


@dataclass
class TrainState:
    """Counters and running sums of a run: what a checkpoint saves and a resume restores.

    ``epoch`` and ``global_batches_in_epoch`` are the resume position (batches of that epoch
    already trained, over all processes).  During a run ``train_loss_*`` and ``elapsed_s``
    hold what earlier runs contributed; :meth:`TrainingRun.snapshot` adds the current run's part.
    """

    global_step: int = 0
    epoch: int = 0
    global_batches_in_epoch: int = 0
    epochs_completed: int = 0
    max_train_steps: int | None = None
    num_processes: int = 1
    per_device_train_batch_size: int | None = None
    gradient_accumulation_steps: int = 1
    train_loss_sum: float = 0.0
    train_loss_count: int = 0
    elapsed_s: float = 0.0
    last_metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    format_version: int = STATE_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        """Read a saved state; keys written by older versions may be missing, unknown keys are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("epochs_completed", values.get("epoch", 0))  # epochs before the position are complete
        state = cls(**values)
        state.last_metrics = dict(state.last_metrics or {})
        return state

    def eval_metrics(self) -> dict[str, float]:
        return {k: v for k, v in self.last_metrics.items() if k.startswith("eval_")}


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    """The raw ``trainer_state.json`` of a checkpoint folder, or :class:`CheckpointError`."""
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
            state = read_trainer_state(child)
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
    if path.is_file():
        raise CheckpointError(f"--resume_from_checkpoint {path} is a file; give a checkpoint folder (e.g. "
                              f"{Path(output_dir) / 'step_N'}) or 'latest'")
    if not path.is_dir():
        raise CheckpointError(f"Checkpoint folder {path} does not exist")
    read_trainer_state(path)
    return path


MODEL_FILES = ("model.safetensors", "pytorch_model.bin")  # what accelerate.save_state writes for the model
LOOP_FILES = ("optimizer.bin", "scheduler.bin")  # one optimizer, one scheduler: what train() prepares


def missing_checkpoint_files(checkpoint: Path, num_processes: int, process_index: int = 0) -> list[str]:
    """What a resume from ``checkpoint`` would lack: the files the loop restores that are absent
    or empty, and this process's RNG state if it cannot be read. Empty list: complete."""
    checkpoint = Path(checkpoint)
    present = {p.name: p for p in checkpoint.iterdir() if p.is_file() and p.stat().st_size > 0}
    missing = [] if any(name in present for name in MODEL_FILES) else [MODEL_FILES[0]]
    missing += [name for name in (*LOOP_FILES, TRAINER_STATE_NAME) if name not in present]
    missing += [f"random_states_{i}.pkl" for i in range(num_processes) if f"random_states_{i}.pkl" not in present]
    own = present.get(f"random_states_{process_index}.pkl")
    if own is not None:
        from accelerate.utils import load

        try:  # the same load accelerate does (it only logs at INFO level when it fails)
            states = load(own)
            if not isinstance(states, dict) or "torch_manual_seed" not in states:
                raise ValueError("no torch RNG state in it")
        except Exception as exc:  # noqa: BLE001 -- any failure means the RNG state is lost
            missing.append(f"{own.name} (unreadable: {type(exc).__name__})")
    return missing


def check_checkpoint_complete(checkpoint: Path, num_processes: int, process_index: int = 0,
                              allow_inexact: bool = False) -> None:
    """CheckpointError naming the first missing or unreadable file, unless ``allow_inexact``
    (then a warning: the resumed run continues, but its numbers will not match the uninterrupted run's)."""
    missing = missing_checkpoint_files(checkpoint, num_processes, process_index)
    if not missing:
        return
    if allow_inexact:
        import logging

        logging.getLogger("charbert.training").warning(
            "Checkpoint %s lacks %s: resuming anyway (--allow_inexact_resume), the run will not be exact",
            checkpoint, ", ".join(missing))
        return
    raise CheckpointError(
        f"Checkpoint {checkpoint} is incomplete: {missing[0]} is missing or unreadable"
        + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        + "; resume from another checkpoint, or pass --allow_inexact_resume to continue without an exact resume"
    )


def write_failure(output_dir: Path, what: str, err: OSError) -> CheckpointError:
    """The one-line error for a write that failed mid-run (disk full, read-only): what failed and
    the last checkpoint that is intact, to resume from once the disk is fixed."""
    checkpoints = list_checkpoints(output_dir)
    last = (f"the last intact checkpoint is {checkpoints[-1][1]} (resume with --resume_from_checkpoint latest "
            "once it is writable)") if checkpoints else "no checkpoint was saved before"
    return CheckpointError(f"Could not write {what} in {output_dir} ({err.strerror or err}); {last}")


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


def append_log(log_path: Path, record: dict[str, Any]) -> None:
    """Append one record to ``log.jsonl`` (call on the main process only)."""
    with open(log_path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_saves(output_dir: Path) -> None:
    """Delete the leftovers of saves killed midway (``.tmp-*``)."""
    for stale in output_dir.glob(f"{TMP_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)


def _prune(output_dir: Path, keep: Path, save_total_limit: int, keep_steps=()) -> None:
    """Delete the oldest checkpoints beyond ``save_total_limit``; those at ``keep_steps`` are not counted."""
    complete = [(step, path) for step, path in list_checkpoints(output_dir) if step not in keep_steps]
    for _, old in complete[: max(0, len(complete) - save_total_limit)]:
        if old.resolve() != keep.resolve():
            shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(accelerator, output_dir: Path, name: str, state: TrainState, save_total_limit: int | None,
                    keep_steps=()):
    """accelerate.save_state into ``.tmp-NAME``, trainer_state.json last, then an atomic rename; then the
    oldest checkpoints beyond ``save_total_limit`` go, except those at ``keep_steps``."""
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
        write_json_atomic(tmp / TRAINER_STATE_NAME, state.to_dict())
        fsync_dir(tmp)
        trash = None
        if final.exists():  # e.g. a resumed run re-saving a step; a dir cannot be renamed over a non-empty one
            trash = output_dir / f"{TRASH_PREFIX}{name}-{os.getpid()}"
            os.replace(final, trash)
        os.replace(tmp, final)
        fsync_dir(output_dir)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        if save_total_limit is not None:
            _prune(output_dir, final, save_total_limit, keep_steps)
    accelerator.wait_for_everyone()


def load_checkpoint(accelerator, checkpoint: Path) -> None:
    """accelerate.load_state, with an error that names the folder."""
    try:
        accelerator.load_state(str(checkpoint))
    except Exception as exc:  # torch/safetensors tracebacks say nothing about which folder
        raise CheckpointError(
            f"Checkpoint {checkpoint} could not be loaded ({type(exc).__name__}: {exc}); it is corrupt or was "
            "written for a different model/optimizer setup"
        ) from exc


def _write_extra_files(out: Path, extra_files: dict[str, str | bytes]) -> None:
    for name, content in extra_files.items():
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"extra_files names must be relative paths inside output_dir, got {name!r}")
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(str(content), encoding="utf-8")


def _unwrap_for_saving(accelerator, model):
    """(is_main_process, unwrapped model, state dict or None)."""
    if accelerator is None:
        from accelerate import PartialState
        from accelerate.utils import extract_model_from_parallel

        return PartialState().is_main_process, extract_model_from_parallel(model), None
    accelerator.wait_for_everyone()
    # Sharded engines need the collective gather on every rank; otherwise the module's
    # own state_dict is used (no copy, and transformers sees the tied weights as tied).
    sharded = str(accelerator.distributed_type).split(".")[-1] in ("DEEPSPEED", "FSDP", "MEGATRON_LM")
    state_dict = accelerator.get_state_dict(model) if sharded else None
    return accelerator.is_main_process, accelerator.unwrap_model(model), state_dict


def save_model(accelerator, model, output_dir: str | os.PathLike, tokenizer=None,
               extra_files: dict[str, str | bytes] | None = None) -> None:
    """Save the unwrapped model (safetensors), optionally the tokenizer and extra files.

    Call on every process (the state dict is gathered collectively under FSDP/DeepSpeed);
    only the main process writes.  ``extra_files`` maps a relative file name to its content
    (``str`` written as UTF-8 text, ``bytes`` as is), e.g. ``{"eval_results.json": json.dumps(m)}``.
    ``accelerator`` may be None outside distributed runs.
    """
    is_main, unwrapped, state_dict = _unwrap_for_saving(accelerator, model)
    out = Path(output_dir)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        if hasattr(unwrapped, "save_pretrained"):
            # transformers 5 always writes safetensors (the v4 `safe_serialization` flag is gone).
            unwrapped.save_pretrained(out, is_main_process=True, state_dict=state_dict)
        elif state_dict is None:
            from safetensors.torch import save_model as st_save_model

            st_save_model(unwrapped, str(out / "model.safetensors"))
        else:
            from accelerate.utils import save as acc_save

            acc_save(state_dict, out / "model.safetensors", safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
        _write_extra_files(out, extra_files or {})
    if accelerator is not None:
        accelerator.wait_for_everyone()
