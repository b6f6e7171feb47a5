"""What transformers' models take and return, on every backbone family: `output_attentions=True` (each channel's
attention weights per layer, and the same outputs as without them: the channels then go through each layer in two
calls instead of one), `inputs_embeds`, `return_dict=False`, `from_pretrained(None, config=, state_dict=)`."""

from __future__ import annotations

import pytest
import torch

from charbert import CharBertConfig, CharBertForSequenceClassification, CharBertModel
from charbert.backbones import BACKBONES
from charbert.tiny import tiny_backbone_config

BATCH, LENGTH, CHARS_PER_TOKEN, HEADS, LAYERS = 3, 6, 3, 2, 2


def tiny_model(backbone: str, model_class=CharBertModel, attn_implementation="eager"):
    torch.manual_seed(0)
    pad = 0 if backbone in ("bert", "electra", "deberta-v2", "modernbert") else 1
    config = CharBertConfig.from_backbone_config(
        tiny_backbone_config(backbone, vocab_size=50, pad_token_id=pad, hidden_size=32, layers=LAYERS, heads=HEADS),
        char_vocab_size=40, char_embedding_size=16, word_vocab_size=30, num_labels=2,
    )
    config._attn_implementation = attn_implementation
    return model_class(config).eval()


def inputs() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    starts = (torch.arange(LENGTH) * CHARS_PER_TOKEN).expand(BATCH, -1)
    mask = torch.ones(BATCH, LENGTH, dtype=torch.long)
    mask[-1, -2:] = 0  # one padded row
    return {
        "input_ids": torch.randint(3, 50, (BATCH, LENGTH)),
        "attention_mask": mask,
        "char_input_ids": torch.randint(1, 40, (BATCH, LENGTH * CHARS_PER_TOKEN)),
        "char_start_positions": starts,
        "char_end_positions": starts + CHARS_PER_TOKEN - 1,
    }


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_each_channel_returns_its_attentions_per_layer(backbone):
    model = tiny_model(backbone)
    with torch.no_grad():
        plain = model(**inputs())
        out = model(**inputs(), output_attentions=True)
    assert plain.attentions is None and plain.char_attentions is None
    assert len(out.attentions) == len(out.char_attentions) == LAYERS
    for word, char in zip(out.attentions, out.char_attentions):
        assert word.shape == char.shape == (BATCH, HEADS, LENGTH, LENGTH)
        torch.testing.assert_close(word.sum(-1), torch.ones(BATCH, HEADS, LENGTH))  # softmax rows
        assert not torch.allclose(word, char)  # two channels, two different maps
    # Real tokens give padded ones no attention, in either channel.
    assert out.attentions[0][-1, :, :-2, -2:].abs().max() < 1e-6
    assert out.char_attentions[0][-1, :, :-2, -2:].abs().max() < 1e-6
    # The two-call path computes the same function as the stacked call.
    torch.testing.assert_close(out.last_hidden_state, plain.last_hidden_state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.char_last_hidden_state, plain.char_last_hidden_state, rtol=1e-5, atol=1e-5)


def test_heads_pass_attentions_on_and_gradients_reach_them():
    model = tiny_model("bert", CharBertForSequenceClassification).train()
    out = model(**inputs(), output_attentions=True, labels=torch.tensor([0, 1, 1]))
    assert len(out.attentions) == len(out.char_attentions) == LAYERS
    out.attentions[0].retain_grad()
    out.char_attentions[0].retain_grad()
    out.loss.backward()
    assert out.attentions[0].grad is not None and out.char_attentions[0].grad is not None


def test_sdpa_returns_no_attention_weights():
    """SDPA computes no weights (transformers warns): the fields stay None rather than holding Nones."""
    model = tiny_model("bert", attn_implementation="sdpa")
    with torch.no_grad():
        out = model(**inputs(), output_attentions=True)
    assert out.attentions is None and out.char_attentions is None


def test_return_dict_false_returns_the_fields_as_a_tuple():
    model = tiny_model("bert", CharBertForSequenceClassification)
    with torch.no_grad():
        as_dict = model(**inputs(), output_hidden_states=True)
        as_tuple = model(**inputs(), output_hidden_states=True, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(as_dict.to_tuple())
    torch.testing.assert_close(as_tuple[0], as_dict.logits)


def test_from_pretrained_takes_a_state_dict_without_a_path():
    model = tiny_model("bert")
    loaded = CharBertModel.from_pretrained(None, config=model.config, state_dict=model.state_dict()).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs()).last_hidden_state, model(**inputs()).last_hidden_state)


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_inputs_embeds_give_the_outputs_of_their_ids(backbone):
    model = tiny_model(backbone)
    given = inputs()
    embeds = model.get_input_embeddings()(given.pop("input_ids"))  # (B, L, E)
    with torch.no_grad():
        from_ids = model(**inputs()).last_hidden_state
        from_embeds = model(**given, inputs_embeds=embeds).last_hidden_state
    torch.testing.assert_close(from_embeds, from_ids)
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        model(**inputs(), inputs_embeds=embeds)
