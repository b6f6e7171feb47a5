"""Backbone adapters: everything CharBERT needs to know about one encoder family, in one class.

`CharBertModel` (modeling.py) holds the dual-channel encoder and is written once for every family;
what differs between families is asked of the family's adapter, looked up by the config's
`backbone_type` (= the plain checkpoint's `model_type`):

    adapter = get_adapter(config.backbone_type)
    adapter.build_modules(config, add_pooling_layer)  {name: module}: the backbone's own embeddings, layers,
                                                      pooler..., registered under the plain model's names so
                                                      that a plain checkpoint's weights load under the same keys
    adapter.complete_config(config)                   fields the family's modules read under other names
    adapter.embed(model, input_ids, token_type_ids, position_ids, attention_mask, inputs_embeds)   (B, L, H): the
                                                      subword channel (from its ids, or from given word embeddings)
    adapter.layers(model)                             the encoder layers, in order
    adapter.layer_inputs(model, attention_mask, hidden, position_ids)   what every layer call needs besides the
                                                      hidden states (mask in the layers' format, relative
                                                      positions, rotary tables...), built once per forward
    adapter.call_layer(layer, hidden, inputs, output_attentions)   one layer on the stacked channels (2B, L, H) -> (2B, L, H)
    adapter.attention_module(layer)                   the layer's self-attention: its output's second item is the
                                                      attention weights (B, heads, L, L) when they are computed
    adapter.finish(model, hidden)                     after the last layer (a pre-norm family's final norm)
    adapter.output_norms(model)                       the LayerNorm each layer's output ends in (the identity start)
    adapter.init_buffers(module)                      rebuild a family module's non-persistent buffers
    adapter.no_split_module(model)                    the layer class's name: accelerate's FSDP unit
    adapter.max_sequence_length(config)               longest sequence the position embeddings allow
    adapter.mlm_head_size(config)                     width of the MLM head's transform (tied decoder's width)
    adapter.mlm_head_activation(config)               its activation

and the class attributes `config_class`, `module_names` (state-dict prefixes that come from the
plain checkpoint), `word_embeddings_path` (the word embedding's submodule path), `mlm_head_keys` (where a plain *ForMaskedLM checkpoint keeps its MLM head ->
our names), `tokenizer_kind` and `word_start` (how the family's usual tokenizer marks words),
`fusion_norm` (where the fusion normalises: "post" for post-norm layers, "pre" for pre-norm ones).

The base class implements the post-norm BERT layout (absolute positions, one extended additive
mask, each layer ending in `layer.output.LayerNorm`); a family overrides what differs. Adding a
family is one subclass registered with `@register` and its tests.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    BertConfig,
    CamembertConfig,
    DebertaV2Config,
    ElectraConfig,
    ModernBertConfig,
    PretrainedConfig,
    RobertaConfig,
    XLMRobertaConfig,
)
from transformers.models.bert import modeling_bert
from transformers.models.camembert import modeling_camembert
from transformers.models.deberta_v2 import modeling_deberta_v2
from transformers.models.electra import modeling_electra
from transformers.models.modernbert import modeling_modernbert
from transformers.models.roberta import modeling_roberta
from transformers.models.xlm_roberta import modeling_xlm_roberta

from .compat import create_bidirectional_mask, create_bidirectional_sliding_window_mask, init, layer_output

# Tokenizer kinds and how each marks words (what the character channel and the NLM's whole words rely
# on: CharBertTokenizer reads word boundaries from the fast tokenizer's offsets, whatever the kind;
# only the authors' reference layout strips the WordPiece prefix).
WORDPIECE = "WordPiece"
BYTE_LEVEL_BPE = "byte-level BPE"
SENTENCEPIECE = "SentencePiece"


class BackboneAdapter:
    """One encoder family as CharBERT uses it (see the module docstring). Stateless: one instance per family."""

    backbone_type: str = ""
    config_class: type[PretrainedConfig] = PretrainedConfig
    # transformers' module classes: embeddings, encoder (holding `.layer`), pooler (None: the family has none)
    embeddings_class: type[nn.Module] | None = None
    encoder_class: type[nn.Module] | None = None
    pooler_class: type[nn.Module] | None = None
    # Top-level names of the plain base model's modules (state-dict prefixes loaded from a checkpoint).
    module_names: tuple[str, ...] = ("embeddings", "encoder", "pooler")
    # Where the word embedding (the tied MLM decoder's weight) sits, as a submodule path.
    word_embeddings_path: str = "embeddings.word_embeddings"
    # A plain *ForMaskedLM checkpoint's MLM head -> our names (loaded when present).
    mlm_head_keys: dict[str, str] = {}
    tokenizer_kind: str = WORDPIECE
    # How the family's tokenizer marks words: "##" before a word-internal piece (WordPiece), "Ġ" / "▁" at
    # a word's first piece (byte-level BPE / SentencePiece).
    word_start: str = "##"
    # Whether position ids start after padding_idx (fairseq's convention, pad_token_id + 1 positions reserved).
    padding_offset_positions: bool = False
    # Whether `pretrain --objective advbert/mlm` trains this family's plain *ForMaskedLM.
    plain_masked_lm: bool = True
    # Where the fusion normalises (CharBertConfig.fusion_norm's default): "post" after the residual, as the
    # authors' fusion does after BERT's post-norm layers; "pre" on the fusion's inputs, residual only, for
    # pre-norm layers whose outputs are the un-normalised residual stream.
    fusion_norm: str = "post"
    # CharBERT's own modules read BERT's field names (hidden_act, layer_norm_eps, hidden_dropout_prob); a
    # family that names them otherwise maps ours -> its own here.
    field_aliases: dict[str, str] = {}

    # ---- config ------------------------------------------------------------------------

    def complete_config(self, config) -> None:
        """Give the flat config every field CharBERT's modules and the family's own modules read."""
        for ours, theirs in self.field_aliases.items():
            if getattr(config, ours, None) is None:
                setattr(config, ours, getattr(config, theirs))

    # ---- building ----------------------------------------------------------------------

    def build_modules(self, config, add_pooling_layer: bool = True) -> dict[str, nn.Module | None]:
        """The backbone's modules in registration order (the order fixes how random init draws)."""
        pooler = self.pooler_class(config) if add_pooling_layer and self.pooler_class is not None else None
        return {"embeddings": self.embeddings_class(config), "encoder": self.encoder_class(config), "pooler": pooler}

    # ---- forward -----------------------------------------------------------------------

    def embed(self, model, input_ids, token_type_ids=None, position_ids=None, attention_mask=None, inputs_embeds=None):
        """(B, L) ids, or their word embeddings (B, L, E) -> (B, L, H) the subword channel entering the first layer."""
        return model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids,
                                inputs_embeds=inputs_embeds)

    def layers(self, model) -> nn.ModuleList:
        return model.encoder.layer

    def layer_inputs(self, model, attention_mask, hidden, position_ids=None):
        """What each layer call needs besides the hidden states, built once per forward; here the layers'
        own mask format for the attention implementation in use. `attention_mask` (N, L) of 1/0, `hidden`
        (N, L, H) and `position_ids` (N or 1, L; None: 0..L-1) are the stacked channels'."""
        if create_bidirectional_mask is not None:
            return create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=attention_mask)
        return model.get_extended_attention_mask(attention_mask, hidden.shape[:2])

    def call_layer(self, layer, hidden, inputs, output_attentions=False):
        """One layer on the stacked channels: (N, L, H) -> (N, L, H). `output_attentions`: ask the layer's
        attention for its weights (eager attention returns them; SDPA computes none and transformers warns)."""
        if output_attentions:
            return layer_output(layer(hidden, inputs, output_attentions=True))
        return layer_output(layer(hidden, inputs))

    def attention_module(self, layer) -> nn.Module:
        """The layer's self-attention, whose output is (context, attention weights or None)."""
        return layer.attention.self

    def finish(self, model, hidden):
        """A channel after the last layer and its fusion (post-norm layers: nothing left to do)."""
        return hidden

    def output_norms(self, model) -> list[nn.LayerNorm]:
        """The LayerNorm each layer's output ends in (post-norm layers: `layer.output.LayerNorm`)."""
        return [layer.output.LayerNorm for layer in self.layers(model)]

    def init_buffers(self, module) -> None:
        """Rebuild the non-persistent buffers of one of the family's modules (a model created on the meta
        device, transformers 5.x); the position/token-type index buffers are handled by the model."""

    # ---- facts -------------------------------------------------------------------------

    def no_split_module(self, model) -> str:
        """The class name of one layer: the unit FSDP wraps and device maps never split."""
        return type(self.layers(model)[0]).__name__

    def max_sequence_length(self, config) -> int:
        if self.padding_offset_positions:
            return int(config.max_position_embeddings) - int(config.pad_token_id) - 1
        return int(config.max_position_embeddings)

    def mlm_head_size(self, config) -> int:
        """Width of the MLM head's dense/LayerNorm: the tied decoder's (= the word embeddings') width."""
        return config.hidden_size

    def mlm_head_activation(self, config) -> str:
        """The MLM head's activation (the family's own MLM head's)."""
        return config.hidden_act


