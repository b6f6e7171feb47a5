"""Retrieval with misspelt queries: SQuAD questions against their paragraphs, clean and attacked.

The corpus is a SQuAD JSON file's paragraphs (identical contexts counted once) and the queries
are its questions, each relevant to the paragraph it was asked about.  A query set is ranked
against the corpus by cosine similarity of an embedding model's vectors (any
``SentenceTransformer``: a plain sentence-transformers folder or a CharBERT embedding folder,
loaded with :func:`charbert.embedding.load_embedding_model`, which opens a CharBERT pretraining
folder and a plain Hugging Face encoder folder too) and scored by

* ``recall@1``, ``recall@10`` -- share of the relevant paragraphs in the first k (with one
  relevant paragraph per question: the share of questions whose paragraph is there);
* ``mrr@10`` -- mean reciprocal rank of the first relevant paragraph, 0 beyond rank 10;
* ``ndcg@10`` -- binary-relevance nDCG at 10;

the definitions of sentence-transformers' ``InformationRetrievalEvaluator`` (a test checks
both give the same numbers on the same rankings).  Attacked query sets come from
:func:`charbert.robustness.attacks.attack_text` (at most K words per question changed);
paragraphs are never attacked.  Texts longer than the model takes are truncated by the model
and counted (``truncated_queries``, ``truncated_paragraphs``).

    from charbert.embedding import load_embedding_model
    from charbert.robustness.retrieval import attack_queries, evaluate_retrieval, read_squad_retrieval

    data = read_squad_retrieval("squad/v1.1-dev.json")
    model = load_embedding_model("runs/embedding")
    typos = attack_queries(data.queries, "all", seed=1, max_words=1)
    print(evaluate_retrieval(model, data, {"clean": data.queries, "all K=1": typos}))
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from charbert.robustness.attacks import attack_text
from charbert.tasks.errors import TaskDataError

__all__ = [
    "METRICS",
    "METRIC_NAMES",
    "RetrievalSet",
    "read_squad_retrieval",
    "attack_queries",
    "attack_squad_questions",
    "encode_texts",
    "count_truncated",
    "rank_corpus",
    "retrieval_metrics",
    "evaluate_retrieval",
]

METRICS = ("recall@1", "recall@10", "mrr@10", "ndcg@10")
METRIC_NAMES = {"recall@1": "R@1", "recall@10": "R@10", "mrr@10": "MRR@10", "ndcg@10": "nDCG@10"}
TOP_K = 10  # the deepest cut-off of METRICS: rankings keep this many paragraphs


@dataclass
class RetrievalSet:
    """A corpus, its queries and which corpus entries each query is relevant to."""

    corpus_ids: list[str]
    corpus: list[str]
    query_ids: list[str]
    queries: list[str]
    relevant: dict[str, set[str]] = field(default_factory=dict)  # query id -> relevant corpus ids

    def relevant_lists(self) -> list[set[str]]:
        return [self.relevant[q] for q in self.query_ids]


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


def read_squad_retrieval(path: str | os.PathLike, max_queries: int | None = None) -> RetrievalSet:
    """Paragraphs and questions of a SQuAD v1.1/v2.0 JSON file (v2.0's unanswerable questions too:
    they were still asked about their paragraph).  ``max_queries``: the first N questions (the
    corpus stays whole).  Query ids are the questions' ``id`` fields when every question has a
    distinct one, else their positions (``q0``, ``q1``, ...)."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise TaskDataError(f"{os.fspath(path)}: not a JSON file ({err.msg}, line {err.lineno})") from None
    articles = data.get("data") if isinstance(data, dict) else None
    if not isinstance(articles, list):
        raise TaskDataError(f"{os.fspath(path)}: not a SQuAD JSON file (no top-level 'data' list)")
    corpus_ids: list[str] = []
    corpus: list[str] = []
    by_context: dict[str, str] = {}
    questions: list[tuple[str | None, str, str]] = []  # (SQuAD id, question, paragraph id)
    for a, article in enumerate(articles):
        paragraphs = (article.get("paragraphs") or []) if isinstance(article, dict) else []
        for p, para in enumerate(paragraphs):
            context = para.get("context") if isinstance(para, dict) else None
            if not isinstance(context, str) or not context.strip():
                continue
            if context not in by_context:
                by_context[context] = f"a{a}p{p}"
                corpus_ids.append(by_context[context])
                corpus.append(context)
            for qa in para.get("qas") or []:
                question = qa.get("question") if isinstance(qa, dict) else None
                if isinstance(question, str) and question.strip():
                    questions.append((qa.get("id"), question, by_context[context]))
    if not questions:
        raise TaskDataError(f"{os.fspath(path)}: no questions (expected data[].paragraphs[] with a 'context' and "
                            "'qas' entries with a 'question')")
    if max_queries is not None:
        questions = questions[:max_queries]
    ids = [str(q[0]) for q in questions if q[0] is not None]
    if len(ids) != len(questions) or len(set(ids)) != len(ids):
        ids = [f"q{i}" for i in range(len(questions))]
    relevant = {qid: {pid} for qid, (_, _, pid) in zip(ids, questions)}
    return RetrievalSet(corpus_ids, corpus, ids, [q[1] for q in questions], relevant)


