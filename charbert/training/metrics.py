"""What the loop measures: loss meters, reductions over processes, and evaluation."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any

import torch

from ..cli import eval_mode
from .determinism import isolated_rng


def call_model(model, batch):
    """``model(**batch)`` for dict batches, ``model(*batch)`` for sequences, else ``model(batch)``."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (list, tuple)):
        return model(*batch)
    return model(batch)


def aux_losses(outputs) -> dict[str, torch.Tensor]:
    """Scalar tensor fields of a model output whose name ends in ``_loss`` (mlm_loss, ...)."""
    if not isinstance(outputs, Mapping):
        return {}
    found = {}
    for key, value in outputs.items():
        if key.endswith("_loss") and isinstance(value, torch.Tensor) and value.numel() == 1:
            found[key] = value.detach().float().reshape(())
    return found


def batch_size(batch) -> int:
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else [batch]
    for value in values:
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            return int(value.shape[0])
    return 1


def count_tokens(batch) -> torch.Tensor | None:
    """Real tokens of a batch: its attention mask's sum, or the sum over the batch's nested inputs
    (e.g. the queries and passages of an embedding batch)."""
    if isinstance(batch, Mapping):
        mask = batch.get("attention_mask")
        if isinstance(mask, torch.Tensor):
            return mask.detach().sum()
        nested = [count_tokens(v) for v in batch.values() if isinstance(v, Mapping)]
        nested = [n for n in nested if n is not None]
        if nested:
            return sum(nested[1:], nested[0])
    return None


def union_keys(accelerator, keys: list[str]) -> list[str]:
    # Collectives below need identical key lists on every rank.
    if accelerator.num_processes == 1:
        return sorted(keys)
    from accelerate.utils import gather_object

    return sorted(set().union(*gather_object([sorted(keys)])))


def reduce_sum(accelerator, values: list) -> list[float]:
    """Sum a few scalars (python numbers or 0-d tensors) over all processes in one collective."""
    # float64 so long runs' loss sums keep their precision (MPS has no float64: sum on CPU there).
    device = accelerator.device if accelerator.device.type != "mps" else torch.device("cpu")
    packed = torch.stack([torch.as_tensor(v, device=device).to(torch.float64).reshape(()) for v in values])
    if accelerator.num_processes > 1:
        packed = accelerator.reduce(packed, reduction="sum")
    return packed.tolist()


class Meter:
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

    @contextlib.contextmanager
    def paused(self):
        """Time spent in the block (evaluation, saving) does not count towards tokens/s."""
        pause = time.perf_counter()
        try:
            yield
        finally:
            self.start += time.perf_counter() - pause

    def reduce_loss(self, accelerator) -> tuple[float, int]:
        """(loss sum, batch count) over all processes."""
        loss_sum, loss_count = reduce_sum(accelerator, [self.loss_sum, self.loss_count])
        return loss_sum, int(loss_count)

    def reduce(self, accelerator) -> dict[str, float]:
        """Means over the interval and over all processes; tokens summed over processes."""
        keys = union_keys(accelerator, list(self.aux_sum))
        values = [self.loss_sum, float(self.loss_count), self.tokens]
        for key in keys:
            values += [self.aux_sum.get(key, 0.0), float(self.aux_count.get(key, 0))]
        packed = reduce_sum(accelerator, values)
        out = {"loss": packed[0] / packed[1] if packed[1] else float("nan"), "tokens": packed[2],
               "seconds": time.perf_counter() - self.start}
        for j, key in enumerate(keys):
            s, c = packed[3 + 2 * j], packed[4 + 2 * j]
            out[key] = s / c if c else float("nan")
        return out


def evaluate_loss(model, eval_dataloader, accelerator) -> dict[str, float]:
    """Default evaluation: example-weighted mean ``loss`` and ``*_loss`` fields over the eval set."""
    sums: dict[str, float] = {}
    count = 0
    for batch in eval_dataloader:
        outputs = call_model(model, batch)
        scalars = {"loss": outputs.loss.detach().float().reshape(()), **aux_losses(outputs)}
        n = batch_size(batch)
        # gather_for_metrics drops the examples accelerate duplicated to even out the last batch.
        for key in sorted(scalars):
            gathered = accelerator.gather_for_metrics(scalars[key].repeat(n))
            sums[key] = sums.get(key, 0.0) + float(gathered.double().sum())
            if key == "loss":
                count += gathered.numel()
    return {k: v / max(count, 1) for k, v in sums.items()}


def _eval_scalars(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """Numeric metrics as floats named ``eval_*``; values that are not numbers are left out."""
    out = {}
    for key, value in (metrics or {}).items():
        if isinstance(value, torch.Tensor):
            value = value.item()
        with contextlib.suppress(TypeError, ValueError):
            out[key if key.startswith("eval_") else f"eval_{key}"] = float(value)
    return out


def run_eval(model, accelerator, eval_fn, eval_dataloader) -> dict[str, float]:
    """One evaluation in eval mode, without gradients and without touching the training RNGs."""
    with eval_mode(model), isolated_rng(), torch.no_grad():
        if eval_fn is None:
            metrics = evaluate_loss(model, eval_dataloader, accelerator)
        elif eval_dataloader is not None:
            metrics = eval_fn(model, accelerator, eval_dataloader)
        else:
            metrics = eval_fn(model, accelerator)
    return _eval_scalars(metrics)