BACKBONES: dict[str, BackboneAdapter] = {}


def register(cls: type[BackboneAdapter]) -> type[BackboneAdapter]:
    """Class decorator: make the family available as `backbone_type=cls.backbone_type`."""
    BACKBONES[cls.backbone_type] = cls()
    return cls


def get_adapter(backbone_type: str) -> BackboneAdapter:
    try:
        return BACKBONES[backbone_type]
    except KeyError:
        raise ValueError(
            f"CharBERT supports the backbones {sorted(BACKBONES)}; got backbone_type={backbone_type!r}."
        ) from None


def supported() -> str:
    """'bert / electra / roberta', for messages."""
    return " / ".join(sorted(BACKBONES))


# Plain model types whose positions reserve pad_token_id + 1 slots, CharBERT backbones or not.
_OTHER_PADDING_OFFSET_TYPES = ()


def padding_offset_model_types() -> tuple[str, ...]:
    return tuple(t for t, a in BACKBONES.items() if a.padding_offset_positions) + _OTHER_PADDING_OFFSET_TYPES


# ---- families --------------------------------------------------------------------------


@register
class BertAdapter(BackboneAdapter):
    """BERT: WordPiece, absolute positions, post-norm layers, a pooler."""

    backbone_type = "bert"
    config_class = BertConfig
    embeddings_class = modeling_bert.BertEmbeddings
    encoder_class = modeling_bert.BertEncoder
    pooler_class = modeling_bert.BertPooler
    mlm_head_keys = {
        "cls.predictions.transform.dense.weight": "mlm_head.dense.weight",
        "cls.predictions.transform.dense.bias": "mlm_head.dense.bias",
        "cls.predictions.transform.LayerNorm.weight": "mlm_head.LayerNorm.weight",
        "cls.predictions.transform.LayerNorm.bias": "mlm_head.LayerNorm.bias",
        "cls.predictions.bias": "mlm_head.bias",
    }


