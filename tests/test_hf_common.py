"""transformers' own common test suites run against CharBERT: `ModelTesterMixin` on every head, `ConfigTester`
on the config, `TokenizerTesterMixin` on the tokenizer, on a BERT (WordPiece) and an XLM-RoBERTa
(SentencePiece) backbone.

The suites are the installed transformers version's (its source distribution's `tests/`, unpacked by
`.ci/fetch_transformers_tests`; see tests/hf_common_suites.py). This module skips with a one-line reason
when they are absent and never touches the network.

A common test that cannot apply to a dual-channel model is skipped in the tester below with its reason in
one line, as transformers' own model testers do; `SKIPPED` lists them all (the README's reliability section
lists them too).
"""

from __future__ import annotations

import tempfile
import unittest

import pytest
import torch
from hf_common_suites import load_suites
from transformers.models.auto import modeling_auto

from charbert import (
    CharBertConfig,
    CharBertForMaskedLM,
    CharBertForMultipleChoice,
    CharBertForPreTraining,
    CharBertForQuestionAnswering,
    CharBertForSequenceClassification,
    CharBertForTokenClassification,
    CharBertModel,
    CharBertTokenizerFast,
)
from charbert.chars import CHAR_INPUT_NAMES, CharVocab
from charbert.tiny import stdlib_paragraphs, train_tokenizer

pytestmark = pytest.mark.slow  # about a minute and a half: the full suite (CI) runs it, the fast loop does not

suites, reason = load_suites()
if suites is None:
    pytest.skip(reason, allow_module_level=True)

