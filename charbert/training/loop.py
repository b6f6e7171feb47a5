"""The training loop: :func:`train` reads top to bottom (setup, restore, one flat loop); the loop
calls the small steps of :class:`TrainingRun` (``train_step``, ``maybe_log``, ``maybe_evaluate``,
``maybe_checkpoint``, ``end_epoch``), which share the run's parts and its :class:`TrainState`."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from charbert.tasks.inference import length_order

from .arguments import TrainingConfig
from .checkpoints import (
    LOG_NAME,
    CheckpointError,
    TrainState,
    append_log,
    check_checkpoint_complete,
    list_checkpoints,
    load_checkpoint,
    read_trainer_state,
    remove_stale_saves,
    resolve_checkpoint,
    save_checkpoint,
    write_failure,
)
from .determinism import EVAL_EPOCH, EpochShuffleSampler, IndexedCollator, IndexedDataset, derive_seed
from .lock import lock_output_dir
from .metrics import Meter, aux_losses, call_model, count_tokens, run_eval
from .setup import (
    Schedule,
    backbone_lr_factor,
    build_lr_scheduler,
    build_optimizer,
    check_accelerator,
    loaded_weights,
    num_warmup_steps,
)

logger = logging.getLogger("charbert.training")


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    global_step: int
    epochs_completed: int
    train_loss: float  # mean per-batch loss over the whole run (resumed runs included)
    last_eval: dict[str, float] = field(default_factory=dict)
    log_path: Path | None = None
    wall_time_s: float = 0.0
    stopped_early: bool = False  # --stop_after_steps ended this sitting before the schedule's last step


@dataclass
class TrainData:
    """The loaders of a run and the parts that make each epoch's batches a function of (seed, epoch)."""

    sampler: EpochShuffleSampler
    collator: IndexedCollator
    generator: torch.Generator
    train: DataLoader
    eval: DataLoader | None

    def start_epoch(self, seed: int, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        self.collator.epoch = epoch
        self.generator.manual_seed(derive_seed(seed, epoch, 1))
        self.train.set_epoch(epoch)


def build_dataloaders(train_dataset, eval_dataset, collate_fn, config: TrainingConfig, accelerator) -> TrainData:
    sampler = EpochShuffleSampler(len(train_dataset), config.seed)
    collator = IndexedCollator(collate_fn, config.seed)
    # A private generator for the DataLoader's worker base seed: otherwise creating each
    # epoch's iterator would draw from torch's global RNG (used by dropout) and a resumed run
    # would see different dropout masks.
    generator = torch.Generator()
    train_loader = DataLoader(
        IndexedDataset(train_dataset), batch_size=config.per_device_train_batch_size, sampler=sampler,
        collate_fn=collator, num_workers=config.dataloader_num_workers, generator=generator,
        pin_memory=accelerator.device.type == "cuda",
    )
    eval_loader = None
    if eval_dataset is not None:
        # The batches of `--do_predict` (charbert.tasks.inference): sorted by length, so an
        # evaluation during training and one after reloading give the same numbers.
        eval_order = length_order(eval_dataset)
        eval_loader = DataLoader(
            IndexedDataset(eval_dataset), batch_size=config.per_device_eval_batch_size, sampler=eval_order,
            collate_fn=IndexedCollator(collate_fn, config.seed, epoch=EVAL_EPOCH),
            num_workers=config.dataloader_num_workers, generator=torch.Generator(),
        )
    return TrainData(sampler, collator, generator, train_loader, eval_loader)


def _check_inputs(config, train_dataset, eval_dataset) -> None:
    if not isinstance(config, TrainingConfig):
        raise TypeError("config must be a TrainingConfig (see training_config_from_args)")
    if not hasattr(train_dataset, "__len__") or not hasattr(train_dataset, "__getitem__"):
        raise TypeError("train_dataset must be a map-style dataset (with __len__ and __getitem__)")
    if len(train_dataset) == 0:
        raise ValueError("train_dataset is empty: nothing to train on")
    if eval_dataset is not None and len(eval_dataset) == 0:
        raise ValueError("eval_dataset is empty")


def enable_gradient_checkpointing(model) -> None:
    """Turn on activation recomputation (before ``prepare``, so DDP/FSDP wrap the checkpointed model)."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"--gradient_checkpointing: {type(model).__name__} does not support gradient checkpointing")
    # transformers 5 names it activation checkpointing (the old name warns that it is deprecated).
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


def compile_model(model):
    """``torch.compile`` the prepared model; ``dynamic=True`` because every batch is padded to its own
    length (one graph for all lengths instead of a recompile per new shape).  The parameters are
    shared with ``model``, so callers keep saving the module they passed to :func:`train`."""
    from accelerate.utils import is_compiled_module

    return model if is_compiled_module(model) else torch.compile(model, dynamic=True)


def _prepare_output_dir(accelerator, output_dir: Path) -> Path:
    if accelerator.is_main_process:
        lock_output_dir(output_dir)  # one run per folder (a no-op when the program took it already)
        remove_stale_saves(output_dir)
    accelerator.wait_for_everyone()
    return output_dir


def restored_state(saved: TrainState, fresh: TrainState, checkpoint: Path, output_dir: Path) -> TrainState:
    """The state a resumed run continues from: counters and sums of ``saved``, run facts of ``fresh``."""
    if saved.global_batches_in_epoch % fresh.num_processes:
        raise CheckpointError(
            f"Checkpoint {checkpoint} stopped after {saved.global_batches_in_epoch} global batches of epoch "
            f"{saved.epoch}, which cannot be split over {fresh.num_processes} processes; resume with the original "
            f"number of processes ({saved.num_processes})"
        )
    if saved.per_device_train_batch_size not in (None, fresh.per_device_train_batch_size):
        logger.warning("Resuming with a different per_device_train_batch_size: data order will not match")
    newer = [p.name for s, p in list_checkpoints(output_dir) if s > saved.global_step]
    if newer:
        logger.warning("Resuming from %s although newer checkpoints exist (%s); they will be overwritten "
                       "as the run reaches them", checkpoint, ", ".join(newer))
    return replace(saved, max_train_steps=fresh.max_train_steps, num_processes=fresh.num_processes,
                   per_device_train_batch_size=fresh.per_device_train_batch_size,
                   gradient_accumulation_steps=fresh.gradient_accumulation_steps, config=fresh.config)


class TrainingRun:
    """The parts of one run and the steps the loop calls; ``state`` is the :class:`TrainState`."""

    def __init__(self, config: TrainingConfig, accelerator, model, optimizer, lr_scheduler, data: TrainData,
                 schedule: Schedule, state: TrainState, eval_fn, output_dir: Path):
        from tqdm.auto import tqdm

        self.config, self.accelerator, self.model = config, accelerator, model
        self.optimizer, self.lr_scheduler, self.data, self.schedule = optimizer, lr_scheduler, data, schedule
        self.state, self.eval_fn = state, eval_fn
        self.log_path = output_dir / LOG_NAME
        self.output_dir = output_dir
        # Where the data resumes: this epoch, after this many (per-process) batches.
        self.resume_epoch = state.epoch
        self.skip_batches = state.global_batches_in_epoch // accelerator.num_processes
        self.last_eval = state.eval_metrics()
        self.last_eval_step = -1
        self.grad_norm = None
        # --freeze_backbone_steps: the loaded weights, and the warm-up they get when they start training.
        self.frozen = loaded_weights(optimizer) if config.freeze_backbone_steps > 0 else []
        self.backbone_warmup = num_warmup_steps(config, schedule.max_train_steps)
        self.trackers = bool(config.report_to)
        self.run_start = time.perf_counter()
        self.meter, self.meter_total = Meter(), Meter()  # logging interval; whole run (for train_loss)
        self.progress = tqdm(total=schedule.max_train_steps, initial=state.global_step, desc="train",
                             disable=not accelerator.is_local_main_process, dynamic_ncols=True)

    # ---- bookkeeping --------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.state.global_step >= self.schedule.max_train_steps

    @property
    def stop_requested(self) -> bool:
        """--stop_after_steps reached before the schedule's end: this sitting ends here."""
        stop = self.config.stop_after_steps
        return stop is not None and not self.done and self.state.global_step >= stop

    def elapsed(self) -> float:
        return self.state.elapsed_s + time.perf_counter() - self.run_start

    def write_log(self, record: dict) -> None:
        if self.accelerator.is_main_process:
            try:
                append_log(self.log_path, record)
            except OSError as err:
                raise write_failure(self.output_dir, LOG_NAME, err) from None

    def log_metrics(self, values: dict) -> None:
        step = self.state.global_step
        self.write_log({"step": step, "epoch": round(step / self.schedule.steps_per_epoch, 4), **values})
        if self.trackers:
            self.accelerator.log({k: v for k, v in values.items() if isinstance(v, (int, float))}, step=step)

    def start_trackers(self, resumed_from: Path | None) -> None:
        if resumed_from is not None:
            self.write_log({"event": "resume", "step": self.state.global_step, "checkpoint": str(resumed_from)})
        if self.trackers and not self.accelerator.log_with:
            logger.warning("report_to=%s but the Accelerator has no usable tracker (not installed, or an "
                           "Accelerator made without log_with): only log.jsonl is written", self.config.report_to)
        if self.trackers:
            hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                       for k, v in self.config.to_dict().items()}
            self.accelerator.init_trackers("charbert", config=hparams)

    # ---- the steps of the loop ------------------------------------------------------------
    def epoch_batches(self, epoch: int):
        """This epoch's batches (after a resume: without those already trained) and how many were skipped."""
        # Everything that shapes this epoch's batches is a function of (seed, epoch) only.
        self.data.start_epoch(self.config.seed, epoch)
        if epoch == self.resume_epoch and self.skip_batches:
            batches = self.accelerator.skip_first_batches(self.data.train, self.skip_batches)
            batches.set_epoch(epoch)
            return batches, self.skip_batches
        return self.data.train, 0

    def train_step(self, batch) -> None:
        accelerator, model = self.accelerator, self.model
        with accelerator.accumulate(model):
            outputs = call_model(model, batch)
            loss = outputs.loss
            if loss is None:
                raise ValueError("The model returned no loss: does the batch carry labels?")
            self.meter.add(loss, aux_losses(outputs), count_tokens(batch))
            self.meter_total.add(loss, {}, None)
            accelerator.backward(loss)
            if accelerator.sync_gradients and self.state.global_step < self.config.freeze_backbone_steps:
                for param in self.frozen:  # no update, no optimizer state, not in the clipped norm
                    param.grad = None
            if accelerator.sync_gradients and self.config.max_grad_norm and self.config.max_grad_norm > 0:
                self.grad_norm = accelerator.clip_grad_norm_(model.parameters(), self.config.max_grad_norm)
            self.optimizer.step()
            self.lr_scheduler.step()
            if self.frozen and accelerator.sync_gradients:
                self.scale_loaded_lr(self.state.global_step + 1)
            self.optimizer.zero_grad()

    def scale_loaded_lr(self, next_step: int) -> None:
        """The loaded weights' learning rate for optimizer step `next_step`: the schedule's value (which the
        scheduler has just set, not chained) times `backbone_lr_factor`; saved with the optimizer, so a
        resumed run continues with it."""
        factor = backbone_lr_factor(next_step, self.config.freeze_backbone_steps, self.backbone_warmup)
        for group in self.optimizer.param_groups:
            if group.get("new_module") is False:
                group["lr"] *= factor

    def step_done(self) -> None:
        self.state.global_step += 1
        self.progress.update(1)

    def maybe_log(self) -> None:
        if self.state.global_step % self.config.logging_steps and not self.done:
            return
        stats = self.meter.reduce(self.accelerator)
        values = {"loss": stats["loss"], "lr": self.lr_scheduler.get_last_lr()[0],
                  "tokens_per_s": stats["tokens"] / max(stats["seconds"], 1e-9), "elapsed": self.elapsed()}
        if self.grad_norm is not None:
            values["grad_norm"] = float(self.grad_norm)
        values.update({k: v for k, v in stats.items() if k.endswith("_loss")})
        self.state.last_metrics.update(values)
        self.log_metrics(values)
        self.progress.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}",
                                  tok_s=f"{values['tokens_per_s']:.0f}")
        self.meter.reset()

    def evaluate(self) -> None:
        if self.eval_fn is None and self.data.eval is None:
            return
        self.last_eval = run_eval(self.model, self.accelerator, self.eval_fn, self.data.eval)
        self.last_eval_step = self.state.global_step
        self.state.last_metrics.update(self.last_eval)
        self.log_metrics(dict(self.last_eval))
        logger.info("step %d: %s", self.state.global_step, self.last_eval)

    def maybe_evaluate(self) -> None:
        if self.config.eval_steps and self.state.global_step % self.config.eval_steps == 0:
            self.evaluate()

    def maybe_checkpoint(self, epoch: int, batches_done: int) -> None:
        every, step = self.config.checkpointing_steps, self.state.global_step
        if ((isinstance(every, int) and step % every == 0) or step in self.config.keep_checkpoints_at
                or self.stop_requested):  # a sitting that stops leaves a checkpoint to resume from
            self.checkpoint(f"step_{self.state.global_step}", epoch, batches_done)

    def end_epoch(self, epoch: int, batches_done: int) -> None:
        """After the epoch's last batch: count it, evaluate (unless eval_steps) and checkpoint (if 'epoch')."""
        self.state.epochs_completed = epoch + 1
        if self.config.eval_steps is None and self.last_eval_step != self.state.global_step:
            self.evaluate()
        if self.config.checkpointing_steps == "epoch":
            self.checkpoint(f"epoch_{epoch}", epoch, batches_done)

    # ---- saving and the end -----------------------------------------------------------------
    def snapshot(self, epoch: int, batches_done: int) -> TrainState:
        """The state a checkpoint taken now saves (collective: call on every process)."""
        if batches_done >= self.schedule.batches_per_epoch:  # the epoch is over: resume at the next one
            epoch, batches_done = epoch + 1, 0
        run_sum, run_count = self.meter_total.reduce_loss(self.accelerator)
        return replace(
            self.state, epoch=epoch, global_batches_in_epoch=batches_done * self.accelerator.num_processes,
            epochs_completed=epoch,  # epochs before the resume position are complete
            train_loss_sum=self.state.train_loss_sum + run_sum,
            train_loss_count=self.state.train_loss_count + run_count, elapsed_s=self.elapsed(),
        )

    def checkpoint(self, name: str, epoch: int, batches_done: int) -> None:
        try:
            save_checkpoint(self.accelerator, self.output_dir, name, self.snapshot(epoch, batches_done),
                            self.config.save_total_limit, self.config.keep_checkpoints_at)
        except OSError as err:  # e.g. the disk became full or read-only
            raise write_failure(self.output_dir, f"checkpoint {name}", err) from None

    def finish(self, wall_start: float) -> TrainResult:
        self.progress.close()
        if self.last_eval_step != self.state.global_step and not self.stop_requested:  # a stopped sitting reports nothing
            self.evaluate()
        run_sum, run_count = self.meter_total.reduce_loss(self.accelerator)
        loss_sum, loss_count = self.state.train_loss_sum + run_sum, self.state.train_loss_count + run_count
        if self.trackers:
            # Not accelerator.end_training(): it also destroys the process group, which callers
            # still need (e.g. save_model after train under torchrun).
            for tracker in self.accelerator.trackers:
                tracker.finish()
        self.accelerator.wait_for_everyone()
        return TrainResult(
            global_step=self.state.global_step, epochs_completed=self.state.epochs_completed,
            train_loss=loss_sum / loss_count if loss_count else float("nan"), last_eval=dict(self.last_eval),
            log_path=self.log_path, wall_time_s=time.perf_counter() - wall_start, stopped_early=self.stop_requested,
        )


