"""Typo correction: the pretrained NLM head as a contextual spelling corrector, and a dictionary baseline.

CharBERT's noisy LM (NLM) head is trained to predict, from the character channel, the original
word (an id of the word vocabulary) of every subword of a misspelt word (see
:class:`charbert.pretraining.collator.PretrainingCollator`).  After pretraining nothing uses it; here it
reads a sentence and rewrites each word whose prediction is confident and differs from it:

* :class:`NlmCorrector` -- the head's probability of each word-vocabulary entry, averaged over
  the word's subwords; a word is replaced when the best entry is not ``[UNK]``, differs from the
  word (case-insensitively: the vocabulary is lower-cased) and has probability >= ``threshold``;
  by default only words the vocabulary does not know are candidates (``only_unknown``: the head
  was trained on noised words only);
* :class:`DictionaryCorrector` -- the baseline: a word absent from the word vocabulary becomes the
  most frequent vocabulary word within one edit (delete, insert, substitute, adjacent swap).

Only alphabetic words are touched (numbers, punctuation and "" -- a word a format protects -- stay)
and the case pattern is carried over (``Germny`` -> ``Germany``, ``EUROPE`` stays upper case).
Both are a :data:`charbert.robustness.attacks.Rewrite` (``correct_sentences``), so every file
format of the attack tool is corrected by the same code that attacks it (one token stays one token,
labels and SQuAD answer offsets stay valid): see :meth:`charbert.robustness.tasks.AttackTask.correct_file`.

:func:`correction_scores` measures a corrector against the clean text: the share of attacked words
restored exactly and the share of clean words wrongly changed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from charbert.pretraining.vocab import WORD_VOCAB_FILE, WordVocab, normalize_word

__all__ = ["DEFAULT_THRESHOLD", "NlmCorrector", "DictionaryCorrector", "match_case", "correction_scores"]

# Chosen by experiments/correction_sweep.py on 1,000 attacked CoNLL-2003 *train* sentences with the
# replication's CharBERT (500 pretraining steps): 0.5 with unknown words only kept the most words
# equal to the clean text (docs/robustness_results.md). That head is weak (held-out NLM acc@1 0.19):
# it is rarely confident, so every threshold from 0.2 up tied; re-run the sweep for a stronger checkpoint.
DEFAULT_THRESHOLD = 0.5


def match_case(new: str, old: str) -> str:
    """``new`` in the case pattern of ``old``: all upper, capitalised, or as it is."""
    if len(old) > 1 and old.isupper():
        return new.upper()
    if old[:1].isupper():
        return new[:1].upper() + new[1:]
    return new


def _correctable(word: str) -> bool:
    return len(word) > 1 and word.isalpha()


class NlmCorrector:
    """The NLM head of a pretrained :class:`~charbert.CharBertForPreTraining` as a corrector."""

    def __init__(self, model, tokenizer, word_vocab: WordVocab, threshold: float = DEFAULT_THRESHOLD,
                 batch_size: int = 32, max_length: int = 128, only_unknown: bool = True):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1]; got {threshold}")
        if model.config.word_vocab_size != len(word_vocab):
            raise ValueError(f"the word vocabulary has {len(word_vocab)} entries, the model's NLM head "
                             f"{model.config.word_vocab_size}")
        from charbert.tasks.loading import max_model_length

        self.model, self.tokenizer, self.word_vocab = model, tokenizer, word_vocab
        limit = max_model_length(model)  # longer sentences are cut: their last words stay as they are
        self.threshold, self.batch_size = threshold, batch_size
        # Pretraining teaches the head the original word of *noised* words only: on a word the
        # vocabulary knows, its guess is untrained, so by default only unknown words are rewritten.
        self.only_unknown = only_unknown
        self.max_length = min(max_length, limit) if limit else max_length

    @classmethod
    def from_pretrained(cls, path, **kwargs) -> NlmCorrector:
        """A pretraining checkpoint folder (``python -m pretrain``): model, tokenizer, ``word_vocab.txt``."""
        import json

        from charbert import CharBertForPreTraining, CharBertTokenizer
        from charbert.checkpoint import resolve_checkpoint

        path = resolve_checkpoint(path)  # a folder, or a hub name's snapshot
        config = path / "config.json"
        if not config.is_file():
            raise FileNotFoundError(f"{path}: no config.json (expected a CharBERT pretraining checkpoint)")
        if json.loads(config.read_text(encoding="utf-8")).get("model_type") != "charbert":
            raise ValueError(f"{path} is not a CharBERT checkpoint: the corrector needs its NLM head")
        if not (path / WORD_VOCAB_FILE).is_file():
            raise FileNotFoundError(f"{path}: no {WORD_VOCAB_FILE} (the NLM head's vocabulary)")
        model = CharBertForPreTraining.from_pretrained(path)
        if model.config.word_vocab_size is None or not hasattr(model, "nlm_head"):
            raise ValueError(f"{path} has no NLM head")
        return cls(model, CharBertTokenizer.from_pretrained(path), WordVocab.load(path), **kwargs)

    def predict(self, sentences: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Per sentence a (n_words, 2) array: best word id and its probability (-1, 0 for words
        without a subword, e.g. past ``max_length``)."""
        from charbert.cli import eval_mode
        from charbert.tasks.features import word_features
        from charbert.tasks.loading import task_collator
        from charbert.tasks.ner import Sentence

        words = [[w if w else "_" for w in s] for s in sentences]  # "" has no subword: any stand-in
        rows, alignments = word_features(self.tokenizer, [Sentence(list(w), None, 0) for w in words], self.max_length)
        collate = task_collator(self.tokenizer)
        device = next(self.model.parameters()).device
        order = np.argsort([len(r["input_ids"]) for r in rows], kind="stable")  # length-sorted batches
        out: list[np.ndarray | None] = [None] * len(rows)
        with eval_mode(self.model), torch.inference_mode():
            for lo in range(0, len(order), self.batch_size):
                idx = order[lo:lo + self.batch_size]
                batch = {k: v.to(device) for k, v in collate([rows[i] for i in idx]).items()}
                char = self.model.charbert(**batch).char_last_hidden_state  # (B, L, H); no MLM logits needed
                probs = self.model.nlm_head(char).float().softmax(-1).cpu().numpy()  # (B, L, W)
                for j, i in enumerate(idx):
                    out[i] = self._per_word(probs[j], alignments[i].token_word, len(words[i]))
        return out

    @staticmethod
    def _per_word(probs: np.ndarray, token_word: Sequence[int | None], n_words: int) -> np.ndarray:
        """(n_words, 2): each word's best entry and probability, from ``probs`` (L, W) averaged over the
        word's subwords (-1, 0 for words without one)."""
        from charbert.robustness.sensitivity import word_means

        result = np.zeros((n_words, 2))
        result[:, 0] = -1
        mean = word_means(probs, token_word, n_words)  # (n_words, W), NaN rows: no subword
        has = ~np.isnan(mean[:, 0])
        result[has, 0] = mean[has].argmax(-1)
        result[has, 1] = mean[has].max(-1)
        return result

    def correct_sentences(self, sentences: list[list[str]]) -> list[list[str]]:
        return self.rewrite(sentences, self.predict(sentences))

    def rewrite(self, sentences: list[list[str]], predictions: Sequence[np.ndarray],
                threshold: float | None = None, only_unknown: bool | None = None) -> list[list[str]]:
        """The sentences with the replacements ``predictions`` (of :meth:`predict`) make at
        ``threshold`` (default: the corrector's; likewise ``only_unknown``): one prediction serves a
        whole threshold sweep."""
        threshold = self.threshold if threshold is None else threshold
        only_unknown = self.only_unknown if only_unknown is None else only_unknown
        out = []
        for words, pred in zip(sentences, predictions):
            new = list(words)
            for k, (word, (best, p)) in enumerate(zip(words, pred)):
                if not _correctable(word) or best <= 0 or p < threshold or (only_unknown and word in self.word_vocab):
                    continue
                candidate = self.word_vocab.word(int(best))
                if candidate != normalize_word(word) and candidate.isalpha():
                    new[k] = match_case(candidate, word)
            out.append(new)
        return out