# The tables the mixin reads to pick labels and the multiple-choice layout for a class, as it does for
# transformers' own models (set while these tests run, then restored).
HEAD_MAPPINGS = {
    "MODEL_MAPPING_NAMES": CharBertModel,
    "MODEL_FOR_PRETRAINING_MAPPING_NAMES": CharBertForPreTraining,
    "MODEL_FOR_MASKED_LM_MAPPING_NAMES": CharBertForMaskedLM,
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES": CharBertForSequenceClassification,
    "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES": CharBertForTokenClassification,
    "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES": CharBertForQuestionAnswering,
    "MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES": CharBertForMultipleChoice,
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest single-threaded (extra threads only spin, the more so on a busy machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module", autouse=True)
def charbert_in_head_mappings():
    added = []
    for table, model_class in HEAD_MAPPINGS.items():
        names = getattr(modeling_auto, table)
        if "charbert" not in names:
            names["charbert"] = model_class.__name__
            added.append(names)
    yield
    for names in added:
        del names["charbert"]


class CharBertModelTester:
    """A tiny CharBERT and complete inputs: the subword fields and the character channel, each token three
    characters long (`char_start_positions` / `char_end_positions` point at its first and last)."""

    def __init__(self, parent, backbone_type="bert", batch_size=13, seq_length=7, chars_per_token=3, is_training=True,
                 vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                 char_vocab_size=50, char_embedding_size=16, word_vocab_size=40, num_labels=3, num_choices=4):
        self.parent = parent
        self.backbone_type = backbone_type
        self.batch_size, self.seq_length, self.chars_per_token = batch_size, seq_length, chars_per_token
        self.is_training = is_training
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        self.intermediate_size = intermediate_size
        self.char_vocab_size, self.char_embedding_size = char_vocab_size, char_embedding_size
        self.word_vocab_size, self.num_labels, self.num_choices = word_vocab_size, num_labels, num_choices
        # Both channels' per-layer states come back (hidden_states and char_hidden_states).
        self.num_hidden_states_types = 2

    def get_config(self) -> CharBertConfig:
        backbone = dict(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads, intermediate_size=self.intermediate_size,
            hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=512,
            initializer_range=0.02,
        )
        if self.backbone_type == "bert":
            backbone.update(type_vocab_size=16)
        else:  # RoBERTa-like positions start after padding_idx
            backbone.update(type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)
        return CharBertConfig(
            backbone_type=self.backbone_type, char_vocab_size=self.char_vocab_size,
            char_embedding_size=self.char_embedding_size, word_vocab_size=self.word_vocab_size,
            num_labels=self.num_labels, **backbone,
        )

    def prepare_config_and_inputs_for_common(self):
        ids_tensor, random_attention_mask = suites.ids_tensor, suites.random_attention_mask
        batch, length, per_token = self.batch_size, self.seq_length, self.chars_per_token
        starts = (torch.arange(length) * per_token).expand(batch, -1).contiguous()  # (B, L)
        # RoBERTa-like positions count from the padding id: no padding id among the ids, so that positions from
        # input_ids and from inputs_embeds agree (test_inputs_embeds_matches_input_ids).
        lowest = 0 if self.backbone_type == "bert" else 2
        inputs = {
            "input_ids": ids_tensor([batch, length], self.vocab_size - lowest) + lowest,
            "attention_mask": random_attention_mask([batch, length]),
            "char_input_ids": ids_tensor([batch, length * per_token], self.char_vocab_size - 1) + 1,  # no padding id
            "char_attention_mask": torch.ones(batch, length * per_token, dtype=torch.long),
            "char_start_positions": starts,
            "char_end_positions": starts + per_token - 1,
        }
        if self.backbone_type == "bert":
            inputs["token_type_ids"] = ids_tensor([batch, length], 16)
        device = suites.modeling.torch_device
        return self.get_config(), {k: v.to(device) for k, v in inputs.items()}


ALL_MODEL_CLASSES = (
    CharBertModel,
    CharBertForPreTraining,
    CharBertForMaskedLM,
    CharBertForSequenceClassification,
    CharBertForTokenClassification,
    CharBertForQuestionAnswering,
    CharBertForMultipleChoice,
)


class CharBertModelTestBase(suites.ModelTesterMixin):
    backbone_type = "bert"
    all_model_classes = ALL_MODEL_CLASSES
    # The eager/SDPA equivalence tests build their own inputs: they pass these through as they are.
    additional_model_inputs = list(CHAR_INPUT_NAMES)

    def setUp(self):
        self.model_tester = CharBertModelTester(self, backbone_type=self.backbone_type)
        self.config_tester = suites.ConfigTester(self, config_class=CharBertConfig, hidden_size=37,
                                                 backbone_type=self.backbone_type)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels and model_class is CharBertForPreTraining:
            shape = (self.model_tester.batch_size, self.model_tester.seq_length)
            device = suites.modeling.torch_device
            inputs["labels"] = torch.zeros(shape, dtype=torch.long, device=device)
            inputs["nlm_labels"] = torch.zeros(shape, dtype=torch.long, device=device)
        return inputs

    def test_config(self):
        self.config_tester.run_common_tests()

    @unittest.skip(reason="its last step calls CharBertModel with input_ids alone; the character channel is a required input")
    def test_load_with_mismatched_shapes(self):
        pass


class CharBertBertModelTest(CharBertModelTestBase, unittest.TestCase):
    backbone_type = "bert"


class CharBertXLMRobertaModelTest(CharBertModelTestBase, unittest.TestCase):
    backbone_type = "xlm-roberta"




class CharBertTokenizationTestBase(suites.TokenizerTesterMixin):
    """The tokenizer suite on a CharBertTokenizerFast wrapping a tiny tokenizer of the backbone's kind, trained on
    the standard library's docstrings (nothing downloaded)."""

    tokenizer_class = CharBertTokenizerFast
    backbone_type = "bert"
    test_seq2seq = False  # an encoder's tokenizer: no prepare_seq2seq_batch

    @classmethod
    def setUpClass(cls):
        # The mixin's own setUpClass reads a fixture file its sdist does not ship and loads from_pretrained_id
        # from the hub: here the tokenizer is built and saved locally instead.
        texts = list(stdlib_paragraphs(400))
        cls.from_pretrained_id, cls.tokenizers_list = [], []
        cls._data = "\n".join(texts[:40])
        cls.tmpdirname = tempfile.mkdtemp()
        subword = train_tokenizer(texts, cls.backbone_type, vocab_size=600)
        subword.model_max_length = 512
        CharBertTokenizerFast(subword, char_vocab=CharVocab.build(texts, max_size=256)).save_pretrained(cls.tmpdirname)

    @unittest.skip(reason="padding='max_length' fixes the token length only: the character channel is padded to its "
                          "batch's longest character row, so rows padded one by one differ from the same rows as a batch")
    def test_batch_encode_plus_batch_sequence_length(self):
        pass

    @unittest.skip(reason="padding='max_length' fixes the token length only: the character channel is padded to its "
                          "batch's longest character row, so rows padded one by one differ from the same rows as a batch")
    def test_batch_encode_plus_padding(self):
        pass

    @unittest.skip(reason="__init__'s `tokenizer` and `char_vocab` take objects (a fast tokenizer to wrap, a CharVocab), "
                          "which init_kwargs and tokenizer_config.json do not hold")
    def test_tokenizer_store_full_signature(self):
        pass


class CharBertBertTokenizationTest(CharBertTokenizationTestBase, unittest.TestCase):
    backbone_type = "bert"


class CharBertXLMRobertaTokenizationTest(CharBertTokenizationTestBase, unittest.TestCase):
    backbone_type = "xlm-roberta"
