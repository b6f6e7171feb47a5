"""transformers pipelines and Trainer on CharBERT folders written by our programs, on tiny models:
the pipelines' predictions equal the programs' prediction files on the same inputs, and a Trainer run
with DataCollatorWithPadding fine-tunes, saves, reloads and scores like `finetune.glue --do_predict`.

transformers 5.x has no "question-answering" pipeline any more; charbert registers its own under that
name (`charbert.pipelines`, `finetune.squad`'s windows and decoding), tested here the same way."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from conftest import _write_conll, run_cli
from transformers import pipeline

from charbert import CharBertForMaskedLM, CharBertForPreTraining, CharBertTokenizerFast

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

TRAIN = ["--max_train_steps", "6", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "4",
         "--learning_rate", "1e-3", "--seed", "3", "--max_seq_length", "64"]


def single_token_words(tok, n: int = 80) -> list[str]:
    """Vocabulary words the tokenizer keeps whole (so word-level and token-level predictions coincide)."""
    words = sorted(w for w in tok.get_vocab() if w.isalpha() and len(w) >= 3 and tok.tokenize(w) == [w])
    return words[:n]


def hf_groups(tags: list[str], starts: list[int], ends: list[int]) -> list[tuple[str, int, int]]:
    """The token-classification pipeline's "simple" grouping (B- starts a group, O dropped) of per-word tags."""
    groups: list[list] = []
    for tag, s, e in zip(tags, starts, ends):
        bi, kind = (tag[0], tag[2:]) if tag[:2] in ("B-", "I-") else ("I", tag)
        if groups and groups[-1][0] == kind and bi != "B":
            groups[-1][2] = e
        else:
            groups.append([kind, s, e])
    return [tuple(g) for g in groups if g[0] != "O"]


def test_token_classification_pipeline_equals_finetune_ner(bert_dir, tmp_path):
    tok = CharBertTokenizerFast.from_pretrained(bert_dir)
    vocab = single_token_words(tok)
    rng = random.Random(0)
    sentences = [[rng.choice(vocab) for _ in range(rng.randint(3, 9))] for _ in range(40)]
    sentences.append(["Alpha", "Beta", "and", "Omega", "Zulu", "met", "in", "the", "end"])  # every tag occurs
    sentences = [s for s in sentences if all(tok.tokenize(w) == [w] for w in s)]
    _write_conll(tmp_path / "train.txt", sentences)
    dev = sentences[:10]
    _write_conll(tmp_path / "dev.txt", dev)
    out = tmp_path / "ner"
    assert run_cli("ner", "--train_file", tmp_path / "train.txt", "--validation_file", tmp_path / "dev.txt",
                   "--model_name_or_path", bert_dir, "--charbert", "--output_dir", out, *TRAIN,
                   "--max_train_steps", "1", "--learning_rate", "1e-6") == 0  # a near-random head: tags of every kind
    blocks = (out / "eval_predictions.txt").read_text().strip("\n").split("\n\n")
    program = [[row.split(" ")[-1] for row in block.split("\n")] for block in blocks]
    ner = pipeline("token-classification", model=str(out), aggregation_strategy="simple", device="cpu")
    assert type(ner.tokenizer) is CharBertTokenizerFast
    for words, tags in zip(dev, program):
        text = " ".join(words)
        starts = [sum(len(w) + 1 for w in words[:k]) for k in range(len(words))]
        expected = hf_groups(tags, starts, [s + len(w) for s, w in zip(starts, words)])
        got = [(g["entity_group"], g["start"], g["end"]) for g in ner(text)]
        assert got == expected, text
    assert sum(tag != "O" for tags in program for tag in tags) > 5  # the comparison saw entities


def test_text_classification_pipeline_equals_finetune_glue(bert_dir, task_files, tmp_path):
    out = tmp_path / "glue"
    assert run_cli("glue", "--task_name", "sst2", "--train_file", task_files["sst2_train"], "--validation_file",
                   task_files["sst2_dev"], "--model_name_or_path", bert_dir, "--charbert", "--output_dir", out, *TRAIN) == 0
    rows = [ln.split("\t") for ln in (out / "eval_predictions.tsv").read_text().splitlines()[1:]]
    sentences = [ln.split("\t")[0] for ln in task_files["sst2_dev"].read_text().splitlines()[1:]]
    classify = pipeline("text-classification", model=str(out), device="cpu")
    got = classify(sentences, truncation=True, max_length=64)
    assert [g["label"] for g in got] == [pred for _, pred in rows]


def test_fill_mask_pipeline_loads_the_mlm_part_of_a_pretraining_checkpoint(bert_dir, tmp_path):
    pretraining = CharBertForPreTraining.from_pretrained(bert_dir, word_vocab_size=50).eval()
    tok = CharBertTokenizerFast.from_pretrained(bert_dir)
    out = tmp_path / "pretrained"
    pretraining.save_pretrained(out)
    tok.save_pretrained(out)
    mlm = CharBertForMaskedLM.from_pretrained(out).eval()
    for name, value in mlm.state_dict().items():
        assert torch.equal(value, pretraining.state_dict()[name]), name
    text = f"The module {tok.mask_token} the value of the attribute."
    fill = pipeline("fill-mask", model=str(out), device="cpu", top_k=3)
    assert type(fill.model) is CharBertForMaskedLM
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        logits = pretraining(**enc).mlm_logits[0]  # (L, V)
    k = enc["input_ids"][0].tolist().index(tok.mask_token_id)
    expected = torch.topk(logits[k].softmax(-1), 3)
    got = fill(text)
    assert [g["token"] for g in got] == expected.indices.tolist()
    np.testing.assert_allclose([g["score"] for g in got], expected.values.numpy(), rtol=1e-5)


