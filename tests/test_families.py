"""CharBERT on the encoder families added after BERT/RoBERTa/ELECTRA: XLM-RoBERTa and CamemBERT
(SentencePiece), DeBERTa-v2/v3 (relative-position attention) and ModernBERT (pre-norm layers, rotary
embeddings, alternating global / sliding-window attention).

Each family gets a tiny random *ForMaskedLM checkpoint and a tokenizer of its kind trained on local text
(`charbert.tiny`), with every LayerNorm moved far from (1, 0) as a trained model's are, so that an exact
start is not exact by accident. Checked per family: every backbone tensor and the MLM head load exactly;
the identity start (per-layer fusion) reproduces the plain model's `last_hidden_state` (1e-5) and MLM logits on a padded
batch, and the default start does not; every head saves and loads through the Auto classes; fill-mask;
the tokenizer's word starts and the pretraining collator's word grouping; and (slow) `pretrain` with
MLM + NLM, every `finetune.*` program and `finetune.robustness` end to end.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import run_cli
from torch import nn
from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer, pipeline

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
from charbert.backbones import get_adapter
from charbert.pretraining.collator import token_words
from charbert.pretraining.vocab import WordVocab, split_words
from charbert.tiny import make_tiny_checkpoint
from charbert.training import read_log

FAMILIES = ["xlm-roberta", "camembert", "deberta-v2", "modernbert"]
END_TO_END = ["xlm-roberta", "deberta-v2", "modernbert"]  # CamemBERT is XLM-RoBERTa's code under another name
TEXTS = ["He plays backhand, and she wins.", "Totally unrelated, and a good deal longer: C# code with many words in it!",
         "ok", "Numbers 1,234 and symbols #hash stay."]
HEADS = [CharBertModel, CharBertForPreTraining, CharBertForMaskedLM, CharBertForSequenceClassification,
         CharBertForTokenClassification, CharBertForQuestionAnswering, CharBertForMultipleChoice]


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory, tiny_texts):
    """family -> a tiny plain *ForMaskedLM folder with trained-looking LayerNorms (built on first use)."""
    built = {}

    def get(family):
        if family not in built:
            path = make_tiny_checkpoint(tmp_path_factory.mktemp(f"tiny_{family}"), family, tiny_texts, vocab_size=600,
                                        hidden_size=32, layers=3)
            model = AutoModelForMaskedLM.from_pretrained(path)
            gen = torch.Generator().manual_seed(7)
            with torch.no_grad():
                for module in model.modules():
                    if isinstance(module, nn.LayerNorm):
                        module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=gen))
                        if module.bias is not None:
                            module.bias.copy_(0.3 * torch.randn(module.bias.shape, generator=gen))
            model.save_pretrained(path)
            built[family] = path
        return built[family]

    return get


def family_path(family, family_dirs, request):
    """The tiny folder of a family: conftest's ELECTRA discriminator, or a masked LM of the others."""
    return request.getfixturevalue("electra_dir") if family == "electra" else family_dirs(family)


def padded_batch(path):
    tok = CharBertTokenizer.from_pretrained(path)
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    assert batch["attention_mask"].min() == 0 and batch["input_ids"].shape[1] > 12  # crosses ModernBERT's 8-token window
    return tok, batch


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_every_backbone_tensor_and_the_mlm_head_load_exactly(family_dirs, family):
    path = family_dirs(family)
    model = CharBertForPreTraining.from_pretrained(path, word_vocab_size=40)
    plain = AutoModelForMaskedLM.from_pretrained(path)
    base = plain.base_model
    assert model.config.backbone_type == family == plain.config.model_type
    ours = model.charbert.state_dict()
    for name, tensor in base.state_dict().items():
        assert torch.equal(ours[name], tensor), name
    adapter = get_adapter(family)
    loaded = set(model.loading_info["loaded_keys"])
    assert {"charbert." + k for k in base.state_dict() if k in ours} <= loaded
    plain_state = plain.state_dict()
    heads = {ours_name: name for name, ours_name in adapter.mlm_head_keys.items() if name in plain_state}
    assert "mlm_head.dense.weight" in heads and "mlm_head.bias" in heads
    for ours_name, name in heads.items():
        assert torch.equal(model.state_dict()[ours_name], plain_state[name]), name
        assert ours_name in loaded
    assert type(adapter.layers(model.charbert)[0]).__name__ in model._no_split_modules


