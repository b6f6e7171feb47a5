"""The character encoder's inference path: its two GRU directions at the same time.

The character GRU steps through a batch's longest row one character at a time with small matrices, so one
direction keeps about one core busy however many threads torch has. The two directions are independent,
and without gradients they run side by side: the backward one in a worker thread, the forward one in the
caller's (torch releases the GIL inside its operators). The same two calls on the same inputs: the same
numbers. modeling.py calls this module in one place, `CharEncoder.forward`.

Only where it pays and is safe: no gradient taken (a worker thread's autograd would be a graph of its
own), on the CPU with at least two torch threads (at one thread it measured no faster), outside an ONNX
trace or torch.compile (they see one thread's calls), and for rows of at least `MIN_PARALLEL_CHARS`
characters (the handoff costs a little).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

MIN_PARALLEL_CHARS = 64

_worker: tuple[int, ThreadPoolExecutor] | None = None  # (the process it belongs to, one thread)


def runs_directions_in_parallel(chars: torch.Tensor) -> bool:
    """Whether the GRU's two directions over `chars` (B, C, E) run side by side."""
    return (chars.device.type == "cpu" and not torch.is_grad_enabled() and torch.get_num_threads() >= 2
            and chars.size(1) >= MIN_PARALLEL_CHARS and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling())


def worker() -> ThreadPoolExecutor:
    """The one worker thread, made on first use and again in a forked process (which has no threads)."""
    global _worker
    if _worker is None or _worker[0] != os.getpid():
        _worker = (os.getpid(), ThreadPoolExecutor(1, thread_name_prefix="charbert-gru"))
    return _worker[1]


def both_directions(forward_gru: nn.GRU, forward_input: torch.Tensor,
                    backward_gru: nn.GRU, backward_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(forward_gru(forward_input), backward_gru(backward_input)) states, (B, C, G) each, the backward
    direction in the worker thread under the caller's grad and inference modes (they are per thread)."""
    inference = torch.is_inference_mode_enabled()

    def backward():
        with torch.inference_mode(inference), torch.no_grad():
            return backward_gru(backward_input)[0]

    pending = worker().submit(backward)
    forward_states, _ = forward_gru(forward_input)
    return forward_states, pending.result()
