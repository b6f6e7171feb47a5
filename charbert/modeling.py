"""CharBERT model: character encoder, heterogeneous interaction, the dual-channel encoder and all heads.

    chars (B,C) -> Embedding -> Bi-GRU -> states (B,C,2G) -> gather first & last -> [LN] -> (B,L,H)  char channel
    ids   (B,L) -> backbone embeddings                                                   -> (B,L,H)  subword channel
    for each layer:  [w; c] -> backbone layer (shared weights, one call on the stacked batch)   -> w, c
                     f = [act](Conv1d_k([W_w w ; W_c c]))   (B,L,2H) -> (B,L,H)
                     w = LN_w(w + f);  c = LN_c(c + f)

The bracketed steps are our previous variant's (`PREVIOUS_VARIANT` in configuration.py); the
default is the authors' released architecture. Pre-norm backbones (ModernBERT, `fusion_norm="pre"`)
normalise the fusion's inputs instead: w = w + f(LN_w w, LN_c c). Without gradients (inference) the
fusion runs the same function faster (fusion_inference.py: the maps merged into the conv's taps, two
matrix products on the batch's real tokens only), the character GRU runs its two directions at once
(gru_inference.py), and a large CPU batch goes through each layer one channel at a time. The backbone's
own modules (its embeddings, encoder layers, pooler) are used as they are and keep their names, so a
plain checkpoint's weights load under the same keys; what differs between backbone families (BERT, RoBERTa, ...)
is asked of the family's adapter (backbones.py). Loading checkpoints lives in checkpoint.py.
"""

from __future__ import annotations

