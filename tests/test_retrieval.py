"""Retrieval with misspelt queries: SQuAD questions -> paragraphs, metrics checked against
sentence-transformers' InformationRetrievalEvaluator, attacks at K words, and
``python -m finetune.robustness --task retrieval`` on tiny embedding models."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from conftest import run_cli

from charbert.robustness.retrieval import (
    METRICS,
    attack_queries,
    attack_squad_questions,
    count_truncated,
    evaluate_retrieval,
    rank_corpus,
    read_squad_retrieval,
    retrieval_metrics,
)
from charbert.tasks.errors import TaskDataError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _squad(paragraphs: list[tuple[str, list[str]]]) -> dict:
    """A SQuAD v1.1 dict of one article per two paragraphs: ``[(context, [questions])]``."""
    data, n = [], 0
    for a in range(0, len(paragraphs), 2):
        paras = []
        for context, questions in paragraphs[a:a + 2]:
            qas = []
            for q in questions:
                qas.append({"id": f"id{n}", "question": q, "answers": [{"text": context.split()[0], "answer_start": 0}]})
                n += 1
            paras.append({"context": context, "qas": qas})
        data.append({"title": f"t{a}", "paragraphs": paras})
    return {"version": "1.1", "data": data}


@pytest.fixture(scope="module")
def squad_file(tmp_path_factory, tiny_texts):
    """Eight paragraphs of local text with three questions each, made of the paragraph's own words."""
    rng = random.Random(0)
    paragraphs = []
    for i in range(8):
        context = " ".join(" ".join(tiny_texts[20 * i:20 * i + 4]).split()[:80])
        words = context.split()
        paragraphs.append((context, ["What " + " ".join(rng.sample(words, 6)) + "?" for _ in range(3)]))
    path = tmp_path_factory.mktemp("retrieval") / "squad.json"
    path.write_text(json.dumps(_squad(paragraphs)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def embedding_dirs(tmp_path_factory, bert_dir, roberta_dir):
    """Two tiny sentence-transformers folders (mean pooling, normalised) on the tiny BERT and RoBERTa."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    out = {}
    for name, base in (("bert", bert_dir), ("roberta", roberta_dir)):
        word = Transformer(str(base), max_seq_length=48)
        model = SentenceTransformer(modules=[word, Pooling(word.get_embedding_dimension(), "mean"), Normalize()],
                                    device="cpu")
        folder = tmp_path_factory.mktemp(f"st_{name}")
        model.save(str(folder))
        out[name] = folder
    from charbert.embedding import build_charbert_embedding

    out["charbert"] = tmp_path_factory.mktemp("st_charbert")  # CharBERT on the tiny BERT one, identity start
    build_charbert_embedding(out["bert"], device="cpu").save(str(out["charbert"]))
    return out


# --------------------------------------------------------------------------------------
# Reading and attacking
# --------------------------------------------------------------------------------------


def test_read_squad_corpus_queries_and_relevance(tmp_path):
    squad = _squad([("Alpha beta gamma.", ["What alpha?", "Which beta?"]), ("Delta epsilon.", ["Why delta?"]),
                    ("Alpha beta gamma.", ["Again alpha?"]), ("Zeta.", [])])
    path = tmp_path / "s.json"
    path.write_text(json.dumps(squad), encoding="utf-8")
    data = read_squad_retrieval(path)
    assert data.corpus == ["Alpha beta gamma.", "Delta epsilon.", "Zeta."]  # an identical context counted once
    assert data.queries == ["What alpha?", "Which beta?", "Why delta?", "Again alpha?"]
    assert data.query_ids == ["id0", "id1", "id2", "id3"]
    assert [data.relevant[q] for q in data.query_ids] == [{data.corpus_ids[0]}] * 2 + [{data.corpus_ids[1]},
                                                                                        {data.corpus_ids[0]}]
    assert read_squad_retrieval(path, max_queries=2).queries == ["What alpha?", "Which beta?"]
    assert len(read_squad_retrieval(path, max_queries=2).corpus) == 3  # the corpus stays whole


@pytest.mark.parametrize("content, message", [
    ({"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": "Some text.", "qas": []}]}]},
     "no questions"),
    ({"questions": ["a?"]}, "not a SQuAD JSON file"),
    ("{not json", "not a JSON file"),
])
def test_read_squad_bad_input_is_one_error(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    with pytest.raises(TaskDataError, match=message):
        read_squad_retrieval(path)


@pytest.mark.parametrize("k", [1, 2])
def test_attack_queries_changes_at_most_k_words_and_is_seeded(k):
    queries = ["Which river flows through the capital city of France?", "When was the treaty signed?", "Why?"]
    attacked = attack_queries(queries, "all", seed=3, max_words=k)
    assert attacked == attack_queries(queries, "all", seed=3, max_words=k)
    assert attacked != attack_queries(queries, "all", seed=4, max_words=k)
    for clean, noisy in zip(queries, attacked):
        assert len(noisy.split()) == len(clean.split())
        changed = sum(a != b for a, b in zip(clean.split(), noisy.split()))
        assert changed <= k
    assert sum(a != b for a, b in zip(queries[0].split(), attacked[0].split())) == k  # long enough: exactly k


def test_attacked_file_reads_back_as_attack_queries(squad_file, tmp_path):
    out = tmp_path / "attacked.json"
    stats = attack_squad_questions(squad_file, out, "swap", seed=5, max_words=1)
    clean, attacked = read_squad_retrieval(squad_file), read_squad_retrieval(out)
    assert attacked.queries == attack_queries(clean.queries, "swap", seed=5, max_words=1)
    assert attacked.corpus == clean.corpus and attacked.query_ids == clean.query_ids
    assert stats["questions"] == 24 and 0 < stats["changed"] <= 24


# --------------------------------------------------------------------------------------
# Metrics: hand-computed and against sentence-transformers' evaluator
# --------------------------------------------------------------------------------------


def test_metrics_by_hand():
    rankings = [["a", "b"], ["b", "a"], ["c", "d", "e"], ["x"] * 10 + ["a"]]
    relevant = [{"a"}, {"a"}, {"d", "e"}, {"a"}]
    m = retrieval_metrics(rankings, relevant)
    assert m["recall@1"] == pytest.approx((1 + 0 + 0 + 0) / 4)
    assert m["recall@10"] == pytest.approx((1 + 1 + 1 + 0) / 4)  # rank 11 does not count
    assert m["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 2 + 0) / 4)
    ndcg3 = (1 / np.log2(3) + 1 / np.log2(4)) / (1 + 1 / np.log2(3))
    assert m["ndcg@10"] == pytest.approx((1 + 1 / np.log2(3) + ndcg3 + 0) / 4)


def _evaluator(queries: dict, corpus: dict, relevant: dict):
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    return InformationRetrievalEvaluator(queries, corpus, relevant, mrr_at_k=[10], ndcg_at_k=[10],
                                         accuracy_at_k=[1, 10], precision_recall_at_k=[1, 10], map_at_k=[10],
                                         write_csv=False, batch_size=8)


def _theirs(scores: dict) -> dict[str, float]:
    return {"recall@1": scores["recall@k"][1], "recall@10": scores["recall@k"][10], "mrr@10": scores["mrr@k"][10],
            "ndcg@10": scores["ndcg@k"][10]}


def test_metrics_match_information_retrieval_evaluator_on_the_same_rankings():
    rng = np.random.default_rng(0)
    corpus = {f"d{i}": f"doc {i}" for i in range(30)}
    queries = {f"q{i}": f"query {i}" for i in range(40)}
    relevant = {q: {f"d{j}" for j in rng.choice(30, size=rng.integers(1, 4), replace=False)} for q in queries}
    scores = rng.normal(size=(40, 30))
    top, top_scores = rank_corpus(scores.astype(np.float32), np.eye(30, dtype=np.float32), k=10)
    ours = retrieval_metrics([[f"d{j}" for j in row] for row in top], [relevant[q] for q in queries])
    results = [[{"corpus_id": f"d{j}", "score": float(s)} for j, s in zip(row, row_scores)]
               for row, row_scores in zip(top, top_scores)]
    theirs = _theirs(_evaluator(queries, corpus, relevant).compute_metrics(results))
    assert 0.0 < ours["mrr@10"] < 1.0
    for name in METRICS:
        assert ours[name] == pytest.approx(theirs[name], abs=1e-9), name


def test_evaluate_retrieval_matches_the_evaluator_on_a_model(embedding_dirs, squad_file):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(embedding_dirs["bert"]), device="cpu")
    data = read_squad_retrieval(squad_file)
    ours = evaluate_retrieval(model, data, {"clean": data.queries}, batch_size=8)["clean"]
    evaluator = _evaluator(dict(zip(data.query_ids, data.queries)), dict(zip(data.corpus_ids, data.corpus)),
                           data.relevant)
    scores = evaluator(model)
    theirs = {name: scores[f"cosine_{name}"] for name in METRICS}
    for name in METRICS:
        assert ours[name] == pytest.approx(theirs[name], abs=1e-6), name
    assert ours["queries"] == 24 and ours["truncated_queries"] == 0
    assert ours["truncated_paragraphs"] == 8  # 80 words, max_seq_length 48


def test_a_query_document_model_is_scored_by_its_routes(embedding_dirs, squad_file):
    import torch

    from charbert.embedding import load_embedding_model, query_document_model

    queries = load_embedding_model(str(embedding_dirs["charbert"]), device="cpu")
    with torch.no_grad():  # a character channel with a say, so that the two routes differ
        dense = queries[1].linear.weight  # (H, 2H)
        dense[:, dense.size(0):] = 0.5 * torch.randn(dense.size(0), dense.size(0), generator=torch.Generator().manual_seed(0))
    documents = load_embedding_model(str(embedding_dirs["bert"]), device="cpu")
    model = query_document_model(queries, documents, device="cpu")
    data = read_squad_retrieval(squad_file)
    ours = evaluate_retrieval(model, data, {"clean": data.queries}, batch_size=8)["clean"]
    evaluator = _evaluator(dict(zip(data.query_ids, data.queries)), dict(zip(data.corpus_ids, data.corpus)),
                           data.relevant)
    scores = evaluator(model)  # sentence-transformers' evaluator: encode_query and encode_document too
    for name in METRICS:
        assert ours[name] == pytest.approx(scores[f"cosine_{name}"], abs=1e-6), name
    one_model = {name: evaluate_retrieval(m, data, {"clean": data.queries}, batch_size=8)["clean"]["mrr@10"]
                 for name, m in (("queries", queries), ("documents", documents))}
    assert ours["mrr@10"] not in one_model.values()  # neither model alone: each text went through its own route


@pytest.mark.parametrize("kind", ["plain", "bert", "charbert"])
def test_long_queries_are_truncated_and_counted(embedding_dirs, squad_file, kind):
    """Any SentenceTransformer (``plain``), and the models of load_embedding_model, which count themselves."""
    from sentence_transformers import SentenceTransformer

    from charbert.embedding import load_embedding_model

    model = SentenceTransformer(str(embedding_dirs["bert"]), device="cpu") if kind == "plain" else \
        load_embedding_model(embedding_dirs[kind], device="cpu")
    data = read_squad_retrieval(squad_file)
    long_queries = [q + " " + " ".join(data.corpus[i % 8].split()[:60]) for i, q in enumerate(data.queries)]
    short = data.queries[:3]
    long_queries[:3] = short  # these three fit
    assert count_truncated(model, long_queries) == 21
    result = evaluate_retrieval(model, data, {"long": long_queries}, batch_size=8)["long"]
    assert result["truncated_queries"] == 21 and result["truncated_paragraphs"] == 8
    assert 0.0 <= result["mrr@10"] <= 1.0


# --------------------------------------------------------------------------------------
# python -m finetune.robustness --task retrieval
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_robustness_retrieval_report_two_models_k1_k2(embedding_dirs, squad_file, tmp_path):
    out = tmp_path / "report"
    code = run_cli("robustness", "--task", "retrieval", "--model_name_or_path", embedding_dirs["bert"],
                   embedding_dirs["roberta"], embedding_dirs["charbert"], "--model_names", "bert", "roberta", "charbert",
                   "--test_file", squad_file,
                   "--attacks", "drop,all", "--output_dir", out, "--per_device_eval_batch_size", "8")
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["metric"] == "mrr@10" and report["max_words"] == [1, 2]
    assert report["attacks"] == ["drop K=1", "all K=1", "drop K=2", "all K=2"]
    for label in report["attacks"]:  # the attacked questions are kept, read back as attack_queries wrote them
        attacked = read_squad_retrieval(out / report["attack_files"][label])
        k = int(label[-1])
        assert attacked.queries == attack_queries(read_squad_retrieval(squad_file).queries, label.split()[0],
                                                  seed=1, max_words=k)
    from sentence_transformers import SentenceTransformer

    data = read_squad_retrieval(squad_file)
    for m, folder in zip(report["models"][:2], (embedding_dirs["bert"], embedding_dirs["roberta"])):
        assert set(m["scores"]) == {"clean", *report["attacks"]}
        expected = evaluate_retrieval(SentenceTransformer(str(folder), device="cpu"), data, {"clean": data.queries},
                                      batch_size=8)["clean"]
        assert m["metrics"]["clean"]["mrr@10"] == pytest.approx(expected["mrr@10"])
        assert m["scores"]["clean"] == m["metrics"]["clean"]["mrr@10"]
        drop = m["drops"]["all K=2"]
        assert drop["absolute"] == pytest.approx(m["scores"]["clean"] - m["scores"]["all K=2"])
    bert, charbert = report["models"][0], report["models"][2]  # a fresh CharBERT ranks as its backbone
    assert charbert["metrics"]["clean"]["mrr@10"] == pytest.approx(bert["metrics"]["clean"]["mrr@10"], abs=1e-6)
    md = (out / "report.md").read_text()
    assert "## Retrieval metrics" in md and "nDCG@10" in md and "mean of attacks K=2" in md
    assert (out / "scores.png").stat().st_size > 0


@pytest.mark.slow
def test_robustness_retrieval_bad_input_one_line(embedding_dirs, squad_file, tmp_path, capsys):
    base = ["--task", "retrieval", "--output_dir", tmp_path / "o", "--attacks", "drop"]
    not_a_model = tmp_path / "notes"
    not_a_model.mkdir()
    (not_a_model / "readme.txt").write_text("not a model")
    assert run_cli("robustness", *base, "--model_name_or_path", not_a_model, "--test_file", squad_file) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" in err.splitlines()[-1] and "not an embedding model" in err
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": "x",
                                                                                           "qas": []}]}]}))
    assert run_cli("robustness", *base, "--model_name_or_path", embedding_dirs["bert"], "--test_file", empty) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "no questions" in err.splitlines()[-1]
    assert run_cli("robustness", *base, "--model_name_or_path", embedding_dirs["bert"], "--test_file", squad_file,
                   "--tag_column", "xpos") == 2
    assert "unrecognized arguments: --tag_column" in capsys.readouterr().err
    assert run_cli("robustness", *base, "--model_name_or_path", embedding_dirs["bert"], "--test_file", squad_file,
                   "--metric", "f1") == 2
    assert "--task retrieval has ['recall@1'" in capsys.readouterr().err


def test_attack_program_writes_attacked_questions(squad_file, tmp_path):
    out = tmp_path / "attacked.json"
    assert run_cli("attack", "--task", "retrieval", "--input", squad_file, "--output", out, "--attack", "keyboard",
                   "--seed", "2", "--max_words", "1") == 0
    assert read_squad_retrieval(out).queries == attack_queries(read_squad_retrieval(squad_file).queries, "keyboard",
                                                               seed=2, max_words=1)


# --------------------------------------------------------------------------------------
# benchmarks/bench_embedding.py
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_bench_embedding_tiny_run_reports_both_models_and_the_ratio(tmp_path, capsys):
    from benchmarks.bench_embedding import TARGET, main

    out = tmp_path / "bench.json"
    report = main(["--tiny", "--num_questions", "12", "--num_paragraphs", "5", "--batch_size", "4", "--repeats", "1",
                   "--threads", "1", "--device", "cpu", "--output", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert [(r["texts"], r["num_texts"]) for r in report["encode"]] == [("questions", 12), ("paragraphs", 5)]
    for row in report["encode"]:
        assert row["plain_sentences_per_s"] > 0 and row["charbert_sentences_per_s"] > 0
        assert row["charbert_vs_plain"] == pytest.approx(row["charbert_sentences_per_s"] / row["plain_sentences_per_s"])
        assert row["meets_target"] == (row["charbert_vs_plain"] >= TARGET)
    assert "CharBERT / plain" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_embedding_compares_the_inference_paths_and_restores_them(capsys):
    from benchmarks.bench_embedding import main
    from charbert import gru_inference, modeling

    before = modeling.CPU_STACKED_TOKENS_LIMIT, gru_inference.MIN_PARALLEL_CHARS
    report = main(["--tiny", "--num_questions", "8", "--num_paragraphs", "4", "--batch_size", "4", "--repeats", "1",
                   "--threads", "1", "--device", "cpu", "--compare_inference_paths"])
    assert (modeling.CPU_STACKED_TOKENS_LIMIT, gru_inference.MIN_PARALLEL_CHARS) == before
    for row in report["encode"]:
        assert row["inference_paths_speedup"] == pytest.approx(
            row["charbert_sentences_per_s"] / row["charbert_paths_off_sentences_per_s"])
    assert "speed-up of the paths" in capsys.readouterr().out


def test_without_inference_paths_switches_both_off_inside_the_block():
    import torch
    from conftest import torch_threads

    from benchmarks.bench_embedding import without_inference_paths
    from charbert import gru_inference, modeling

    before = modeling.CPU_STACKED_TOKENS_LIMIT, gru_inference.MIN_PARALLEL_CHARS
    hidden, chars = torch.zeros(64, 256, 4), torch.zeros(2, 10_000, 4)
    with torch.no_grad(), torch_threads(2):
        assert not modeling.stacks_channels(hidden) and gru_inference.runs_directions_in_parallel(chars)
        with without_inference_paths():
            assert modeling.stacks_channels(hidden) and not gru_inference.runs_directions_in_parallel(chars)
    assert (modeling.CPU_STACKED_TOKENS_LIMIT, gru_inference.MIN_PARALLEL_CHARS) == before


# --------------------------------------------------------------------------------------
# experiments/replicate_retrieval.py: commands and tables (no training here)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rr():
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "experiments" / "replicate_retrieval.py"
    spec = importlib.util.spec_from_file_location("replicate_retrieval", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_report(folder, clean: float, attacked: dict[str, float]):
    """A report.json as finetune.robustness --task retrieval writes it, with MRR@10 etc. all equal."""
    folder.mkdir(parents=True)
    metrics = {label: dict.fromkeys(METRICS, value) for label, value in {"clean": clean, **attacked}.items()}
    (folder / "report.json").write_text(json.dumps({"models": [{"name": "m", "metrics": metrics}]}))


def test_replicate_retrieval_commands_share_pairs_steps_and_seeds(rr, tmp_path):
    args = rr.build_parser().parse_args(["--max_train_steps", "7", "--charbert_pretrained", str(tmp_path)])
    commands = {row: rr.train_command(args, row, "base", 43, tmp_path / row) for row in rr.DEFAULT_ROWS[1:]}
    for command in commands.values():
        assert command[command.index("--max_train_steps") + 1] == "7"
        assert command[command.index("--seed") + 1] == "43"
        assert command[command.index("--train_file") + 1] == args.train_file
    assert "--query_noise" not in commands["clean"] and "--self_teaching" not in commands["noise"]
    assert commands["noise_st"][commands["noise_st"].index("--self_teaching") + 1] == "1.0"
    assert "--charbert" in commands["charbert"] and "--self_teaching" in commands["charbert"]  # default recipe
    assert commands["charbert_pretrained"][commands["charbert_pretrained"].index("--model_name_or_path") + 1] == \
        str(tmp_path)
    ev = rr.eval_command(args, "model", "clean", 43, tmp_path / "e")
    assert ev[ev.index("--max_words") + 1: ev.index("--max_words") + 3] == ["1", "2"]
    assert ev[ev.index("--seed") + 1] == "43" and ev[ev.index("--task") + 1] == "retrieval"
    assert rr.DEFAULT_ROWS == ("minilm", "clean", "noise", "noise_st", "charbert", "charbert_pretrained")
    assert rr.selected_rows(args) == list(rr.DEFAULT_ROWS)
    assert rr.selected_rows(rr.build_parser().parse_args([])) == list(rr.DEFAULT_ROWS)  # the pretrained row pretrains
    assert "--new_module_lr_multiplier" not in commands["charbert"]  # the same fine-tuning as the plain rows
    faster = rr.build_parser().parse_args(["--charbert_new_module_lr_multiplier", "10"])
    for row in rr.DEFAULT_ROWS[1:]:
        command = rr.train_command(faster, row, "base", 43, tmp_path / row)
        given = command[command.index("--new_module_lr_multiplier") + 1] if "--new_module_lr_multiplier" in command else None
        assert given == ("10.0" if row in rr.CHARBERT_ROWS else None)
        assert "--word_side_base_lr" not in command
    character_side = rr.build_parser().parse_args(["--charbert_new_module_lr_multiplier", "20",
                                                   "--charbert_word_side_base_lr"])
    assert "--word_side_base_lr" in rr.train_command(character_side, "charbert", "base", 43, tmp_path / "cs")
    assert "--word_side_base_lr" not in rr.train_command(character_side, "noise", "base", 43, tmp_path / "ns")
    assert all("--query_alignment" not in command for command in commands.values())  # off unless asked for
    aligned = rr.build_parser().parse_args(["--query_alignment", "2", "--charbert_pretrained", str(tmp_path)])
    for row in rr.DEFAULT_ROWS[1:]:
        command = rr.train_command(aligned, row, "base", 43, tmp_path / row)
        given = command[command.index("--query_alignment") + 1] if "--query_alignment" in command else None
        assert given == (None if row == "clean" else "2.0")  # every row trained with noised queries
        assert ("query alignment" in rr.row_label(row, aligned)) == (row != "clean")
    assert all("--teacher_model" not in c and "--ranking_weight" not in c for c in commands.values())
    taught = rr.build_parser().parse_args(["--teacher", "1", "--ranking_weight", "0", "--charbert_recipe", "noise",
                                           "--charbert_pretrained", str(tmp_path)])
    for row in rr.DEFAULT_ROWS[1:]:
        command = rr.train_command(taught, row, "base", 43, tmp_path / row)
        noised = row != "clean"
        assert ("--teacher_model" in command) == ("--ranking_weight" in command) == noised
        if noised:  # the plain model teaches every row trained with noised queries, CharBERT's too
            assert command[command.index("--teacher_model") + 1] == "base"
            assert command[command.index("--ranking_weight") + 1] == "0.0"
        assert ("x teacher (the plain model), ranking loss x 0" in rr.row_label(row, taught)) == noised
        assert "--teacher_word_weight" not in command
    words = rr.build_parser().parse_args(["--teacher_word", "2", "--ranking_weight", "0", "--charbert_recipe", "noise"])
    command = rr.train_command(words, "charbert", "base", 43, tmp_path / "w")
    assert command[command.index("--teacher_model") + 1] == "base"  # the word term alone: the vectors' weight 0
    assert command[command.index("--teacher_weight") + 1] == "0.0"
    assert command[command.index("--teacher_word_weight") + 1] == "2.0"
    assert "2 x teacher word by word" in rr.row_label("charbert", words)
    assert "--teacher_model" not in rr.train_command(words, "clean", "base", 43, tmp_path / "c")
    transplant = rr.train_command(args, "charbert_char_encoder", "base", 43, tmp_path / "t")
    assert transplant[transplant.index("--model_name_or_path") + 1] == "base"  # the backbone as shipped
    assert transplant[transplant.index("--char_encoder_from") + 1] == args.charbert_pretrained
    assert "--charbert" in transplant and all("--char_encoder_from" not in c for c in commands.values())
    assert "charbert_char_encoder" not in rr.DEFAULT_ROWS and "charbert_distilled" not in rr.DEFAULT_ROWS


def test_replicate_retrieval_distils_on_texts_before_the_distilled_row(rr, tmp_path, monkeypatch):
    texts = tmp_path / "texts.txt"
    texts.write_text("one text\n")
    args = rr.build_parser().parse_args(["--distill_file", str(texts), "--distill_steps", "50"])
    command = rr.distill_command(args, "base", tmp_path / "d")
    flag = {name: command[command.index(name) + 1] for name in
            ("--model_name_or_path", "--train_file", "--teacher_model", "--teacher_word_weight", "--ranking_weight",
             "--freeze_backbone_steps", "--new_module_lr_multiplier", "--seed")}
    assert flag == {"--model_name_or_path": "base", "--train_file": str(texts), "--teacher_model": "base",
                    "--teacher_word_weight": "1.0", "--ranking_weight": "0", "--freeze_backbone_steps": "50",
                    "--new_module_lr_multiplier": "20.0", "--seed": "42"}
    assert "--charbert" in command and "--query_noise" in command and "--word_side_base_lr" in command
    assert command[command.index("--teacher_clean_weight") + 1] == "1.0"
    anchored = rr.build_parser().parse_args(["--distill_clean_weight", "4"])
    command = rr.distill_command(anchored, "base", tmp_path / "d")
    assert command[command.index("--teacher_clean_weight") + 1] == "4.0"
    assert rr.row_label("noise_charbert_distilled_query", anchored).endswith(
        "(1000 steps), the clean texts weighted 4, for the queries only (the documents by its teacher)")
    every = rr.build_parser().parse_args(["--distill_all_new_modules_fast"])
    assert "--word_side_base_lr" not in rr.distill_command(every, "base", tmp_path / "d")
    both = rr.build_parser().parse_args(["--distill_train_backbone"])
    assert "--freeze_backbone_steps" not in rr.distill_command(both, "base", tmp_path / "d")
    # The row fine-tunes the distilled folder with the CharBERT recipe, against the identity-start row.
    args.charbert_distilled = str(tmp_path / "d")
    row = rr.train_command(args, "charbert_distilled", "base", 43, tmp_path / "r")
    assert row[row.index("--model_name_or_path") + 1] == str(tmp_path / "d") and "--self_teaching" in row
    assert ("charbert_distilled", "charbert") in rr.comparisons(["charbert", "charbert_distilled"], "noise_st")
    assert "distilled on texts (50 steps)" in rr.row_label("charbert_distilled", args)
    # main: the stage runs once, before the first seed's row, into models/distill_charbert.
    ran = []
    monkeypatch.setattr(rr.Runner, "run", lambda self, name, cmd, *a, **k: ran.append((name, cmd)))
    monkeypatch.setattr(rr, "write_results", lambda *a, **k: {})
    squad = tmp_path / "squad.json"
    squad.write_text("{}")
    assert rr.main(["--rows", "distilled,charbert_distilled", "--distill_file", str(texts), "--train_file", str(squad),
                    "--test_file", str(squad), "--model_name_or_path", "base", "--output_dir", str(tmp_path / "o")]) == 0
    names = [name for name, _ in ran]
    assert names == ["distill_charbert", "eval_distilled_s42", "train_charbert_distilled_s42",
                     "eval_charbert_distilled_s42", "eval_distilled_s43", "train_charbert_distilled_s43",
                     "eval_charbert_distilled_s43"]
    distilled = str(tmp_path / "o" / "models" / "distill_charbert")
    trained, scored = dict(ran)["train_charbert_distilled_s43"], dict(ran)["eval_distilled_s43"]
    assert trained[trained.index("--model_name_or_path") + 1] == distilled
    assert scored[scored.index("--model_name_or_path") + 1] == distilled  # the distilled model as it is
    assert rr.row_label("distilled", args).endswith("no fine-tuning") and "distilled" not in rr.DEFAULT_ROWS
    assert ("distilled", "minilm") in rr.comparisons(["minilm", "distilled"], "noise_st")


def test_replicate_retrieval_distils_each_seeds_trained_noise_model(rr, tmp_path, monkeypatch):
    ran = []

    def run_once(self, name, command):  # as the Runner does: a stage already run is not run again
        if name not in dict(ran):
            ran.append((name, command))

    monkeypatch.setattr(rr.Runner, "run", run_once)
    monkeypatch.setattr(rr, "write_results", lambda *a, **k: {})
    squad = tmp_path / "squad.json"
    squad.write_text("{}")
    argv = ["--rows", "noise,noise_self_distilled,noise_charbert_distilled", "--distill_file", str(squad),
            "--distill_steps", "30", "--train_file", str(squad), "--test_file", str(squad),
            "--model_name_or_path", "base"]
    assert rr.main([*argv, "--output_dir", str(tmp_path / "o")]) == 0
    names = [name for name, _ in ran]
    # the noise row trains once per seed; both distilled rows start from that seed's model, with that seed
    assert names[:6] == ["train_noise_s42", "eval_noise_s42", "distill_noise_self_distilled_s42",
                         "eval_noise_self_distilled_s42", "distill_noise_charbert_distilled_s42",
                         "eval_noise_charbert_distilled_s42"]
    assert names[6:] == [name.replace("s42", "s43") for name in names[:6]]
    commands = dict(ran)

    def flag(stage, name):
        return commands[stage][commands[stage].index(name) + 1] if name in commands[stage] else None

    trained = str(tmp_path / "o" / "models" / "noise_s43")
    for row, charbert in (("noise_self_distilled", False), ("noise_charbert_distilled", True)):
        stage = f"distill_{row}_s43"
        assert flag(stage, "--model_name_or_path") == flag(stage, "--teacher_model") == trained
        assert (flag(stage, "--seed"), flag(stage, "--train_file"), flag(stage, "--ranking_weight")) == \
            ("43", str(squad), "0")
        assert ("--charbert" in commands[stage]) == charbert
        assert flag(stage, "--new_module_lr_multiplier") == ("20.0" if charbert else None)
        assert flag(stage, "--freeze_backbone_steps") == ("30" if charbert else None)
        assert ("--word_side_base_lr" in commands[stage]) == charbert
        scored = f"eval_{row}_s43"
        assert flag(scored, "--model_name_or_path") == str(tmp_path / "o" / "models" / f"{row}_s43")
    assert "noise_self_distilled" in rr.PLAIN_ROWS and "noise_charbert_distilled" in rr.CHARBERT_ROWS
    # the query-only rows reuse the distilled models: no stage of their own beside the scoring
    joined = []
    monkeypatch.setattr(rr, "join_query_document", lambda queries, documents, out: joined.append((queries, documents, out)))
    ran.clear()
    assert rr.main([*argv[:1], "noise_charbert_distilled_query", *argv[2:], "--seeds", "42",
                    "--output_dir", str(tmp_path / "o")]) == 0
    assert [name for name, _ in ran] == ["train_noise_s42", "distill_noise_charbert_distilled_s42",
                                         "eval_noise_charbert_distilled_query_s42"]
    models = tmp_path / "o" / "models"
    assert joined == [(str(models / "noise_charbert_distilled_s42"), str(models / "noise_s42"),
                       models / "noise_charbert_distilled_query_s42")]
    commands = dict(ran)
    assert flag("eval_noise_charbert_distilled_query_s42", "--model_name_or_path") == \
        str(models / "noise_charbert_distilled_query_s42")
    assert "noise_charbert_distilled_query" in rr.CHARBERT_ROWS and "noise_self_distilled_query" in rr.PLAIN_ROWS
    assert ("noise_charbert_distilled", "noise_self_distilled") in rr.comparisons(rr.ROWS, "noise_st")
    args = rr.build_parser().parse_args(argv)
    assert rr.row_label("noise_charbert_distilled", args) == \
        "CharBERT on (MiniLM + noised queries), distilled from it on misspelt squad.json (30 steps)"
    assert rr.row_label("noise_charbert_distilled_query", args) == rr.row_label("noise_charbert_distilled", args) + \
        ", for the queries only (the documents by its teacher)"
    # --trained_from: an earlier run's noise models are scored and distilled from, not trained again
    earlier = tmp_path / "earlier"
    assert rr.main([*argv, "--output_dir", str(earlier)]) == 0
    (earlier / "models" / "noise_s42").mkdir(parents=True)
    (earlier / "models" / "noise_s42" / "modules.json").write_text("[]")
    ran.clear()
    assert rr.main([*argv, "--output_dir", str(tmp_path / "p"), "--trained_from", str(earlier)]) == 0
    commands = dict(ran)
    assert "train_noise_s42" not in commands and "train_noise_s43" in commands  # seed 43's model is not there
    reused = str((earlier / "models" / "noise_s42").resolve())
    assert flag("eval_noise_s42", "--model_name_or_path") == reused
    assert flag("distill_noise_charbert_distilled_s42", "--model_name_or_path") == reused
    with pytest.raises(SystemExit, match="max_train_steps"):  # another fine-tuning: refused in one line
        rr.main([*argv, "--output_dir", str(tmp_path / "q"), "--trained_from", str(earlier), "--max_train_steps", "5"])
    older = json.loads((earlier / "args.json").read_text())
    del older["teacher_word"]  # a run from before a flag existed: it ran at the flag's default
    (earlier / "args.json").write_text(json.dumps(older))
    assert rr.main([*argv, "--output_dir", str(tmp_path / "p"), "--trained_from", str(earlier)]) == 0
    with pytest.raises(SystemExit, match="no readable args.json"):
        rr.main([*argv, "--output_dir", str(tmp_path / "q"), "--trained_from", str(tmp_path)])


def test_replicate_retrieval_pretrains_the_pretrained_row_with_the_ner_replications_recipe(rr, tmp_path):
    data = tmp_path / "data"
    (data / "corpus").mkdir(parents=True)
    for name in ("brown.txt", "webtext.txt", "wikitext2_valid_test.txt"):
        (data / "corpus" / name).write_text("text\n")
    args = rr.build_parser().parse_args(["--data_dir", str(data)])
    ran = []

    class Recorder:
        def run(self, name, command):
            ran.append((name, command))

    folder = rr.pretrain_charbert(args, Recorder(), "plain", tmp_path / "models")
    assert [name for name, _ in ran] == ["vocab", "pretrain_charbert"]
    pretrain = ran[1][1]
    assert pretrain[pretrain.index("--output_dir") + 1] == folder == str(tmp_path / "models" / "pretrain_charbert")

    def flag(name):
        return pretrain[pretrain.index(name) + 1]

    assert (flag("--objective"), flag("--model_name_or_path"), flag("--max_train_steps"), flag("--seed")) == \
        ("charbert", "plain", "500", "42")
    assert (flag("--per_device_train_batch_size"), flag("--max_seq_length"), flag("--learning_rate")) == \
        ("16", "128", "0.0001")
    assert flag("--word_vocab") == ran[0][1][ran[0][1].index("--output_dir") + 1]
    assert "--freeze_backbone_steps" not in pretrain
    # the screen row: the same pretraining with the backbone frozen throughout, in a stage and folder of its own
    ran.clear()
    frozen = rr.pretrain_charbert(args, Recorder(), "plain", tmp_path / "models", frozen=True)
    assert [name for name, _ in ran] == ["vocab", "pretrain_charbert_frozen"]
    assert frozen == str(tmp_path / "models" / "pretrain_charbert_frozen") != folder
    assert flag("--max_train_steps") == ran[1][1][ran[1][1].index("--freeze_backbone_steps") + 1] == "500"
    assert [x for x in ran[1][1] if x not in ("--freeze_backbone_steps", "500", frozen)] == \
        [x for x in pretrain if x not in ("500", folder)]
    assert "charbert_pretrained_frozen" not in rr.selected_rows(args)  # a screen: only when asked for
    asked = rr.build_parser().parse_args(["--rows", "charbert_pretrained_frozen"])
    assert rr.selected_rows(asked) == ["charbert_pretrained_frozen"]
    asked.charbert_pretrained_frozen = frozen
    command = rr.train_command(asked, "charbert_pretrained_frozen", "plain", 42, tmp_path / "m")
    assert command[command.index("--model_name_or_path") + 1] == frozen and "--charbert" in command
    (data / "corpus" / "brown.txt").unlink()
    with pytest.raises(SystemExit, match="brown.txt not found"):
        rr.pretrain_charbert(args, Recorder(), "plain", tmp_path / "models")


def test_replicate_retrieval_tables_and_targets(rr, tmp_path):
    out = tmp_path / "out"
    scores = {  # row -> seed -> (clean, all K=1, all K=2) MRR@10
        "minilm": {1: (0.80, 0.72, 0.62), 2: (0.80, 0.70, 0.60)},
        "noise_st": {1: (0.84, 0.80, 0.74), 2: (0.84, 0.78, 0.72)},
        "charbert": {1: (0.84, 0.83, 0.80), 2: (0.83, 0.82, 0.79)},
    }
    for row, by_seed in scores.items():
        for seed, (clean, one, two) in by_seed.items():
            _fake_report(out / "eval" / f"{row}_s{seed}", clean, {"all K=1": one, "all K=2": two})
    args = rr.build_parser().parse_args(["--seeds", "1", "2", "--output_dir", str(out)])
    rows = ["minilm", "noise_st", "charbert"]
    record = rr.write_results(args, out, rows, rr.Runner(out, prog="t"))
    k1 = record["targets"]["K=1"]
    assert (k1["best_plain"], k1["best_charbert"]) == ("noise_st", "charbert")
    plain_drop = (100 * 0.04 / 0.84 + 100 * 0.06 / 0.84) / 2
    charbert_drop = (100 * 0.01 / 0.84 + 100 * 0.01 / 0.83) / 2
    assert k1["plain_rel_drop"] == pytest.approx(plain_drop)
    assert k1["drop_ratio"] == pytest.approx(charbert_drop / plain_drop) and k1["drop_target_met"]
    assert k1["clean_gap"] == pytest.approx(-0.5) and k1["clean_target_met"] and k1["moonshot_met"]
    assert not record["targets"]["K=2"]["moonshot_met"]
    md = (out / "results.md").read_text()
    assert "| MiniLM as shipped | 80.00 | 80.00 | 80.00 | 72.00 | 70.00 | 71.00 |" in md
    assert "| CharBERT on MiniLM (identity start), noised queries + self-teaching | " \
           "MiniLM + noised queries + self-teaching | -0.50 | +3.50 | +6.50 |" in md


@pytest.mark.slow
def test_replicate_retrieval_end_to_end_on_tiny_models_resumes(rr, embedding_dirs, squad_file, task_files, tmp_path,
                                                               capsys):
    out = tmp_path / "rr"
    argv = ["--model_name_or_path", str(embedding_dirs["bert"]), "--train_file", str(task_files["squad_v1_train"]),
            "--test_file", str(squad_file), "--rows", "minilm,clean,charbert", "--charbert_recipe", "noise",
            "--seeds", "3", "--max_train_steps", "2", "--per_device_train_batch_size", "4", "--max_seq_length", "48",
            "--learning_rate", "1e-3", "--eval_batch_size", "8", "--output_dir", str(out)]
    assert rr.main(argv) == 0
    record = json.loads((out / "results.json").read_text())
    assert set(record["metrics"]) == {"minilm", "clean", "charbert"}
    for row in ("minilm", "clean", "charbert"):
        metrics = record["metrics"][row]["3"]
        assert set(metrics) == {"clean", *(f"{a} K={k}" for k in (1, 2) for a in rr.ATTACKS)}
    trained = json.loads((out / "models" / "charbert_s3" / "metrics.json").read_text())
    assert trained["model"]["charbert"] and trained["train"]["global_step"] == 2
    # the untrained row scores the given model itself
    assert json.loads((out / "eval" / "minilm_s3" / "report.json").read_text())["models"][0]["path"] == \
        str(embedding_dirs["bert"])
    capsys.readouterr()
    assert rr.main(argv) == 0  # run again: every stage done before, nothing redone
    assert capsys.readouterr().out.count("done before, skipped") == 5


@pytest.mark.slow
def test_replicate_retrieval_distilled_rows_run_on_tiny_models(rr, embedding_dirs, task_files, squad_file, tmp_path):
    out = tmp_path / "rr"
    assert rr.main(["--model_name_or_path", str(embedding_dirs["bert"]), "--train_file", str(task_files["squad_v1_train"]),
                    "--test_file", str(squad_file), "--rows",
                    "noise_self_distilled,noise_charbert_distilled,noise_charbert_distilled_query",
                    "--distill_file", str(task_files["squad_v1_train"]), "--distill_steps", "2",
                    "--distill_batch_size", "4", "--seeds", "3", "--max_train_steps", "2",
                    "--per_device_train_batch_size", "4", "--max_seq_length", "48", "--learning_rate", "1e-3",
                    "--eval_batch_size", "8", "--output_dir", str(out)]) == 0
    record = json.loads((out / "results.json").read_text())
    assert set(record["metrics"]) == {"noise_self_distilled", "noise_charbert_distilled", "noise_charbert_distilled_query"}
    from sentence_transformers import SentenceTransformer

    from charbert.embedding import is_query_document_model

    joined = SentenceTransformer(str(out / "models" / "noise_charbert_distilled_query_s3"), device="cpu")
    assert is_query_document_model(joined) and not (out / "models" / "noise_charbert_distilled_query_s3.partial").exists()
    texts = ["who wrote it", "a paragraph about it"]
    for encode, folder in ((joined.encode_query, "noise_charbert_distilled_s3"), (joined.encode_document, "noise_s3")):
        alone = SentenceTransformer(str(out / "models" / folder), device="cpu")
        assert abs(encode(texts) - alone.encode(texts)).max() < 1e-6
    for row, charbert in (("noise_self_distilled", False), ("noise_charbert_distilled", True)):
        trained = json.loads((out / "models" / f"{row}_s3" / "metrics.json").read_text())
        assert trained["train"]["global_step"] == 2 and bool(trained["model"]["charbert"]) == charbert
        log = [json.loads(line) for line in (out / "models" / f"{row}_s3" / "log.jsonl").read_text().splitlines()]
        assert any("teacher_word_loss" in entry for entry in log)
    assert (out / "stages" / "train_noise_s3.done").is_file()


def test_embedding_drift_measures_how_far_a_model_moved(embedding_dirs, squad_file, tmp_path):
    import importlib.util
    from pathlib import Path

    import torch

    from charbert.embedding import load_embedding_model

    script = Path(__file__).resolve().parents[1] / "experiments" / "embedding_drift.py"
    spec = importlib.util.spec_from_file_location("embedding_drift", script)
    drift = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(drift)

    moved = load_embedding_model(str(embedding_dirs["charbert"]), device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the fusion rewritten, as a pretraining of it can
        for name, param in moved.named_parameters():
            if ".fusion." in name and name.endswith("weight") and param.dim() > 1:
                param.add_(0.5 * torch.randn(param.shape, generator=generator))
    moved.save(str(tmp_path / "moved"))
    texts = drift.squad_texts(str(squad_file), questions=6, paragraphs=4)
    assert [len(v) for v in texts.values()] == [6, 4]
    report = drift.drift(str(embedding_dirs["bert"]), [str(embedding_dirs["charbert"]), str(tmp_path / "moved")], texts, 48)
    assert list(report) == ["identity start", str(embedding_dirs["charbert"]), str(tmp_path / "moved")]
    for kind in ("questions", "paragraphs"):
        assert report["identity start"][kind]["min"] > 0.999  # a fresh CharBERT encodes as its base
        assert report[str(embedding_dirs["charbert"])][kind]["min"] > 0.999  # the saved fresh one too
        assert report[str(tmp_path / "moved")][kind]["mean"] < 0.99
    # misspelt questions against the base's clean vectors: the base's own row first, a typo moves the vector
    texts = drift.squad_texts(str(squad_file), questions=6, paragraphs=4, misspelt_words=2, seed=3)
    assert texts[drift.MISSPELT] != texts["questions"] and len(texts[drift.MISSPELT]) == 6
    report = drift.drift(str(embedding_dirs["bert"]), [str(tmp_path / "moved")], texts, 48)
    assert list(report) == ["base", "identity start", str(tmp_path / "moved")]
    assert report["base"]["questions"]["min"] > 0.9999 and report["base"][drift.MISSPELT]["mean"] < 0.9999
    assert report["identity start"][drift.MISSPELT]["mean"] == pytest.approx(report["base"][drift.MISSPELT]["mean"],
                                                                           abs=1e-3)
    with pytest.raises(SystemExit, match="--misspelt_words -1: expected K >= 0"):
        drift.main(["--misspelt_words", "-1", "--test_file", str(squad_file)])