@pytest.mark.parametrize("family", FAMILIES)
def test_identity_start_reproduces_the_plain_model(family_dirs, family):
    """Subword channel = plain last_hidden_state (1e-5) and MLM logits = the plain masked LM's, on the real
    tokens of a padded batch; the character channel is alive; the default start differs (the test can fail)."""
    path = family_dirs(family)
    tok, batch = padded_batch(path)
    real = batch["attention_mask"].bool()
    subword = {k: batch[k] for k in tok.tokenizer.model_input_names if k in batch}
    plain_lm = AutoModelForMaskedLM.from_pretrained(path).eval()
    plain = AutoModel.from_pretrained(path).eval()
    torch.manual_seed(0)
    model = CharBertForMaskedLM.from_pretrained(path, new_module_init="identity", share_fusion=False,
                                               char_vocab_size=len(tok.char_vocab)).eval()
    torch.manual_seed(0)
    base = CharBertModel.from_pretrained(path, new_module_init="identity", share_fusion=False,
                                               char_vocab_size=len(tok.char_vocab)).eval()
    with torch.no_grad():
        expected = plain(**subword).last_hidden_state
        got = base(**batch)
        expected_logits = plain_lm(**subword).logits
        logits = model(**batch).logits
    assert (got.last_hidden_state[real] - expected[real]).abs().max() <= 1e-5
    assert (logits[real] - expected_logits[real]).abs().max() <= 1e-4
    assert (got.char_last_hidden_state[real] - got.last_hidden_state[real]).abs().max() > 1e-2
    torch.manual_seed(0)
    normal = CharBertModel.from_pretrained(path, new_module_init="normal", char_vocab_size=len(tok.char_vocab)).eval()
    with torch.no_grad():
        assert (normal(**batch).last_hidden_state[real] - expected[real]).abs().max() > 1e-2


@pytest.mark.parametrize("family", FAMILIES)
def test_resized_word_embeddings_stay_tied_to_the_mlm_head(family_dirs, family):
    """`resize_token_embeddings` finds each family's word embedding (ModernBERT's is `tok_embeddings`) and
    the tied MLM head's bias follows it (kept words keep theirs, new ones start at 0)."""
    model = CharBertForMaskedLM.from_pretrained(family_dirs(family), char_vocab_size=80)
    vocab = model.config.vocab_size
    bias = model.mlm_head.bias.detach().clone()
    model.resize_token_embeddings(vocab + 8)
    assert torch.equal(model.mlm_head.bias[:vocab], bias) and not model.mlm_head.bias[vocab:].any()
    embeddings = model.charbert.get_input_embeddings()
    assert embeddings.weight.shape[0] == vocab + 8 and model.config.vocab_size == vocab + 8
    assert embeddings is model.charbert.get_submodule(get_adapter(family).word_embeddings_path)
    batch = {"input_ids": torch.tensor([[1, vocab + 3, 5]]), "char_input_ids": torch.tensor([[1, 2, 3, 4]]),
             "char_start_positions": torch.tensor([[0, 1, 2]]), "char_end_positions": torch.tensor([[0, 1, 3]])}
    with torch.no_grad():
        assert model(**batch).logits.shape == (1, 3, vocab + 8)


def test_modernbert_fuses_before_its_norm_and_deberta_after(family_dirs):
    """The pre-norm family's fusion adds to the residual stream (config switch `fusion_norm`), the post-norm
    families' normalise after the residual, as the authors'; the switch can be set either way."""
    modern = CharBertModel.from_pretrained(family_dirs("modernbert"), char_vocab_size=80)
    assert modern.config.fusion_norm == "pre" and modern.fusion[0].pre_norm
    deberta = CharBertModel.from_pretrained(family_dirs("deberta-v2"), char_vocab_size=80)
    assert deberta.config.fusion_norm == "post" and not deberta.fusion[0].pre_norm
    post = CharBertModel.from_pretrained(family_dirs("modernbert"), char_vocab_size=80, fusion_norm="post")
    assert post.config.fusion_norm == "post"
    with pytest.raises(ValueError, match="fusion_norm must be one of"):
        CharBertModel.from_pretrained(family_dirs("modernbert"), char_vocab_size=80, fusion_norm="middle")


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


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES + ["electra"])
def test_every_head_saves_and_loads_through_the_auto_classes(family_dirs, family, tmp_path, request):
    from transformers import (
        AutoModelForMultipleChoice,
        AutoModelForPreTraining,
        AutoModelForQuestionAnswering,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )

    auto = {CharBertModel: AutoModel, CharBertForPreTraining: AutoModelForPreTraining,
            CharBertForMaskedLM: AutoModelForMaskedLM, CharBertForSequenceClassification: AutoModelForSequenceClassification,
            CharBertForTokenClassification: AutoModelForTokenClassification,
            CharBertForQuestionAnswering: AutoModelForQuestionAnswering, CharBertForMultipleChoice: AutoModelForMultipleChoice}
    path = family_path(family, family_dirs, request)
    tok, batch = padded_batch(path)
    for cls in HEADS:
        torch.manual_seed(0)
        model = cls.from_pretrained(path, num_labels=3, word_vocab_size=40, char_vocab_size=len(tok.char_vocab)).eval()
        inputs, extra = head_inputs(cls, batch)
        with torch.no_grad():
            out = model(**inputs, **extra, output_hidden_states=True)
        if cls is CharBertModel:
            assert out.last_hidden_state.shape == (4, batch["input_ids"].shape[1], 32)
        else:
            assert torch.isfinite(out.loss), cls.__name__
        assert len(out.hidden_states) == model.config.num_hidden_layers + 1  # embeddings + every layer
        assert out.hidden_states[0].shape[-1] == model.config.hidden_size  # ELECTRA's: projected
        saved = tmp_path / cls.__name__
        model.save_pretrained(saved)
        tok.save_pretrained(saved)
        again = auto[cls].from_pretrained(saved).eval()
        assert type(again) is cls and again.config.backbone_type == family
        with torch.no_grad():
            out_again = again(**inputs, **extra, output_hidden_states=True)
        for a, b in zip(out.values(), out_again.values()):
            if isinstance(a, torch.Tensor):
                assert torch.equal(a, b), cls.__name__