def attack_queries(queries: Sequence[str], attack: str, seed: int, max_words: int | None = None,
                   word_rate: float = 1.0) -> list[str]:
    """Each query after :func:`~charbert.robustness.attacks.attack_text` (one generator seeded once,
    queries in order): at most ``max_words`` words changed per query."""
    rng = np.random.default_rng(seed)
    return [attack_text(q, attack, rng, word_rate=word_rate, max_words=max_words)[0] for q in queries]


def attack_squad_questions(in_path: str | os.PathLike, out_path: str | os.PathLike, attack: str, seed: int,
                           max_words: int | None = None, word_rate: float = 1.0) -> dict[str, int]:
    """Write a copy of a SQuAD JSON file whose questions went through :func:`attack_queries` (the
    same generator, questions in file order; contexts untouched), so that reading it back gives
    ``attack_queries(read_squad_retrieval(in_path).queries, ...)``.
    Returns ``{"questions", "words", "changed"}``."""
    read_squad_retrieval(in_path)  # one clear error for a file that is not one
    with open(in_path, encoding="utf-8-sig") as f:
        data = json.load(f)
    rng = np.random.default_rng(seed)
    stats = {"questions": 0, "words": 0, "changed": 0}
    for article in data["data"]:
        for para in (article.get("paragraphs") or []) if isinstance(article, dict) else []:
            context = para.get("context") if isinstance(para, dict) else None
            if not isinstance(context, str) or not context.strip():
                continue  # (as read_squad_retrieval: not a paragraph, its questions not queries)
            for qa in para.get("qas") or []:
                question = qa.get("question") if isinstance(qa, dict) else None
                if isinstance(question, str) and question.strip():
                    qa["question"], n_words, n_changed = attack_text(question, attack, rng, word_rate=word_rate,
                                                                     max_words=max_words)
                    stats["questions"] += 1
                    stats["words"] += n_words
                    stats["changed"] += n_changed
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)
    return stats


# --------------------------------------------------------------------------------------
# Encoding and ranking
# --------------------------------------------------------------------------------------


