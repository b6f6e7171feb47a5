"""Sentence embeddings (charbert.embedding) and their training program (finetune.embedding), on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli

from charbert.embedding import (
    EXCLUDED_SCORE,
    ContrastiveModel,
    NotAnEmbeddingModel,
    PairCollator,
    QueryNoise,
    build_charbert_embedding,
    character_encoder_of,
    cosine_alignment_loss,
    in_batch_scores,
    is_charbert_embedding,
    load_embedding_model,
    multiple_negatives_ranking_loss,
    parse_operations,
    read_pairs,
    same_positive_mask,
    self_teaching_loss,
    text_word_ends,
    truncation_count,
    word_alignment_loss,
    word_index,
    word_vectors,
)
from charbert.tasks.errors import TaskDataError

SENTENCES = ["Where is the house of the parliament?", "The module of a thing that is long and winding.",
             "numbers", "Who wrote the definitive history of the Roman empire?"]


def _st_folder(path, encoder_dir, pooling="mean", normalize=True):
    """A tiny sentence-transformers folder: the tiny BERT + Pooling (+ Normalize)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

    transformer = Transformer(str(encoder_dir), max_seq_length=48)
    hidden = transformer.get_embedding_dimension()
    modules = [transformer, Pooling(hidden, pooling)] + ([Normalize()] if normalize else [])
    SentenceTransformer(modules=modules, device="cpu").save(str(path))
    return path


@pytest.fixture(scope="module")
def st_dir(tmp_path_factory, bert_dir):
    return _st_folder(tmp_path_factory.mktemp("tiny_st"), bert_dir)


def _encode(model, texts=SENTENCES):
    return model.encode(texts, batch_size=2, convert_to_tensor=True)


# ---- the model ---------------------------------------------------------------------------


def test_identity_start_encodes_as_the_backbone(st_dir, one_torch_thread):
    plain = load_embedding_model(str(st_dir), device="cpu")
    charbert = build_charbert_embedding(st_dir, device="cpu")
    assert is_charbert_embedding(charbert) and not is_charbert_embedding(plain)
    assert [type(m).__name__ for m in charbert] == ["Transformer", "Dense", "Pooling", "Normalize"]
    assert charbert.get_embedding_dimension() == plain.get_embedding_dimension() == 32
    assert charbert.max_seq_length == plain.max_seq_length == 48
    torch.testing.assert_close(_encode(charbert), _encode(plain), atol=1e-5, rtol=0)


