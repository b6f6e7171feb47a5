"""CharBERT on ELECTRA discriminator checkpoints (`ElectraAdapter`): a tiny random ElectraForPreTraining
whose word embeddings (embedding_size 16) are narrower than its layers (hidden_size 32), so the
embeddings' projection is exercised, with a WordPiece tokenizer trained on local text.

Every backbone tensor loads exactly; the identity start reproduces the plain ElectraModel on a padded
batch; every head, save/from_pretrained, the Auto classes and fill-mask work; `pretrain` (MLM + NLM)
and `finetune.glue` / `finetune.ner` run end to end. The discriminator has no MLM head: CharBERT's is
new (generator-shaped, decoder tied to the word embeddings), or loaded from a generator checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli
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
    pipeline,
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
from charbert.training import read_log
from charbert.vocab import WordVocab

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


def head_inputs(cls, batch):
    length = batch["input_ids"].shape[1]
    if cls is CharBertForMultipleChoice:
        return {k: v.unsqueeze(1).expand(-1, 2, *v.shape[1:]).contiguous() for k, v in batch.items()}, \
            {"labels": torch.tensor([0, 1, 1, 0])}
    labels = torch.full((4, length), -100)
    labels[:, 1] = 7
    extra = {
        CharBertModel: {},
        CharBertForPreTraining: {"labels": labels, "nlm_labels": labels.clamp(max=39)},
        CharBertForMaskedLM: {"labels": labels},
        CharBertForSequenceClassification: {"labels": torch.tensor([0, 2, 1, 0])},
        CharBertForTokenClassification: {"labels": labels.clamp(max=2)},
        CharBertForQuestionAnswering: {"start_positions": torch.tensor([1, 2, 0, 3]),
                                       "end_positions": torch.tensor([2, 4, 0, 3])},
    }[cls]
    return dict(batch), extra


@pytest.mark.parametrize("cls", list(AUTO))
def test_every_head_saves_and_loads_through_the_auto_classes(electra_dir, tmp_path, cls):
    tok, batch = padded_batch(electra_dir)
    torch.manual_seed(0)
    model = cls.from_pretrained(electra_dir, num_labels=3, word_vocab_size=40,
                                char_vocab_size=len(tok.char_vocab)).eval()
    inputs, extra = head_inputs(cls, batch)
    with torch.no_grad():
        out = model(**inputs, **extra, output_hidden_states=True)
    if cls is CharBertModel:
        assert out.last_hidden_state.shape == (4, batch["input_ids"].shape[1], 32) and out.pooler_output is None
    else:
        assert torch.isfinite(out.loss)
    assert len(out.hidden_states) == 3  # embeddings (projected to hidden_size) + 2 layers
    assert out.hidden_states[0].shape[-1] == model.config.hidden_size
    model.save_pretrained(tmp_path / "saved")
    tok.save_pretrained(tmp_path / "saved")
    again = AUTO[cls].from_pretrained(tmp_path / "saved").eval()
    assert type(again) is cls and again.config.backbone_type == "electra"
    with torch.no_grad():
        out_again = again(**inputs, **extra, output_hidden_states=True)
    for a, b in zip(out.values(), out_again.values()):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)


def test_fill_mask_pipeline(electra_dir, tmp_path):
    tok, _ = padded_batch(electra_dir)
    pretraining = CharBertForPreTraining.from_pretrained(electra_dir, word_vocab_size=40,
                                                         char_vocab_size=len(tok.char_vocab)).eval()
    out = tmp_path / "pretrained"
    pretraining.save_pretrained(out)
    tok.save_pretrained(out)
    fill = pipeline("fill-mask", model=str(out), device="cpu", top_k=3)
    assert type(fill.model) is CharBertForMaskedLM
    text = f"The module {tok.mask_token} the value."
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        logits = pretraining(**enc).mlm_logits[0]
    k = enc["input_ids"][0].tolist().index(tok.mask_token_id)
    assert [g["token"] for g in fill(text)] == torch.topk(logits[k], 3).indices.tolist()


@pytest.mark.slow
def test_pretrain_charbert_objective_on_electra(electra_dir, tiny_texts, tmp_path):
    from pretrain.__main__ import main

    (tmp_path / "train.txt").write_text("\n".join(tiny_texts[:300]), encoding="utf-8")
    (tmp_path / "valid.txt").write_text("\n".join(tiny_texts[600:650]), encoding="utf-8")
    WordVocab.build(tiny_texts, max_size=300).save(tmp_path / "vocab")
    out = tmp_path / "out"
    assert main(["--model_name_or_path", str(electra_dir), "--train_file", str(tmp_path / "train.txt"),
                 "--validation_file", str(tmp_path / "valid.txt"), "--word_vocab", str(tmp_path / "vocab"),
                 "--objective", "charbert", "--max_seq_length", "64", "--per_device_train_batch_size", "4",
                 "--learning_rate", "1e-3", "--logging_steps", "1", "--max_train_steps", "3", "--seed", "3",
                 "--max_eval_blocks", "4", "--output_dir", str(out)]) == 0
    steps = [r for r in read_log(out / "log.jsonl") if "loss" in r]
    assert steps and all(r["mlm_loss"] > 0 and r["nlm_loss"] > 0 for r in steps)
    model = CharBertForPreTraining.from_pretrained(out)
    assert model.config.backbone_type == "electra" and model.config.embedding_size == 16


@pytest.mark.slow
def test_finetune_glue_and_ner_on_electra(electra_dir, task_files, tmp_path):
    train = ["--max_train_steps", "3", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "4",
             "--learning_rate", "1e-3", "--seed", "3", "--max_seq_length", "64", "--charbert"]
    glue = tmp_path / "glue"
    assert run_cli("glue", "--task_name", "mrpc", "--train_file", task_files["mrpc_train"], "--validation_file",
                   task_files["mrpc_dev"], "--model_name_or_path", electra_dir, "--output_dir", glue, *train) == 0
    record = json.loads((glue / "metrics.json").read_text())
    assert record["model"]["charbert"] is True and record["eval"]["num_examples"] == 13
    assert json.loads((glue / "config.json").read_text())["backbone_type"] == "electra"
    pred = tmp_path / "glue_pred"
    assert run_cli("glue", "--do_predict", "--task_name", "mrpc", "--test_file", task_files["mrpc_dev"],
                   "--model_name_or_path", glue, "--output_dir", pred, "--max_seq_length", "64") == 0
    again = json.loads((pred / "metrics.json").read_text())
    assert again["predict"]["accuracy"] == pytest.approx(record["eval"]["accuracy"], abs=1e-9)
    ner = tmp_path / "ner"
    assert run_cli("ner", "--train_file", task_files["ner_train"], "--validation_file", task_files["ner_dev"],
                   "--model_name_or_path", electra_dir, "--output_dir", ner, *train) == 0
    assert "f1" in json.loads((ner / "metrics.json").read_text())["eval"]
