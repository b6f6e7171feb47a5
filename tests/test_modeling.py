"""CharBertModel and heads: shapes, padding invariance, loading/saving, Auto classes, errors."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import torch_threads
from torch import nn
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
    checkpoint,
)
from charbert.compat import upgrade_saved_config
from charbert.configuration import PREVIOUS_VARIANT
from charbert.modeling import (
    CharEncoder,
    HeterogeneousInteraction,
    reverse_within_length,
    row_lengths,
)

# The authors' released architecture (the default) and our previous variant.
VARIANTS = {"reference_architecture": {}, "previous_variant": PREVIOUS_VARIANT}

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


def test_heads_take_named_inputs_and_return_hidden_states():
    """Every head passes output_hidden_states and position_ids down; outputs carry both channels' states."""
    config = tiny_config(num_labels=3)
    batch = random_batch(config)
    mc_batch = {k: v.unsqueeze(1).expand(-1, 2, *v.shape[1:]).contiguous() for k, v in batch.items()}
    for cls in (CharBertForPreTraining, CharBertForSequenceClassification, CharBertForTokenClassification,
                CharBertForQuestionAnswering, CharBertForMultipleChoice):
        model = eval_model(cls, config)
        inputs = mc_batch if cls is CharBertForMultipleChoice else batch
        out = model(**inputs, output_hidden_states=True)
        assert len(out.hidden_states) == len(out.char_hidden_states) == 3, cls.__name__
        assert model(**inputs).hidden_states is None, cls.__name__
    model = eval_model(CharBertForSequenceClassification, config)
    shifted = torch.arange(12).expand(3, -1) + 3
    with torch.no_grad():
        assert not torch.allclose(model(**batch).logits, model(**batch, position_ids=shifted).logits), "position_ids reach the model"


# ---- padding invariance --------------------------------------------------------------------


def test_reverse_within_length():
    index = reverse_within_length(torch.tensor([3, 5, 0]), 5)
    assert index.tolist() == [[2, 1, 0, 3, 4], [4, 3, 2, 1, 0], [0, 1, 2, 3, 4]]


def test_row_lengths_count_holes_inside():
    mask = torch.tensor([[1, 1, 0, 1, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]])
    assert row_lengths(mask).tolist() == [4, 6, 0]


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_gru_padding_invariance(variant):
    config = tiny_config(**variant)
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


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
@pytest.mark.parametrize("cls", [CharBertModel, CharBertForSequenceClassification])
def test_encoder_and_pooling_padding_invariance(backbone_dir, cls, variant):
    tok = CharBertTokenizer.from_pretrained(backbone_dir)
    torch.manual_seed(0)
    model = cls.from_pretrained(backbone_dir, num_labels=3, **variant).eval()
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


def test_reference_padding_is_the_authors_bidirectional_gru():
    """char_padding="reference": our two GRUs compute one plain nn.GRU(bidirectional=True) over the
    whole padded row (what the authors run), padding included."""
    config = tiny_config(char_padding="reference")
    torch.manual_seed(0)
    encoder = CharEncoder(config).eval()
    bigru = nn.GRU(config.char_embedding_size, config.char_hidden_size, batch_first=True, bidirectional=True)
    for suffix, gru in (("", encoder.forward_gru), ("_reverse", encoder.backward_gru)):
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(bigru, f"{name}_l0{suffix}").data.copy_(getattr(gru, f"{name}_l0"))
    chars = torch.cat([torch.randint(5, 300, (2, 15)), torch.zeros(2, 9, dtype=torch.long)], 1)  # 9 padding chars
    starts, ends = torch.tensor([[0, 4, 9], [2, 5, 14]]), torch.tensor([[3, 8, 14], [4, 13, 14]])
    with torch.no_grad():
        states, _ = bigru(encoder.embeddings(chars))  # (B, C, 2G)
        expected = torch.cat([states.gather(1, starts[..., None].expand(-1, -1, states.size(-1))),
                              states.gather(1, ends[..., None].expand(-1, -1, states.size(-1)))], -1)
        ours = encoder(chars, (chars != 0).long(), starts, ends)
    assert torch.allclose(ours, expected, atol=1e-6)