@pytest.mark.parametrize("family", ["xlm-roberta", "modernbert", "electra"])
def test_fill_mask_pipeline(family_dirs, family, tmp_path, request):
    path = family_path(family, family_dirs, request)
    tok = CharBertTokenizer.from_pretrained(path)
    pretraining = CharBertForPreTraining.from_pretrained(path, word_vocab_size=40, char_vocab_size=len(tok.char_vocab)).eval()
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


@pytest.mark.parametrize("family", FAMILIES)
def test_word_starts_characters_and_word_grouping(family_dirs, family):
    """The family's tokenizer marks word starts its own way ("▁" / "Ġ"); the character channel puts each
    token on its own characters (a SentencePiece piece's space is not its first character), and the
    collator's word of every piece is the word it spells."""
    path = family_dirs(family)
    tok = CharBertTokenizer.from_pretrained(path)
    hf = AutoTokenizer.from_pretrained(path)
    text = "Totally unrelated, and a good deal longer: C# code!"
    enc = hf(text, return_offsets_mapping=True)
    tokens = hf.convert_ids_to_tokens(enc["input_ids"])
    marker = get_adapter(family).word_start
    spans = split_words(text)
    starts = {s for s, _ in spans if s > 0}
    offsets = np.array(enc["offset_mapping"])
    real = np.array([s is not None for s in enc.sequence_ids()]) & (offsets[:, 1] > offsets[:, 0])
    words = token_words(offsets, real, np.array([e for _, e in spans]))
    for k, token in enumerate(tokens):
        if not real[k] or token == marker:
            continue
        a, b = offsets[k]
        piece = text[a:b].lstrip()
        w0, w1 = spans[words[k]]
        assert text[w0:w1].find(piece) >= 0 or piece.startswith(text[w0:w1]), (token, piece)  # the piece is in its word
        if token.startswith(marker) and len(token) > 1:
            assert text.index(piece, a) in starts or a == 0  # a marked piece opens a word
    chars = tok(text)
    ids = chars["char_input_ids"]
    for k, token in enumerate(tokens):
        if not real[k] or token == marker:
            continue
        first = tok.char_vocab.decode([ids[chars["char_start_positions"][k]]])
        assert first == text[offsets[k][0]:offsets[k][1]].lstrip()[:1] or first == "[UNK]", (token, first)