def _move_off_identity(model):
    """Give the character channel a say (as training would): the projection's character half and each
    fusion's character taps become non-zero."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        dense = model[1].linear.weight  # (H, 2H)
        hidden = dense.size(0)
        dense[:, hidden:] = 0.1 * torch.randn(hidden, hidden, generator=generator)
        for fusion in model[0].model.fusion:
            fusion.fuse.weight[:, hidden:] = 0.05 * torch.randn(fusion.fuse.weight[:, hidden:].shape, generator=generator)


def test_save_and_reopen_give_the_same_vectors(st_dir, tmp_path, one_torch_thread):
    from sentence_transformers import SentenceTransformer

    model = build_charbert_embedding(st_dir, device="cpu")
    _move_off_identity(model)
    before = _encode(model)
    assert not torch.allclose(before, _encode(load_embedding_model(str(st_dir), device="cpu")), atol=1e-3)
    model.save(str(tmp_path / "saved"))
    modules = json.loads((tmp_path / "saved" / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Dense", "Pooling", "Normalize"]
    for reopened in (SentenceTransformer(str(tmp_path / "saved"), device="cpu"),
                     load_embedding_model(str(tmp_path / "saved"), device="cpu"),
                     build_charbert_embedding(tmp_path / "saved", device="cpu")):  # a CharBERT folder: used as it is
        assert is_charbert_embedding(reopened)
        torch.testing.assert_close(_encode(reopened), before, atol=1e-6, rtol=0)


def test_query_document_model_routes_and_round_trips(st_dir, tmp_path, one_torch_thread):
    from sentence_transformers import SentenceTransformer

    from charbert.embedding import is_query_document_model, query_document_model

    queries = build_charbert_embedding(st_dir, device="cpu")
    _move_off_identity(queries)
    documents = load_embedding_model(str(st_dir), device="cpu")
    expected_q, expected_d = _encode(queries), _encode(documents)
    assert not torch.allclose(expected_q, expected_d, atol=1e-3)
    model = query_document_model(queries, documents, device="cpu")
    assert is_query_document_model(model) and not is_query_document_model(documents)
    model.save(str(tmp_path / "qd"))
    # the CharBERT route loads from its subfolder of the saved model (CharBertModel.from_pretrained's subfolder)
    for opened in (model, SentenceTransformer(str(tmp_path / "qd"), device="cpu"),
                   load_embedding_model(str(tmp_path / "qd"), device="cpu")):
        torch.testing.assert_close(opened.encode_query(SENTENCES, convert_to_tensor=True), expected_q, atol=1e-6, rtol=0)
        torch.testing.assert_close(opened.encode_document(SENTENCES, convert_to_tensor=True), expected_d, atol=1e-6,
                                   rtol=0)
        torch.testing.assert_close(_encode(opened), expected_d, atol=1e-6, rtol=0)  # plain encode: the documents'
    # training one would push the queries through the document route: refused in one line
    with pytest.raises(NotAnEmbeddingModel, match="the model trained is a query/document model"):
        ContrastiveModel(model)
    with pytest.raises(NotAnEmbeddingModel, match="the teacher is a query/document model"):
        ContrastiveModel(documents, teacher=model)
    with pytest.raises(NotAnEmbeddingModel, match="is a query/document model: build CharBERT on one of its two"):
        build_charbert_embedding(tmp_path / "qd")


def test_keeps_the_backbones_pooling_and_normalisation(tmp_path, bert_dir, one_torch_thread):
    folder = _st_folder(tmp_path / "cls", bert_dir, pooling="cls", normalize=False)
    plain = load_embedding_model(str(folder), device="cpu")
    charbert = build_charbert_embedding(folder, device="cpu")
    assert [type(m).__name__ for m in charbert] == ["Transformer", "Dense", "Pooling"]
    assert charbert[2].pooling_mode == "cls"
    vectors = _encode(charbert)
    assert not torch.allclose(vectors.norm(dim=-1), torch.ones(len(SENTENCES)), atol=1e-3)  # not normalised
    torch.testing.assert_close(vectors, _encode(plain), atol=1e-5, rtol=0)


def test_opens_encoder_and_charbert_folders(tmp_path, bert_dir, one_torch_thread):
    from charbert import CharBertForPreTraining, CharBertTokenizer

    plain = load_embedding_model(str(bert_dir), device="cpu")  # no modules.json: mean pooling
    assert [type(m).__name__ for m in plain] == ["Transformer", "Pooling"]
    # What pretraining saves (a CharBertForPreTraining): its encoder is taken, its MLM and NLM heads left out.
    model = CharBertForPreTraining.from_pretrained(str(bert_dir), new_module_init="identity", share_fusion=False)
    model.save_pretrained(tmp_path / "cb")
    CharBertTokenizer.from_pretrained(str(bert_dir)).save_pretrained(tmp_path / "cb")
    charbert = load_embedding_model(str(tmp_path / "cb"), device="cpu")
    assert is_charbert_embedding(charbert)
    assert [type(m).__name__ for m in charbert] == ["Transformer", "Dense", "Pooling"]
    torch.testing.assert_close(_encode(charbert), _encode(plain), atol=1e-5, rtol=0)  # identity start, mean pooling


def test_character_encoder_from_a_pretrained_charbert(tmp_path, st_dir, bert_dir, one_torch_thread):
    from charbert import CharBertForPreTraining, CharBertTokenizer
    from charbert.chars import CharVocab

    # A "pretrained" CharBERT with its own (smaller) character vocabulary and a trained-looking encoder.
    chars = CharVocab.build(SENTENCES + ["parlament hosue"])
    source = CharBertForPreTraining.from_pretrained(str(bert_dir), new_module_init="identity", share_fusion=False,
                                                   char_vocab_size=len(chars))
    with torch.no_grad():
        for param in source.charbert.char_embeddings.parameters():
            param.add_(0.01 * torch.randn_like(param))
    source.save_pretrained(tmp_path / "pretrained")
    CharBertTokenizer.from_pretrained(str(bert_dir), char_vocab=chars).save_pretrained(tmp_path / "pretrained")

    model = build_charbert_embedding(st_dir, device="cpu", char_encoder_from=tmp_path / "pretrained")
    charbert = model[0].auto_model
    for name, value in source.charbert.char_embeddings.state_dict().items():
        torch.testing.assert_close(charbert.char_embeddings.state_dict()[name], value, rtol=0, atol=0)
    assert charbert.config.char_vocab_size == source.config.char_vocab_size
    assert chars.fingerprint() != CharVocab.default().fingerprint()
    assert model.tokenizer.char_vocab.fingerprint() == chars.fingerprint()  # the source's vocabulary, not the default
    plain = load_embedding_model(str(st_dir), device="cpu")
    torch.testing.assert_close(_encode(model), _encode(plain), atol=1e-5, rtol=0)  # still the identity start
    with pytest.raises(NotAnEmbeddingModel, match="no CharBERT there to take a character encoder from"):
        build_charbert_embedding(st_dir, char_encoder_from=st_dir)
    model.save(str(tmp_path / "st"))
    for charbert_already in (tmp_path / "pretrained", tmp_path / "st"):
        with pytest.raises(NotAnEmbeddingModel, match="is a CharBERT already"):
            build_charbert_embedding(charbert_already, char_encoder_from=tmp_path / "pretrained")
    fields, _, _ = character_encoder_of(tmp_path / "st")  # a CharBERT sentence-transformers folder gives one too
    assert fields["char_vocab_size"] == len(chars)


def test_not_an_embedding_model_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("hello")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"model_type": "no-such-model"}))
    cases = {"empty": "neither modules.json", "file.txt": "is a file", "missing/folder/x": "no such folder",
             "odd": "no-such-model"}
    for name, words in cases.items():
        with pytest.raises(NotAnEmbeddingModel, match=words) as info:
            load_embedding_model(str(tmp_path / name))
        assert "\n" not in str(info.value) and isinstance(info.value, ValueError)


def test_long_inputs_are_truncated_and_counted(st_dir, one_torch_thread):
    model = load_embedding_model(str(st_dir), device="cpu")
    long_text = " ".join(["the parliament of the united kingdom"] * 40)  # far more than 48 tokens
    exact = model.tokenizer.convert_tokens_to_string(["a"] * (model.max_seq_length - 2))  # fits exactly
    vectors = model.encode(["short", long_text, exact], convert_to_tensor=True)
    assert vectors.shape == (3, 32) and torch.isfinite(vectors).all()
    assert truncation_count(model) == 1
    model.encode([long_text, long_text])
    assert truncation_count(model, reset=True) == 3
    assert truncation_count(model) == 0


# ---- pairs ---------------------------------------------------------------------------------


def test_read_pairs_from_jsonl_tsv_and_squad(tmp_path, task_files):
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text('{"query": "q1", "positive": "p1"}\n\n{"query": "q2", "positive": "p2", "x": 1}\n')
    assert [(p.query, p.positive) for p in read_pairs(jsonl)] == [("q1", "p1"), ("q2", "p2")]
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("id\tquestion\tanswer\n1\tq1\tp1\n2\tq2\tp2\n")
    assert [(p.query, p.positive) for p in read_pairs(tsv, "question", "answer")] == [("q1", "p1"), ("q2", "p2")]
    squad = read_pairs(task_files["squad_v1_train"])
    data = json.loads(task_files["squad_v1_train"].read_text())["data"]
    expected = [(qa["question"], p["context"]) for a in data for p in a["paragraphs"] for qa in p["qas"]]
    assert [(p.query, p.positive) for p in squad] == expected


@pytest.mark.parametrize("text, columns, message", [
    ('{"query": "q1", "positive": "p1"}\n{"query": "q2"}\n', (), r"pairs.jsonl:2: no 'positive' field"),
    ('{"query": "q1", "positive": "  "}\n', (), r"pairs.jsonl:1: the 'positive' field is empty"),
    ('{"question": "q1", "positive": "p1"}\n', (), r"pairs.jsonl:1: no 'query' field"),
    ("not json\n", (), r"pairs.jsonl:1: not a JSON object"),
])
def test_bad_pairs_files_are_one_line(tmp_path, text, columns, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text(text)
    with pytest.raises(TaskDataError, match=message) as info:
        read_pairs(path, *columns)
    assert "\n" not in str(info.value)


def test_bad_tsv_pairs(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("query\tpassage\nq\tp\n")
    with pytest.raises(TaskDataError, match=r"pairs.tsv:1: no 'positive' column \(columns: query, passage\)"):
        read_pairs(path)
    path.write_text("query\tpositive\nq\t\n")
    with pytest.raises(TaskDataError, match=r"pairs.tsv:2: the 'positive' field is empty"):
        read_pairs(path)


# ---- noise and the loss ----------------------------------------------------------------------


def test_query_noise_is_seeded_and_bounded():
    noise = QueryNoise(probability=1.0, max_words=2)
    query = "Which philosopher described the categorical imperative, and when?"
    first = noise(query, np.random.default_rng(3))
    assert first == noise(query, np.random.default_rng(3))
    changed = [a for a, b in zip(query.split(), first.split()) if a != b]
    assert 1 <= len(changed) <= 2 and len(first.split()) == len(query.split())
    assert first.endswith("when?")  # stop-words and punctuation are kept (the attacks' rules)
    assert QueryNoise(probability=0.0)(query, np.random.default_rng(3)) == query
    assert parse_operations("all") == ("drop", "add", "swap", "keyboard")
    assert parse_operations("swap, replace") == ("swap", "replace")
    with pytest.raises(ValueError, match="unknown operation"):
        parse_operations("shout")


def test_multiple_negatives_ranking_loss_matches_a_direct_computation():
    generator = torch.Generator().manual_seed(0)
    queries, passages = torch.randn(5, 8, generator=generator), torch.randn(5, 8, generator=generator)
    scores = in_batch_scores(queries, passages, scale=20.0)
    cosine = torch.nn.functional.cosine_similarity(queries[:, None], passages[None, :], dim=-1)
    torch.testing.assert_close(scores, 20.0 * cosine)
    expected = -torch.stack([torch.log_softmax(20.0 * cosine[i], 0)[i] for i in range(5)]).mean()
    torch.testing.assert_close(multiple_negatives_ranking_loss(scores), expected)


def test_self_teaching_distils_the_noised_distribution_from_the_clean_one():
    generator = torch.Generator().manual_seed(1)
    clean = torch.randn(4, 4, generator=generator, requires_grad=True)
    assert self_teaching_loss(clean, clean.detach().clone()).abs() < 1e-6
    noised = torch.randn(4, 4, generator=generator, requires_grad=True)
    loss = self_teaching_loss(clean, noised, temperature=2.0)
    p, q = torch.softmax(clean / 2, -1), torch.softmax(noised / 2, -1)
    torch.testing.assert_close(loss, (p * (p.log() - q.log())).sum(-1).mean())
    loss.backward()
    assert clean.grad is None and noised.grad.abs().sum() > 0  # the clean query is the teacher only


def test_cosine_alignment_pulls_the_vectors_to_their_targets():
    generator = torch.Generator().manual_seed(2)
    clean = torch.randn(3, 8, generator=generator, requires_grad=True)
    assert cosine_alignment_loss(clean, 5 * clean.detach().clone()).abs() < 1e-6  # the direction counts, not the length
    torch.testing.assert_close(cosine_alignment_loss(clean, -clean.detach()), torch.tensor(2.0))
    noised = torch.randn(3, 8, generator=generator, requires_grad=True)
    loss = cosine_alignment_loss(clean, noised)
    torch.testing.assert_close(loss, (1 - F.cosine_similarity(clean, noised, dim=-1)).mean())
    loss.backward()
    assert clean.grad is None and noised.grad.abs().sum() > 0  # the target only


def test_same_positives_are_not_negatives():
    mask = same_positive_mask(["a", "b", "a", "c", "b"])
    assert mask.tolist() == [[False, False, True, False, False], [False, False, False, False, True],
                             [True, False, False, False, False], [False] * 5, [False, True, False, False, False]]


def test_contrastive_model_and_collator(st_dir, one_torch_thread):
    encoder = build_charbert_embedding(st_dir, device="cpu")
    pairs = [{"query": "parliament house", "positive": SENTENCES[0]}, {"query": "roman history", "positive": SENTENCES[3]},
             {"query": "the roman empire", "positive": SENTENCES[3]}]
    collator = PairCollator(encoder, QueryNoise(probability=1.0))
    batch = collator(pairs, rng=np.random.default_rng(0))
    assert set(batch) == {"query", "positive", "noised_query", "same_positive"}
    assert {"char_input_ids", "char_start_positions"} <= set(batch["query"])
    again = collator(pairs, rng=np.random.default_rng(0))
    assert torch.equal(batch["noised_query"]["char_input_ids"], again["noised_query"]["char_input_ids"])
    model = ContrastiveModel(encoder, query_noise=True, self_teaching=0.5)
    out = model(**batch)
    torch.testing.assert_close(out.loss, (out.retrieval_loss + out.noised_retrieval_loss) / 2 + 0.5 * out.self_teaching_loss)
    assert out.query_alignment_loss is None
    aligned = ContrastiveModel(encoder, self_teaching=0.5, query_alignment=2.0)(**batch)
    assert aligned.query_alignment_loss > 0  # every query was misspelt (probability 1)
    torch.testing.assert_close(aligned.loss, aligned.retrieval_loss + 0.5 * aligned.self_teaching_loss
                               + 2.0 * aligned.query_alignment_loss)
    out.loss.backward()
    new = dict(model.named_parameters())
    assert model.loading_info["initialized_keys"] and all(k in new for k in model.loading_info["initialized_keys"])
    assert encoder[1].linear.weight.grad[:, 32:].abs().sum() > 0  # the character half of the projection learns
    scores = model.scores(model.embed(batch["query"]), model.embed(batch["positive"]), batch["same_positive"])
    assert scores[1, 2] == scores[2, 1] == EXCLUDED_SCORE and scores[1, 1] > EXCLUDED_SCORE


def test_teacher_vectors_are_the_queries_targets(st_dir, one_torch_thread):
    encoder = build_charbert_embedding(st_dir, device="cpu")
    teacher = load_embedding_model(str(st_dir), device="cpu")
    pairs = [{"query": "parliament house", "positive": SENTENCES[0]}, {"query": "roman history", "positive": SENTENCES[3]}]
    batch = PairCollator(encoder, QueryNoise(probability=1.0), teacher)(pairs, rng=np.random.default_rng(0))
    assert "char_input_ids" not in batch["teacher_query"]  # the teacher's own tokenisation
    model = ContrastiveModel(encoder, query_noise=True, teacher=teacher, teacher_weight=3.0).eval()
    out = model(**batch)
    torch.testing.assert_close(out.loss, (out.retrieval_loss + out.noised_retrieval_loss) / 2 + 3.0 * out.teacher_loss)
    clean_part = cosine_alignment_loss(teacher.encode(["parliament house", "roman history"], convert_to_tensor=True),
                                       model.embed(batch["query"]))
    assert clean_part.abs() < 1e-5  # the identity start encodes clean queries as the teacher does
    assert out.teacher_loss > 0.01  # the misspelt ones do not (yet)
    noised_part = cosine_alignment_loss(teacher.encode(["parliament house", "roman history"], convert_to_tensor=True),
                                        model.embed(batch["noised_query"]))
    torch.testing.assert_close(out.teacher_loss, (clean_part + noised_part) / 2)
    anchored = ContrastiveModel(encoder, query_noise=True, teacher=teacher, teacher_clean_weight=3.0).eval()
    torch.testing.assert_close(anchored(**batch).teacher_loss, (3 * clean_part + noised_part) / 4)
    out.loss.backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert encoder[1].linear.weight.grad[:, 32:].abs().sum() > 0
    assert not model.train().teacher.training and model.encoder.training  # a fixed target: no dropout

    alone = ContrastiveModel(encoder, query_noise=True, teacher=teacher, ranking_weight=0.0).eval()
    assert not alone.reads_passages and model.reads_passages
    queries_only = PairCollator(encoder, QueryNoise(probability=1.0), teacher, passages=False)(
        pairs, rng=np.random.default_rng(0))
    assert queries_only["positive"] is None  # the passages are not even tokenised
    out = alone(**queries_only)
    assert out.retrieval_loss is None and out.noised_retrieval_loss is None
    torch.testing.assert_close(out.loss, out.teacher_loss)
    with pytest.raises(ValueError, match="needs the batch's teacher_query"):
        alone(query=batch["query"], positive=None, noised_query=batch["noised_query"])


def test_word_index_follows_whitespace_words(st_dir):
    from charbert.embedding import WITH_OFFSETS

    texts = ["parliament house, rome", "a  b"]
    assert text_word_ends(texts[0]).tolist() == [10, 17, 22] and text_word_ends("  ").tolist() == []
    for model in (load_embedding_model(str(st_dir), device="cpu"), build_charbert_embedding(st_dir, device="cpu")):
        features = model.preprocess(texts, processing_kwargs=WITH_OFFSETS)
        words = word_index(features, [text_word_ends(t) for t in texts])
        assert "offset_mapping" not in features and words.shape == features["input_ids"].shape
        tokens = model[0].tokenizer.convert_ids_to_tokens(features["input_ids"][0].tolist())
        for token, word in zip(tokens, words[0].tolist()):
            expected = -1 if token in ("[CLS]", "[SEP]", "[PAD]") else 2 if token == "rome" else None
            if expected is not None:
                assert word == expected, (token, word)
        assert words[0].max() == 2 and set(words[0].tolist()) >= {0, 1, 2}  # the comma joins "house,"
        assert sorted(set(words[1].tolist()) - {-1}) == [0, 1]  # two words, padding -1


def test_word_vectors_and_word_alignment_by_hand():
    states = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [9.0, 9.0]]])  # (1, 4, 2)
    words = torch.tensor([[0, 0, 1, -1]])
    vectors, counts = word_vectors(states, words, 3)
    torch.testing.assert_close(vectors, torch.tensor([[[2.0, 0.0], [0.0, 2.0], [0.0, 0.0]]]))
    assert counts.tolist() == [[2, 1, 0]]
    # The target splits word 0 into one token and word 1 into two: words pair up, not tokens.
    target = torch.tensor([[[5.0, 0.0], [1.0, 1.0], [1.0, 1.0]]], requires_grad=True)
    target_words = torch.tensor([[0, 1, 1]])
    student = states.clone().requires_grad_(True)
    loss = word_alignment_loss(target, target_words, student, words)
    expected = ((1 - 1.0) + (1 - 1 / 2 ** 0.5)) / 2  # word 0: same direction; word 1: 45 degrees
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert target.grad is None and student.grad[0, 3].abs().sum() == 0  # no word, no gradient
    # A word on one side only (cut by truncation, or a row set to -1) is left out; none at all gives 0.
    assert word_alignment_loss(target, torch.tensor([[0, -1, -1]]), student, words).item() == pytest.approx(0.0, abs=1e-6)
    assert word_alignment_loss(target, torch.full((1, 3), -1), student, words).item() == 0.0


def test_word_level_teacher_term(st_dir, one_torch_thread):
    encoder = build_charbert_embedding(st_dir, device="cpu")
    teacher = load_embedding_model(str(st_dir), device="cpu")
    pairs = [{"query": "parliament house", "positive": SENTENCES[0]}, {"query": "roman history", "positive": SENTENCES[3]}]
    batch = PairCollator(encoder, QueryNoise(probability=1.0), teacher, words=True)(pairs, rng=np.random.default_rng(0))
    assert {"query_words", "noised_query_words", "teacher_query_words"} <= set(batch)
    assert all("offset_mapping" not in batch[k] for k in ("query", "noised_query", "teacher_query", "positive"))
    model = ContrastiveModel(encoder, query_noise=True, teacher=teacher, teacher_weight=0.0,
                             teacher_word_weight=2.0).eval()
    assert model.reads_words
    out = model(**batch)
    torch.testing.assert_close(out.loss, (out.retrieval_loss + out.noised_retrieval_loss) / 2 + 2.0 * out.teacher_word_loss)
    clean_part = word_alignment_loss(teacher(dict(batch["teacher_query"]))["token_embeddings"], batch["teacher_query_words"],
                                     model.encode(batch["query"])["token_embeddings"], batch["query_words"])
    assert clean_part.abs() < 1e-5  # the identity start: every clean word as the teacher has it
    assert out.teacher_word_loss > 0.01  # the misspelt words are not (yet)
    anchored = ContrastiveModel(encoder, query_noise=True, teacher=teacher, teacher_weight=0.0, teacher_word_weight=2.0,
                                teacher_clean_weight=3.0).eval()
    noised_part = 2 * out.teacher_word_loss - clean_part  # the default weighs the two parts equally
    torch.testing.assert_close(anchored(**batch).teacher_word_loss, (3 * clean_part + noised_part) / 4)
    out.loss.backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert encoder[1].linear.weight.grad[:, 32:].abs().sum() > 0  # the character half of the projection learns
    with pytest.raises(ValueError, match="needs the batch's word indices"):
        model(**{k: v for k, v in batch.items() if not k.endswith("_words")})
    with pytest.raises(ValueError, match="needs a teacher"):
        ContrastiveModel(encoder, teacher_word_weight=1.0)
    # A misspelt copy with another number of words (a space added) gets no word targets: row all -1.
    split = PairCollator(encoder, lambda text, rng: text.replace("rl", "r l"), teacher, words=True)(pairs)
    assert (split["noised_query_words"][0] == -1).all() and (split["noised_query_words"][1] >= 0).any()


def test_texts_file_gives_queries_without_passages(tmp_path, st_dir):
    path = tmp_path / "corpus.txt"
    path.write_text("The first sentence .\n\n  A second one  \n", encoding="utf-8")
    pairs = read_pairs(path)
    assert [(p.query, p.positive) for p in pairs] == [("The first sentence .", None), ("A second one", None)]
    encoder = load_embedding_model(str(st_dir), device="cpu")
    batch = PairCollator(encoder, None, encoder, passages=False)(pairs)
    assert batch["positive"] is None and batch["same_positive"] is None and "teacher_query" in batch


def test_teacher_of_another_size_is_one_line(st_dir):
    import argparse

    from finetune.embedding import UsageError, open_teacher

    class Encoder:
        max_seq_length = 16

        def get_embedding_dimension(self):
            return 7

    with pytest.raises(UsageError, match=r"gives 32-dimensional vectors; the model trained gives 7$"):
        open_teacher(argparse.Namespace(teacher_model=str(st_dir)), Encoder())
    assert open_teacher(argparse.Namespace(teacher_model=None), Encoder()) is None


def test_new_module_lr_multiplier_reaches_charbert_modules_only(st_dir, tmp_path, one_torch_thread):
    from charbert.training import TrainingConfig
    from charbert.training.setup import build_optimizer

    model = ContrastiveModel(build_charbert_embedding(st_dir, device="cpu"))
    optimizer = build_optimizer(model, TrainingConfig(output_dir=str(tmp_path), learning_rate=1e-4,
                                                      new_module_lr_multiplier=10.0))
    names = {id(p): n for n, p in model.named_parameters()}
    fast = {names[id(p)] for g in optimizer.param_groups if g["lr"] == pytest.approx(1e-3) for p in g["params"]}
    slow = {names[id(p)] for g in optimizer.param_groups if g["lr"] == pytest.approx(1e-4) for p in g["params"]}
    assert fast == set(model.loading_info["initialized_keys"]) and fast and slow and not fast & slow
    assert "encoder.1.linear.weight" in fast  # the projection [I | 0]
    assert any(".fusion." in n for n in fast) and any(".char_embeddings." in n for n in fast)
    assert not any(".fusion." in n or ".char_embeddings." in n or n.startswith("encoder.1.") for n in slow)


def test_damp_updates_keeps_masked_elements_at_a_slower_rate():
    from charbert.training.setup import damp_updates

    param = torch.nn.Parameter(torch.zeros(4))
    optimizer = torch.optim.SGD([param], lr=1.0)
    damp_updates(optimizer, [(param, torch.tensor([True, False, True, False]))], 0.25)
    for _ in range(2):
        param.grad = torch.ones(4)
        optimizer.step()
    torch.testing.assert_close(param.detach(), torch.tensor([-0.5, -2.0, -0.5, -2.0]))


def test_word_side_keeps_the_base_rate(st_dir, tmp_path, one_torch_thread):
    from charbert.training import TrainingConfig
    from charbert.training.setup import build_optimizer

    encoder = build_charbert_embedding(st_dir, device="cpu")
    model = ContrastiveModel(encoder, word_side_base_lr=True)
    names = {id(p): n for n, p in encoder.named_parameters()}
    parts = {names[id(p)]: mask for p, mask in model.base_lr_parts()}
    assert parts["1.linear.weight"][:, :32].all() and not parts["1.linear.weight"][:, 32:].any()
    fuse = [n for n in parts if n.endswith("fusion.0.fuse.weight")][0]
    assert parts[fuse][:, :32].all() and not parts[fuse][:, 32:].any()
    assert any(".word_proj." in n for n in parts) and any(".word_norm." in n for n in parts)
    assert not any(".char_" in n or "char_embeddings" in n for n in parts)  # the character side is sped up
    assert ContrastiveModel(encoder).base_lr_parts() == []
    assert ContrastiveModel(load_embedding_model(str(st_dir), device="cpu"), word_side_base_lr=True).base_lr_parts() == []

    # One AdamW step at 10x for the new modules: the projection's subword half moves at the base rate.
    optimizer = build_optimizer(model, TrainingConfig(output_dir=str(tmp_path), learning_rate=1e-3,
                                                      new_module_lr_multiplier=10.0, weight_decay=0.0))
    pairs = [{"query": "parliament house", "positive": SENTENCES[0]}, {"query": "roman history", "positive": SENTENCES[3]}]
    _move_off_identity(encoder)  # so that both halves get a gradient
    before = encoder[1].linear.weight.detach().clone()
    model(**PairCollator(encoder)(pairs)).loss.backward()
    optimizer.step()
    moved = (encoder[1].linear.weight.detach() - before).abs()
    assert moved[:, :32].max() == pytest.approx(1e-3, rel=0.05)  # AdamW's first step: about lr per element
    assert moved[:, 32:].max() == pytest.approx(1e-2, rel=0.05)


# ---- the program ---------------------------------------------------------------------------


def _pairs_file(path, tiny_texts, n=24):
    with open(path, "w", encoding="utf-8") as f:
        for text in tiny_texts[:n]:
            f.write(json.dumps({"query": " ".join(text.split()[:6]), "positive": text}) + "\n")
    return path


@pytest.mark.slow
def test_program_trains_a_charbert_embedding_model(tmp_path, st_dir, tiny_texts, one_torch_thread):
    from sentence_transformers import SentenceTransformer

    pairs = _pairs_file(tmp_path / "pairs.jsonl", tiny_texts)
    args = ["--model_name_or_path", st_dir, "--charbert", "--train_file", pairs, "--max_train_steps", 2,
            "--per_device_train_batch_size", 6, "--query_noise", "--self_teaching", 1, "--seed", 3,
            "--logging_steps", 1, "--optim", "adamw_torch"]
    assert run_cli("embedding", *args, "--output_dir", tmp_path / "a") == 0
    assert run_cli("embedding", *args, "--output_dir", tmp_path / "b") == 0
    logs = [[json.loads(line)["loss"] for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
            for run in ("a", "b")]
    assert len(logs[0]) == 2 and logs[0] == logs[1]  # the same seed, the same typos and losses
    record = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert record["model"]["charbert"] and record["train"]["global_step"] == 2
    trained = SentenceTransformer(str(tmp_path / "a"), device="cpu")
    assert is_charbert_embedding(trained)
    start = load_embedding_model(str(st_dir), device="cpu")
    assert not torch.allclose(_encode(trained), _encode(start), atol=1e-4)  # it trained


def _train_on_a_teacher(out, st_dir, train_file, *flags) -> list[dict]:
    """Two steps of CharBERT on the tiny model, the tiny model the teacher, no ranking loss; the log's rows."""
    args = ["--model_name_or_path", st_dir, "--charbert", "--train_file", train_file, "--max_train_steps", 2,
            "--per_device_train_batch_size", 6, "--query_noise", "--teacher_model", st_dir, "--ranking_weight", 0,
            "--seed", 3, "--logging_steps", 1, "--optim", "adamw_torch", *flags]
    assert run_cli("embedding", *args, "--output_dir", out) == 0
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_program_trains_on_a_teachers_vectors_alone(tmp_path, st_dir, tiny_texts, one_torch_thread):
    from sentence_transformers import SentenceTransformer

    pairs = _pairs_file(tmp_path / "pairs.jsonl", tiny_texts)
    logs = _train_on_a_teacher(tmp_path / "a", st_dir, pairs, "--new_module_lr_multiplier", 50)
    assert len(logs) == 2 and all("teacher_loss" in r and "retrieval_loss" not in r for r in logs)
    assert logs[0]["loss"] == pytest.approx(logs[0]["teacher_loss"])
    trained = SentenceTransformer(str(tmp_path / "a"), device="cpu")
    assert is_charbert_embedding(trained) and len(trained) == len(build_charbert_embedding(st_dir))  # no teacher inside
    assert not torch.allclose(_encode(trained), _encode(load_embedding_model(str(st_dir), device="cpu")), atol=1e-4)