def test_padding_modes_agree_without_padding_and_differ_with_it():
    """The two padding modes are one function on unpadded rows; padding moves only the reference mode."""
    exact, reference = tiny_config(), tiny_config(char_padding="reference")
    model = eval_model(CharBertForSequenceClassification, exact)
    ref_model = eval_model(CharBertForSequenceClassification, reference)
    ref_model.load_state_dict(model.state_dict())
    batch = random_batch(exact, batch=2)
    padded = dict(batch)
    padded["input_ids"] = torch.cat([batch["input_ids"], torch.zeros(2, 4, dtype=torch.long)], 1)
    padded["attention_mask"] = torch.cat([batch["attention_mask"], torch.zeros(2, 4, dtype=torch.long)], 1)
    for key, pad in (("char_input_ids", 0), ("char_attention_mask", 0)):
        padded[key] = torch.cat([batch[key], torch.full((2, 10), pad)], 1)
    for key in ("char_start_positions", "char_end_positions"):
        padded[key] = torch.cat([batch[key], torch.full((2, 4), 49)], 1)  # padded tokens at the last char
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, ref_model(**batch).logits, atol=1e-6)
        assert torch.allclose(model(**padded).logits, model(**batch).logits, atol=1e-5), "exact: padding changes nothing"
        moved = (ref_model(**padded).logits - ref_model(**batch).logits).abs().max()
    assert moved > 1e-4, "reference mode: the backward GRU, the conv and the mean see the padding"


# ---- architecture variants -----------------------------------------------------------------


def test_default_is_the_authors_architecture():
    """New models build the authors' modules only; PREVIOUS_VARIANT adds ours back."""
    default = dict(eval_model(CharBertModel, tiny_config()).named_modules())
    previous = dict(eval_model(CharBertModel, tiny_config(**PREVIOUS_VARIANT)).named_modules())
    assert "char_embeddings.LayerNorm" not in default and "char_embeddings.dropout" not in default
    assert "fusion.0.act" not in default and "fusion.0.dropout" not in default
    assert default["fusion.0.word_proj"].bias is None and default["fusion.0.char_proj"].bias is None
    assert isinstance(previous["char_embeddings.LayerNorm"], nn.LayerNorm)
    assert isinstance(previous["char_embeddings.dropout"], nn.Dropout)
    assert "fusion.0.act" in previous and isinstance(previous["fusion.0.dropout"], nn.Dropout)
    assert previous["fusion.0.word_proj"].bias is not None and previous["fusion.0.char_proj"].bias is not None
    # everything else is the same module tree
    assert set(previous) - set(default) == {"char_embeddings.LayerNorm", "char_embeddings.dropout", "fusion.0.act", "fusion.0.dropout"}
    config = tiny_config()
    assert (config.char_token_norm, config.fusion_activation, config.fusion_bias) == (False, False, False)
    assert (config.char_padding, config.char_layout) == ("exact", "offsets")


@pytest.mark.parametrize("field, value", [("char_padding", "packed"), ("char_layout", "bytes"), ("fusion_bias", "yes")])
def test_bad_architecture_values_are_one_line_errors(field, value):
    with pytest.raises(ValueError, match=field):
        tiny_config(**{field: value})