# ---- end to end (slow) ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("family", END_TO_END + ["electra"])
def test_pretrain_finetune_and_robustness(family_dirs, family, tiny_texts, task_files, tmp_path, request):
    from pretrain.__main__ import main

    path = family_path(family, family_dirs, request)
    (tmp_path / "train.txt").write_text("\n".join(tiny_texts[:200]), encoding="utf-8")
    (tmp_path / "valid.txt").write_text("\n".join(tiny_texts[600:630]), encoding="utf-8")
    WordVocab.build(tiny_texts, max_size=300).save(tmp_path / "vocab")
    out = tmp_path / "pretrained"
    assert main(["--model_name_or_path", str(path), "--train_file", str(tmp_path / "train.txt"),
                 "--validation_file", str(tmp_path / "valid.txt"), "--word_vocab", str(tmp_path / "vocab"),
                 "--objective", "charbert", "--max_seq_length", "64", "--per_device_train_batch_size", "4",
                 "--learning_rate", "1e-3", "--logging_steps", "1", "--max_train_steps", "2", "--seed", "3",
                 "--max_eval_blocks", "4", "--output_dir", str(out)]) == 0
    steps = [r for r in read_log(out / "log.jsonl") if "loss" in r]
    assert steps and all(r["mlm_loss"] > 0 and r["nlm_loss"] > 0 for r in steps)
    pretrained = CharBertForPreTraining.from_pretrained(out).config
    assert pretrained.backbone_type == family
    assert family != "electra" or pretrained.embedding_size == 16 < pretrained.hidden_size
    if family != "electra":  # the plain masked-LM baseline (AdvBERT) on the same family; a discriminator is none
        adv = tmp_path / "advbert"
        assert main(["--model_name_or_path", str(path), "--train_file", str(tmp_path / "train.txt"), "--objective",
                     "advbert", "--max_seq_length", "64", "--per_device_train_batch_size", "4", "--max_train_steps", "1",
                     "--seed", "3", "--output_dir", str(adv)]) == 0
        assert AutoModelForMaskedLM.from_pretrained(adv).config.model_type == family

    train = ["--max_train_steps", "2", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "4",
             "--learning_rate", "1e-3", "--seed", "3", "--max_seq_length", "64"]
    glue = tmp_path / "glue"
    assert run_cli("glue", "--task_name", "mrpc", "--train_file", task_files["mrpc_train"], "--validation_file",
                   task_files["mrpc_dev"], "--model_name_or_path", out, "--output_dir", glue, *train) == 0
    record = json.loads((glue / "metrics.json").read_text())
    assert record["model"]["charbert"] is True and record["eval"]["num_examples"] == 13
    pred = tmp_path / "glue_pred"
    assert run_cli("glue", "--do_predict", "--task_name", "mrpc", "--test_file", task_files["mrpc_dev"],
                   "--model_name_or_path", glue, "--output_dir", pred, "--max_seq_length", "64") == 0
    assert json.loads((pred / "metrics.json").read_text())["predict"]["accuracy"] == pytest.approx(
        record["eval"]["accuracy"], abs=1e-9)
    ner = tmp_path / "ner"
    assert run_cli("ner", "--train_file", task_files["ner_train"], "--validation_file", task_files["ner_dev"],
                   "--model_name_or_path", path, "--charbert", "--output_dir", ner, *train) == 0
    assert "f1" in json.loads((ner / "metrics.json").read_text())["eval"]
    pos = tmp_path / "pos"
    assert run_cli("pos", "--train_file", task_files["pos_train"], "--validation_file", task_files["pos_dev"],
                   "--model_name_or_path", path, "--charbert", "--output_dir", pos, *train) == 0
    assert "accuracy" in json.loads((pos / "metrics.json").read_text())["eval"]
    squad = tmp_path / "squad"
    assert run_cli("squad", "--train_file", task_files["squad_v1_train"], "--validation_file", task_files["squad_v1_dev"],
                   "--model_name_or_path", path, "--charbert", "--output_dir", squad, "--doc_stride", "16",
                   "--max_query_length", "16", *train) == 0
    assert json.loads((squad / "metrics.json").read_text())["eval"]["total"] == 12
    # the pipelines load every fine-tuned folder and answer as the programs did
    from charbert.tasks.squad import read_squad

    predictions = json.loads((squad / "eval_predictions.json").read_text())
    dev = read_squad(task_files["squad_v1_dev"])
    qa = pipeline("question-answering", model=str(squad), device="cpu", max_seq_len=64, doc_stride=16, max_question_len=16)
    for ex, answer in zip(dev, qa([{"question": ex.question, "context": ex.context} for ex in dev])):
        assert answer["answer"] == predictions[ex.id]
    tagger = pipeline("token-classification", model=str(ner), device="cpu", ignore_labels=[])
    text = "Alpha met Beta and Omega in 2024."
    tagged = tagger(text)
    assert tagged and all(0 <= e["start"] < e["end"] <= len(text) and e["entity"] in {"O", "B-LOC", "B-PER", "I-LOC", "I-PER"}
                          for e in tagged)
    assert type(tagger.model) is CharBertForTokenClassification
    classify = pipeline("text-classification", model=str(glue), device="cpu")
    assert type(classify.model) is CharBertForSequenceClassification
    labels = set(CharBertForSequenceClassification.from_pretrained(glue).config.id2label.values())
    assert {r["label"] for r in classify(["The module returns the value.", "ok"])} <= labels
    attacked = tmp_path / "robustness"
    assert run_cli("robustness", "--task", "ner", "--model_name_or_path", ner, "--test_file", task_files["ner_dev"],
                   "--attacks", "drop,keyboard", "--output_dir", attacked, "--max_seq_length", "64") == 0
    report = json.loads((attacked / "report.json").read_text())
    assert report["attacks"] == ["drop", "keyboard"] and report["metric"] == "f1"
    (scored,) = report["models"]
    assert {"clean", "drop", "keyboard"} <= set(scored["scores"])


