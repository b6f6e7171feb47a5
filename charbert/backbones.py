"""Backbone adapters: everything CharBERT needs to know about one encoder family, in one class.

`CharBertModel` (modeling.py) holds the dual-channel encoder and is written once for every family;
what differs between families is asked of the family's adapter, looked up by the config's
`backbone_type` (= the plain checkpoint's `model_type`):

    adapter = get_adapter(config.backbone_type)
    adapter.build_modules(config, add_pooling_layer)  {name: module}: the backbone's own embeddings, layers,
                                                      pooler..., registered under the plain model's names so
                                                      that a plain checkpoint's weights load under the same keys
    adapter.embed(model, input_ids, token_type_ids, position_ids)   (B, L, H): the subword channel's input
    adapter.layers(model)                             the encoder layers, in order
    adapter.layer_mask(model, attention_mask, hidden) the attention mask in the layers' own format
    adapter.call_layer(layer, hidden, mask)           one layer on the stacked channels (2B, L, H) -> (2B, L, H)
    adapter.output_norms(model)                       the LayerNorm each layer's output ends in (the identity start)
    adapter.no_split_module(model)                    the layer class's name: accelerate's FSDP unit
    adapter.max_sequence_length(config)               longest sequence the position embeddings allow
    adapter.mlm_head_size(config)                     width of the MLM head's transform (tied decoder's width)

and the class attributes `config_class`, `module_names` (state-dict prefixes that come from the
plain checkpoint), `mlm_head_keys` (where a plain *ForMaskedLM checkpoint keeps its MLM head ->
our names), `tokenizer_kind` and `word_start` (how the family's usual tokenizer marks words).

The base class implements the post-norm BERT layout (absolute positions, one extended additive
mask, each layer ending in `layer.output.LayerNorm`); a family overrides what differs. Adding a
family is one subclass registered with `@register` and its tests.
"""

from __future__ import annotations

from torch import nn
from transformers import BertConfig, ElectraConfig, PretrainedConfig, RobertaConfig
from transformers.models.bert import modeling_bert
from transformers.models.electra import modeling_electra
from transformers.models.roberta import modeling_roberta

from .compat import create_bidirectional_mask, layer_output

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

    # ---- building ----------------------------------------------------------------------

    def build_modules(self, config, add_pooling_layer: bool = True) -> dict[str, nn.Module | None]:
        """The backbone's modules in registration order (the order fixes how random init draws)."""
        pooler = self.pooler_class(config) if add_pooling_layer and self.pooler_class is not None else None
        return {"embeddings": self.embeddings_class(config), "encoder": self.encoder_class(config), "pooler": pooler}

    # ---- forward -----------------------------------------------------------------------

    def embed(self, model, input_ids, token_type_ids=None, position_ids=None):
        """(B, L) ids -> (B, L, H) the subword channel entering the first layer."""
        return model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids)

    def layers(self, model) -> nn.ModuleList:
        return model.encoder.layer

    def layer_mask(self, model, attention_mask, hidden):
        """The layers' own mask format for the attention implementation in use; `attention_mask` (N, L)
        of 1/0 and `hidden` (N, L, H) are the stacked channels'."""
        if create_bidirectional_mask is not None:
            return create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=attention_mask)
        return model.get_extended_attention_mask(attention_mask, hidden.shape[:2])

    def call_layer(self, layer, hidden, mask):
        """One layer on the stacked channels: (N, L, H) -> (N, L, H)."""
        return layer_output(layer(hidden, mask))

    def output_norms(self, model) -> list[nn.LayerNorm]:
        """The LayerNorm each layer's output ends in (post-norm layers: `layer.output.LayerNorm`)."""
        return [layer.output.LayerNorm for layer in self.layers(model)]

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
_OTHER_PADDING_OFFSET_TYPES = ("xlm-roberta", "camembert")


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

    def embed(self, model, input_ids, token_type_ids=None, position_ids=None):
        hidden = model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids)
        project = getattr(model, "embeddings_project", None)
        return project(hidden) if project is not None else hidden

    def mlm_head_size(self, config) -> int:
        return config.embedding_size
