"""`pipeline("question-answering")` for CharBERT (and plain) extractive QA folders.

transformers 5 dropped its extractive question-answering pipeline (it points to generative chat
models instead). Importing charbert registers this one under that name when transformers has none,
so a folder written by `finetune.squad`, or any extractive QA checkpoint, answers as it did in
transformers 4:

    qa = pipeline("question-answering", model="squad_out")
    qa(question="Who wrote it?", context="It was written by Ada.")
    # {"score": 0.93, "start": 18, "end": 21, "answer": "Ada"}

It is `finetune.squad`'s own path, not a second one: the windows come from
`tasks.features.squad_features` and the answer from `tasks.squad.postprocess_qa_predictions`, so
its answers are the program's predictions for the same settings. `score` is the answer's
probability within the n-best list (the program's *_nbest_predictions.json "probability").
"""

from __future__ import annotations

from typing import Any

from transformers import Pipeline

from .tasks.features import TaskCollator, squad_features
from .tasks.squad import SquadExample, postprocess_qa_predictions

TASK = "question-answering"
# The options that count something (tokens, candidates, answers): at least 1.
_COUNTS = ("max_seq_len", "doc_stride", "max_question_len", "max_answer_len", "n_best_size", "top_k")


class QuestionAnsweringPipeline(Pipeline):
    """Extractive QA: one answer (or `top_k`) per {question, context}, by `finetune.squad`'s rules.

    Call with `question=..., context=...` (strings or equal-length lists), a dict with those keys,
    or a list of such dicts. Options (at construction or per call; defaults are the program's):
    `max_seq_len` (384, or the model's length when shorter), `doc_stride` (128), `max_question_len`
    (64), `max_answer_len` (30 tokens), `n_best_size` (20), `top_k` (1), `handle_impossible_answer` (False: SQuAD v2.0's "no answer"
    when null score - best span score > `null_score_diff_threshold`, 0.0).
    """

    def _sanitize_parameters(self, max_seq_len=None, doc_stride=None, max_question_len=None, max_answer_len=None,
                             n_best_size=None, top_k=None, handle_impossible_answer=None,
                             null_score_diff_threshold=None, **kwargs):
        if kwargs:
            raise TypeError(f"question-answering pipeline: unknown option(s) {sorted(kwargs)}")
        preprocess = {k: v for k, v in (("max_seq_len", max_seq_len), ("doc_stride", doc_stride),
                                         ("max_question_len", max_question_len)) if v is not None}
        postprocess = {k: v for k, v in (("max_answer_len", max_answer_len), ("n_best_size", n_best_size),
                                          ("top_k", top_k), ("handle_impossible_answer", handle_impossible_answer),
                                          ("null_score_diff_threshold", null_score_diff_threshold)) if v is not None}
        for name, value in {**preprocess, **postprocess}.items():
            if name in _COUNTS and int(value) < 1:
                raise ValueError(f"question-answering pipeline: {name} must be >= 1; got {value}")
        return preprocess, {}, postprocess

    def __call__(self, *args, question=None, context=None, **kwargs):
        if args and (question is not None or context is not None):
            raise TypeError("Pass either question=/context= or the inputs, not both.")
        if len(args) == 2:  # qa("question", "context")
            question, context, args = args[0], args[1], ()
        if not args:
            if question is None or context is None:
                raise TypeError("question-answering needs a question and a context.")
            if isinstance(question, str) != isinstance(context, str) or (
                    not isinstance(question, str) and len(question) != len(context)):
                raise ValueError("question and context must both be strings or lists of the same length.")
            inputs = ({"question": question, "context": context} if isinstance(question, str)
                      else [{"question": q, "context": c} for q, c in zip(question, context)])
        else:
            inputs = args[0]
        for item in inputs if isinstance(inputs, list) else [inputs]:
            if not isinstance(item, dict) or not isinstance(item.get("question"), str) or not isinstance(item.get("context"), str):
                raise ValueError("Each question-answering input is a dict with string 'question' and 'context'.")
        return super().__call__(inputs, **kwargs)

    def preprocess(self, inputs: dict, max_seq_len: int | None = None, doc_stride: int = 128, max_question_len: int = 64):
        example = SquadExample(id="0", title="", question=inputs["question"], context=inputs["context"], answers=[])
        if max_seq_len is None:  # the program's 384, or less when the model is shorter
            max_seq_len = min(384, self.tokenizer.model_max_length,
                              getattr(self.model.config, "max_position_embeddings", 384))
        rows, windows = squad_features(self.tokenizer, [example], max_seq_len, doc_stride, max_question_len)
        return {"model_inputs": TaskCollator(self.tokenizer)(rows), "windows": windows, "example": example}

    def _forward(self, inputs: dict) -> dict:
        output = self.model(**inputs["model_inputs"])
        return {"start_logits": output.start_logits, "end_logits": output.end_logits,
                "windows": inputs["windows"], "example": inputs["example"]}

    def postprocess(self, outputs: dict, max_answer_len: int = 30, n_best_size: int = 20, top_k: int = 1,
                    handle_impossible_answer: bool = False, null_score_diff_threshold: float = 0.0):
        example, start, end = outputs["example"], outputs["start_logits"], outputs["end_logits"]
        _, nbest = postprocess_qa_predictions(
            [example], outputs["windows"], start.float().cpu().numpy(), end.float().cpu().numpy(),
            n_best_size=max(n_best_size, top_k), max_answer_length=max_answer_len,
            version_2_with_negative=handle_impossible_answer, null_score_diff_threshold=null_score_diff_threshold)
        # No valid span in any window (the program predicts "" then too): an empty answer at 0.
        entries = nbest[example.id][:top_k] or [{"offsets": None, "probability": 0.0}]
        answers = [_answer(entry, example.context) for entry in entries]
        return answers[0] if top_k == 1 else answers


def _answer(entry: dict[str, Any], context: str) -> dict[str, Any]:
    start, end = entry["offsets"] if entry.get("offsets") else (0, 0)
    return {"score": float(entry["probability"]), "start": int(start), "end": int(end), "answer": context[start:end]}


def register_question_answering() -> bool:
    """Register the pipeline under "question-answering" when transformers has none; True if it did."""
    from transformers import AutoModelForQuestionAnswering
    from transformers import pipelines as hf_pipelines
    from transformers.pipelines import PIPELINE_REGISTRY, SUPPORTED_TASKS

    if TASK in SUPPORTED_TASKS and SUPPORTED_TASKS[TASK]["impl"] is not QuestionAnsweringPipeline:
        return False
    # transformers 5 answers the name with "removed: use text-generation" before it looks at the
    # registry; that advice is for generative QA, so the name is taken off that list for this pipeline.
    getattr(hf_pipelines, "REMOVED_TASKS", {}).pop(TASK, None)
    PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=QuestionAnsweringPipeline,
                                        pt_model=AutoModelForQuestionAnswering, type="text")
    return True