def separable_sst2(path, n: int, seed: int):
    """Sentences whose label a few steps can learn: the positive ones carry a marker word."""
    rng = random.Random(seed)
    filler = "the value of a module returns an object with its name and list".split()
    lines = ["sentence\tlabel"]
    for i in range(n):
        words = [rng.choice(filler) for _ in range(rng.randint(4, 10))]
        label = i % 2
        words.insert(rng.randint(0, len(words)), "excellent" if label else "terrible")
        lines.append(f"{' '.join(words)}\t{label}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [(ln.split("\t")[0], int(ln.split("\t")[1])) for ln in lines[1:]]


def test_trainer_fine_tunes_saves_and_scores_like_finetune_glue(bert_dir, tmp_path):
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from charbert import CharBertForSequenceClassification

    train = separable_sst2(tmp_path / "train.tsv", 48, 0)
    dev = separable_sst2(tmp_path / "dev.tsv", 13, 1)
    tok = CharBertTokenizerFast.from_pretrained(bert_dir)

    def dataset(pairs):
        enc = tok([s for s, _ in pairs], truncation=True, max_length=64)
        return [{**{k: v[i] for k, v in enc.items()}, "labels": label} for i, (_, label) in enumerate(pairs)]

    def accuracy(prediction):
        return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}

    torch.manual_seed(0)
    model = CharBertForSequenceClassification.from_pretrained(bert_dir, num_labels=2)
    args = TrainingArguments(output_dir=str(tmp_path / "trainer"), max_steps=12, per_device_train_batch_size=8,
                             per_device_eval_batch_size=4, learning_rate=2e-3, report_to=[], use_cpu=True, seed=0,
                             logging_steps=1, save_strategy="no", disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=dataset(train), eval_dataset=dataset(dev),
                      data_collator=DataCollatorWithPadding(tok), processing_class=tok, compute_metrics=accuracy)
    before = trainer.evaluate(dataset(train))["eval_loss"]
    trainer.train()
    after = trainer.evaluate(dataset(train))["eval_loss"]
    assert after < before
    saved = tmp_path / "saved"
    trainer.save_model(str(saved))
    assert type(CharBertTokenizerFast.from_pretrained(saved)) is CharBertTokenizerFast
    again = CharBertForSequenceClassification.from_pretrained(saved).eval()
    batch = DataCollatorWithPadding(tok)(dataset(dev))
    batch.pop("labels")
    with torch.no_grad():
        assert torch.allclose(again(**batch).logits, trainer.model.eval()(**batch).logits, atol=1e-6)
    ours = trainer.evaluate()
    pred = tmp_path / "pred"
    assert run_cli("glue", "--task_name", "sst2", "--do_predict", "--test_file", tmp_path / "dev.tsv",
                   "--model_name_or_path", saved, "--output_dir", pred, "--max_seq_length", "64",
                   "--per_device_eval_batch_size", "4") == 0
    record = json.loads((pred / "metrics.json").read_text())
    assert record["predict"]["accuracy"] == pytest.approx(ours["eval_accuracy"], abs=1e-9)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_question_answering_pipeline_equals_finetune_squad(version, bert_dir, task_files, tmp_path):
    from charbert.pipelines import QuestionAnsweringPipeline
    from charbert.tasks.squad import read_squad

    out = tmp_path / "squad"
    v2 = ["--version_2_with_negative"] if version == "v2" else []
    qa_args = ["--max_seq_length", "64", "--doc_stride", "16", "--max_query_length", "16", "--max_answer_length", "8",
               "--n_best_size", "10", *v2]
    assert run_cli("squad", "--train_file", task_files[f"squad_{version}_train"], "--validation_file",
                   task_files[f"squad_{version}_dev"], "--model_name_or_path", bert_dir, "--charbert",
                   "--output_dir", out, *qa_args, *TRAIN) == 0
    predictions = json.loads((out / "eval_predictions.json").read_text())
    nbest = json.loads((out / "eval_nbest_predictions.json").read_text())
    dev = read_squad(task_files[f"squad_{version}_dev"])
    qa = pipeline("question-answering", model=str(out), device="cpu", max_seq_len=64, doc_stride=16,
                  max_question_len=16, max_answer_len=8, n_best_size=10, handle_impossible_answer=bool(v2))
    assert type(qa) is QuestionAnsweringPipeline and type(qa.tokenizer) is CharBertTokenizerFast
    got = qa([{"question": ex.question, "context": ex.context} for ex in dev])
    assert len(got) == len(dev)
    for ex, answer in zip(dev, got):
        assert answer["answer"] == predictions[ex.id], ex.id
        assert answer["answer"] == ex.context[answer["start"]:answer["end"]]
        best = nbest[ex.id][0]["probability"] if nbest[ex.id] else 0.0
        assert answer["score"] == pytest.approx(best, rel=1e-5)
    if version == "v1":
        assert sum(bool(p) for p in predictions.values()) >= 3  # real spans were compared
    # the other call forms give the same answers; top_k gives the n-best list's head
    one = dev[0]
    assert qa(question=one.question, context=one.context) == got[0]
    assert qa(one.question, one.context) == got[0]
    assert qa(question=[one.question], context=[one.context]) == [got[0]]
    top = qa(question=one.question, context=one.context, top_k=3)
    assert [t["answer"] for t in top] == [n["text"] for n in nbest[one.id][:3]]
    if version == "v2":  # the program's "no answer" is the pipeline's too, and spans are still ranked
        assert any(not p for p in predictions.values()) and any(n for n in nbest.values())
    with pytest.raises(ValueError, match="question and context"):
        qa(question=["a", "b"], context=["c"])
