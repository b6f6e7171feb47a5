"""The fusion's inference path: the same function as `HeterogeneousInteraction`, computed faster.

When no gradient is taken, the fusion's two channel maps and its Conv1d collapse into two matrix
products: the conv is linear in [W_w w; W_c c], so each of its k taps can absorb the maps

    taps_j = C_j,word W_w w + C_j,char W_c c        (6H^2 multiply-adds a token instead of 8H^2, no transposes)

and the conv becomes a sum of the taps shifted along the sequence (`sum_shifted_taps`). The merged
weights are computed once and cached until a weight they come from changes (`cached_merged_weights`).

On a padded batch (exact padding) the products run on the real tokens only (`RealTokens`): one gather
lays their taps out on the conv's zero-padded grid, where a padded position gets the conv's bias alone,
as its masked taps would have given it. The same numbers as the padded path, without the padding's
share of the work. An ONNX export traces this path too (the merged weights become initializers).

modeling.py calls this module in two places: `HeterogeneousInteraction.forward` (one call, when
`uses_merged_fusion`) and `CharBertModel.forward` (the merged weights and the real tokens, once a forward).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


def uses_merged_fusion(fusion: nn.Module) -> bool:
    """Whether the fusion runs its inference path: no gradient is taken (or an export is being traced)."""
    return not fusion.training and (not torch.is_grad_enabled() or torch.jit.is_tracing())


# ---- where the real tokens are ---------------------------------------------------------


class RealTokens(NamedTuple):
    """Where a padded batch's real tokens are, for the fusion's inference path to run on them alone.

    index: (N,) flat positions (into B*L) of the real tokens, in order.
    grid: (B, L + 2 * halo) the batch's positions widened by `halo` (the conv's reach) on each side; each
        holds its row among [the N real tokens' rows; row N, for a position outside the row; row N + 1, for
        padding], so one gather builds the conv's zero-padded input from the real tokens' rows.
    """

    index: torch.Tensor
    grid: torch.Tensor


def real_tokens(attention_mask: torch.Tensor, halo: int) -> RealTokens:
    """(B, L) attention mask -> RealTokens (any padding side). Traced as data-dependent ops (NonZero,
    CumSum), so an ONNX export keeps it for every batch."""
    real = attention_mask != 0  # (B, L)
    counts = real.long().reshape(-1)  # (ONNX has no CumSum of booleans)
    index = counts.nonzero().squeeze(1)  # (N,)
    n = counts.sum()
    rows = torch.where(real.reshape(-1), counts.cumsum(0) - 1, n + 1).view_as(real)  # (B, L); padding -> N + 1
    outside = (rows[:, :1] * 0 + n).expand(-1, halo)  # (B, halo) of N (built from rows: traced, not constant)
    return RealTokens(index, torch.cat([outside, rows, outside], 1))  # (B, L + 2 halo)


def packs_real_tokens(attention_mask: torch.Tensor) -> bool:
    """Whether the fusion's inference path should run on the real tokens alone: when the batch has
    padding (in eager mode; an ONNX trace always packs, as the exported graph must serve padded batches),
    and not under torch.compile (a data-dependent size would break its graph)."""
    if torch.compiler.is_compiling():
        return False
    return torch.jit.is_tracing() or not bool(attention_mask.all())


# ---- the merged weights ----------------------------------------------------------------


class MergedFusionWeights(NamedTuple):
    """The fusion's inference weights (`merged_fusion_weights`), rows tap-major (tap j's H outputs together)."""

    word_taps: torch.Tensor  # (kH, H): the conv's taps times the word map
    char_taps: torch.Tensor  # (kH, H): the conv's taps times the character map
    tap_bias: torch.Tensor | None  # (kH,): the maps' biases through the taps (fusion_bias), else None
    token_bias: torch.Tensor  # (kH,): tap_bias plus the conv's bias on the middle tap (the packed path)
    outside_and_padding: torch.Tensor  # (2, kH): the packed path's rows for outside the row (zeros) and padding


def merged_fusion_weights(fusion: nn.Module) -> MergedFusionWeights:
    """The fusion's conv taps times its channel maps, computed in float32, and the biases the packed path
    (`RealTokens`) adds: a real token's taps carry the conv's bias on the middle tap (the one that writes its
    own position), a padded position's row is that bias alone, a position outside the row is zeros."""
    weight = fusion.fuse.weight  # (H, 2H, k): [word half | character half]
    hidden, k = weight.shape[0], weight.shape[-1]
    taps = weight.permute(2, 0, 1).reshape(k * hidden, 2 * hidden).float()  # (kH, 2H)
    word_taps = taps[:, :hidden] @ fusion.word_proj.weight.float()
    char_taps = taps[:, hidden:] @ fusion.char_proj.weight.float()
    tap_bias = None
    if fusion.word_proj.bias is not None:
        tap_bias = taps[:, :hidden] @ fusion.word_proj.bias.float() + taps[:, hidden:] @ fusion.char_proj.bias.float()
    conv_bias = torch.zeros(k, hidden, device=weight.device)
    conv_bias[k // 2] = fusion.fuse.bias.float()
    conv_bias = conv_bias.reshape(-1)  # (kH,)
    token_bias = conv_bias if tap_bias is None else conv_bias + tap_bias
    outside_and_padding = torch.stack([torch.zeros_like(conv_bias), conv_bias])  # (2, kH)
    dtype = weight.dtype
    return MergedFusionWeights(word_taps.to(dtype), char_taps.to(dtype), None if tap_bias is None else tap_bias.to(dtype),
                               token_bias.to(dtype), outside_and_padding.to(dtype))


def cached_merged_weights(fusion: nn.Module) -> MergedFusionWeights:
    """The fusion's merged weights, recomputed whenever a weight they come from has changed. Checked by value
    against a copy kept with them: an optimizer may write weights in place without bumping their version
    counters (fused AdamW does), so neither identity nor `_version` proves them unchanged."""
    sources = [p for p in (fusion.fuse.weight, fusion.word_proj.weight, fusion.char_proj.weight, fusion.word_proj.bias,
                           fusion.char_proj.bias) if p is not None]
    cached = getattr(fusion, "_merged_cache", None)
    if cached is None or not _same_tensors(cached[0], sources):
        # float32 products even under autocast (they are weights, computed once, not activations)
        with torch.no_grad(), torch.autocast(sources[0].device.type, enabled=False):
            cached = ([p.detach().clone() for p in sources], merged_fusion_weights(fusion))
        fusion._merged_cache = cached
    return cached[1]


def _same_tensors(saved: list[torch.Tensor], current: list[torch.Tensor]) -> bool:
    return len(saved) == len(current) and all(
        a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
        for a, b in zip(saved, current))


# ---- the fused signal ------------------------------------------------------------------


def fused_for_inference(fusion: nn.Module, word: torch.Tensor, char: torch.Tensor, token_mask=None,
                        merged_weights: MergedFusionWeights | None = None, real: RealTokens | None = None) -> torch.Tensor:
    """The conv's output over the two mapped channels, (B, L, H), as two matrix products (see the module's
    docstring). word, char (B, L, H), after the pre-norm when there is one; token_mask (B, L, 1) or None;
    merged_weights: `cached_merged_weights(fusion)` when the caller has it; real: the batch's RealTokens
    (exact padding, a padded batch) for the products to skip the padding."""
    merged = merged_weights if merged_weights is not None else cached_merged_weights(fusion)
    kernel = fusion.fuse.kernel_size[0]
    if real is None or token_mask is None:
        taps = F.linear(word, merged.word_taps) + F.linear(char, merged.char_taps, merged.tap_bias)  # (B, L, k*H)
        if token_mask is not None:
            taps = taps * token_mask
        return sum_shifted_taps(taps, kernel) + fusion.fuse.bias
    batch, length, hidden = word.shape
    word = word.reshape(-1, hidden).index_select(0, real.index)  # (N, H)
    char = char.reshape(-1, hidden).index_select(0, real.index)  # (N, H)
    taps = torch.addmm(merged.token_bias, char, merged.char_taps.t())  # (N, k*H), tap-major, conv bias in
    taps = torch.addmm(taps, word, merged.word_taps.t())  # (not in place: autocast casts only out-of-place ops)
    taps = torch.cat([taps, merged.outside_and_padding]).index_select(0, real.grid.reshape(-1))  # (B*(L+2h), k*H)
    return sum_taps_on_grid(taps.view(batch, -1, kernel, hidden), length)  # (B, L + 2 halo, k, H) -> (B, L, H)


def sum_shifted_taps(taps: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """(B, L, k*C) per-token outputs of a conv's k taps (tap-major) -> (B, L, C) the "same"-padded convolution
    (zeros past both ends): tap j reads the input j - k//2 positions away."""
    half = kernel_size // 2
    grid = F.pad(taps.unflatten(-1, (kernel_size, -1)), (0, 0, 0, 0, half, half))  # (B, L + 2 half, k, C)
    return sum_taps_on_grid(grid, taps.size(1))


def sum_taps_on_grid(grid: torch.Tensor, length: int) -> torch.Tensor:
    """(B, L + 2 half, k, C) the k taps' outputs at every position of a row widened by half = k//2 zero
    positions on each side -> (B, L, C): position i sums tap j of position i + j - half."""
    out = grid[:, 0:length, 0]
    for j in range(1, grid.size(2)):
        out = out + grid[:, j:j + length, j]
    return out