def test_old_checkpoint_without_the_switches_loads_as_it_was(tmp_path):
    """A config.json saved before the switches existed means our previous variant; a new one says which."""
    config = tiny_config(**PREVIOUS_VARIANT)
    model = eval_model(CharBertModel, config)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    for key in ("char_token_norm", "fusion_activation", "fusion_bias", "char_padding", "char_layout"):
        assert key in saved, f"{key} must be written, so that absence means an old checkpoint"
        if key in PREVIOUS_VARIANT:
            del saved[key]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    again, info = CharBertModel.from_pretrained(tmp_path, output_loading_info=True)
    again.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"], "every saved tensor has its module again"
    assert all(getattr(again.config, k) is True for k in PREVIOUS_VARIANT)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), CharBertConfig) and AutoConfig.from_pretrained(tmp_path).fusion_bias
    batch = random_batch(config)
    with torch.no_grad():
        assert torch.equal(model(**batch).last_hidden_state, again(**batch).last_hidden_state)
    # a new model saved today loads as the authors' architecture
    new_dir = tmp_path / "new"
    eval_model(CharBertModel, tiny_config()).save_pretrained(new_dir)
    loaded = CharBertModel.from_pretrained(new_dir)
    assert not any(getattr(loaded.config, k) for k in PREVIOUS_VARIANT)
    assert loaded.char_embeddings.LayerNorm is None and loaded.fusion[0].word_proj.bias is None
    assert upgrade_saved_config({"fusion_bias": False}) == {"fusion_bias": False, "char_token_norm": True, "fusion_activation": True}


# ---- parameters -----------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_parameter_count_at_bert_base(capsys, variant):
    """Report what the character side adds at BERT-base size (the paper: about 5M)."""
    config = CharBertConfig(char_vocab_size=1024, **variant)  # BERT-base sizes by default
    char_side = sum(p.numel() for p in CharEncoder(config).parameters())
    fusion = sum(p.numel() for p in HeterogeneousInteraction(config).parameters())
    shared_total = char_side + fusion
    per_layer_total = char_side + config.num_hidden_layers * fusion
    with capsys.disabled():
        print(f"\n[BERT-base, {'previous variant' if variant else 'default'}] char encoder {char_side/1e6:.2f}M + "
              f"fusion {fusion/1e6:.2f}M = {shared_total/1e6:.2f}M extra "
              f"(shared fusion); {per_layer_total/1e6:.2f}M with one fusion per layer")
    biases, char_norm = (768, 2 * 768) if variant else (0, 0)
    assert fusion == 2 * (768 * 768 + biases) + (3 * 1536 * 768 + 768) + 4 * 768
    gru = 2 * 3 * (256 * 192 + 192 * 192 + 2 * 192)
    assert char_side == 1024 * 256 + gru + char_norm
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


def test_heads_ignore_a_saved_pooler(tmp_path):
    """A CharBertModel folder (with its pooler) loads into a head with nothing reported: heads have no pooler."""
    config = tiny_config(num_labels=2)
    base = eval_model(CharBertModel, config)
    base.save_pretrained(tmp_path)
    head, info = CharBertForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["unexpected_keys"] and set(info["missing_keys"]) == {"classifier.weight", "classifier.bias"}
    assert torch.equal(head.charbert.fusion[0].fuse.weight, base.fusion[0].fuse.weight)


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
    with pytest.raises(FileNotFoundError, match="No model checkpoint at .*does not exist"):
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


def test_checkpoint_module_reads_folders_and_lengths(tmp_path, bert_dir, roberta_dir):
    assert checkpoint.read_model_type(bert_dir) == "bert" and checkpoint.read_model_type(roberta_dir) == "roberta"
    assert checkpoint.read_config_dict(bert_dir)["architectures"][0].endswith("ForMaskedLM")
    plain_roberta = AutoConfig.from_pretrained(roberta_dir)
    assert checkpoint.max_sequence_length(plain_roberta) == plain_roberta.max_position_embeddings - plain_roberta.pad_token_id - 1
    assert checkpoint.max_sequence_length(AutoConfig.from_pretrained(bert_dir)) == 128
    wrapped = CharBertConfig.from_backbone_config(plain_roberta)
    assert checkpoint.max_sequence_length(wrapped) == checkpoint.max_sequence_length(plain_roberta) == wrapped.max_sequence_length
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a readable model config"):
        checkpoint.read_model_type(tmp_path)
    # the public entry delegates: a plain folder builds CharBERT on it
    model = CharBertModel.from_backbone(bert_dir)
    assert model.loading_info["source"] == str(bert_dir)