class DictionaryCorrector:
    """Baseline: an out-of-vocabulary word -> the most frequent vocabulary word within one edit."""

    def __init__(self, word_vocab: WordVocab):
        self.word_vocab = word_vocab
        self.letters = sorted({c for w in word_vocab.words for c in w if c.isalpha()})

    def _edits1(self, word: str):
        splits = [(word[:i], word[i:]) for i in range(len(word) + 1)]
        yield from (a + b[1:] for a, b in splits if b)
        yield from (a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1)
        yield from (a + c + b[1:] for a, b in splits if b for c in self.letters)
        yield from (a + c + b for a, b in splits for c in self.letters)

    def correct_word(self, word: str) -> str:
        if not _correctable(word) or word in self.word_vocab:
            return word
        best = min((self.word_vocab.id(c) for c in self._edits1(normalize_word(word)) if c in self.word_vocab),
                   default=0)  # ids are frequency ranks: the smallest is the most frequent
        return match_case(self.word_vocab.word(best), word) if best > 0 else word

    def correct_sentences(self, sentences: list[list[str]]) -> list[list[str]]:
        return [[self.correct_word(w) for w in words] for words in sentences]


def correction_scores(clean: Sequence[Sequence[str]], attacked: Sequence[Sequence[str]],
                      corrected: Sequence[Sequence[str]]) -> dict[str, float]:
    """``restored``: share of attacked words (differing from clean) corrected back exactly;
    ``wrongly_changed``: share of untouched words (equal to clean) the corrector changed;
    ``words_correct``: share of all words equal to the clean text after correction."""
    n_attacked = n_restored = n_clean = n_broken = 0
    for c_words, a_words, r_words in zip(clean, attacked, corrected):
        if not len(c_words) == len(a_words) == len(r_words):
            raise ValueError("clean, attacked and corrected sentences must keep one word one word")
        for c, a, r in zip(c_words, a_words, r_words):
            if c != a:
                n_attacked += 1
                n_restored += r == c
            else:
                n_clean += 1
                n_broken += r != c
    total = n_attacked + n_clean
    return {"attacked_words": n_attacked, "restored": n_restored / n_attacked if n_attacked else None,
            "clean_words": n_clean, "wrongly_changed": n_broken / n_clean if n_clean else None,
            "words_correct": (n_restored + n_clean - n_broken) / total if total else None}
