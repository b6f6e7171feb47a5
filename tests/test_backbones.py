"""The backbone adapters (charbert/backbones.py): the registry, the views kept for older code, and the
model asking its family's adapter for everything family-specific."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, GPT2Config, RobertaConfig

from charbert import CharBertConfig, CharBertModel
from charbert.backbones import BACKBONES, BackboneAdapter, get_adapter
from charbert.checkpoint import MLM_HEAD_KEYS, PADDING_OFFSET_MODEL_TYPES, max_sequence_length
from charbert.configuration import BACKBONE_CONFIGS
from charbert.modeling import BACKBONE_MODULES
from charbert.pretraining.job import MLM_MODEL_TYPES


def tiny(backbone_type: str, **kw) -> CharBertConfig:
    base = dict(vocab_size=90, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                max_position_embeddings=40, char_vocab_size=60, char_embedding_size=8, word_vocab_size=20)
    base.update(kw)
    return CharBertConfig(backbone_type=backbone_type, **base)


def test_registry_and_views():
    assert {"bert", "roberta"} <= set(BACKBONES)
    for name, adapter in BACKBONES.items():
        assert isinstance(adapter, BackboneAdapter) and adapter.backbone_type == name
        assert BACKBONE_CONFIGS[name] is adapter.config_class
        assert BACKBONE_MODULES[name] == (adapter.embeddings_class, adapter.encoder_class, adapter.pooler_class)
        assert MLM_HEAD_KEYS[name] is adapter.mlm_head_keys
        assert all(v.startswith("mlm_head.") for v in adapter.mlm_head_keys.values())
    assert BACKBONE_CONFIGS["bert"] is BertConfig and BACKBONE_CONFIGS["roberta"] is RobertaConfig
    assert get_adapter("roberta").word_start == "Ġ" and get_adapter("bert").word_start == "##"
    assert {"roberta", "xlm-roberta", "camembert"} <= set(PADDING_OFFSET_MODEL_TYPES)
    assert {"bert", "roberta"} <= set(MLM_MODEL_TYPES)


def test_unknown_family_is_a_one_line_error():
    with pytest.raises(ValueError, match="supports the backbones .*'bert'.*got backbone_type='gpt2'"):
        CharBertConfig(backbone_type="gpt2")
    with pytest.raises(ValueError, match="model_type='gpt2'"):
        CharBertConfig.from_backbone_config(GPT2Config())


@pytest.mark.parametrize("backbone_type", ["bert", "roberta"])
def test_model_asks_its_adapter(backbone_type):
    config = tiny(backbone_type, pad_token_id=1 if backbone_type == "roberta" else 0)
    model = CharBertModel(config)
    adapter = model.backbone_adapter
    assert adapter is get_adapter(backbone_type)
    layers = adapter.layers(model)
    assert len(layers) == 2 and type(layers[0]).__name__ in model._no_split_modules
    assert [id(n) for n in model.layer_output_norms()] == [id(layer.output.LayerNorm) for layer in layers]
    assert set(k.split(".", 1)[0] for k in model.backbone_state_names()) == {"embeddings", "encoder", "pooler"}
    expected = 40 - 1 - 1 if backbone_type == "roberta" else 40
    assert config.max_sequence_length == expected == max_sequence_length(config.backbone_config())
    assert isinstance(config.backbone_config(), adapter.config_class)


def test_a_new_family_is_one_registered_class(monkeypatch):
    """Registering an adapter is all it takes for the config, the model and the views' lookups."""
    from charbert import backbones

    class ShiftedBert(backbones.BertAdapter):
        backbone_type = "shifted-bert-test"

        def embed(self, model, input_ids, token_type_ids=None, position_ids=None, attention_mask=None, inputs_embeds=None):
            return super().embed(model, input_ids, token_type_ids, position_ids, attention_mask, inputs_embeds) + 1.0

    monkeypatch.setitem(backbones.BACKBONES, ShiftedBert.backbone_type, ShiftedBert())
    config = tiny("shifted-bert-test", hidden_dropout_prob=0.0)
    torch.manual_seed(0)
    shifted = CharBertModel(config).eval()
    torch.manual_seed(0)
    plain = CharBertModel(tiny("bert", hidden_dropout_prob=0.0)).eval()
    assert torch.equal(shifted.embeddings.word_embeddings.weight, plain.embeddings.word_embeddings.weight)
    ids = torch.randint(5, 90, (2, 6))
    batch = dict(input_ids=ids, char_input_ids=torch.randint(1, 60, (2, 20)),
                 char_start_positions=torch.arange(6).expand(2, -1), char_end_positions=torch.arange(6).expand(2, -1) + 1)
    with torch.no_grad():
        out_shifted, out_plain = shifted(**batch, output_hidden_states=True), plain(**batch, output_hidden_states=True)
    assert torch.allclose(out_shifted.hidden_states[0], out_plain.hidden_states[0] + 1.0)