def count_truncated(model, texts: Sequence[str]) -> int:
    """How many ``texts`` are longer (in the model's tokens, special tokens included) than the
    model's ``max_seq_length``: the model encodes their first tokens only.  (Models opened by
    :func:`charbert.embedding.load_embedding_model` count this themselves while encoding; this is
    for any other ``SentenceTransformer``.)"""
    tokenizer, limit = getattr(model, "tokenizer", None), getattr(model, "max_seq_length", None)
    if tokenizer is None or not limit or not texts:
        return 0
    from charbert.cli import quiet_transformers

    with quiet_transformers():  # its warning about sequences longer than the model's maximum
        lengths = [len(ids) for ids in tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"]]
    return sum(n > limit for n in lengths)


def encode_texts(model, texts: Sequence[str], batch_size: int = 64, progress: bool = False,
                 role: str = "document") -> tuple[np.ndarray, int]:
    """Unit-length vectors of ``texts``, ``(N, D)`` float32 (cosine similarity is a dot product), and
    how many texts the model truncated. ``role`` "query" or "document": sentence-transformers'
    ``encode_query`` / ``encode_document``, which a query/document model routes to its own modules (and
    which add a model's query or document prompt, if it has one); a model without them, plain ``encode``."""
    from charbert.embedding import truncation_count

    if role not in ("query", "document"):
        raise ValueError(f"role must be 'query' or 'document'; got {role!r}")
    counts_itself = hasattr(model, "truncated_inputs")  # an EmbeddingModel of charbert.embedding
    truncation_count(model, reset=True)
    encode = getattr(model, f"encode_{role}", model.encode)
    vectors = encode(list(texts), batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                     show_progress_bar=progress)
    truncated = truncation_count(model, reset=True) if counts_itself else count_truncated(model, texts)
    return np.asarray(vectors, dtype=np.float32), truncated


def rank_corpus(query_vectors: np.ndarray, corpus_vectors: np.ndarray, k: int = TOP_K,
                chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar corpus rows per query: ``(indices, scores)``, each ``(Q, k)``, best
    first; equal scores keep corpus order.  Queries go in chunks to bound memory."""
    k = min(k, corpus_vectors.shape[0])
    indices, scores = [], []
    for start in range(0, query_vectors.shape[0], chunk):
        sims = query_vectors[start:start + chunk] @ corpus_vectors.T  # (q, C)
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]  # (q, k)
        indices.append(top)
        scores.append(np.take_along_axis(sims, top, axis=1))
    return np.concatenate(indices), np.concatenate(scores)


# --------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------


def retrieval_metrics(rankings: Sequence[Sequence[str]], relevant: Sequence[set[str]]) -> dict[str, float]:
    """R@1, R@10, MRR@10 and nDCG@10 (binary relevance) of ranked corpus ids, one list per query,
    as fractions averaged over the queries."""
    if len(rankings) != len(relevant):
        raise ValueError(f"{len(rankings)} rankings for {len(relevant)} queries")
    if not rankings:
        raise ValueError("no queries to score")
    sums = dict.fromkeys(METRICS, 0.0)
    for ranked, rel in zip(rankings, relevant):
        hits = [doc in rel for doc in ranked[:TOP_K]]
        sums["recall@1"] += sum(hits[:1]) / len(rel)
        sums["recall@10"] += sum(hits) / len(rel)
        first = next((i for i, hit in enumerate(hits) if hit), None)
        sums["mrr@10"] += 0.0 if first is None else 1.0 / (first + 1)
        dcg = sum(1.0 / np.log2(i + 2) for i, hit in enumerate(hits) if hit)
        ideal = sum(1.0 / np.log2(i + 2) for i in range(min(len(rel), TOP_K)))
        sums["ndcg@10"] += dcg / ideal
    return {name: float(total / len(rankings)) for name, total in sums.items()}


def evaluate_retrieval(model, data: RetrievalSet, query_sets: Mapping[str, Sequence[str]], batch_size: int = 64,
                       progress: bool = False) -> dict[str, dict[str, Any]]:
    """Score ``model`` on each query set (``{label: queries}``, each aligned with ``data.query_ids``)
    against ``data``'s corpus, encoded once (``progress``: a bar for the corpus and one over the sets): ``{label: {metric: value, "queries": n,
    "truncated_queries": n, "truncated_paragraphs": n}}``."""
    from tqdm.auto import tqdm

    corpus_vectors, truncated_paragraphs = encode_texts(model, data.corpus, batch_size, progress)
    relevant = data.relevant_lists()
    out: dict[str, dict[str, Any]] = {}
    for label, queries in tqdm(query_sets.items(), desc="query sets", disable=not progress):
        if len(queries) != len(data.query_ids):
            raise ValueError(f"query set {label!r} has {len(queries)} queries; the corpus's file has "
                             f"{len(data.query_ids)}")
        query_vectors, truncated_queries = encode_texts(model, queries, batch_size, role="query")
        top, _ = rank_corpus(query_vectors, corpus_vectors)
        rankings = [[data.corpus_ids[i] for i in row] for row in top]
        out[label] = {**retrieval_metrics(rankings, relevant), "queries": len(queries),
                      "truncated_queries": truncated_queries, "truncated_paragraphs": truncated_paragraphs}
    return out
