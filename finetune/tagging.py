"""The word-tagging task shared by finetune.ner and finetune.pos (one code path for labels,
features, evaluation); the programs differ only in how they read files, score and write."""

from __future__ import annotations

import torch

from charbert.robustness.sensitivity import word_means
from charbert.tasks.errors import TaskDataError, location
from charbert.tasks.features import word_features, words_from_token_predictions
from charbert.tasks.inference import gather_predictions
from charbert.tasks.loading import TOKEN_CLASSIFICATION
from charbert.tasks.ner import Sentence, check_labels, label_list, read_label_file

from .common import EvalResult, Split, Task, UsageError, dataset_columns


class WordTagging(Task):
    head = TOKEN_CLASSIFICATION

    def add_arguments(self, parser):
        parser.add_argument("--labels", type=str, default=None,
                            help="File with the label list, one a line (default: the labels of the training data, "
                                 "or of the fine-tuned checkpoint).")
        parser.add_argument("--label_all_tokens", action="store_true",
                            help="Train on every subword of a word (B-X -> I-X after the first) instead of the first only.")

    # -- subclasses ---------------------------------------------------------------------
    def score(self, gold: list[list[str]], predicted: list[list[str]]) -> dict:
        raise NotImplementedError

    def dataset_tag_column(self, args) -> str:
        """The tag column of the task's usual Hub datasets (conll2003's ner_tags, universal_dependencies' upos)."""
        raise NotImplementedError

    # -- datasets -------------------------------------------------------------------------
    def read_dataset(self, args, rows, source, split):
        tokens_column = args.text_column_name or "tokens"
        tags_column = args.label_column_name or self.dataset_tag_column(args)
        labelled = tags_column in rows.column_names
        dataset_columns(rows, source, [tokens_column] + ([tags_column] if split != "predict" else []))
        names = getattr(getattr(rows.features[tags_column], "feature", None), "names", None) if labelled else None
        if names is not None and split == "train":
            self.dataset_labels = list(names)  # the label ids of the dataset, in its order
        sentences = []
        for i, row in enumerate(rows):
            tags = None
            if labelled:
                tags = [names[t] if names is not None else str(t) for t in row[tags_column]]
                if len(tags) != len(row[tokens_column]):
                    raise TaskDataError(f"{source} row {i}: {len(row[tokens_column])} tokens but {len(tags)} tags")
            sentences.append(Sentence(list(row[tokens_column]), tags, i + 1))
        return Split(split, source, [s for s in sentences if s.tokens], labelled)

    # -- labels -------------------------------------------------------------------------
    def labels(self, args, train: Split | None, checkpoint):
        if args.labels:
            labels = read_label_file(args.labels)
            if not labels:
                raise TaskDataError(f"{args.labels}: the label file is empty")
            if train is not None:
                check_labels(train.data, labels, train.path)
            return labels
        if checkpoint.head_loads(self.head) and not args.new_head:
            if checkpoint.id2label is None:
                raise UsageError(f"{checkpoint.path} has a token-classification head without label names; pass --labels")
            labels = [checkpoint.id2label[i] for i in range(len(checkpoint.id2label))]
            if train is not None:
                known = set(labels)
                for sent in train.data:
                    for tag, line in zip(sent.tags, sent.token_lines or [sent.line] * len(sent.tags)):
                        if tag not in known:
                            raise TaskDataError(
                                f"{location(train.path, line)}: label {tag!r} is not one of the labels of the checkpoint "
                                f"{checkpoint.path} ({labels}); pass --new_head to train a new head for this label set"
                            )
            return labels
        if train is None:
            return None  # no labels without training: the head check reports the missing head
        if getattr(self, "dataset_labels", None):
            return self.dataset_labels
        return label_list(train.data)

    def check_split_labels(self, split, labels):
        if split.labelled and labels is not None:
            check_labels(split.data, labels, split.path)

    @staticmethod
    def fallback(id2label) -> str:
        names = list(id2label.values())
        return "O" if "O" in names else names[0]

    # -- features and evaluation --------------------------------------------------------
    def build_features(self, args, tokenizer, split, label2id):
        split.rows, split.meta = word_features(tokenizer, split.data, args.max_seq_length,
                                               label2id if split.labelled else None, args.label_all_tokens)

    def evaluate(self, args, model, accelerator, loader, split, id2label):
        sink = getattr(args, "word_vector_sink", None)  # set by finetune.robustness (not a flag): see below
        if sink is None:
            (predicted_ids,) = gather_predictions(model, accelerator, loader, lambda out: (out.logits.argmax(-1),))
        else:
            # The same forward pass also gives each word's output vector (the sensitivity S), so a
            # robustness report encodes every file once: (tokens, (n_words, D)) per sentence.
            predicted_ids, states = gather_predictions(model, accelerator, loader, _logits_and_states,
                                                       output_hidden_states=True)
            sink.extend((s.tokens, word_means(h, a.token_word, len(a.first_token)))
                        for s, h, a in zip(split.data, states, split.meta))
        fallback = self.fallback(id2label)
        tags = [words_from_token_predictions(p, a, id2label, fallback) for p, a in zip(predicted_ids, split.meta)]
        metrics = self.score([s.tags for s in split.data], tags) if split.labelled else {}
        metrics["num_sentences"] = len(split.data)
        metrics["num_words"] = sum(len(s.tokens) for s in split.data)
        # Words cut off by --max_seq_length (and words the tokenizer drops entirely) get the
        # fallback tag and are scored like any other word.
        metrics["truncated_words"] = sum(a.truncated for a in split.meta)
        metrics["unaligned_words"] = sum(a.unaligned for a in split.meta)
        metrics["fallback_tag"] = fallback
        return EvalResult(metrics, tags)


def _logits_and_states(out) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted ids (B, L) and the token vectors the heads see (B, L, D): the last layer's
    states, both channels for CharBERT (D = 2H), as :func:`charbert.robustness.sensitivity.word_vectors`."""
    states = out.hidden_states[-1]  # (B, L, H)
    char = getattr(out, "char_hidden_states", None)
    if char is not None:
        states = torch.cat([states, char[-1]], dim=-1)  # (B, L, 2H)
    return out.logits.argmax(-1), states