@register
class RobertaAdapter(BackboneAdapter):
    """RoBERTa: byte-level BPE, positions offset past padding_idx, BERT's layers."""

    backbone_type = "roberta"
    config_class = RobertaConfig
    embeddings_class = modeling_roberta.RobertaEmbeddings
    encoder_class = modeling_roberta.RobertaEncoder
    pooler_class = modeling_roberta.RobertaPooler
    padding_offset_positions = True
    tokenizer_kind = BYTE_LEVEL_BPE
    word_start = "Ġ"
    mlm_head_keys = {
        "lm_head.dense.weight": "mlm_head.dense.weight",
        "lm_head.dense.bias": "mlm_head.dense.bias",
        "lm_head.layer_norm.weight": "mlm_head.LayerNorm.weight",
        "lm_head.layer_norm.bias": "mlm_head.LayerNorm.bias",
        "lm_head.bias": "mlm_head.bias",
    }


@register
class ElectraAdapter(BackboneAdapter):
    """ELECTRA (discriminator checkpoints): BERT's layers on embeddings of width `embedding_size`,
    projected to `hidden_size` by `embeddings_project` when the two differ; no pooler.

    The discriminator has no MLM head: CharBERT's is new, with the generator's shape (dense and
    LayerNorm of width `embedding_size`, decoder tied to the word embeddings), and is loaded from an
    ElectraForMaskedLM (generator) checkpoint's `generator_predictions` / `generator_lm_head` when
    one is given."""

    backbone_type = "electra"
    config_class = ElectraConfig
    embeddings_class = modeling_electra.ElectraEmbeddings
    encoder_class = modeling_electra.ElectraEncoder
    pooler_class = None
    module_names = ("embeddings", "embeddings_project", "encoder")
    plain_masked_lm = False  # a discriminator is not a masked LM
    mlm_head_keys = {
        "generator_predictions.dense.weight": "mlm_head.dense.weight",
        "generator_predictions.dense.bias": "mlm_head.dense.bias",
        "generator_predictions.LayerNorm.weight": "mlm_head.LayerNorm.weight",
        "generator_predictions.LayerNorm.bias": "mlm_head.LayerNorm.bias",
        "generator_lm_head.bias": "mlm_head.bias",
    }

    def build_modules(self, config, add_pooling_layer: bool = True) -> dict[str, nn.Module | None]:
        modules = {"embeddings": self.embeddings_class(config)}
        if config.embedding_size != config.hidden_size:
            modules["embeddings_project"] = nn.Linear(config.embedding_size, config.hidden_size)
        modules["encoder"] = self.encoder_class(config)
        modules["pooler"] = None
        return modules

    def embed(self, model, input_ids, token_type_ids=None, position_ids=None, attention_mask=None, inputs_embeds=None):
        hidden = model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids,
                                  inputs_embeds=inputs_embeds)
        project = getattr(model, "embeddings_project", None)
        return project(hidden) if project is not None else hidden

    def mlm_head_size(self, config) -> int:
        return config.embedding_size


