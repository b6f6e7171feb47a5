"""CharBertModel and heads: shapes, padding invariance, loading/saving, Auto classes, errors."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForPreTraining,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertConfig,
    BertModel,
)

from charbert import (
    CharBertConfig,
    CharBertForMultipleChoice,
    CharBertForPreTraining,
    CharBertForQuestionAnswering,
    CharBertForSequenceClassification,
    CharBertForTokenClassification,
    CharBertModel,
    CharBertTokenizer,
)
from charbert.modeling import CharEncoder, HeterogeneousInteraction, reverse_within_length

TEXTS = ["He plays backhand.", "Totally unrelated, and a good deal longer: C# code!", "ok"]


def tiny_config(**kw) -> CharBertConfig:
    base = dict(
        vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, char_vocab_size=300, char_embedding_size=16, word_vocab_size=50,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    base.update(kw)
    return CharBertConfig(**base)


def random_batch(config: CharBertConfig, batch=3, length=12, chars=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, config.vocab_size, (batch, length), generator=g)
    char_ids = torch.randint(5, config.char_vocab_size, (batch, chars), generator=g)
    starts = torch.sort(torch.randint(1, chars, (batch, length), generator=g), dim=1).values
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "char_input_ids": char_ids,
        "char_attention_mask": torch.ones_like(char_ids),
        "char_start_positions": starts,
        "char_end_positions": torch.clamp(starts + 2, max=chars - 1),
    }


def eval_model(cls, config, seed=0):
    torch.manual_seed(seed)
    return cls(config).eval()


# ---- shapes -------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone_type", ["bert", "roberta"])
def test_shapes_both_backbones(backbone_type):
    config = tiny_config(backbone_type=backbone_type, pad_token_id=1 if backbone_type == "roberta" else 0)
    model = eval_model(CharBertModel, config)
    batch = random_batch(config)
    out = model(**batch, output_hidden_states=True)
    assert out.last_hidden_state.shape == (3, 12, 32)
    assert out.char_last_hidden_state.shape == (3, 12, 32)
    assert out.pooler_output.shape == (3, 32)
    assert len(out.hidden_states) == len(out.char_hidden_states) == 3  # embeddings + 2 layers


def test_heads_shapes_and_losses():
    config = tiny_config(num_labels=4)
    batch = random_batch(config)
    labels = torch.full((3, 12), -100)
    labels[0, 2], labels[1, 5], labels[2, 7] = 7, 8, 9
    nlm = torch.full((3, 12), -100)
    nlm[1, 1] = 3
    out = eval_model(CharBertForPreTraining, config)(**batch, labels=labels, nlm_labels=nlm)
    assert out.mlm_logits.shape == (3, config.vocab_size), "MLM logits only at the 3 labelled positions"
    assert out.nlm_logits.shape == (1, config.word_vocab_size), "NLM logits only at the 1 labelled position"
    assert torch.allclose(out.loss, out.mlm_loss + out.nlm_loss)
    expected = torch.nn.functional.cross_entropy(out.mlm_logits, torch.tensor([7, 8, 9]))
    assert torch.allclose(out.mlm_loss, expected)
    no_labels = eval_model(CharBertForPreTraining, config)(**batch)
    assert no_labels.mlm_logits.shape == (3, 12, config.vocab_size) and no_labels.loss is None
    empty = eval_model(CharBertForPreTraining, config)(**batch, labels=torch.full((3, 12), -100))
    assert empty.loss.item() == 0.0, "no labelled position -> zero loss, never NaN"

    seq = eval_model(CharBertForSequenceClassification, config)(**batch, labels=torch.tensor([0, 3, 1]))
    assert seq.logits.shape == (3, 4) and seq.loss.ndim == 0
    reg = eval_model(CharBertForSequenceClassification, tiny_config(num_labels=1))(**batch, labels=torch.tensor([0.5, 1.0, 2.0]))
    assert reg.logits.shape == (3, 1)
    assert torch.allclose(reg.loss, torch.nn.functional.mse_loss(reg.logits.squeeze(-1), torch.tensor([0.5, 1.0, 2.0])))
    tok_labels = torch.full((3, 12), -100)
    tok_labels[:, 3] = 2
    tok = eval_model(CharBertForTokenClassification, config)(**batch, labels=tok_labels)
    assert tok.logits.shape == (3, 12, 4)
    assert torch.allclose(tok.loss, torch.nn.functional.cross_entropy(tok.logits[:, 3], torch.full((3,), 2)))
    qa = eval_model(CharBertForQuestionAnswering, config)(**batch, start_positions=torch.tensor([1, 2, 3]), end_positions=torch.tensor([2, 2, 40]))
    assert qa.start_logits.shape == qa.end_logits.shape == (3, 12) and torch.isfinite(qa.loss)
    mc_batch = {k: v.unsqueeze(1).expand(-1, 2, *v.shape[1:]).contiguous() for k, v in batch.items()}
    mc = eval_model(CharBertForMultipleChoice, config)(**mc_batch, labels=torch.tensor([0, 1, 1]))
    assert mc.logits.shape == (3, 2) and torch.allclose(mc.logits[:, 0], mc.logits[:, 1])


# ---- padding invariance --------------------------------------------------------------------


def test_reverse_within_length():
    index = reverse_within_length(torch.tensor([3, 5, 0]), 5)
    assert index.tolist() == [[2, 1, 0, 3, 4], [4, 3, 2, 1, 0], [0, 1, 2, 3, 4]]


def test_gru_padding_invariance():
    config = tiny_config()
    torch.manual_seed(0)
    encoder = CharEncoder(config).eval()
    chars = torch.randint(5, 300, (1, 20))
    starts, ends = torch.tensor([[0, 3, 8, 15]]), torch.tensor([[2, 7, 14, 19]])
    alone = encoder(chars, torch.ones_like(chars), starts, ends)
    padded_chars = torch.cat([chars, torch.zeros(1, 13, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 20), torch.zeros(1, 13)], 1).long()
    padded = encoder(padded_chars, mask, starts, ends)
    assert torch.allclose(alone, padded, atol=1e-6)
    # the same sequence inside a batch with a longer neighbour
    other = torch.randint(5, 300, (1, 33))
    both = encoder(torch.cat([padded_chars, other]), torch.cat([mask, torch.ones(1, 33, dtype=torch.long)]),
                   torch.cat([starts, starts]), torch.cat([ends, ends]))
    assert torch.allclose(alone[0], both[0], atol=1e-6)


@pytest.mark.parametrize("cls", [CharBertModel, CharBertForSequenceClassification])
def test_encoder_and_pooling_padding_invariance(backbone_dir, cls):
    tok = CharBertTokenizer.from_pretrained(backbone_dir)
    torch.manual_seed(0)
    model = cls.from_pretrained(backbone_dir, num_labels=3).eval()
    single = tok(TEXTS[:1], return_tensors="pt", padding=True)
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    assert batch["input_ids"].shape[1] > single["input_ids"].shape[1]
    with torch.no_grad():
        a, b = model(**single), model(**batch)
    n = single["input_ids"].shape[1]
    if cls is CharBertModel:
        assert torch.allclose(a.last_hidden_state[0], b.last_hidden_state[0, :n], atol=1e-5)
        assert torch.allclose(a.char_last_hidden_state[0], b.char_last_hidden_state[0, :n], atol=1e-5)
    else:
        assert torch.allclose(a.logits[0], b.logits[0], atol=1e-5), "padding must not change the prediction"


# ---- parameters -----------------------------------------------------------------------------


def test_parameter_count_at_bert_base(capsys):
    """Report what the character side adds at BERT-base size (the paper: about 5M)."""
    config = CharBertConfig(char_vocab_size=1024)  # BERT-base sizes by default
    char_side = sum(p.numel() for p in CharEncoder(config).parameters())
    fusion = sum(p.numel() for p in HeterogeneousInteraction(config).parameters())
    shared_total = char_side + fusion
    per_layer_total = char_side + config.num_hidden_layers * fusion
    with capsys.disabled():
        print(f"\n[BERT-base] char encoder {char_side/1e6:.2f}M + fusion {fusion/1e6:.2f}M = {shared_total/1e6:.2f}M extra "
              f"(shared fusion); {per_layer_total/1e6:.2f}M with one fusion per layer")
    assert fusion == 2 * (768 * 768 + 768) + (3 * 1536 * 768 + 768) + 4 * 768
    assert 4.5e6 < shared_total < 6.0e6
    assert per_layer_total > 50e6


# ---- loading and saving ---------------------------------------------------------------------


def test_backbone_weights_loaded_exactly(backbone_dir):
    model = CharBertForPreTraining.from_pretrained(backbone_dir)
    plain = AutoModel.from_pretrained(backbone_dir)
    ours = model.charbert.state_dict()
    compared = 0
    for name, tensor in plain.state_dict().items():
        if name.startswith("pooler"):
            continue  # the plain *ForMaskedLM checkpoint has no pooler
        assert torch.equal(ours[name], tensor), name
        compared += 1
    assert compared >= 30
    # the checkpoint's MLM head is loaded too, and reported
    head = json.loads((backbone_dir / "config.json").read_text())["architectures"][0]
    assert head.endswith("ForMaskedLM") and "mlm_head.dense.weight" in model.loading_info["loaded_keys"]
    assert any(k.startswith("charbert.char_embeddings") for k in model.loading_info["initialized_keys"])
    assert not any(k.startswith("charbert.encoder") for k in model.loading_info["initialized_keys"])


def test_save_load_roundtrip_bit_exact(bert_dir, tmp_path):
    tok = CharBertTokenizer.from_pretrained(bert_dir)
    model = CharBertForPreTraining.from_pretrained(bert_dir, word_vocab_size=77).eval()
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    again = CharBertForPreTraining.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        a, b = model(**batch), again(**batch)
    assert torch.equal(a.mlm_logits, b.mlm_logits) and torch.equal(a.nlm_logits, b.nlm_logits)
    assert again.config.word_vocab_size == 77
    # a fine-tuning head from the pretraining checkpoint: backbone identical, head new
    clf = CharBertForSequenceClassification.from_pretrained(tmp_path, num_labels=2)
    assert torch.equal(clf.charbert.fusion[0].fuse.weight, model.charbert.fusion[0].fuse.weight)


@pytest.mark.parametrize("share", [True, False])
def test_safetensors_and_fusion_sharing(tmp_path, share):
    config = tiny_config(share_fusion=share, num_hidden_layers=3)
    model = eval_model(CharBertModel, config)
    assert len(model.fusion) == (1 if share else 3)
    model.save_pretrained(tmp_path, safe_serialization=True)
    again = CharBertModel.from_pretrained(tmp_path).eval()
    batch = random_batch(config)
    with torch.no_grad():
        assert torch.equal(model(**batch).last_hidden_state, again(**batch).last_hidden_state)


def test_auto_classes(tmp_path):
    config = tiny_config(num_labels=3)
    eval_model(CharBertForSequenceClassification, config).save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), CharBertConfig)
    assert type(AutoModel.from_pretrained(tmp_path)) is CharBertModel
    assert type(AutoModelForSequenceClassification.from_pretrained(tmp_path)) is CharBertForSequenceClassification
    assert type(AutoModelForTokenClassification.from_pretrained(tmp_path)) is CharBertForTokenClassification
    assert type(AutoModelForQuestionAnswering.from_pretrained(tmp_path)) is CharBertForQuestionAnswering
    assert type(AutoModelForPreTraining.from_pretrained(tmp_path)) is CharBertForPreTraining


def test_init_weights_cover_gru_and_conv():
    config = tiny_config(initializer_range=0.02)
    model = eval_model(CharBertModel, config)
    fuse = model.fusion[0].fuse
    assert abs(fuse.weight.std().item() - 0.02) < 0.005 and torch.all(fuse.bias == 0)
    gru = model.char_embeddings.forward_gru
    w_hh = gru.weight_hh_l0.view(3, config.char_hidden_size, config.char_hidden_size)
    for gate in w_hh:  # orthogonal blocks
        assert torch.allclose(gate @ gate.T, torch.eye(config.char_hidden_size), atol=1e-4)
    assert torch.all(gru.bias_ih_l0 == 0)
    assert torch.all(model.char_embeddings.embeddings.weight[config.char_pad_token_id] == 0)


def test_gradient_checkpointing_same_gradients():
    config = tiny_config()
    batch = random_batch(config)
    grads = []
    for checkpointing in (False, True):
        model = eval_model(CharBertForPreTraining, config).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
        labels = batch["input_ids"].clone()
        out = model(**batch, labels=labels)
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


# ---- errors ---------------------------------------------------------------------------------


def test_errors_are_clear(tmp_path, bert_dir):
    gpt = tmp_path / "gpt"
    gpt.mkdir()
    (gpt / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="gpt2"):
        CharBertModel.from_pretrained(gpt)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        CharBertModel.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="backbone_type"):
        CharBertConfig(backbone_type="gpt2")

    config = tiny_config()
    model = eval_model(CharBertModel, config)
    batch = random_batch(config)
    bad_chars = dict(batch, char_input_ids=batch["char_input_ids"] + config.char_vocab_size)
    with pytest.raises(ValueError, match="character vocabulary"):
        model(**bad_chars)
    long = random_batch(config, length=70, chars=90)
    with pytest.raises(ValueError, match="longer than this model allows"):
        model(**long)
    with pytest.raises(ValueError, match="CharBertTokenizer"):
        model(input_ids=batch["input_ids"])


def test_tokenizer_and_model_vocab_mismatch_is_reported(bert_dir):
    """A model whose character embedding is smaller than the tokenizer's vocabulary."""
    tok = CharBertTokenizer.from_pretrained(bert_dir)
    model = CharBertModel.from_pretrained(bert_dir, char_vocab_size=8).eval()
    with pytest.raises(ValueError, match="char_vocab.json does not match"):
        model(**tok(TEXTS, return_tensors="pt", padding=True))


def test_backbone_config_roundtrip():
    bert = BertConfig(hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96)
    config = CharBertConfig.from_backbone_config(bert, word_vocab_size=10)
    assert config.hidden_size == 48 and config.char_hidden_size == 12 and config.backbone_type == "bert"
    back = config.backbone_config()
    assert type(back) is BertConfig and back.hidden_size == 48 and not hasattr(back, "word_vocab_size")
    assert BertModel(back).config.num_hidden_layers == 3