def stopped_line(result: TrainResult) -> str:
    """What a program prints when --stop_after_steps ended the sitting (no final model is saved)."""
    return (f"Stopped after step {result.global_step} (--stop_after_steps), no final model saved yet: the same command "
            f"with --resume_from_checkpoint latest and a later --stop_after_steps (or none) continues the run.")


def train(model, train_dataset, config: TrainingConfig, collate_fn, eval_fn=None, accelerator=None,
          eval_dataset=None) -> TrainResult:
    """Train ``model`` in place on a map-style ``train_dataset``.

    * ``collate_fn(examples)`` -> batch (a dict passed as ``model(**batch)``); with
      ``collate_fn.needs_rng = True`` it is called as ``collate_fn(examples, rng=...)`` with the
      generator of :func:`~charbert.training.collator_rng`.
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

    wall_start = time.perf_counter()
    _check_inputs(config, train_dataset, eval_dataset)
    accelerator = check_accelerator(accelerator, config)
    output_dir = _prepare_output_dir(accelerator, Path(config.output_dir))

    # ---- restore, part 1: a bad --resume_from_checkpoint fails before any expensive setup
    checkpoint = resolve_checkpoint(output_dir, config.resume_from_checkpoint)
    saved = TrainState.from_dict(read_trainer_state(checkpoint)) if checkpoint is not None else None
    if checkpoint is not None:
        check_checkpoint_complete(checkpoint, accelerator.num_processes, accelerator.process_index,
                                  allow_inexact=config.allow_inexact_resume)
    if config.resume_from_checkpoint == "latest" and checkpoint is None:
        logger.info("No complete checkpoint in %s yet: starting from scratch", output_dir)
    set_seed(config.seed)

    # ---- setup: data, optimizer, schedule
    data = build_dataloaders(train_dataset, eval_dataset, collate_fn, config, accelerator)
    optimizer = build_optimizer(model, config)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    model, optimizer, data.train = accelerator.prepare(model, optimizer, data.train)
    if config.torch_compile:
        model = compile_model(model)
    if data.eval is not None:
        eval_order = data.eval.sampler if isinstance(data.eval.sampler, list) else None
        data.eval = accelerator.prepare(data.eval)
        data.eval.eval_order = eval_order  # gather_predictions puts the predictions back in dataset order
    schedule = Schedule.of(config, len(data.train))  # batches per process, after sharding
    lr_scheduler = accelerator.prepare(build_lr_scheduler(optimizer, config, schedule, accelerator.num_processes))
    state = TrainState(max_train_steps=schedule.max_train_steps, num_processes=accelerator.num_processes,
                       per_device_train_batch_size=config.per_device_train_batch_size,
                       gradient_accumulation_steps=config.gradient_accumulation_steps, config=config.to_dict())

    # ---- restore, part 2: model, optimizer, scheduler and RNG states, then the counters
    if saved is not None:
        load_checkpoint(accelerator, checkpoint)
        state = restored_state(saved, state, checkpoint, output_dir)
    if config.stop_after_steps is not None and config.stop_after_steps <= state.global_step < schedule.max_train_steps:
        raise ValueError(f"--stop_after_steps {config.stop_after_steps}: the run resumes at step {state.global_step} "
                         f"already; give a later step (or none, to run to step {schedule.max_train_steps})")
    run = TrainingRun(config, accelerator, model, optimizer, lr_scheduler, data, schedule, state, eval_fn, output_dir)
    run.start_trackers(resumed_from=checkpoint)

    # ---- the loop
    model.train()
    for epoch in range(run.resume_epoch, schedule.num_epochs):
        if run.done or run.stop_requested:
            break
        batches, batches_done = run.epoch_batches(epoch)
        for batch in batches:
            run.train_step(batch)
            batches_done += 1
            if not accelerator.sync_gradients:
                continue
            run.step_done()
            run.maybe_log()
            with run.meter.paused():  # tokens/s measures training, not eval or saving
                run.maybe_evaluate()  # before checkpointing, so the checkpoint carries its metrics
                run.maybe_checkpoint(epoch, batches_done)
            if run.done or run.stop_requested:
                break
        if batches_done >= schedule.batches_per_epoch:
            run.end_epoch(epoch, batches_done)
    return run.finish(wall_start)
