"""charbert: CharBERT (character-aware pretrained language models, COLING 2020) on transformers.

Importing the package registers `model_type="charbert"` with AutoConfig, AutoModel and the
matching AutoModelFor... classes, so a saved CharBERT never silently loads as plain BERT.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForPreTraining,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)

from .chars import CHAR_INPUT_NAMES, CharVocab, align, hide_characters
from .checkpoint import guard_from_pretrained
from .configuration import CharBertConfig
from .modeling import (
    CharBertForMaskedLM,
    CharBertForMultipleChoice,
    CharBertForPreTraining,
    CharBertForQuestionAnswering,
    CharBertForSequenceClassification,
    CharBertForTokenClassification,
    CharBertModel,
    CharBertPreTrainedModel,
)
from .pipelines import register_question_answering
from .tokenization import CharBertTokenizer, CharBertTokenizerFast

__version__ = "0.1.0"

# Modules that moved into subpackages, still importable by their old names (`from charbert import collator`).
_MOVED_MODULES = {
    "corpus": "charbert.pretraining.corpus",
    "hf_datasets": "charbert.pretraining.hf_datasets",
    "data": "charbert.pretraining.blocks",
    "vocab": "charbert.pretraining.vocab",
    "collator": "charbert.pretraining.collator",
    "export": "charbert.serving.export",
    "onnx_runtime": "charbert.serving.onnx_runtime",
}


def __getattr__(name):
    if name in _MOVED_MODULES:
        import importlib

        return importlib.import_module(_MOVED_MODULES[name])
    raise AttributeError(f"module 'charbert' has no attribute {name!r}")

AutoConfig.register("charbert", CharBertConfig, exist_ok=True)
for _auto, _cls in (
    (AutoModel, CharBertModel),
    (AutoModelForPreTraining, CharBertForPreTraining),
    (AutoModelForMaskedLM, CharBertForMaskedLM),
    (AutoModelForSequenceClassification, CharBertForSequenceClassification),
    (AutoModelForTokenClassification, CharBertForTokenClassification),
    (AutoModelForQuestionAnswering, CharBertForQuestionAnswering),
    (AutoModelForMultipleChoice, CharBertForMultipleChoice),
):
    _auto.register(CharBertConfig, _cls, exist_ok=True)
AutoTokenizer.register(CharBertConfig, fast_tokenizer_class=CharBertTokenizerFast, exist_ok=True)
guard_from_pretrained()  # the authors' unconverted checkpoints never load as plain BERT (checkpoint.check_converted)
register_question_answering()  # pipeline("question-answering"): transformers 5 has none of its own

__all__ = [
    "CHAR_INPUT_NAMES",
    "CharBertConfig",
    "CharBertForMaskedLM",
    "CharBertForMultipleChoice",
    "CharBertForPreTraining",
    "CharBertForQuestionAnswering",
    "CharBertForSequenceClassification",
    "CharBertForTokenClassification",
    "CharBertModel",
    "CharBertPreTrainedModel",
    "CharBertTokenizer",
    "CharBertTokenizerFast",
    "CharVocab",
    "align",
    "hide_characters",
]
