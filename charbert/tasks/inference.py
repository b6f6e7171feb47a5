"""Running a model over an evaluation set, in one or several processes, exactly once per example.

:func:`gather_predictions` runs the model on a dataloader prepared by accelerate (each
process sees its shard, the last batches topped up with repeated examples to keep batches
even), pads sequence outputs to a common length across processes, and gathers them with
``accelerator.gather_for_metrics``, which drops the repeated tail.  Every process gets the
predictions of the whole dataset, in dataset order, so metrics are identical everywhere and
identical to a single-process run.

:func:`eval_dataloader` sorts the examples by length into batches (little padding: on real
test sets most batches are much shorter than their longest sentence), and
:func:`gather_predictions` puts the predictions back into dataset order, so callers never see
the sorting; the numbers equal those of unsorted batches up to float rounding (padding is
masked).  The forward passes run under ``torch.inference_mode``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from charbert.cli import eval_mode


def gather_predictions(model, accelerator, dataloader, extract: Callable[[object], Sequence[torch.Tensor]],
                       pad_index: float = -100, **forward_kwargs) -> list[list[np.ndarray]]:
    """``extract(model_outputs) -> tensors (B, ...)``, gathered over processes.

    Returns one list per extracted tensor, holding one numpy row per dataset example in
    dataset order.  Tensors with a sequence dimension (ndim >= 2) are padded along dim 1 with
    ``pad_index`` (rows are then longer than their example; callers cut them).
    ``forward_kwargs`` go to every forward call (``output_hidden_states=True``).
    """
    outputs: list[list[np.ndarray]] | None = None
    with eval_mode(model), torch.inference_mode():
        for batch in dataloader:
            tensors = extract(model(**batch, **forward_kwargs))
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
    order = getattr(dataloader, "eval_order", None)
    if order is not None and outputs:  # gathered in the loader's (length-sorted) order: back to dataset order
        outputs = [unsort(rows, order) for rows in outputs]
    return outputs or []


def unsort(rows: Sequence, order: Sequence[int]) -> list:
    """``rows[k]`` belongs to example ``order[k]``: the rows in example order."""
    out = [None] * len(rows)
    for k, i in enumerate(order):
        out[int(i)] = rows[k]
    return out


def length_order(dataset) -> list[int] | None:
    """Example indices from the longest input to the shortest (stable; the longest batch comes first,
    so a batch that does not fit in memory fails at once); None when the rows have no ``input_ids``."""
    if len(dataset) == 0 or not isinstance(dataset[0], Mapping) or "input_ids" not in dataset[0]:
        return None
    lengths = [len(dataset[i]["input_ids"]) for i in range(len(dataset))]
    return np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable").tolist()


def eval_dataloader(accelerator, dataset, collate_fn, batch_size: int, sort_by_length: bool = True):
    """A prepared (sharded) loader for :func:`gather_predictions` outside ``train``: batches of
    similar length (``sort_by_length``), else the dataset order."""
    order = length_order(dataset) if sort_by_length else None
    sampler = order if order is not None else None  # a list of indices is a valid sampler
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, sampler=sampler,
                                         collate_fn=collate_fn)
    prepared = accelerator.prepare(loader)
    prepared.eval_order = order
    return prepared
