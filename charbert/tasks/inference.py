"""Running a model over an evaluation set, in one or several processes, exactly once per example.

:func:`gather_predictions` runs the model on a dataloader prepared by accelerate (each
process sees its shard, the last batches topped up with repeated examples to keep batches
even), pads sequence outputs to a common length across processes, and gathers them with
``accelerator.gather_for_metrics``, which drops the repeated tail.  Every process gets the
predictions of the whole dataset, in dataset order, so metrics are identical everywhere and
identical to a single-process run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from charbert.cli import eval_mode


def gather_predictions(model, accelerator, dataloader, extract: Callable[[object], Sequence[torch.Tensor]],
                       pad_index: float = -100) -> list[list[np.ndarray]]:
    """``extract(model_outputs) -> tensors (B, ...)``, gathered over processes.

    Returns one list per extracted tensor, holding one numpy row per dataset example in
    dataset order.  Tensors with a sequence dimension (ndim >= 2) are padded along dim 1 with
    ``pad_index`` (rows are then longer than their example; callers cut them).
    """
    outputs: list[list[np.ndarray]] | None = None
    with eval_mode(model), torch.no_grad():
        for batch in dataloader:
            tensors = extract(model(**batch))
            if outputs is None:
                outputs = [[] for _ in tensors]
            for j, t in enumerate(tensors):
                if t.ndim >= 2:
                    t = accelerator.pad_across_processes(t.contiguous(), dim=1, pad_index=pad_index)
                gathered = accelerator.gather_for_metrics(t)
                outputs[j].extend(gathered.detach().float().cpu().numpy() if gathered.is_floating_point()
                                  else gathered.detach().cpu().numpy())
    expected = len(dataloader.dataset)
    got = len(outputs[0]) if outputs else 0
    if got != expected:
        raise RuntimeError(f"Evaluation gathered {got} predictions for {expected} examples: a sharding bug.")
    return outputs or []


def eval_dataloader(accelerator, dataset, collate_fn, batch_size: int):
    """A sequential, prepared (sharded) loader for :func:`gather_predictions` outside ``train``."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
    return accelerator.prepare(loader)