def test_backbone_config_roundtrip():
    bert = BertConfig(hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96)
    config = CharBertConfig.from_backbone_config(bert, word_vocab_size=10)
    assert config.hidden_size == 48 and config.char_hidden_size == 12 and config.backbone_type == "bert"
    back = config.backbone_config()
    assert type(back) is BertConfig and back.hidden_size == 48 and not hasattr(back, "word_vocab_size")
    assert BertModel(back).config.num_hidden_layers == 3


@pytest.mark.parametrize("kernel,length", [(3, 9), (3, 1), (5, 2), (5, 7), (1, 4)])
def test_fusion_conv_as_one_matrix_product_equals_conv1d(kernel, length):
    """`sum_shifted_taps` of one GEMM over all the conv's taps (the fusion's inference path) is nn.Conv1d with
    same padding, values and gradients, lengths shorter than the kernel included."""
    from charbert.modeling import sum_shifted_taps

    torch.manual_seed(0)
    conv = nn.Conv1d(12, 6, kernel, padding=kernel // 2)
    x = torch.randn(3, length, 12, requires_grad=True)
    expected = conv(x.transpose(1, 2)).transpose(1, 2)
    taps_weight = conv.weight.permute(2, 0, 1).reshape(kernel * 6, 12)  # tap-major, as merged_fusion_weights lays out
    got = sum_shifted_taps(torch.nn.functional.linear(x, taps_weight), kernel) + conv.bias
    assert got.shape == expected.shape == (3, length, 6)
    assert (got - expected).abs().max() <= 1e-6
    grad = torch.randn_like(got)
    expected_grads = torch.autograd.grad(expected, [x, conv.weight, conv.bias], grad)
    got_grads = torch.autograd.grad(got, [x, conv.weight, conv.bias], grad)
    for a, b in zip(expected_grads, got_grads):
        assert (a - b).abs().max() <= 1e-5


@pytest.mark.parametrize("fusion_bias,fusion_norm,fused_adamw", [(False, "post", True), (True, "post", False),
                                                                 (False, "pre", True)])
def test_fusion_inference_path_equals_training_path_and_follows_weight_updates(fusion_bias, fusion_norm, fused_adamw):
    """Without gradients the fusion runs its maps merged into the conv taps (cached merged weights): the same
    function as the maps + Conv1d path within float rounding, padding masked alike, and the cache is redone
    when a weight changes: an optimizer step, also fused AdamW's, which writes the weights in place without
    bumping their version counters."""
    from charbert.modeling import HeterogeneousInteraction

    torch.manual_seed(0)
    config = CharBertConfig(hidden_size=32, num_attention_heads=2, intermediate_size=64, fusion_bias=fusion_bias,
                            fusion_norm=fusion_norm, hidden_dropout_prob=0.0)
    fusion = HeterogeneousInteraction(config).eval()
    for p in fusion.parameters():
        nn.init.normal_(p, std=0.2)
    word, char = torch.randn(3, 7, 32), torch.randn(3, 7, 32)
    mask = torch.ones(3, 7, 1)
    mask[1, 4:] = 0

    def both_paths():
        with torch.enable_grad():
            grad_path = fusion(word, char, mask)
        with torch.inference_mode():
            fast_path = fusion(word, char, mask)
        return grad_path, fast_path

    for _ in range(2):  # before and after an update of every weight
        grad_path, fast_path = both_paths()
        for a, b in zip(grad_path, fast_path):
            assert (a - b).abs().max() <= 1e-5 * (1 + a.abs().max())
        if fused_adamw:
            optimizer = torch.optim.AdamW(fusion.parameters(), lr=0.05, fused=True)
        else:
            optimizer = torch.optim.SGD(fusion.parameters(), lr=0.05)
        fusion.train()
        sum(x.sum() for x in fusion(word, char, mask)).backward()
        optimizer.step()
        fusion.eval()
    # a padded position never reaches a real one through the merged taps either
    changed = word.clone()
    changed[1, 5] += 100.0
    with torch.inference_mode():
        before, after = fusion(word, char, mask)[0], fusion(changed, char, mask)[0]
    assert torch.equal(before[1, :4], after[1, :4])


@pytest.mark.parametrize("fusion_bias,kernel", [(False, 3), (True, 3), (False, 5)])
def test_fusion_products_on_the_real_tokens_alone_give_the_padded_numbers(fusion_bias, kernel, monkeypatch):
    """The inference path on a padded batch runs its matrix products on the real tokens only (RealTokens)
    and gathers their taps onto the conv's zero-padded grid: every position, padding included, as the padded
    products give it, for right- and left-padded rows, a one-token row and a row without padding."""
    from charbert.modeling import real_tokens

    torch.manual_seed(0)
    config = CharBertConfig(hidden_size=32, num_attention_heads=2, intermediate_size=64, fusion_bias=fusion_bias,
                            fusion_kernel_size=kernel)
    fusion = HeterogeneousInteraction(config).eval()
    for p in fusion.parameters():
        nn.init.normal_(p, std=0.2)
    word, char = torch.randn(4, 9, 32), torch.randn(4, 9, 32)
    mask = torch.ones(4, 9)
    mask[1, 5:] = 0  # right padding
    mask[2, :6] = 0  # left padding
    mask[3, 1:] = 0  # one token
    real = real_tokens(mask, kernel // 2)
    n = int(mask.sum())
    assert real.index.tolist() == [i for i, m in enumerate(mask.flatten().tolist()) if m]
    halo = [n] * (kernel // 2)  # outside the row: row N (zeros); padding: row N + 1 (the conv's bias)
    assert real.grid[1].tolist() == halo + [9, 10, 11, 12, 13] + [n + 1] * 4 + halo
    assert real.grid[2].tolist() == halo + [n + 1] * 6 + [14, 15, 16] + halo
    assert real.grid[3].tolist() == halo + [17] + [n + 1] * 8 + halo
    rows_seen = []
    addmm = torch.addmm

    def spy(bias, x, *args, **kwargs):
        rows_seen.append(x.size(0))
        return addmm(bias, x, *args, **kwargs)

    with torch.inference_mode():
        padded = fusion(word, char, mask.unsqueeze(-1))
        monkeypatch.setattr(torch, "addmm", spy)
        packed = fusion(word, char, mask.unsqueeze(-1), real=real)
    assert rows_seen == [n, n]  # both products ran on the 9 + 5 + 3 + 1 real tokens
    for a, b in zip(padded, packed):
        assert (a - b).abs().max() <= 1e-6 * (1 + a.abs().max())
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision runs it too
        bf16 = fusion(word, char, mask.unsqueeze(-1), real=real)
    for a, b in zip(padded, bf16):
        assert (a - b.float()).abs().max() <= 0.05 * (1 + a.abs().max())


def test_model_on_a_padded_batch_packs_the_fusion_and_keeps_its_outputs(monkeypatch):
    """CharBertModel packs the fusion's products only at inference, on a padded batch, in exact padding mode;
    its outputs (every layer, every position) are those of the padded products within float rounding."""
    from charbert import modeling

    config = tiny_config()
    model = eval_model(CharBertModel, config)
    batch = random_batch(config)
    batch["attention_mask"][1, 7:] = 0
    packed_calls = []
    real_tokens = modeling.real_tokens
    packs_real_tokens = modeling.packs_real_tokens
    monkeypatch.setattr(modeling, "real_tokens", lambda mask, halo: packed_calls.append(mask.shape) or real_tokens(mask, halo))
    with torch.inference_mode():
        packed = model(**batch, output_hidden_states=True)
        assert packed_calls == [(3, 12)]
        monkeypatch.setattr(modeling, "packs_real_tokens", lambda mask: False)
        padded = model(**batch, output_hidden_states=True)
        assert len(packed_calls) == 1
    for a, b in zip(padded.hidden_states + padded.char_hidden_states, packed.hidden_states + packed.char_hidden_states):
        assert (a - b).abs().max() <= 1e-6 * (1 + a.abs().max())
    monkeypatch.setattr(modeling, "packs_real_tokens", packs_real_tokens)
    with torch.no_grad():
        model(**{**batch, "attention_mask": torch.ones_like(batch["attention_mask"])})  # nothing to skip
        model.train()  # the training path
        model(**batch)
        CharBertModel(tiny_config(char_padding="reference")).eval()(**batch)  # the authors' padding
    with torch.enable_grad():
        model.eval()(**batch)  # gradients taken
    assert len(packed_calls) == 1


def test_stacks_channels_except_for_large_cpu_inference_batches(monkeypatch):
    from charbert import modeling

    monkeypatch.setattr(modeling, "CPU_STACKED_TOKENS_LIMIT", 100)
    small, large = torch.zeros(4, 25, 8), torch.zeros(4, 26, 8)
    assert modeling.stacks_channels(small) and modeling.stacks_channels(large)  # gradients taken
    with torch.no_grad():
        assert modeling.stacks_channels(small) and not modeling.stacks_channels(large)
        assert modeling.stacks_channels(torch.zeros(4, 26, 8, device="meta"))  # not the CPU


@pytest.fixture
def two_torch_threads():
    with torch_threads(2):
        yield


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_gru_directions_at_once_give_the_same_states(variant, mode, two_torch_threads, monkeypatch):
    """Inference runs the backward GRU in the worker thread (seen by a hook) and the forward one in the caller's,
    with the same states as one after the other, on a padded batch; training and short rows stay in one thread."""
    import threading

    from charbert import gru_inference

    torch.manual_seed(0)
    encoder = CharEncoder(tiny_config(**variant)).eval()
    g = torch.Generator().manual_seed(1)
    chars = torch.randint(5, 300, (3, 80), generator=g)
    mask = torch.ones_like(chars)
    mask[1, 50:] = 0
    chars[1, 50:] = 0
    starts = torch.sort(torch.randint(0, 48, (3, 10), generator=g), dim=1).values
    threads = {}
    for name in ("forward_gru", "backward_gru"):
        getattr(encoder, name).register_forward_hook(
            lambda m, args, out, name=name: threads.__setitem__(name, threading.current_thread().name))
    context = torch.no_grad if mode == "no_grad" else torch.inference_mode
    with context():
        at_once = encoder(chars, mask, starts, starts + 1)
        assert threads["backward_gru"].startswith("charbert-gru") and threads["forward_gru"] == "MainThread"
        assert not at_once.requires_grad and at_once.is_inference() == (mode == "inference_mode")
        monkeypatch.setattr(gru_inference, "MIN_PARALLEL_CHARS", 81)  # rows of 80: one thread
        one_by_one = encoder(chars, mask, starts, starts + 1)
        assert threads["backward_gru"] == "MainThread"
    assert torch.equal(at_once, one_by_one)
    monkeypatch.setattr(gru_inference, "MIN_PARALLEL_CHARS", 1)
    trained = encoder(chars, mask, starts, starts + 1)  # gradients taken: one thread
    assert threads["backward_gru"] == "MainThread" and trained.requires_grad
    assert torch.allclose(trained, at_once, atol=1e-6)


def test_gru_directions_at_once_only_with_two_threads_and_a_new_worker_after_a_fork(monkeypatch):
    from charbert import gru_inference

    chars = torch.zeros(2, 64, 4)
    with torch.no_grad():
        with torch_threads(2):
            assert gru_inference.runs_directions_in_parallel(chars)
            assert not gru_inference.runs_directions_in_parallel(chars[:, :63])
        with torch_threads(1):
            assert not gru_inference.runs_directions_in_parallel(chars)
    with torch_threads(2):
        assert not gru_inference.runs_directions_in_parallel(chars)  # gradients taken
    first = gru_inference.worker()
    assert gru_inference.worker() is first
    monkeypatch.setattr(gru_inference.os, "getpid", lambda: -1)  # as in a forked child: its own worker
    assert gru_inference.worker() is not first