@pytest.mark.slow
def test_program_trains_on_texts_word_by_word(tmp_path, st_dir, tiny_texts, one_torch_thread):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(t.split()[:12]) for t in tiny_texts[:24]) + "\n", encoding="utf-8")
    logs = _train_on_a_teacher(tmp_path / "a", st_dir, corpus, "--teacher_word_weight", 2)
    assert len(logs) == 2 and all("teacher_word_loss" in r and "retrieval_loss" not in r for r in logs)
    assert logs[0]["loss"] == pytest.approx(logs[0]["teacher_loss"] + 2 * logs[0]["teacher_word_loss"], rel=1e-4)
    assert logs[0]["teacher_word_loss"] > 0
    record = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert record["train"]["num_pairs"] == 24 and record["train"]["source"] == str(corpus)


@pytest.mark.slow
def test_program_trains_a_query_encoder_for_the_teachers_documents(tmp_path, st_dir, tiny_texts, capsys,
                                                                    one_torch_thread):
    from sentence_transformers import SentenceTransformer

    from charbert.embedding import is_query_document_model

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(t.split()[:12]) for t in tiny_texts[:24]) + "\n", encoding="utf-8")
    _train_on_a_teacher(tmp_path / "a", st_dir, corpus, "--new_module_lr_multiplier", 50, "--query_encoder_only")
    saved = SentenceTransformer(str(tmp_path / "a"), device="cpu")
    teacher = load_embedding_model(str(st_dir), device="cpu")
    assert is_query_document_model(saved)
    torch.testing.assert_close(saved.encode_document(SENTENCES, convert_to_tensor=True), _encode(teacher), atol=1e-6,
                               rtol=0)  # the teacher's documents, untouched
    queries = saved.encode_query(SENTENCES, convert_to_tensor=True)
    assert not torch.allclose(queries, _encode(teacher), atol=1e-4)  # the trained CharBERT
    record = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert record["model"]["query_encoder_only"] == {"documents": str(st_dir)} and record["model"]["charbert"]
    code = run_cli("embedding", "--model_name_or_path", st_dir, "--train_file", corpus, "--output_dir", tmp_path / "b",
                   "--query_encoder_only", "--ranking_weight", 0, "--query_alignment", 1)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "--query_encoder_only needs --teacher_model" in err[-1]


