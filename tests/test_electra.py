"""CharBERT on ELECTRA discriminator checkpoints (`ElectraAdapter`): a tiny random ElectraForPreTraining
whose word embeddings (embedding_size 16) are narrower than its layers (hidden_size 32), so the
embeddings' projection is exercised, with a WordPiece tokenizer trained on local text.

Every backbone tensor loads exactly; the identity start reproduces the plain ElectraModel on a padded
batch. The discriminator has no MLM head: CharBERT's is new (generator-shaped, decoder tied to the word
embeddings), or loaded from a generator checkpoint. Every head through save / the Auto classes,
fill-mask, ONNX export, `pretrain` and every `finetune.*` program run on ELECTRA in tests/test_families.py."""

from __future__ import annotations

import json

import pytest
import torch
from test_new_module_init import with_trained_looking_norms
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForPreTraining,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    ElectraForMaskedLM,
    ElectraModel,
)

from charbert import (
    CharBertForMaskedLM,
    CharBertForMultipleChoice,
    CharBertForPreTraining,
    CharBertForQuestionAnswering,
    CharBertForSequenceClassification,
    CharBertForTokenClassification,
    CharBertModel,
    CharBertTokenizer,
)

TEXTS = ["He plays backhand.", "Totally unrelated, and a good deal longer: C# code!", "ok",
         "Numbers 1,234 and symbols #hash stay."]
AUTO = {
    CharBertModel: AutoModel,
    CharBertForPreTraining: AutoModelForPreTraining,
    CharBertForMaskedLM: AutoModelForMaskedLM,
    CharBertForSequenceClassification: AutoModelForSequenceClassification,
    CharBertForTokenClassification: AutoModelForTokenClassification,
    CharBertForQuestionAnswering: AutoModelForQuestionAnswering,
    CharBertForMultipleChoice: AutoModelForMultipleChoice,
}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def padded_batch(path):
    tok = CharBertTokenizer.from_pretrained(path)
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    assert batch["attention_mask"].min() == 0
    return tok, batch


def test_tiny_checkpoint_is_a_discriminator_with_a_projection(electra_dir):
    config = json.loads((electra_dir / "config.json").read_text())
    assert config["model_type"] == "electra" and config["architectures"] == ["ElectraForPreTraining"]
    assert config["embedding_size"] < config["hidden_size"]


def test_equal_widths_need_no_projection():
    """ELECTRA-large-like: embedding_size == hidden_size, no embeddings_project (as in ElectraModel)."""
    from charbert import CharBertConfig

    config = CharBertConfig(backbone_type="electra", vocab_size=90, embedding_size=32, hidden_size=32, num_hidden_layers=1,
                            num_attention_heads=2, intermediate_size=64, char_vocab_size=60, char_embedding_size=8)
    torch.manual_seed(0)
    model = CharBertModel(config).eval()
    assert not hasattr(model, "embeddings_project") and not hasattr(ElectraModel(config.backbone_config()), "embeddings_project")
    batch = dict(input_ids=torch.randint(5, 90, (2, 6)), char_input_ids=torch.randint(1, 60, (2, 20)),
                 char_start_positions=torch.arange(6).expand(2, -1), char_end_positions=torch.arange(6).expand(2, -1) + 1)
    with torch.no_grad():
        assert model(**batch).last_hidden_state.shape == (2, 6, 32)


def test_every_backbone_tensor_loads_exactly(electra_dir):
    model = CharBertForPreTraining.from_pretrained(electra_dir, word_vocab_size=40)
    plain = AutoModel.from_pretrained(electra_dir)
    assert type(plain) is ElectraModel and model.config.backbone_type == "electra"
    ours = model.charbert.state_dict()
    for name, tensor in plain.state_dict().items():
        assert torch.equal(ours[name], tensor), name
    assert "embeddings_project.weight" in plain.state_dict() and len(plain.state_dict()) >= 30
    loaded, new = model.loading_info["loaded_keys"], model.loading_info["initialized_keys"]
    assert sorted(loaded) == sorted("charbert." + k for k in plain.state_dict())
    # The discriminator has no MLM head: CharBERT's is new, as wide as the (tied) word embeddings.
    assert {"mlm_head.dense.weight", "mlm_head.bias"} <= set(new)
    assert model.mlm_head.dense.weight.shape == (model.config.embedding_size, model.config.hidden_size)
    assert model.charbert.pooler is None and "ElectraLayer" in model._no_split_modules
    assert model.config.max_sequence_length == model.config.max_position_embeddings


def test_mlm_head_loads_from_a_generator_checkpoint(electra_dir, tmp_path):
    config = AutoModel.from_pretrained(electra_dir).config
    torch.manual_seed(1)
    generator = ElectraForMaskedLM(config)
    generator.save_pretrained(tmp_path)
    model = CharBertForPreTraining.from_pretrained(tmp_path, word_vocab_size=40)
    state = generator.state_dict()
    assert torch.equal(model.mlm_head.dense.weight, state["generator_predictions.dense.weight"])
    assert torch.equal(model.mlm_head.LayerNorm.weight, state["generator_predictions.LayerNorm.weight"])
    assert torch.equal(model.mlm_head.bias, state["generator_lm_head.bias"])
    assert "mlm_head.dense.weight" in model.loading_info["loaded_keys"]
    # the generator's own MLM logits, through CharBERT's head on the same hidden states
    hidden = torch.randn(2, 5, config.hidden_size)
    with torch.no_grad():
        theirs = generator.generator_lm_head(generator.generator_predictions(hidden))
        ours = model.mlm_head(hidden, model.charbert.embeddings.word_embeddings.weight)
    assert torch.allclose(theirs, ours, atol=1e-6)


@pytest.mark.parametrize("share_fusion", [False, True])
def test_identity_start_equals_plain_electra(tmp_path, electra_dir, share_fusion):
    """The subword channel of a fresh CharBERT with the identity start is the plain model's output
    (real tokens of a padded batch), with layer norms far from (1, 0) as a trained model's are."""
    path = with_trained_looking_norms(electra_dir, tmp_path / "plain", same_norms=share_fusion)
    tok, batch = padded_batch(path)
    plain = ElectraModel.from_pretrained(path).eval()
    torch.manual_seed(0)
    model = CharBertModel.from_pretrained(path, new_module_init="identity", share_fusion=share_fusion,
                                          char_vocab_size=len(tok.char_vocab)).eval()
    with torch.no_grad():
        expected = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         token_type_ids=batch["token_type_ids"]).last_hidden_state
        got = model(**batch)
    real = batch["attention_mask"].bool()
    assert (got.last_hidden_state[real] - expected[real]).abs().max() <= 1e-5
    assert (got.char_last_hidden_state[real] - got.last_hidden_state[real]).abs().max() > 1e-2  # characters alive
    # and the default start does move it (so the comparison above can fail)
    torch.manual_seed(0)
    normal = CharBertModel.from_pretrained(path, new_module_init="normal", char_vocab_size=len(tok.char_vocab)).eval()
    with torch.no_grad():
        assert (normal(**batch).last_hidden_state[real] - expected[real]).abs().max() > 1e-2