import logging
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import (
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.utils import ModelOutput

from . import backbones, checkpoint
from .chars import CHAR_INPUT_NAMES
from .compat import (
    CheckpointableModule,
    GradientCheckpointingLayer,
    init,
)
from .configuration import CharBertConfig
from .fusion_inference import (  # noqa: F401  (RealTokens, sum_shifted_taps, ...: importable from here too)
    MergedFusionWeights,
    RealTokens,
    cached_merged_weights,
    fused_for_inference,
    merged_fusion_weights,
    packs_real_tokens,
    real_tokens,
    sum_shifted_taps,
    sum_taps_on_grid,
    uses_merged_fusion,
)
from .gru_inference import both_directions, runs_directions_in_parallel

logger = logging.getLogger(__name__)

# backbone_type -> (embeddings, encoder, pooler) classes from transformers itself (a view of the
# adapters in backbones.py, kept for code written before them; pooler None: the family has none).
BACKBONE_MODULES = {
    name: (adapter.embeddings_class, adapter.encoder_class, adapter.pooler_class)
    for name, adapter in backbones.BACKBONES.items()
}
# Kept importable from here for code written before checkpoint.py existed.
MLM_HEAD_KEYS = checkpoint.MLM_HEAD_KEYS
read_checkpoint_tensors = checkpoint.read_checkpoint_tensors


# ---- outputs ---------------------------------------------------------------------------


@dataclass
class CharBertModelOutput(ModelOutput):
    """
    last_hidden_state (B, L, H): subword channel after the last layer.
    char_last_hidden_state (B, L, H): character channel after the last layer.
    pooler_output (B, H): the backbone's pooler over the subword channel's first token.
    hidden_states / char_hidden_states: per-layer states of each channel (embeddings first), when asked for.
    attentions / char_attentions: per-layer attention weights (B, heads, L, L) of each channel, when asked for
        (`output_attentions=True`; eager attention only: SDPA computes none, and transformers warns).
    """

    last_hidden_state: torch.FloatTensor | None = None
    char_last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    char_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    char_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class CharBertForPreTrainingOutput(ModelOutput):
    """
    loss: mlm_loss + nlm_loss (those whose labels were given).
    mlm_logits: (N_mlm, V) at the labelled positions only when `labels` is given, else (B, L, V).
    nlm_logits: (N_nlm, W) at the labelled positions only when `nlm_labels` is given, else (B, L, W).
    """

    loss: torch.FloatTensor | None = None
    mlm_loss: torch.FloatTensor | None = None
    nlm_loss: torch.FloatTensor | None = None
    mlm_logits: torch.FloatTensor | None = None
    nlm_logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    char_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    char_attentions: tuple[torch.FloatTensor, ...] | None = None


# ---- building blocks -------------------------------------------------------------------


def reverse_within_length(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B, C) gather index that reverses each row's first `length` items and leaves padding in place.

    Applying it twice is the identity. Running a forward GRU over the reversed rows is an exact
    backward GRU for right-padded sequences: real positions never see a padding character.
    """
    positions = torch.arange(max_len, device=lengths.device).unsqueeze(0)  # (1, C)
    lengths = lengths.unsqueeze(1)  # (B, 1)
    return torch.where(positions < lengths, lengths - 1 - positions, positions)


def row_lengths(mask: torch.Tensor) -> torch.Tensor:
    """(B, C) mask of right-padded rows -> (B,) one past each row's last real item (holes count as inside)."""
    positions = torch.arange(1, mask.size(1) + 1, device=mask.device)  # (C,)
    return (mask.to(positions.dtype) * positions).amax(1)


def gather_positions(states: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """states (B, C, D), positions (B, L) -> (B, L, D)."""
    return states.gather(1, positions.unsqueeze(-1).expand(-1, -1, states.size(-1)))


# Tokens a channel (B x L) above which CPU inference runs each channel through a layer in its own call
# rather than both in one call on the stacked batch. On a 2-core CPU the stacked call is 4-16% faster for one
# text or a batch of 8 questions (about 120 tokens a channel), the two calls 8-11% faster from 64 questions
# or 16 paragraphs (about 1,000 tokens) up: there the stacked activations leave the cache (the products and
# copies of a 2BL-row batch take more than twice a BL-row one's time). Between, unmeasured.
CPU_STACKED_TOKENS_LIMIT = 512


def stacks_channels(hidden: torch.Tensor) -> bool:
    """Whether both channels (B, L, H) go through a layer as one call on the stacked batch (2B, L, H).

    Stacked, except for CPU inference past `CPU_STACKED_TOKENS_LIMIT` tokens a channel: training (its weight
    gradients would sum in another order), a GPU and an ONNX trace keep the stacked call. Both give the same
    outputs (tests compare them on every backbone family)."""
    if hidden.device.type != "cpu" or torch.is_grad_enabled() or torch.jit.is_tracing():
        return True
    return hidden.size(0) * hidden.size(1) <= CPU_STACKED_TOKENS_LIMIT


class CharEncoder(nn.Module):
    """Character embedding -> Bi-GRU over the whole character sequence -> one vector per token.

    A token's vector is [forward, backward] state at its first character concatenated with the
    same at its last character (4 x char_hidden_size), projected to hidden_size only if those differ,
    then LayerNorm + dropout when `config.char_token_norm` (our previous variant; the authors use
    the raw states).
    """

    def __init__(self, config: CharBertConfig):
        super().__init__()
        self.embeddings = nn.Embedding(config.char_vocab_size, config.char_embedding_size, padding_idx=config.char_pad_token_id)
        # Two unidirectional GRUs rather than one bidirectional (the same function, and the authors'
        # `weight_*_l0` / `_reverse` tensors map onto them): the backward one can then run on each
        # sequence reversed within its own length (exact under padding, and unpacked, so fast on CPU).
        self.forward_gru = nn.GRU(config.char_embedding_size, config.char_hidden_size, batch_first=True)
        self.backward_gru = nn.GRU(config.char_embedding_size, config.char_hidden_size, batch_first=True)
        self.padding_exact = config.char_padding == "exact"
        if config.char_token_size != config.hidden_size:
            self.projection = nn.Linear(config.char_token_size, config.hidden_size)
        else:
            self.projection = nn.Identity()
        if config.char_token_norm:
            self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            self.dropout = nn.Dropout(config.hidden_dropout_prob)
        else:
            self.LayerNorm = self.dropout = None

    def forward(self, char_input_ids, char_attention_mask, char_start_positions, char_end_positions):
        chars = self.embeddings(char_input_ids)  # (B, C, E)
        if self.padding_exact:
            reverse = reverse_within_length(row_lengths(char_attention_mask), chars.size(1))  # (B, C)
            reversed_chars = gather_positions(chars, reverse)
        else:  # the authors' plain Bi-GRU: the backward direction starts at the end of the padded row
            reversed_chars = chars.flip(1)
        if runs_directions_in_parallel(chars):  # inference: both directions at once (gru_inference.py)
            forward_states, backward_states = both_directions(self.forward_gru, chars, self.backward_gru, reversed_chars)
        else:
            forward_states, _ = self.forward_gru(chars)  # (B, C, G)
            backward_states, _ = self.backward_gru(reversed_chars)  # (B, C, G), reversed
        # back in text order
        backward_states = gather_positions(backward_states, reverse) if self.padding_exact else backward_states.flip(1)
        states = torch.cat([forward_states, backward_states], dim=-1)  # (B, C, 2G)
        first = gather_positions(states, char_start_positions)  # (B, L, 2G)
        last = gather_positions(states, char_end_positions)  # (B, L, 2G)
        tokens = self.projection(torch.cat([first, last], dim=-1))  # (B, L, H)
        if self.LayerNorm is not None:
            tokens = self.dropout(self.LayerNorm(tokens))
        return tokens


class HeterogeneousInteraction(CheckpointableModule):
    """The fusion after each layer: each channel's own linear map, a Conv1d over both, residual + LayerNorm.

    `config.fusion_bias` / `config.fusion_activation` add the maps' biases and an activation + dropout
    after the conv (our previous variant); the authors' fusion has neither. `config.fusion_norm="pre"`
    (pre-norm backbones such as ModernBERT) normalises each channel before its map and leaves the
    residual un-normalised: w + f(LN_w(w), LN_c(c)), as the backbone's own sublayers do.
    """

    def __init__(self, config: CharBertConfig):
        super().__init__()
        hidden = config.hidden_size
        self.pre_norm = config.fusion_norm == "pre"
        self.word_proj = nn.Linear(hidden, hidden, bias=config.fusion_bias)
        self.char_proj = nn.Linear(hidden, hidden, bias=config.fusion_bias)
        self.fuse = nn.Conv1d(2 * hidden, hidden, config.fusion_kernel_size, padding=config.fusion_kernel_size // 2)
        if config.fusion_activation:
            self.act = ACT2FN[config.hidden_act]
            self.dropout = nn.Dropout(config.hidden_dropout_prob)
        else:
            self.act = self.dropout = None
        self.word_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)
        self.char_norm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)

    def forward(self, word, char, token_mask=None, merged_weights=None, real=None):
        # word, char (B, L, H); token_mask (B, L, 1) or None. Padding is zeroed before the convolution
        # so that it cannot leak into the last real tokens through the kernel (None: the authors'
        # behaviour, the conv sees padded tokens). merged_weights: `self.merged_weights()`, when the caller
        # has it for this forward (the inference path; checked once per forward, not once per layer).
        # real: RealTokens of token_mask's batch, for the inference path to skip the padding's products.
        if self.pre_norm:
            word_in, char_in = self.word_norm(word), self.char_norm(char)
        else:
            word_in, char_in = word, char
        if not uses_merged_fusion(self):
            both = torch.cat([self.word_proj(word_in), self.char_proj(char_in)], dim=-1)  # (B, L, 2H)
            if token_mask is not None:
                both = both * token_mask
            fused = self.fuse(both.transpose(1, 2)).transpose(1, 2)  # (B, L, H)
        else:
            fused = fused_for_inference(self, word_in, char_in, token_mask, merged_weights, real)  # (B, L, H), same up to rounding
        if self.act is not None:
            fused = self.dropout(self.act(fused))
        if self.pre_norm:
            return word + fused, char + fused
        return self.word_norm(word + fused), self.char_norm(char + fused)

    def merged_weights(self) -> MergedFusionWeights:
        """The maps merged into the conv's taps, for the inference path (cached; fusion_inference.py)."""
        return cached_merged_weights(self)


def pytorch_default_init_(module: nn.Conv1d | nn.GRU) -> None:
    """PyTorch's own init of a Conv1d or GRU (what `reset_parameters` draws), skipping tensors
    already loaded from a checkpoint: uniform in +-1/sqrt(fan_in) for a Conv1d's weight and bias
    (kaiming_uniform with a=sqrt(5) is that bound), +-1/sqrt(hidden_size) for every GRU tensor."""
    if isinstance(module, nn.GRU):
        bound = 1.0 / math.sqrt(module.hidden_size)
        for param in module.parameters():
            init.uniform_(param, -bound, bound)
        return
    fan_in = module.weight.shape[1] * module.weight[0, 0].numel()  # in_channels / groups x kernel
    bound = 1.0 / math.sqrt(fan_in)
    init.uniform_(module.weight, -bound, bound)
    if module.bias is not None:
        init.uniform_(module.bias, -bound, bound)


# Below this |gamma| a LayerNorm output dimension counts as dead: it carries no trace of its
# normalised value (MiniLM's last layer has three such dimensions, holding ~79% of the variance
# before its norm on real text), so the identity start cannot recover it from the layer's output.
IDENTITY_MIN_SCALE = 1e-2


@torch.no_grad()
def identity_fusion_(fusion: HeterogeneousInteraction, norm_weight: torch.Tensor, norm_bias: torch.Tensor,
                     min_scale: float = IDENTITY_MIN_SCALE) -> None:
    """Set a fusion block so that the subword channel leaves it as it came in.

    A backbone layer ends in a LayerNorm, so its output is w = g * n + b with n normalised (mean 0,
    variance 1; g, b = norm_weight, norm_bias). With the word map the identity, the conv's centre
    tap diag(1/g) - I on the word half and bias -b/g, the fused signal is f = n - w, so w + f = n
    and the fusion's LayerNorm, given weight g and bias b, returns g * n + b = w exactly.

    Dead dimensions (|g| < min_scale) keep no trace of n there. Their sum is still known, since n
    has mean 0: the first dead dimension gets minus the sum of the others' n (restoring the mean and
    part of the variance), the rest 0. Exact with at most one dead dimension, close with more.

    The conv's character half and side taps start at zero (the character channel enters as training
    moves them; the character map keeps its random init so that those weights get a gradient at
    once); the character LayerNorm gets the same g and b. With one fusion block shared by all
    layers it is exact only where the layers' norms agree.
    """
    hidden = norm_weight.numel()
    weight, bias = norm_weight.detach().double(), norm_bias.detach().double()
    live = weight.abs() >= min_scale
    inverse = torch.where(live, 1.0 / torch.where(live, weight, 1.0), 0.0)  # 1/g on live dimensions, else 0
    centre = torch.diag(inverse) - torch.eye(hidden, dtype=torch.float64)  # f = n - w on live dimensions, -w on dead
    shift = -bias * inverse
    dead = (~live).nonzero().flatten()
    if len(dead):  # n_dead[0] = -(sum of live n) = -sum_i (w_i - b_i) / g_i
        centre[dead[0]] -= inverse
        shift[dead[0]] = (bias * inverse).sum()
    dtype = fusion.fuse.weight.dtype
    fusion.word_proj.weight.copy_(torch.eye(hidden, dtype=dtype))
    if fusion.word_proj.bias is not None:
        fusion.word_proj.bias.zero_()
    fusion.fuse.weight.zero_()  # (H, 2H, k): [word half | character half], taps along k
    fusion.fuse.weight[:, :hidden, fusion.fuse.kernel_size[0] // 2].copy_(centre.to(dtype))
    fusion.fuse.bias.copy_(shift.to(dtype))
    for norm in (fusion.word_norm, fusion.char_norm):
        norm.weight.copy_(norm_weight)
        norm.bias.copy_(norm_bias)


class MaskedLMHead(nn.Module):
    """dense -> act -> LayerNorm -> vocabulary projection; decoder weight given (tied) or owned.

    `size`: width of the transform and the decoder's input (default hidden_size; a tied decoder
    needs the word embeddings' width, e.g. ELECTRA's embedding_size)."""

    def __init__(self, config: CharBertConfig, vocab_size: int, owns_decoder: bool, size: int | None = None,
                 activation: str | None = None):
        super().__init__()
        size = size if size is not None else config.hidden_size
        self.dense = nn.Linear(config.hidden_size, size)
        self.act = ACT2FN[activation or config.hidden_act]
        self.LayerNorm = nn.LayerNorm(size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(size, vocab_size, bias=False) if owns_decoder else None
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden, tied_weight=None):
        hidden = self.LayerNorm(self.act(self.dense(hidden)))
        weight = self.decoder.weight if self.decoder is not None else tied_weight
        return F.linear(hidden, weight, self.bias)

    @torch.no_grad()
    def resize_bias(self, vocab_size: int) -> None:
        """One bias entry per word of a resized vocabulary: kept words keep theirs, new words start at 0."""
        bias = self.bias.new_zeros(vocab_size)
        keep = min(vocab_size, self.bias.numel())
        bias[:keep] = self.bias[:keep]
        self.bias = nn.Parameter(bias)


# ---- pretrained-model base -------------------------------------------------------------


class CharBertPreTrainedModel(PreTrainedModel):
    config_class = CharBertConfig
    base_model_prefix = "charbert"
    # The heads build CharBertModel without its pooler: a checkpoint's pooler (CharBertModel's, or
    # one converted from the authors') is not theirs to load, as in transformers' BERT heads.
    _keys_to_ignore_on_load_unexpected = [r"pooler"]
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        # The authors' _init_weights draws Linear and Embedding weights only: their fusion Conv1d and
        # GRU keep PyTorch's own init, and the character embedding's padding row is drawn too.
        reference = getattr(self.config, "new_module_init", "normal") == "reference"
        if reference and isinstance(module, (nn.Conv1d, nn.GRU)):
            pytorch_default_init_(module)
        elif isinstance(module, (nn.Linear, nn.Conv1d)):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
            padding = module.padding_idx is not None and not reference
            if padding and not getattr(module.weight, "_is_hf_initialized", False):
                init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            if module.bias is not None:  # ModernBERT's norms have none
                init.zeros_(module.bias)
        elif isinstance(module, nn.GRU):
            for name, param in module.named_parameters():
                if getattr(param, "_is_hf_initialized", False):
                    continue  # loaded from a checkpoint (the per-gate views below would lose this flag)
                for gate in param.chunk(3, 0):  # reset, update, new: each block initialised on its own
                    if name.startswith("weight_ih"):
                        init.xavier_uniform_(gate)
                    elif name.startswith("weight_hh"):
                        init.orthogonal_(gate)
                    else:
                        init.zeros_(gate)
        elif isinstance(module, MaskedLMHead):
            init.zeros_(module.bias)
        # The backbone embeddings' index buffers must be rebuilt when the model is created on the
        # meta device (transformers 5.x); 4.x builds them in place and has no init.copy_.
        if not hasattr(init, "copy_"):
            return
        backbones.get_adapter(self.config.backbone_type).init_buffers(module)
        if hasattr(module, "position_ids") and isinstance(module.position_ids, torch.Tensor):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
        if hasattr(module, "token_type_ids") and isinstance(module.token_type_ids, torch.Tensor):
            init.zeros_(module.token_type_ids)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Load a CharBERT checkpoint, or build CharBERT on a plain backbone checkpoint: a folder or
        a hub name (`checkpoint.resolve_checkpoint`: the hub cache when offline, `revision` passed through).

        With a plain checkpoint every backbone weight is copied (and a *ForMaskedLM head, when the
        checkpoint has one), the character modules and fusion are new; `model.loading_info` lists
        what was loaded and what was initialised (see `checkpoint.build_on_backbone`). Extra keyword
        arguments set CharBertConfig fields (char_vocab_size, word_vocab_size, num_labels, ...).
        """
        if pretrained_model_name_or_path is None:  # transformers' form: the weights are in `state_dict`, with `config`
            return super().from_pretrained(None, *model_args, **kwargs)
        path = checkpoint.resolve_checkpoint(pretrained_model_name_or_path, **checkpoint.hub_kwargs(kwargs))
        path = path / (kwargs.get("subfolder") or "")  # e.g. a route of a sentence-transformers Router
        if checkpoint.read_model_type(path) == CharBertConfig.model_type:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        kwargs.pop("subfolder", None)
        return checkpoint.build_on_backbone(cls, path, **kwargs)

    def resize_token_embeddings(self, *args, **kwargs):
        """transformers' resize of the word embeddings, and of the tied MLM head's bias with them."""
        embeddings = super().resize_token_embeddings(*args, **kwargs)
        head = getattr(self, "mlm_head", None)
        if head is not None and head.bias.numel() != embeddings.weight.shape[0]:
            head.resize_bias(embeddings.weight.shape[0])
        return embeddings

    @classmethod
    def from_backbone(cls, path: str | os.PathLike, **config_kwargs):
        """A new CharBERT whose backbone (embeddings, layers, pooler) is the plain checkpoint at `path`."""
        return checkpoint.build_on_backbone(cls, path, **config_kwargs)


# ---- outputs as transformers returns them ------------------------------------------------


@contextmanager
def recorded_attentions(modules: list[nn.Module], enabled: bool):
    """While the block runs, collect each attention module's weights (the second item of its output), in
    call order; yields that list (None when not `enabled`: no hook is installed)."""
    if not enabled:
        yield None
        return
    weights = []
    hooks = [module.register_forward_hook(lambda _module, _args, out: weights.append(out[1])) for module in modules]
    try:
        yield weights
    finally:
        for hook in hooks:
            hook.remove()


def split_channels(weights: list[torch.Tensor | None] | None):
    """Attention weights recorded layer by layer, subword channel then character channel, each (B, heads, L, L)
    -> (subword channel's, character channel's), a tuple per layer each; (None, None) when none were recorded
    (not asked for, or SDPA attention, which computes no weights)."""
    if not weights or any(w is None for w in weights):
        return None, None
    return tuple(weights[0::2]), tuple(weights[1::2])


def token_mask_of(input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> torch.Tensor:
    """An all-ones (B, L) mask for the given input_ids (B, L) or inputs_embeds (B, L, H)."""
    if input_ids is not None:
        return torch.ones_like(input_ids)
    return torch.ones(inputs_embeds.shape[:-1], dtype=torch.long, device=inputs_embeds.device)


def returned(config, return_dict: bool | None, output: ModelOutput):
    """`output`, or `output.to_tuple()` (its fields that are not None, in order) when `return_dict` is False or
    the config's `return_dict` is, as transformers' models return."""
    if return_dict is None:
        return_dict = getattr(config, "return_dict", True)
    return output if return_dict else output.to_tuple()


# ---- the model -------------------------------------------------------------------------


class CharBertModel(CharBertPreTrainedModel):
    """The dual-channel encoder. Inputs: the backbone's (input_ids, attention_mask, token_type_ids)
    plus the character channel's (char_input_ids, char_attention_mask, char_start_positions,
    char_end_positions), as `CharBertTokenizer` returns them."""

    def __init__(self, config: CharBertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        # The backbone's own modules under the plain model's names (embeddings, encoder, pooler, ...).
        for name, module in self.backbone_adapter.build_modules(config, add_pooling_layer).items():
            setattr(self, name, module)
        self.char_embeddings = CharEncoder(config)
        n_fusion = 1 if config.share_fusion else config.num_hidden_layers
        self.fusion = nn.ModuleList([HeterogeneousInteraction(config) for _ in range(n_fusion)])
        self.gradient_checkpointing = False
        # Per instance, not per class: accelerate's FSDP auto-wrap raises for a listed class the
        # model lacks, so the list names this backbone's layer only (heads collect it in post_init).
        self._no_split_modules = [self.backbone_adapter.no_split_module(self), "HeterogeneousInteraction", "CharEncoder"]
        self.post_init()

    @property
    def backbone_adapter(self) -> backbones.BackboneAdapter:
        """What this backbone family does its own way (backbones.py)."""
        return backbones.get_adapter(self.config.backbone_type)

    def get_input_embeddings(self):
        return self.get_submodule(self.backbone_adapter.word_embeddings_path)

    def set_input_embeddings(self, value):
        owner, _, name = self.backbone_adapter.word_embeddings_path.rpartition(".")
        setattr(self.get_submodule(owner), name, value)

    def layer_output_norms(self) -> list[nn.LayerNorm]:
        """The LayerNorm each backbone layer ends with (BERT-like layers: `layer.output.LayerNorm`)."""
        return self.backbone_adapter.output_norms(self)

    @torch.no_grad()
    def init_identity_fusion(self) -> None:
        """The "identity" start (`identity_fusion_`): each fusion block passes the subword channel
        through unchanged, using the LayerNorm of the layer it follows. A fusion block shared by all
        layers gets the mean of their norms' weights and biases (exact only where they agree).
        A pre-norm fusion (`fusion_norm="pre"`) adds its output to the stream: a zero convolution is
        the identity (its weights get a gradient at once; the maps follow as it moves)."""
        if self.config.fusion_norm == "pre":
            for fusion in self.fusion:
                fusion.fuse.weight.zero_()
                fusion.fuse.bias.zero_()
            return
        norms = self.layer_output_norms()
        if self.config.share_fusion:
            weight = torch.stack([n.weight for n in norms]).mean(0)
            bias = torch.stack([n.bias for n in norms]).mean(0)
            identity_fusion_(self.fusion[0], weight, bias)
            return
        for fusion, norm in zip(self.fusion, norms):
            identity_fusion_(fusion, norm.weight, norm.bias)

    def backbone_state_names(self) -> list[str]:
        """State-dict keys that come from the plain backbone (embeddings, encoder, pooler, ...)."""
        names = self.backbone_adapter.module_names
        return [k for k in self.state_dict() if k.split(".", 1)[0] in names]

    def _check_inputs(self, input_ids, char_input_ids, char_start_positions, char_end_positions, inputs_embeds=None):
        if char_input_ids is None or char_start_positions is None or char_end_positions is None:
            raise ValueError(
                f"CharBertModel needs the character inputs {CHAR_INPUT_NAMES}: encode text with CharBertTokenizer."
            )
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds (the subword channel's word embeddings).")
        if input_ids is None:
            input_ids = token_mask_of(None, inputs_embeds)  # (B, L): the shape is what is checked below
        seq_len, limit = input_ids.size(1), self.config.max_sequence_length
        if seq_len > limit:
            raise ValueError(
                f"Sequence of {seq_len} tokens is longer than this model allows ({limit}, from "
                f"max_position_embeddings={self.config.max_position_embeddings}): tokenise with truncation=True, max_length={limit}."
            )
        if char_start_positions.shape != input_ids.shape or char_end_positions.shape != input_ids.shape:
            raise ValueError(
                f"char_start_positions {tuple(char_start_positions.shape)} and char_end_positions "
                f"{tuple(char_end_positions.shape)} must have the shape of input_ids {tuple(input_ids.shape)}."
            )
        # Value checks read the tensors: only where that costs no device synchronisation (and not
        # under torch.compile, where reading a value breaks the graph).
        if char_input_ids.device.type == "cpu" and char_input_ids.numel() and not torch.compiler.is_compiling():
            top = int(char_input_ids.max())
            if top >= self.config.char_vocab_size:
                raise ValueError(
                    f"Character id {top} is outside the model's character vocabulary (char_vocab_size="
                    f"{self.config.char_vocab_size}): the tokenizer's char_vocab.json does not match this model."
                )
            if int(torch.maximum(char_start_positions.max(), char_end_positions.max())) >= char_input_ids.size(1):
                raise ValueError("Character positions point past the end of char_input_ids: inputs were padded inconsistently.")

    def _layer_inputs(self, attention_mask, hidden, position_ids=None):
        """What every backbone layer call needs besides the hidden states (the layers' own mask format
        for the attention implementation in use, relative positions, rotary tables...): built once."""
        return self.backbone_adapter.layer_inputs(self, attention_mask, hidden, position_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        char_input_ids: torch.Tensor | None = None,
        char_attention_mask: torch.Tensor | None = None,
        char_start_positions: torch.Tensor | None = None,
        char_end_positions: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CharBertModelOutput:
        self._check_inputs(input_ids, char_input_ids, char_start_positions, char_end_positions, inputs_embeds)
        if output_hidden_states is None:
            output_hidden_states = getattr(self.config, "output_hidden_states", False)
        if output_attentions is None:
            output_attentions = getattr(self.config, "output_attentions", False)
        if attention_mask is None:
            attention_mask = token_mask_of(input_ids, inputs_embeds)
        if char_attention_mask is None:
            char_attention_mask = (char_input_ids != self.config.char_pad_token_id).long()

        adapter = self.backbone_adapter
        word = adapter.embed(self, input_ids, token_type_ids, position_ids, attention_mask, inputs_embeds)  # (B, L, H)
        char = self.char_embeddings(char_input_ids, char_attention_mask, char_start_positions, char_end_positions)  # (B, L, H)
        # Both channels go through each layer as one call on the stacked batch (2B, L, H): the
        # layer's weights are shared and one large matrix product is faster than two small ones.
        # Each channel gets its own call instead (the same function) when asked for attentions, so that
        # each channel's attention weights are tensors of its own graph (gradients reach them), and for a
        # large batch on the CPU, where the stacked activations outgrow the cache (`stacks_channels`).
        stacked = not output_attentions and stacks_channels(word)
        if not stacked:
            layer_inputs = self._layer_inputs(attention_mask, word, position_ids)
        else:
            if position_ids is not None and position_ids.size(0) > 1:
                position_ids = position_ids.repeat(2, 1)  # (2B, L)
            layer_inputs = self._layer_inputs(attention_mask.repeat(2, 1), torch.cat([word, char], 0), position_ids)
        # The fusion conv skips padded tokens, unless the authors' behaviour (it sees them) is asked for.
        token_mask = attention_mask.unsqueeze(-1).to(word.dtype) if self.config.char_padding == "exact" else None  # (B, L, 1)

        merged, real = self._fusion_inference_inputs(attention_mask, token_mask)  # None, None when training

        all_word = (word,) if output_hidden_states else None
        all_char = (char,) if output_hidden_states else None
        layers = adapter.layers(self)
        layer_step = self._layer if stacked else partial(self._layer_per_channel, output_attentions=output_attentions)
        with recorded_attentions([adapter.attention_module(layer) for layer in layers], output_attentions) as weights:
            for i, layer in enumerate(layers):
                k = 0 if self.config.share_fusion else i
                word, char = layer_step(layer, self.fusion[k], word, char, layer_inputs, token_mask, merged[k], real)
                if output_hidden_states:
                    all_word, all_char = all_word + (word,), all_char + (char,)
        word, char = adapter.finish(self, word), adapter.finish(self, char)  # (B, L, H) each
        word_attentions, char_attentions = split_channels(weights)  # per layer (B, heads, L, L) each

        pooled = self.pooler(word) if self.pooler is not None else None  # (B, H)
        return returned(self.config, return_dict, CharBertModelOutput(
            last_hidden_state=word,
            char_last_hidden_state=char,
            pooler_output=pooled,
            hidden_states=all_word,
            char_hidden_states=all_char,
            attentions=word_attentions,
            char_attentions=char_attentions,
        ))

    def both_channels(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        char_input_ids: torch.Tensor | None = None,
        char_attention_mask: torch.Tensor | None = None,
        char_start_positions: torch.Tensor | None = None,
        char_end_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, L, 2H): both channels after the last layer, concatenated, as the task heads read them.
        A sentence-embedding model (charbert.embedding) pools this; its inputs are named so that a
        caller passing a whole feature dict (sentence-transformers' Transformer module) gives only these."""
        return _both_channels(self(
            input_ids, attention_mask, token_type_ids, position_ids,
            char_input_ids, char_attention_mask, char_start_positions, char_end_positions,
        ))

    def _fusion_inference_inputs(self, attention_mask, token_mask):
        """For the fusion's inference path (fusion_inference.py): each block's merged weights, checked against
        its live weights once a forward (None where gradients are taken), and, on a padded batch, where the
        real tokens are, so that its products skip the padding (None otherwise)."""
        merged = [f.merged_weights() if uses_merged_fusion(f) else None for f in self.fusion]
        packed = token_mask is not None and any(m is not None for m in merged) and packs_real_tokens(attention_mask)
        real = real_tokens(attention_mask, self.config.fusion_kernel_size // 2) if packed else None
        return merged, real

    def _layer(self, layer, fusion, word, char, layer_inputs, token_mask, merged_weights=None, real=None):
        """One backbone layer on both channels, then the heterogeneous interaction."""
        adapter = self.backbone_adapter

        def block(word, char):
            out = adapter.call_layer(layer, torch.cat([word, char], 0), layer_inputs)  # (2B, L, H)
            # The same two views as out.split(B, 0), but a traced ONNX export keeps the batch dynamic
            # (split(B) bakes the traced batch size into the graph's Split node).
            word, char = out.chunk(2, 0)
            return fusion(word, char, token_mask, merged_weights, real)

        # transformers >= 4.52 layers checkpoint themselves; older ones need the loop to do it.
        if self.gradient_checkpointing and self.training and GradientCheckpointingLayer is None:
            return self._gradient_checkpointing_func(block, word, char)
        return block(word, char)

    def _layer_per_channel(self, layer, fusion, word, char, layer_inputs, token_mask, merged_weights=None, real=None,
                           output_attentions=False):
        """`_layer` with one layer call per channel (`layer_inputs` are built for B rows, not 2B), each asked
        for its attention weights when `output_attentions`."""
        adapter = self.backbone_adapter

        def block(word, char):
            word = adapter.call_layer(layer, word, layer_inputs, output_attentions=output_attentions)  # (B, L, H)
            char = adapter.call_layer(layer, char, layer_inputs, output_attentions=output_attentions)  # (B, L, H)
            return fusion(word, char, token_mask, merged_weights, real)

        if self.gradient_checkpointing and self.training and GradientCheckpointingLayer is None:
            return self._gradient_checkpointing_func(block, word, char)
        return block(word, char)


# ---- heads -----------------------------------------------------------------------------


@dataclass
class CharBertMaskedLMOutput(MaskedLMOutput):
    """transformers' output plus the character channel's per-layer states and attentions (when asked for)."""

    char_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    char_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class CharBertSequenceClassifierOutput(SequenceClassifierOutput):
    """transformers' output plus the character channel's per-layer states and attentions (when asked for)."""

    char_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    char_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class CharBertTokenClassifierOutput(TokenClassifierOutput):
    """transformers' output plus the character channel's per-layer states and attentions (when asked for)."""

    char_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    char_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class CharBertQuestionAnsweringOutput(QuestionAnsweringModelOutput):
    """transformers' output plus the character channel's per-layer states and attentions (when asked for)."""

    char_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    char_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class CharBertMultipleChoiceOutput(MultipleChoiceModelOutput):
    """transformers' output plus the character channel's per-layer states and attentions (when asked for)."""

    char_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    char_attentions: tuple[torch.FloatTensor, ...] | None = None


def _masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens: states (B, L, D), mask (B, L) -> (B, D). Padding never counts."""
    mask = mask.unsqueeze(-1).to(states.dtype)
    return (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def _sequence_mean(config: CharBertConfig, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L, D) -> (B, D): mean over real tokens, or over every position as the authors' heads do
    (char_padding="reference")."""
    return _masked_mean(states, attention_mask) if config.char_padding == "exact" else states.mean(1)


def _labelled_cross_entropy(logits_fn, states: torch.Tensor, labels: torch.Tensor):
    """Score only the positions that carry a label (gather first), then mean cross-entropy.

    Returns (loss, logits at the labelled positions (N, V)). With no labelled position the loss
    is 0 (connected to the graph), never NaN.
    """
    selected = labels != -100
    logits = logits_fn(states[selected])  # (N, V)
    total = F.cross_entropy(logits.float(), labels[selected], reduction="sum")
    return total / selected.sum().clamp(min=1), logits


def _tied_mlm_head(config: CharBertConfig) -> MaskedLMHead:
    """The MLM head on the subword channel, its decoder tied to the word embeddings (of the backbone's width)."""
    adapter = backbones.get_adapter(config.backbone_type)
    return MaskedLMHead(config, config.vocab_size, owns_decoder=False, size=adapter.mlm_head_size(config),
                        activation=adapter.mlm_head_activation(config))


def _classifier_dropout(config) -> float:
    """The head's dropout: classifier_dropout when set, else the backbone's hidden dropout."""
    value = getattr(config, "classifier_dropout", None)
    return value if value is not None else config.hidden_dropout_prob


def _channel_extras(outputs: CharBertModelOutput) -> dict:
    """What a head's output passes on from the encoder's: each channel's per-layer states and attentions."""
    return dict(hidden_states=outputs.hidden_states, char_hidden_states=outputs.char_hidden_states,
                attentions=outputs.attentions, char_attentions=outputs.char_attentions)


def _both_channels(outputs: CharBertModelOutput) -> torch.Tensor:
    return torch.cat([outputs.last_hidden_state, outputs.char_last_hidden_state], dim=-1)  # (B, L, 2H)


class CharBertForPreTraining(CharBertPreTrainedModel):
    """MLM on the subword channel (decoder tied to the word embeddings) + NLM on the character channel
    (over the word vocabulary). Each head computes logits only at its labelled positions."""

    def __init__(self, config: CharBertConfig):
        super().__init__(config)
        self.charbert = CharBertModel(config, add_pooling_layer=False)
        self.mlm_head = _tied_mlm_head(config)
        self.nlm_head = MaskedLMHead(config, config.word_vocab_size, owns_decoder=True)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        char_input_ids: torch.Tensor | None = None,
        char_attention_mask: torch.Tensor | None = None,
        char_start_positions: torch.Tensor | None = None,
        char_end_positions: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        nlm_labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CharBertForPreTrainingOutput:
        r"""labels (B, L): subword ids at MLM positions, -100 elsewhere.
        nlm_labels (B, L): word-vocabulary ids of the original words at noised positions, -100 elsewhere."""
        outputs = self.charbert(
            input_ids, attention_mask, token_type_ids, position_ids,
            char_input_ids, char_attention_mask, char_start_positions, char_end_positions,
            inputs_embeds=inputs_embeds, output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            return_dict=True, **kwargs,
        )
        tied = self.charbert.get_input_embeddings().weight

        def mlm(h):
            return self.mlm_head(h, tied)

        word, char = outputs.last_hidden_state, outputs.char_last_hidden_state
        mlm_loss = nlm_loss = None
        if labels is not None:
            mlm_loss, mlm_logits = _labelled_cross_entropy(mlm, word, labels)
        else:
            mlm_logits = mlm(word)
        if nlm_labels is not None:
            nlm_loss, nlm_logits = _labelled_cross_entropy(self.nlm_head, char, nlm_labels)
        else:
            nlm_logits = self.nlm_head(char)
        losses = [x for x in (mlm_loss, nlm_loss) if x is not None]
        return returned(self.config, return_dict, CharBertForPreTrainingOutput(
            loss=sum(losses) if losses else None,
            mlm_loss=mlm_loss,
            nlm_loss=nlm_loss,
            mlm_logits=mlm_logits,
            nlm_logits=nlm_logits,
            **_channel_extras(outputs),
        ))


class CharBertForMaskedLM(CharBertPreTrainedModel):
    """The MLM head of CharBertForPreTraining alone (decoder tied to the word embeddings): what
    `pipeline("fill-mask")` and `AutoModelForMaskedLM` load. A CharBertForPreTraining checkpoint
    loads into it with its NLM head left out."""

    _keys_to_ignore_on_load_unexpected = [r"pooler", r"nlm_head\."]

    def __init__(self, config: CharBertConfig):
        super().__init__(config)
        self.charbert = CharBertModel(config, add_pooling_layer=False)
        self.mlm_head = _tied_mlm_head(config)  # same names as CharBertForPreTraining
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        char_input_ids: torch.Tensor | None = None,
        char_attention_mask: torch.Tensor | None = None,
        char_start_positions: torch.Tensor | None = None,
        char_end_positions: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MaskedLMOutput:
        r"""labels (B, L): subword ids at MLM positions, -100 elsewhere. logits: (B, L, V) at every position."""
        outputs = self.charbert(
            input_ids, attention_mask, token_type_ids, position_ids,
            char_input_ids, char_attention_mask, char_start_positions, char_end_positions,
            inputs_embeds=inputs_embeds, output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            return_dict=True, **kwargs,
        )
        tied = self.charbert.get_input_embeddings().weight
        logits = self.mlm_head(outputs.last_hidden_state, tied)  # (B, L, V)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), labels.view(-1), ignore_index=-100)
        return returned(self.config, return_dict, CharBertMaskedLMOutput(loss=loss, logits=logits, **_channel_extras(outputs)))


class CharBertForSequenceClassification(CharBertPreTrainedModel):
    """Both channels concatenated and mean-pooled over real tokens -> linear. Regression when num_labels == 1."""

    def __init__(self, config: CharBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.charbert = CharBertModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(_classifier_dropout(config))
        self.classifier = nn.Linear(2 * config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        char_input_ids: torch.Tensor | None = None,
        char_attention_mask: torch.Tensor | None = None,
        char_start_positions: torch.Tensor | None = None,
        char_end_positions: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CharBertSequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = token_mask_of(input_ids, inputs_embeds)
        outputs = self.charbert(
            input_ids, attention_mask, token_type_ids, position_ids,
            char_input_ids, char_attention_mask, char_start_positions, char_end_positions,
            inputs_embeds=inputs_embeds, output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            return_dict=True, **kwargs,
        )
        pooled = _sequence_mean(self.config, _both_channels(outputs), attention_mask)  # (B, 2H)
        logits = self.classifier(self.dropout(pooled))  # (B, num_labels)
        loss = None
        if labels is not None:
            loss = sequence_classification_loss(self.config, logits, labels)
        return returned(self.config, return_dict, CharBertSequenceClassifierOutput(
            loss=loss, logits=logits, **_channel_extras(outputs)))


def sequence_classification_loss(config, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The transformers convention: regression (MSE) for one label, multi-label BCE on float
    multi-hot labels, cross-entropy otherwise."""
    if config.problem_type is None:
        if config.num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        return F.mse_loss(logits.squeeze(-1).float(), labels.float())
    if config.problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
    return F.cross_entropy(logits.float().view(-1, config.num_labels), labels.view(-1))


class CharBertForTokenClassification(CharBertPreTrainedModel):
    """Both channels concatenated -> linear per token; the loss reads labelled positions only."""

    def __init__(self, config: CharBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.charbert = CharBertModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(_classifier_dropout(config))
        self.classifier = nn.Linear(2 * config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        char_input_ids: torch.Tensor | None = None,
        char_attention_mask: torch.Tensor | None = None,
        char_start_positions: torch.Tensor | None = None,
        char_end_positions: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CharBertTokenClassifierOutput:
        outputs = self.charbert(
            input_ids, attention_mask, token_type_ids, position_ids,
            char_input_ids, char_attention_mask, char_start_positions, char_end_positions,
            inputs_embeds=inputs_embeds, output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            return_dict=True, **kwargs,
        )
        logits = self.classifier(self.dropout(_both_channels(outputs)))  # (B, L, num_labels)
        loss = None
        if labels is not None:
            loss, _ = _labelled_cross_entropy(lambda scores: scores, logits, labels)
        return returned(self.config, return_dict, CharBertTokenClassifierOutput(
            loss=loss, logits=logits, **_channel_extras(outputs)))


class CharBertForQuestionAnswering(CharBertPreTrainedModel):
    """Both channels concatenated -> start/end logits."""

    def __init__(self, config: CharBertConfig):
        super().__init__(config)
        self.charbert = CharBertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(2 * config.hidden_size, 2)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        char_input_ids: torch.Tensor | None = None,
        char_attention_mask: torch.Tensor | None = None,
        char_start_positions: torch.Tensor | None = None,
        char_end_positions: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CharBertQuestionAnsweringOutput:
        outputs = self.charbert(
            input_ids, attention_mask, token_type_ids, position_ids,
            char_input_ids, char_attention_mask, char_start_positions, char_end_positions,
            inputs_embeds=inputs_embeds, output_attentions=output_attentions, output_hidden_states=output_hidden_states,
            return_dict=True, **kwargs,
        )
        logits = self.qa_outputs(_both_channels(outputs))  # (B, L, 2)
        start_logits, end_logits = (x.squeeze(-1).contiguous() for x in logits.split(1, dim=-1))  # (B, L) each
        loss = None
        if start_positions is not None and end_positions is not None:
            # Positions outside the sequence (answer truncated away) are ignored, as in transformers.
            ignored = start_logits.size(1)
            start_positions = start_positions.clamp(0, ignored)
            end_positions = end_positions.clamp(0, ignored)
            loss = (
                F.cross_entropy(start_logits.float(), start_positions, ignore_index=ignored)
                + F.cross_entropy(end_logits.float(), end_positions, ignore_index=ignored)
            ) / 2
        return returned(self.config, return_dict, CharBertQuestionAnsweringOutput(
            loss=loss, start_logits=start_logits, end_logits=end_logits, **_channel_extras(outputs)))


class CharBertForMultipleChoice(CharBertPreTrainedModel):
    """Each (B, K, ...) choice encoded as a sequence; both channels mean-pooled -> one score per choice."""

    def __init__(self, config: CharBertConfig):
        super().__init__(config)
        self.charbert = CharBertModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(_classifier_dropout(config))
        self.classifier = nn.Linear(2 * config.hidden_size, 1)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        char_input_ids: torch.Tensor | None = None,
        char_attention_mask: torch.Tensor | None = None,
        char_start_positions: torch.Tensor | None = None,
        char_end_positions: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CharBertMultipleChoiceOutput:
        choices = (input_ids if input_ids is not None else inputs_embeds).shape[1]

        def flat(x):  # (B, K, n) -> (B*K, n)
            return x.reshape(-1, x.size(-1)) if x is not None else None

        if attention_mask is None:
            attention_mask = token_mask_of(input_ids, inputs_embeds)
        outputs = self.charbert(
            flat(input_ids), flat(attention_mask), flat(token_type_ids), flat(position_ids),
            flat(char_input_ids), flat(char_attention_mask), flat(char_start_positions), flat(char_end_positions),
            inputs_embeds=inputs_embeds.flatten(0, 1) if inputs_embeds is not None else None,  # (B*K, L, H)
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True, **kwargs,
        )
        pooled = _sequence_mean(self.config, _both_channels(outputs), flat(attention_mask))  # (B*K, 2H)
        logits = self.classifier(self.dropout(pooled)).view(-1, choices)  # (B, K)
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return returned(self.config, return_dict, CharBertMultipleChoiceOutput(
            loss=loss, logits=logits, **_channel_extras(outputs)))