@pytest.mark.slow
def test_program_bad_input_is_one_line(tmp_path, st_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "passage": "p"}\n')
    code = run_cli("embedding", "--model_name_or_path", st_dir, "--train_file", bad, "--output_dir", tmp_path / "o")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].endswith("bad.jsonl:1: no 'positive' field (fields: query, passage); "
                                          "set --query_column / --positive_column")
    good = _pairs_file(tmp_path / "pairs.jsonl", ["a query and its passage"] * 4)
    code = run_cli("embedding", "--model_name_or_path", tmp_path, "--train_file", good, "--output_dir", tmp_path / "o2")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "is not an embedding model" in err[-1]
    code = run_cli("embedding", "--model_name_or_path", st_dir, "--train_file", good, "--output_dir", tmp_path / "o3",
                   "--word_side_base_lr", "--new_module_lr_multiplier", 5)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].endswith("is not a CharBERT embedding model (add --charbert)")


def test_pairs_from_a_dataset(tmp_path):
    import argparse

    datasets = pytest.importorskip("datasets", reason="the datasets extra is not installed")
    from finetune.embedding import read_training_pairs

    rows = {"question": ["q1", "q2", "q3"], "context": ["p1", "p2", "p1"], "id": [1, 2, 3]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "ds"))
    args = argparse.Namespace(train_file=None, dataset_name=str(tmp_path / "ds"), dataset_config_name=None,
                              dataset_revision=None, train_split_name="train", query_column="question",
                              positive_column="context")
    pairs, source = read_training_pairs(args)
    assert [(p.query, p.positive) for p in pairs] == [("q1", "p1"), ("q2", "p2"), ("q3", "p1")]
    assert source == f"{tmp_path / 'ds'}[train]"
    args.positive_column = "positive"
    with pytest.raises(TaskDataError, match=r"has no column 'positive' \(columns: question, context, id\)"):
        read_training_pairs(args)