@pytest.mark.slow
@pytest.mark.parametrize("family", END_TO_END + ["electra"])
def test_onnx_export_matches_eager(family_dirs, family, tiny_texts, tmp_path, request):
    """The ONNX export of a token-classification head runs batches of other sizes and lengths than the
    traced one within 1e-4 of eager (the helpers of tests/test_export.py)."""
    pytest.importorskip("onnxruntime")
    from test_export import check_against_eager, save_charbert

    from charbert.serving.export import export

    path = family_path(family, family_dirs, request)
    model = save_charbert(tmp_path / "model", path, CharBertForTokenClassification)
    info = export(tmp_path / "model", tmp_path / "onnx")
    assert info["architecture"] == "CharBertForTokenClassification"
    check_against_eager(model, tmp_path / "onnx", tiny_texts)


def test_deberta_v2_convolution_after_the_first_layer(family_dirs, tmp_path):
    """DeBERTa-v2-xlarge's layout: a convolution (its own LayerNorm) after the first layer. The identity start
    uses that norm for the first fusion and still reproduces the plain model."""
    from transformers import DebertaV2ForMaskedLM

    source = family_dirs("deberta-v2")
    config = AutoModelForMaskedLM.from_pretrained(source).config
    config.conv_kernel_size, config.conv_act = 3, "gelu"
    torch.manual_seed(3)
    plain_lm = DebertaV2ForMaskedLM(config)
    with torch.no_grad():
        for module in plain_lm.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.3)
    plain_lm.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(source).save_pretrained(tmp_path)
    tok, batch = padded_batch(tmp_path)
    plain = AutoModel.from_pretrained(tmp_path).eval()
    assert plain.encoder.conv is not None
    model = CharBertModel.from_pretrained(tmp_path, new_module_init="identity", share_fusion=False,
                                          char_vocab_size=len(tok.char_vocab)).eval()
    assert model.layer_output_norms()[0] is model.encoder.conv.LayerNorm
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        expected = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        got = model(**batch).last_hidden_state
    assert (got[real] - expected[real]).abs().max() <= 1e-5


@pytest.mark.parametrize("family", FAMILIES + ["electra", "bert"])
def test_large_cpu_inference_batches_run_each_channel_alone_with_the_same_outputs(family_dirs, family, request,
                                                                                   monkeypatch):
    """CPU inference past `CPU_STACKED_TOKENS_LIMIT` tokens a channel calls each layer once per channel (B rows),
    below it once on the stacked batch (2B rows); both give the same states on a padded batch (every position)."""
    from charbert import modeling

    path = request.getfixturevalue("bert_dir") if family == "bert" else family_path(family, family_dirs, request)
    tok, batch = padded_batch(path)
    torch.manual_seed(0)
    model = CharBertModel.from_pretrained(path, new_module_init="normal", char_vocab_size=len(tok.char_vocab)).eval()
    adapter = model.backbone_adapter
    call_layer, rows = adapter.call_layer, []

    def spy(layer, hidden, *args, **kwargs):
        rows.append(hidden.size(0))
        return call_layer(layer, hidden, *args, **kwargs)

    monkeypatch.setattr(adapter, "call_layer", spy)
    outputs = {}
    for limit in (10**9, 0):
        monkeypatch.setattr(modeling, "CPU_STACKED_TOKENS_LIMIT", limit)
        rows.clear()
        with torch.no_grad():
            outputs[limit] = model(**batch, output_hidden_states=True)
        layers = model.config.num_hidden_layers
        assert rows == ([8] * layers if limit else [4] * (2 * layers)), family
    stacked, per_channel = outputs[10**9], outputs[0]
    for a, b in zip(stacked.hidden_states + stacked.char_hidden_states,
                    per_channel.hidden_states + per_channel.char_hidden_states):
        assert (a - b).abs().max() <= 1e-5, family
    rows.clear()
    model(**batch)  # gradients taken: the stacked call at any size
    assert rows == [8] * model.config.num_hidden_layers
