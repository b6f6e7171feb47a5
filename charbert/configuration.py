"""CharBertConfig: the backbone's own configuration plus every character-side size.

The config is *flat*: it carries every field of the backbone's config (BERT, RoBERTa, ..., any
size) next to the CharBERT fields, and `backbone_type` names the backbone family whose adapter
(backbones.py) builds its modules.
Being flat means the backbone's own modules (`BertLayer`, `RobertaEmbeddings`...) read it
directly, and transformers' machinery (attention implementation, gradient checkpointing,
`num_hidden_layers`...) sees one ordinary config, across transformers 4.40+ and 5.x.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from .backbones import BACKBONES, get_adapter, supported
from .chars import MAX_CHARS_PER_TOKEN, check_char_layout
from .compat import LEGACY_ARCHITECTURE, upgrade_saved_config

# backbone_type -> its transformers config class (a view of the adapters in backbones.py).
BACKBONE_CONFIGS = {name: adapter.config_class for name, adapter in BACKBONES.items()}
CHAR_PADDING_MODES = ("exact", "reference")
# How the modules CharBERT adds to a plain checkpoint start (see CharBertConfig.new_module_init).
NEW_MODULE_INITS = ("reference", "normal", "identity")

# Our previous architecture (character LayerNorm, activation after the fusion conv, biases):
# `CharBertConfig(..., **PREVIOUS_VARIANT)`. The default is the authors' released architecture.
PREVIOUS_VARIANT = dict(LEGACY_ARCHITECTURE)

# Fields that belong to CharBERT, never copied from/to a backbone config.
CHARBERT_FIELDS = (
    "backbone_type",
    "char_vocab_size",
    "char_embedding_size",
    "char_hidden_size",
    "fusion_kernel_size",
    "share_fusion",
    "word_vocab_size",
    "char_pad_token_id",
    "char_token_norm",
    "fusion_activation",
    "fusion_bias",
    "char_padding",
    "char_layout",
    "max_chars_per_token",
    "max_chars_per_sequence",
    "char_vocab_hash",
    "word_vocab_hash",
    "new_module_init",
    "fusion_norm",
)
FUSION_NORMS = ("post", "pre")
# Config-dict fields never passed to / taken from the backbone's config class.
_NOT_BACKBONE_FIELDS = ("model_type", "transformers_version", "architectures", "_name_or_path", "auto_map",
                        "id2label", "label2id", "num_labels")


class CharBertConfig(PretrainedConfig):
    r"""Configuration of a CharBERT model.

    The defaults build the authors' released architecture; `**PREVIOUS_VARIANT` gives our previous one.

    Args:
        backbone_type (`str`, "bert"): the backbone family (a key of `backbones.BACKBONES`: "bert", "roberta", ...)
            whose embeddings and layers to build.
        char_vocab_size (`int`, 1024): rows of the character embedding (>= the character vocabulary size).
        char_embedding_size (`int`, 256): size of a character embedding.
        char_hidden_size (`int`, None): GRU hidden size per direction; default `hidden_size // 4`, so the
            concatenation of the first- and last-character states (2 directions x 2 ends) is `hidden_size`.
        fusion_kernel_size (`int`, 3): kernel of the Conv1d fusing the two channels (odd).
        share_fusion (`bool`, True): one fusion block for all layers (the authors' code; ~5M extra
            parameters at base size) instead of one per layer.
        word_vocab_size (`int`, 30001): size of the noisy-LM word vocabulary (words + unk).
        char_pad_token_id (`int`, 0): padding id of the character sequence.
        char_token_norm (`bool`, False): LayerNorm + dropout on the token vectors built from characters
            (our previous variant); the authors feed the raw GRU states to the encoder.
        fusion_activation (`bool`, False): `hidden_act` + dropout after the fusion Conv1d (our previous
            variant); the authors' code applies neither.
        fusion_bias (`bool`, False): biases on the two per-channel linear maps of the fusion (our previous
            variant); the authors' maps have none.
        char_padding (`str`, "exact"): "exact": the backward GRU reads each character row reversed within
            its own length, the fusion conv and the sequence-classification mean skip padded tokens, so
            padding never changes a real token's output. "reference": the authors' behaviour, for parity
            with their checkpoints: one plain Bi-GRU over the whole padded row, the conv and the mean see
            padded tokens.
        char_layout (`str`, "offsets"): how the tokenizer lays out the characters ("offsets": ours, from
            the fast tokenizer's offsets; "reference": the authors'). The model does not read it.
        max_chars_per_token (`int`, 20): the tokenizer keeps at most this many characters of a token
            (its first 10 and last 10) and of the text between two tokens, so memory is bounded by the
            batch shape whatever the text ("offsets" layout; the reference layout cuts at 6 x L).
        max_chars_per_sequence (`int`, None): optional cap on a row's characters (tokens past it point
            at its last position); None: only the per-token cap.
        char_vocab_hash (`str`, None), word_vocab_hash (`str`, None): fingerprints of the character and
            word vocabularies the model was trained with (`CharVocab.fingerprint`, `WordVocab.fingerprint`),
            checked by the programs on load. None (checkpoints saved before they existed): no check.
        new_module_init (`str`, "normal"): how the modules CharBERT adds (character encoder, fusion, NLM head)
            start when they are created; the function a trained or converted checkpoint computes does not
            depend on it, and loading one never re-initialises anything. "reference": the authors' code exactly
            (std `initializer_range` normals for Linear and Embedding, PyTorch's own uniform init for the
            fusion Conv1d and the GRU). "normal": std `initializer_range` normals for Linear, Conv1d and
            Embedding, Xavier/orthogonal GRU gates. "identity": "normal", then, when the model is built on a
            plain checkpoint (`from_pretrained` / `from_backbone`), each fusion block is set so that the
            subword channel reproduces the backbone's output exactly (`identity_fusion_`): the backbone
            starts where it was instead of being rebuilt by the pretraining budget.
        fusion_norm (`str`, None): "post": the authors' fusion, each channel LayerNorm(x + f) after the
            residual, for post-norm backbones (BERT, RoBERTa, XLM-RoBERTa, ELECTRA, DeBERTa). "pre": x + f with
            the fusion's inputs normalised instead, for pre-norm backbones (ModernBERT), whose layers pass an
            un-normalised residual stream on. None: the backbone family's own (`BackboneAdapter.fusion_norm`).
        **kwargs: every field of the backbone config (hidden_size, num_hidden_layers, vocab_size, ...).
    """

    model_type = "charbert"

    def __init__(
        self,
        backbone_type: str = "bert",
        char_vocab_size: int = 1024,
        char_embedding_size: int = 256,
        char_hidden_size: int | None = None,
        fusion_kernel_size: int = 3,
        share_fusion: bool = True,
        word_vocab_size: int = 30001,
        char_pad_token_id: int = 0,
        char_token_norm: bool = False,
        fusion_activation: bool = False,
        fusion_bias: bool = False,
        char_padding: str = "exact",
        char_layout: str = "offsets",
        max_chars_per_token: int | None = MAX_CHARS_PER_TOKEN,
        max_chars_per_sequence: int | None = None,
        char_vocab_hash: str | None = None,
        word_vocab_hash: str | None = None,
        new_module_init: str = "normal",
        fusion_norm: str | None = None,
        **kwargs,
    ):
        adapter = get_adapter(backbone_type)  # a one-line error naming the supported families
        # Fill in the backbone's defaults for every field not given (e.g. RoBERTa's pad_token_id=1), and the
        # fields it derives from the given ones (e.g. ModernBERT's layer_types from num_hidden_layers).
        given = {k: v for k, v in kwargs.items() if k not in _NOT_BACKBONE_FIELDS}
        backbone_defaults = adapter.config_class(**given).to_dict()
        # Label fields are the task's, never a default (4.x configs carry a 2-label id2label).
        for key in _NOT_BACKBONE_FIELDS:
            backbone_defaults.pop(key, None)
        for key, value in backbone_defaults.items():
            kwargs.setdefault(key, value)
        super().__init__(**kwargs)
        self.backbone_type = backbone_type
        self.char_vocab_size = char_vocab_size
        self.char_embedding_size = char_embedding_size
        self.char_hidden_size = char_hidden_size if char_hidden_size is not None else self.hidden_size // 4
        if fusion_kernel_size % 2 != 1:
            raise ValueError(f"fusion_kernel_size must be odd (same-length convolution); got {fusion_kernel_size}.")
        self.fusion_kernel_size = fusion_kernel_size
        self.share_fusion = share_fusion
        self.word_vocab_size = word_vocab_size
        self.char_pad_token_id = char_pad_token_id
        if char_padding not in CHAR_PADDING_MODES:
            raise ValueError(f"char_padding must be one of {CHAR_PADDING_MODES}; got {char_padding!r}.")
        switches = {"char_token_norm": char_token_norm, "fusion_activation": fusion_activation, "fusion_bias": fusion_bias}
        for name, value in switches.items():
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False; got {value!r}.")
        self.char_token_norm = char_token_norm
        self.fusion_activation = fusion_activation
        self.fusion_bias = fusion_bias
        self.char_padding = char_padding
        self.char_layout = check_char_layout(char_layout)  # the tokenizer's; the model does not read it
        for name, value, smallest in (("max_chars_per_token", max_chars_per_token, 2),
                                      ("max_chars_per_sequence", max_chars_per_sequence, 1)):
            if value is not None and (not isinstance(value, int) or value < smallest):
                raise ValueError(f"{name} must be an integer >= {smallest} or None; got {value!r}.")
        self.max_chars_per_token = max_chars_per_token  # the tokenizer's too
        self.max_chars_per_sequence = max_chars_per_sequence
        self.char_vocab_hash = char_vocab_hash
        self.word_vocab_hash = word_vocab_hash
        if new_module_init not in NEW_MODULE_INITS:
            raise ValueError(f"new_module_init must be one of {NEW_MODULE_INITS}; got {new_module_init!r}.")
        if new_module_init == "identity" and fusion_activation:
            raise ValueError("new_module_init='identity' needs fusion_activation=False: an activation after the "
                             "fusion conv cannot pass the backbone's states through unchanged.")
        self.new_module_init = new_module_init
        fusion_norm = fusion_norm if fusion_norm is not None else adapter.fusion_norm
        if fusion_norm not in FUSION_NORMS:
            raise ValueError(f"fusion_norm must be one of {FUSION_NORMS}; got {fusion_norm!r}.")
        self.fusion_norm = fusion_norm
        adapter.complete_config(self)  # fields the family's modules and ours read under other names

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> CharBertConfig:
        """Read a saved config: one written before a field existed loads as the model it was
        (e.g. no `char_token_norm` -> True, our previous variant), not as the new default."""
        return super().from_dict(upgrade_saved_config(config_dict), **kwargs)

    @property
    def char_token_size(self) -> int:
        """Size of a token vector built from characters: 2 ends x 2 directions x GRU size."""
        return 4 * self.char_hidden_size

    @property
    def max_sequence_length(self) -> int:
        """Longest token sequence the position embeddings allow (RoBERTa reserves padding_idx+1 positions)."""
        return get_adapter(self.backbone_type).max_sequence_length(self)

    @classmethod
    def from_backbone_config(cls, backbone_config: PretrainedConfig, **charbert_kwargs) -> CharBertConfig:
        """Wrap a backbone config (BERT, RoBERTa, ...; e.g. read from a plain checkpoint) into a CharBertConfig."""
        model_type = getattr(backbone_config, "model_type", None)
        if model_type not in BACKBONES:
            raise ValueError(
                f"CharBERT can be built on a {supported()} checkpoint; this one has model_type={model_type!r}. "
                f"Supported: {sorted(BACKBONES)}."
            )
        fields = backbone_config.to_dict()
        for key in ("model_type", "transformers_version", "architectures", "auto_map", "_name_or_path"):
            fields.pop(key, None)
        fields.update(charbert_kwargs)
        return cls(backbone_type=model_type, **fields)

    def backbone_config(self) -> PretrainedConfig:
        """The plain backbone config (for building the baseline model of the same size)."""
        fields = {k: v for k, v in self.to_dict().items() if k not in CHARBERT_FIELDS}
        for key in ("model_type", "transformers_version", "architectures", "auto_map"):
            fields.pop(key, None)
        return get_adapter(self.backbone_type).config_class(**fields)