def test_typo_flags_choose_the_query_noise():
    from finetune.embedding import UsageError, build_parser, check_args

    def noise(*flags):
        return check_args(build_parser().parse_args(["--model_name_or_path", "m", "--train_file", "p.jsonl", *flags]))

    assert noise() is None  # clean pairs only: no misspelt queries are made
    assert all(isinstance(noise(*f), QueryNoise) for f in (["--query_noise"], ["--self_teaching", "1"],
                                                           ["--query_alignment", "1"]))
    with pytest.raises(UsageError, match="--query_alignment must be >= 0"):
        noise("--query_alignment", "-1")
    with pytest.raises(UsageError, match="--ranking_weight 0 leaves nothing to train"):
        noise("--ranking_weight", "0")
    with pytest.raises(UsageError, match="--teacher_weight, --teacher_word_weight and --ranking_weight must be >= 0"):
        noise("--teacher_model", "t", "--teacher_weight", "-1")
    with pytest.raises(UsageError, match="--word_side_base_lr goes with --new_module_lr_multiplier"):
        noise("--word_side_base_lr")
    assert noise("--word_side_base_lr", "--new_module_lr_multiplier", "20") is None
    with pytest.raises(UsageError, match="--teacher_word_weight needs --teacher_model"):
        noise("--teacher_word_weight", "1")
    with pytest.raises(UsageError, match=r"holds texts \(one a line\), not pairs"):
        check_args(build_parser().parse_args(["--model_name_or_path", "m", "--train_file", "corpus.txt"]))
    texts = ["--model_name_or_path", "m", "--train_file", "corpus.txt", "--ranking_weight", "0", "--teacher_model", "t"]
    assert check_args(build_parser().parse_args([*texts, "--teacher_word_weight", "1"])) is None
    assert noise("--teacher_model", "t") is None  # the teacher alone: clean queries only
    assert isinstance(noise("--teacher_model", "t", "--ranking_weight", "0", "--query_noise"), QueryNoise)
    with pytest.raises(UsageError, match="--char_encoder_from goes with --charbert"):
        noise("--char_encoder_from", "pretrained/")
    with pytest.raises(UsageError, match="--teacher_clean_weight must be > 0"):
        noise("--teacher_model", "t", "--teacher_clean_weight", "0")
    with pytest.raises(UsageError, match="--query_encoder_only needs --teacher_model"):
        noise("--teacher_model", "t", "--query_encoder_only")  # with the ranking loss: it encodes documents