@register
class XLMRobertaAdapter(RobertaAdapter):
    """XLM-RoBERTa (multilingual): RoBERTa's architecture with a SentencePiece tokenizer ("▁" opens a word)."""

    backbone_type = "xlm-roberta"
    config_class = XLMRobertaConfig
    embeddings_class = modeling_xlm_roberta.XLMRobertaEmbeddings
    encoder_class = modeling_xlm_roberta.XLMRobertaEncoder
    pooler_class = modeling_xlm_roberta.XLMRobertaPooler
    tokenizer_kind = SENTENCEPIECE
    word_start = "▁"


@register
class CamembertAdapter(XLMRobertaAdapter):
    """CamemBERT (French): XLM-RoBERTa's architecture and tokenizer kind under its own model_type."""

    backbone_type = "camembert"
    config_class = CamembertConfig
    embeddings_class = modeling_camembert.CamembertEmbeddings
    encoder_class = modeling_camembert.CamembertEncoder
    pooler_class = modeling_camembert.CamembertPooler


@register
class DebertaV2Adapter(BackboneAdapter):
    """DeBERTa-v2 / v3: disentangled attention over relative positions. Every layer call takes the encoder's
    relative-position embeddings and the relative positions, built once per forward; the embeddings zero
    padded tokens (their `mask`); an optional convolution (`conv_kernel_size` > 0, DeBERTa-v2-xlarge) follows
    the first layer. No pooler (the plain model has none). Not supported: `z_steps` > 0 (the plain model's
    extra passes through the last layer, used by no released checkpoint).

    The MLM head loads from either layout a DebertaV2ForMaskedLM checkpoint uses: `cls.predictions.*`
    (legacy) or `lm_predictions.lm_head.*`."""

    backbone_type = "deberta-v2"
    config_class = DebertaV2Config
    embeddings_class = modeling_deberta_v2.DebertaV2Embeddings
    encoder_class = modeling_deberta_v2.DebertaV2Encoder
    pooler_class = None
    module_names = ("embeddings", "encoder")
    tokenizer_kind = SENTENCEPIECE
    word_start = "▁"
    mlm_head_keys = {
        "cls.predictions.transform.dense.weight": "mlm_head.dense.weight",
        "cls.predictions.transform.dense.bias": "mlm_head.dense.bias",
        "cls.predictions.transform.LayerNorm.weight": "mlm_head.LayerNorm.weight",
        "cls.predictions.transform.LayerNorm.bias": "mlm_head.LayerNorm.bias",
        "cls.predictions.bias": "mlm_head.bias",
        "lm_predictions.lm_head.dense.weight": "mlm_head.dense.weight",
        "lm_predictions.lm_head.dense.bias": "mlm_head.dense.bias",
        "lm_predictions.lm_head.LayerNorm.weight": "mlm_head.LayerNorm.weight",
        "lm_predictions.lm_head.LayerNorm.bias": "mlm_head.LayerNorm.bias",
        "lm_predictions.lm_head.bias": "mlm_head.bias",
    }

    def build_modules(self, config, add_pooling_layer: bool = True) -> dict[str, nn.Module | None]:
        if getattr(config, "z_steps", 0):
            raise ValueError("CharBERT does not support DeBERTa's z_steps > 0 (no released checkpoint uses it).")
        return {"embeddings": self.embeddings_class(config), "encoder": self.encoder_class(config), "pooler": None}

    def embed(self, model, input_ids, token_type_ids=None, position_ids=None, attention_mask=None, inputs_embeds=None):
        if token_type_ids is None:
            given = input_ids if input_ids is not None else inputs_embeds[..., 0]  # (B, L)
            token_type_ids = torch.zeros(given.shape, dtype=torch.long, device=given.device)
        return model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids,
                                mask=attention_mask, inputs_embeds=inputs_embeds)

    def layer_inputs(self, model, attention_mask, hidden, position_ids=None):
        encoder = model.encoder
        return {
            "mask": encoder.get_attention_mask(attention_mask),  # (N, 1, L, L) of 0/1
            "input_mask": attention_mask,
            "relative_pos": encoder.get_rel_pos(hidden),
            "rel_embeddings": encoder.get_rel_embedding(),
            "conv": encoder.conv,  # None unless conv_kernel_size > 0
            "first_layer": encoder.layer[0],
        }

    def call_layer(self, layer, hidden, inputs, output_attentions=False):
        out = layer_output(layer(hidden, inputs["mask"], relative_pos=inputs["relative_pos"],
                                 rel_embeddings=inputs["rel_embeddings"], output_attentions=output_attentions))
        if inputs["conv"] is not None and layer is inputs["first_layer"]:
            out = inputs["conv"](hidden, out, inputs["input_mask"])  # as DebertaV2Encoder after its first layer
        return out

    def output_norms(self, model) -> list[nn.LayerNorm]:
        norms = [layer.output.LayerNorm for layer in self.layers(model)]
        if model.encoder.conv is not None:  # the first layer's output is the convolution's, normalised by it
            norms[0] = model.encoder.conv.LayerNorm
        return norms

    def mlm_head_size(self, config) -> int:
        """The tied decoder's width: the word embeddings' (`embedding_size`, when it is set)."""
        return getattr(config, "embedding_size", None) or config.hidden_size


