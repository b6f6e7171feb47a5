"""How the modules CharBERT adds to a plain checkpoint start (`CharBertConfig.new_module_init`):
the identity start reproduces the backbone, the reference start is the authors' init."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from charbert import CharBertConfig, CharBertForPreTraining, CharBertModel, CharBertTokenizer
from charbert.modeling import identity_fusion_
from charbert.pretraining.job import load_pretraining_model

REPO = Path(__file__).resolve().parents[1]
SENTENCES = ["The quick brown fox jumps over the lazy dog.", "Typos like teh and recieve happen.",
             "A short one.", "Numbers 1,234 and symbols #hash stay."]


def start_distortion():
    spec = importlib.util.spec_from_file_location("start_distortion", REPO / "experiments" / "start_distortion.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def with_trained_looking_norms(backbone_dir: Path, out: Path, dead_dims: int = 0, same_norms: bool = False) -> Path:
    """A copy of the plain checkpoint whose layers' output LayerNorms are far from (1, 0), as a trained
    model's are (a random model's are exactly (1, 0), which any start would pass through); the last
    layer gets `dead_dims` dimensions with gamma 0; `same_norms`: every layer the same norm."""
    model = AutoModel.from_pretrained(backbone_dir)
    gen = torch.Generator().manual_seed(7)
    hidden = model.config.hidden_size
    gamma, beta = 0.5 + torch.rand(hidden, generator=gen), 0.3 * torch.randn(hidden, generator=gen)
    with torch.no_grad():
        for i, layer in enumerate(model.encoder.layer):
            norm = layer.output.LayerNorm
            if not same_norms:
                gamma, beta = 0.5 + torch.rand(hidden, generator=gen), 0.3 * torch.randn(hidden, generator=gen)
            norm.weight.copy_(gamma)
            norm.bias.copy_(beta)
        model.encoder.layer[-1].output.LayerNorm.weight[:dead_dims] = 0.0
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                 "merges.txt"):
        if (backbone_dir / name).exists():
            (out / name).write_bytes((backbone_dir / name).read_bytes())
    return out


def both_outputs(path: Path, **config):
    """(plain last_hidden_state, CharBERT output, attention mask) on a padded batch of real text."""
    tokenizer = CharBertTokenizer.from_pretrained(path)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    plain = AutoModel.from_pretrained(path).eval()
    torch.manual_seed(0)
    model = CharBertModel.from_pretrained(path, char_vocab_size=len(tokenizer.char_vocab), **config).eval()
    with torch.no_grad():
        expected = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        got = model(**batch)
    return expected, got, batch["attention_mask"]


@pytest.mark.parametrize("share_fusion", [False, True])
def test_identity_start_reproduces_the_backbone(tmp_path, backbone_dir, share_fusion):
    # Shared fusion is exact when every layer ends in the same norm; per-layer fusion always.
    path = with_trained_looking_norms(backbone_dir, tmp_path / "plain", same_norms=share_fusion)
    expected, got, mask = both_outputs(path, new_module_init="identity", share_fusion=share_fusion)
    real = mask.bool()
    assert mask.min() == 0  # a padded batch: padding must not reach the real tokens
    assert torch.allclose(got.last_hidden_state[real], expected[real], atol=1e-5)
    # The character channel is alive: its states are not the subword channel's.
    assert (got.char_last_hidden_state[real] - got.last_hidden_state[real]).abs().max() > 1e-2


def test_other_starts_move_the_backbone(tmp_path, bert_dir):
    # The same comparison fails for the other starts, so the test above can fail.
    path = with_trained_looking_norms(bert_dir, tmp_path / "plain")
    for start in ("normal", "reference"):
        expected, got, mask = both_outputs(path, new_module_init=start, share_fusion=False)
        real = mask.bool()
        assert (got.last_hidden_state[real] - expected[real]).abs().max() > 0.1, start


def test_shared_identity_across_different_norms_is_close_not_exact(tmp_path, bert_dir):
    path = with_trained_looking_norms(bert_dir, tmp_path / "plain")
    expected, got, mask = both_outputs(path, new_module_init="identity", share_fusion=True)
    figures = start_distortion().token_figures(expected, got.last_hidden_state, got.char_last_hidden_state, mask)
    assert 0.9 < figures["cos_mean"] < 0.99999


def test_near_identity_figure_with_a_dead_dimension(tmp_path, bert_dir):
    # The experiment's figure, pinned on a tiny model: one dead output dimension (gamma 0, as in
    # MiniLM's last layer) is still exact (its value is minus the sum of the others), two are close.
    one = with_trained_looking_norms(bert_dir, tmp_path / "one", dead_dims=1)
    expected, got, mask = both_outputs(one, new_module_init="identity", share_fusion=False)
    figures = start_distortion().token_figures(expected, got.last_hidden_state, got.char_last_hidden_state, mask)
    assert figures["cos_mean"] > 0.999999 and figures["rel_error"] < 1e-5, figures
    two = with_trained_looking_norms(bert_dir, tmp_path / "two", dead_dims=2)
    expected, got, mask = both_outputs(two, new_module_init="identity", share_fusion=False)
    figures = start_distortion().token_figures(expected, got.last_hidden_state, got.char_last_hidden_state, mask)
    assert 0.95 < figures["cos_mean"] < 0.999999, figures


def test_identity_fusion_block_by_hand():
    # One block on states that a LayerNorm with (gamma, beta) produced: the word channel comes back.
    config = CharBertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                            vocab_size=50, char_vocab_size=20)
    model = CharBertModel(config)
    fusion = model.fusion[0]
    gen = torch.Generator().manual_seed(0)
    gamma, beta = 0.2 + torch.rand(16, generator=gen), torch.randn(16, generator=gen)
    identity_fusion_(fusion, gamma, beta)
    word = torch.nn.functional.layer_norm(torch.randn(2, 5, 16, generator=gen), (16,), gamma, beta)
    char = torch.randn(2, 5, 16, generator=gen)
    new_word, new_char = fusion(word, char, torch.ones(2, 5, 1))
    assert torch.allclose(new_word, word, atol=1e-5)
    assert not torch.allclose(new_char, char, atol=1e-2)
    # Training moves it off the identity: the conv's character half gets a gradient at once.
    new_word.sum().backward()
    assert fusion.fuse.weight.grad[:, 16:].abs().max() > 0


def test_loading_a_charbert_checkpoint_never_reinitialises(tmp_path, bert_dir):
    model = CharBertForPreTraining.from_pretrained(bert_dir, new_module_init="identity", char_vocab_size=64,
                                                   word_vocab_size=30)
    model.save_pretrained(tmp_path / "cb")
    again = CharBertForPreTraining.from_pretrained(tmp_path / "cb")
    assert again.config.new_module_init == "identity"
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_bad_values_are_one_line_errors():
    with pytest.raises(ValueError, match="new_module_init must be one of"):
        CharBertConfig(new_module_init="zeros")
    with pytest.raises(ValueError, match="fusion_activation=False"):
        CharBertConfig(new_module_init="identity", fusion_activation=True)


def test_pretraining_builds_the_asked_start_and_refuses_it_for_a_charbert_checkpoint(tmp_path, bert_dir):
    from charbert.chars import CharVocab
    from charbert.pretraining.vocab import WordVocab

    texts = SENTENCES * 3
    chars, words = CharVocab.build(texts), WordVocab.build(texts)
    model, _ = load_pretraining_model(bert_dir, "charbert", words, chars, 32,
                                      new_model={"new_module_init": "identity", "share_fusion": False})
    assert model.config.new_module_init == "identity" and not model.config.share_fusion
    assert len(model.charbert.fusion) == model.config.num_hidden_layers
    model.save_pretrained(tmp_path / "cb")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "cb" / name).write_bytes((bert_dir / name).read_bytes())
    with pytest.raises(ValueError, match="--new_module_init shape"):
        load_pretraining_model(tmp_path / "cb", "charbert", words, chars, 32, new_model={"new_module_init": "normal"})


# ---- the reference start is the authors' init ----------------------------------------------------------------


def _spread(tensor: torch.Tensor) -> tuple[float, float]:
    return float(tensor.float().std()), float(tensor.float().abs().max())


def test_reference_start_draws_as_the_authors_code():
    from reference import authors_code_or_skip, authors_config

    code = authors_code_or_skip()
    hidden, layers, vocab = 64, 2, 200
    torch.manual_seed(0)
    theirs = code.bert.CharBertForMaskedLM(authors_config("bert", vocab, hidden=hidden, layers=layers)).state_dict()
    char_rows, char_size = theirs["bert.char_embeddings.char_embeddings.weight"].shape
    config = CharBertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                            intermediate_size=2 * hidden, char_vocab_size=char_rows, char_embedding_size=char_size,
                            new_module_init="reference")
    ours = CharBertForPreTraining(config).state_dict()
    normal = CharBertForPreTraining(CharBertConfig(**{**config.to_dict(), "new_module_init": "normal"})).state_dict()
    pairs = {  # theirs -> ours
        "bert.char_embeddings.char_embeddings.weight": "charbert.char_embeddings.embeddings.weight",
        "bert.char_embeddings.rnn_layer.weight_ih_l0": "charbert.char_embeddings.forward_gru.weight_ih_l0",
        "bert.char_embeddings.rnn_layer.weight_hh_l0": "charbert.char_embeddings.forward_gru.weight_hh_l0",
        "bert.char_embeddings.rnn_layer.bias_ih_l0": "charbert.char_embeddings.forward_gru.bias_ih_l0",
        "bert.char_embeddings.rnn_layer.weight_ih_l0_reverse": "charbert.char_embeddings.backward_gru.weight_ih_l0",
        "bert.char_embeddings.rnn_layer.bias_hh_l0_reverse": "charbert.char_embeddings.backward_gru.bias_hh_l0",
        "bert.encoder.fusion_layer_list.0.weight": "charbert.fusion.0.fuse.weight",
        "bert.encoder.fusion_layer_list.0.bias": "charbert.fusion.0.fuse.bias",
        "bert.encoder.word_linear1.weight": "charbert.fusion.0.word_proj.weight",
        "bert.encoder.char_linear1.weight": "charbert.fusion.0.char_proj.weight",
        "bert.encoder.word_norm.weight": "charbert.fusion.0.word_norm.weight",
        "bert.encoder.char_norm.bias": "charbert.fusion.0.char_norm.bias",
    }
    differs_from_normal = 0
    for their_name, our_name in pairs.items():
        (their_std, their_max), (our_std, our_max) = _spread(theirs[their_name]), _spread(ours[our_name])
        assert math.isclose(our_std, their_std, rel_tol=0.15, abs_tol=1e-6), (our_name, our_std, their_std)
        assert math.isclose(our_max, their_max, rel_tol=0.3, abs_tol=1e-6), (our_name, our_max, their_max)
        normal_std = _spread(normal[our_name])[0]
        differs_from_normal += not math.isclose(normal_std, their_std, rel_tol=0.15, abs_tol=1e-6)
    # Their embedding draws the padding row too, and ours under "reference" does as well.
    assert ours["charbert.char_embeddings.embeddings.weight"][0].abs().max() > 0
    assert normal["charbert.char_embeddings.embeddings.weight"][0].abs().max() == 0
    assert differs_from_normal >= 6  # conv weight and bias, GRU tensors: "normal" is not the authors' init