@register
class ModernBertAdapter(BackboneAdapter):
    """ModernBERT: pre-norm layers with rotary position embeddings and alternating global / sliding-window
    (local) attention, a final LayerNorm after the last layer, no token types, no pooler.

    Its layers output the un-normalised residual stream, so the authors' fusion (residual, then LayerNorm)
    would replace that stream by its normalised form after every layer: the next layers' residual additions
    would then act on a vector of another scale than the one they were trained on, and the model would not
    start as its backbone. Its fusion normalises its *inputs* instead and adds its output to the stream
    (`fusion_norm="pre"`, a sublayer like attention and the MLP); the final norm is applied to both channels.

    Attention runs on the padded stacked batch (transformers' ModernBERT is padded in 5.x; unpadding would
    buy little at CharBERT's sequence lengths and would have to be undone for the fusion's convolution).
    The MLM head loads from a ModernBertForMaskedLM checkpoint's `head.*` and `decoder.bias`; its dense
    layer and norm have no bias there (`classifier_bias`, `norm_bias` False), so ours start at zero."""

    backbone_type = "modernbert"
    config_class = ModernBertConfig
    module_names = ("embeddings", "layers", "final_norm", "rotary_emb")
    word_embeddings_path = "embeddings.tok_embeddings"
    tokenizer_kind = BYTE_LEVEL_BPE
    word_start = "Ġ"
    fusion_norm = "pre"
    field_aliases = {"hidden_act": "hidden_activation", "layer_norm_eps": "norm_eps", "hidden_dropout_prob": "mlp_dropout"}
    mlm_head_keys = {
        "head.dense.weight": "mlm_head.dense.weight",
        "head.dense.bias": "mlm_head.dense.bias",
        "head.norm.weight": "mlm_head.LayerNorm.weight",
        "head.norm.bias": "mlm_head.LayerNorm.bias",
        "decoder.bias": "mlm_head.bias",
    }

    def complete_config(self, config) -> None:
        super().complete_config(config)
        # A property of ModernBertConfig (half the local window), read by its attention and mask code.
        if getattr(config, "sliding_window", None) is None:
            config.sliding_window = config.local_attention // 2

    def build_modules(self, config, add_pooling_layer: bool = True) -> dict[str, nn.Module | None]:
        return {
            "embeddings": modeling_modernbert.ModernBertEmbeddings(config),
            "layers": nn.ModuleList(modeling_modernbert.ModernBertEncoderLayer(config, i)
                                    for i in range(config.num_hidden_layers)),
            "final_norm": nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias),
            "rotary_emb": modeling_modernbert.ModernBertRotaryEmbedding(config),
            "pooler": None,
        }

    def embed(self, model, input_ids, token_type_ids=None, position_ids=None, attention_mask=None, inputs_embeds=None):
        return model.embeddings(input_ids=input_ids, inputs_embeds=inputs_embeds)

    def layers(self, model) -> nn.ModuleList:
        return model.layers

    def layer_inputs(self, model, attention_mask, hidden, position_ids=None):
        config = model.config
        masks = {
            "full_attention": create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=attention_mask),
            "sliding_attention": create_bidirectional_sliding_window_mask(
                config=config, inputs_embeds=hidden, attention_mask=attention_mask),
        }
        if position_ids is None:
            position_ids = torch.arange(hidden.size(1), device=hidden.device).unsqueeze(0)  # (1, L)
        rotary = {kind: model.rotary_emb(hidden, position_ids, kind) for kind in sorted(set(config.layer_types))}
        return masks, rotary

    def call_layer(self, layer, hidden, inputs, output_attentions=False):
        masks, rotary = inputs
        kind = layer.attention_type
        extra = {"output_attentions": True} if output_attentions else {}
        return layer_output(layer(hidden, attention_mask=masks[kind], position_embeddings=rotary[kind], **extra))

    def attention_module(self, layer) -> nn.Module:
        return layer.attn

    def finish(self, model, hidden):
        return model.final_norm(hidden)

    def output_norms(self, model) -> list[nn.LayerNorm]:
        raise ValueError("ModernBERT's layers end in no LayerNorm (pre-norm): its identity start zeroes the fusion.")

    def init_buffers(self, module) -> None:
        if isinstance(module, modeling_modernbert.ModernBertRotaryEmbedding) and hasattr(init, "copy_"):
            for kind in module.layer_types:
                inv_freq, _ = module.compute_default_rope_parameters(module.config, layer_type=kind)
                init.copy_(getattr(module, f"{kind}_inv_freq"), inv_freq)
                init.copy_(getattr(module, f"{kind}_original_inv_freq"), inv_freq)

    def mlm_head_activation(self, config) -> str:
        return config.classifier_activation
