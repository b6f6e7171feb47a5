"""ONNX export (charbert.serving.export) and the ONNX Runtime model (charbert.serving.onnx_runtime), on tiny models.

Every head of CharBERT on BERT and RoBERTa, both character padding modes and both character layouts,
plain BERT/RoBERTa folders: exported once (traced on a batch of 2), then run by ONNX Runtime on padded
batches of 1, 3 and 5 rows with other token and character lengths; every output field within 1e-4 of
eager PyTorch. The programs' --do_predict on an export folder writes the PyTorch folder's predictions.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from conftest import run_cli, skip_module_without

skip_module_without("onnxruntime", "onnx", reason="the onnx extra is not installed")

from charbert import (  # noqa: E402
    CharBertForMaskedLM,
    CharBertForMultipleChoice,
    CharBertForPreTraining,
    CharBertForQuestionAnswering,
    CharBertForSequenceClassification,
    CharBertForTokenClassification,
    CharBertModel,
    CharBertTokenizerFast,
)
from charbert.serving.export import export, main  # noqa: E402
from charbert.serving.onnx_runtime import (  # noqa: E402
    EXPORT_INFO_FILE,
    ONNX_FILE,
    ONNX_INT8_FILE,
    MissingExtraError,
    OnnxModel,
    read_export_info,
    require_onnx,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HEADS = [CharBertForPreTraining, CharBertForMaskedLM, CharBertForSequenceClassification,
         CharBertForTokenClassification, CharBertForQuestionAnswering, CharBertForMultipleChoice, CharBertModel]
TOLERANCE = 1e-4


def save_charbert(folder, backbone_dir, cls, char_layout="offsets", **config):
    """A CharBERT head built on the tiny backbone, saved with its tokenizer (the folder an export reads)."""
    torch.manual_seed(0)
    model = cls.from_pretrained(backbone_dir, **config)
    model.save_pretrained(folder)
    CharBertTokenizerFast.from_pretrained(backbone_dir, char_layout=char_layout).save_pretrained(folder)
    return model.eval()


def batches(texts, sizes=(1, 3, 5)):
    """Rows of different lengths, so each batch has its own token and character length and padding."""
    out, start = [], 0
    for n in sizes:
        rows = [" ".join(texts[start + i].split()[: 4 + 7 * i]) for i in range(n)]
        out.append(rows)
        start += n
    return out


def encode(tokenizer, rows, multiple_choice=False, choices=2):
    if not multiple_choice:
        return dict(tokenizer(rows, padding=True, truncation=True, max_length=48, return_tensors="pt"))
    flat = [f"{r} {k}" for r in rows for k in ("yes", "no, not at all", "perhaps so", "never")[:choices]]
    enc = tokenizer(flat, padding=True, truncation=True, max_length=48, return_tensors="pt")
    return {k: v.view(len(rows), choices, *v.shape[1:]) for k, v in enc.items()}


def assert_same_outputs(eager, onnx, tolerance=TOLERANCE):
    assert type(onnx) is type(eager)
    exported = [k for k, v in eager.items() if isinstance(v, torch.Tensor) and "loss" not in k]
    assert list(onnx.keys()) == exported
    for key in exported:
        assert onnx[key].shape == eager[key].shape, key
        diff = (onnx[key] - eager[key]).abs().max().item()
        assert diff <= tolerance, (key, diff)


def check_against_eager(model, folder, tiny_texts, multiple_choice=False):
    tokenizer = CharBertTokenizerFast.from_pretrained(folder)
    onnx_model = OnnxModel.from_pretrained(folder)
    shapes = set()
    for k, rows in enumerate(batches(tiny_texts[10:])):
        inputs = encode(tokenizer, rows, multiple_choice, choices=2 + k)
        with torch.no_grad():
            eager = model(**inputs)
        assert_same_outputs(eager, onnx_model(**inputs))
        shapes.add((tuple(inputs["input_ids"].shape), inputs["char_input_ids"].shape[-1]))
    assert len(shapes) == 3  # batch, token and character lengths all differ from the traced batch


@pytest.mark.slow
@pytest.mark.parametrize("cls", HEADS, ids=lambda c: c.__name__)
def test_every_head_exports_with_dynamic_axes(cls, backbone_dir, tiny_texts, tmp_path):
    model = save_charbert(tmp_path / "model", backbone_dir, cls)
    info = export(tmp_path / "model", tmp_path / "onnx")
    assert info["architecture"] == cls.__name__
    for name in info["input_names"]:
        assert info["dynamic_axes"][name][0] == "batch"
    assert (tmp_path / "onnx" / "char_vocab.json").is_file() and (tmp_path / "onnx" / "config.json").is_file()
    assert "ONNX export" in (tmp_path / "onnx" / "README.md").read_text()
    check_against_eager(model, tmp_path / "onnx", tiny_texts, multiple_choice=cls is CharBertForMultipleChoice)


@pytest.mark.slow
@pytest.mark.parametrize("char_padding", ["exact", "reference"])
@pytest.mark.parametrize("char_layout", ["offsets", "reference"])
def test_padding_modes_and_char_layouts(char_padding, char_layout, bert_dir, tiny_texts, tmp_path):
    model = save_charbert(tmp_path / "model", bert_dir, CharBertForSequenceClassification, char_layout=char_layout,
                          char_padding=char_padding, num_labels=3)
    info = export(tmp_path / "model", tmp_path / "onnx")
    assert (info["char_padding"], info["char_layout"]) == (char_padding, char_layout)
    check_against_eager(model, tmp_path / "onnx", tiny_texts)
    token_model = save_charbert(tmp_path / "tokens", bert_dir, CharBertForTokenClassification, char_layout=char_layout,
                                char_padding=char_padding, num_labels=5)
    export(tmp_path / "tokens", tmp_path / "tokens_onnx")
    check_against_eager(token_model, tmp_path / "tokens_onnx", tiny_texts)


@pytest.mark.slow
@pytest.mark.parametrize("head", ["ForSequenceClassification", "ForTokenClassification", "ForMaskedLM"])
def test_plain_folder_exports_the_same_way(head, backbone_dir, tiny_texts, tmp_path):
    import transformers

    config = transformers.AutoConfig.from_pretrained(backbone_dir)
    cls = getattr(transformers, type(config).__name__.replace("Config", head))
    torch.manual_seed(0)
    model = cls.from_pretrained(backbone_dir, num_labels=3).eval()
    model.save_pretrained(tmp_path / "model")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(backbone_dir))
    tokenizer.save_pretrained(tmp_path / "model")
    assert main(["--model_name_or_path", str(tmp_path / "model"), "--output_dir", str(tmp_path / "onnx")]) == 0
    onnx_model = OnnxModel.from_pretrained(tmp_path / "onnx")
    assert "char_input_ids" not in onnx_model.input_names
    for rows in batches(tiny_texts[10:]):
        inputs = dict(tokenizer(rows, padding=True, return_tensors="pt"))
        with torch.no_grad():
            eager = model(**inputs)
        assert_same_outputs(eager, onnx_model(**inputs))


@pytest.mark.slow
def test_int8_and_numpy_inputs(bert_dir, tiny_texts, tmp_path, capsys):
    model = save_charbert(tmp_path / "model", bert_dir, CharBertForTokenClassification, num_labels=4)
    assert main(["--model_name_or_path", str(tmp_path / "model"), "--output_dir", str(tmp_path / "onnx"),
                 "--quantize", "int8", "--opset", "17"]) == 0
    assert '"model_int8.onnx"' in capsys.readouterr().out
    info = read_export_info(tmp_path / "onnx")
    assert info["opset"] == 17 and info["files"] == [ONNX_FILE, ONNX_INT8_FILE]
    assert info["int8"]["quantized_nodes"].get("MatMulInteger", 0) > 0
    tokenizer = CharBertTokenizerFast.from_pretrained(tmp_path / "onnx")
    rows = batches(tiny_texts[10:], sizes=(4,))[0]
    fp32, int8 = OnnxModel.from_pretrained(tmp_path / "onnx"), OnnxModel.from_pretrained(tmp_path / "onnx", quantized=True)
    numpy_inputs = tokenizer(rows, padding=True, return_tensors="np")
    with torch.no_grad():
        eager = model(**tokenizer(rows, padding=True, return_tensors="pt")).logits
    assert (fp32(**numpy_inputs).logits - eager).abs().max() <= TOLERANCE
    quantized = int8(**numpy_inputs).logits
    assert quantized.shape == eager.shape and torch.isfinite(quantized).all()
    assert (quantized - eager).abs().max() < 0.5 * eager.abs().max()  # an approximation, not another function


def test_export_change_keeps_eager_bitwise_equal(bert_dir, tiny_texts):
    """The stacked channels are split back with chunk(2) (an ONNX export keeps the batch dynamic);
    the previous split(B) gives bitwise the same outputs, in both padding modes."""
    from charbert.compat import layer_output

    def split_layer(self, layer, fusion, word, char, stacked_mask, token_mask, merged_weights=None, real=None):
        out = layer_output(layer(torch.cat([word, char], 0), stacked_mask))
        word, char = out.split(word.size(0), 0)
        return fusion(word, char, token_mask, merged_weights, real)

    tokenizer = CharBertTokenizerFast.from_pretrained(bert_dir)
    inputs = tokenizer(batches(tiny_texts, sizes=(5,))[0], padding=True, truncation=True, max_length=64,
                       return_tensors="pt")
    for padding in ("exact", "reference"):
        torch.manual_seed(0)
        model = CharBertModel.from_pretrained(bert_dir, char_padding=padding).eval()
        with torch.no_grad():
            new = model(**inputs, output_hidden_states=True)
            model._layer = split_layer.__get__(model)
            old = model(**inputs, output_hidden_states=True)
        for a, b in zip(new.hidden_states + new.char_hidden_states, old.hidden_states + old.char_hidden_states):
            assert torch.equal(a, b)


def test_missing_extra_is_one_line_naming_it(bert_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(MissingExtraError, match=r"charbert\[onnx\]"):
        require_onnx("onnxruntime")
    assert main(["--model_name_or_path", str(bert_dir), "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "charbert[onnx]" in err and "onnxruntime" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_runtime_refuses_what_it_cannot_do(bert_dir, tiny_texts, tmp_path):
    save_charbert(tmp_path / "model", bert_dir, CharBertForTokenClassification)
    export(tmp_path / "model", tmp_path / "onnx")
    model = OnnxModel.from_pretrained(tmp_path / "onnx")
    inputs = CharBertTokenizerFast.from_pretrained(tmp_path / "onnx")(["a b c"], return_tensors="pt")
    with pytest.raises(ValueError, match="hidden states"):
        model(**inputs, output_hidden_states=True)
    with pytest.raises(TypeError, match="unexpected"):
        model(**inputs, bogus=1)
    assert model(**inputs, labels=torch.zeros_like(inputs["input_ids"])).loss is None
    with pytest.raises(FileNotFoundError, match=EXPORT_INFO_FILE):
        OnnxModel.from_pretrained(tmp_path / "model")
    with pytest.raises(FileNotFoundError, match="--quantize int8"):
        OnnxModel.from_pretrained(tmp_path / "onnx", quantized=True)


TRAIN = ["--max_train_steps", "4", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "3",
         "--learning_rate", "1e-3", "--seed", "3", "--max_seq_length", "64"]


@pytest.fixture(scope="module")
def ner_models(bert_dir, task_files, tmp_path_factory):
    """kind ("charbert" / "plain") -> (fine-tuned NER folder, its ONNX export), trained once per module."""
    cache = {}

    def get(kind):
        if kind not in cache:
            root = tmp_path_factory.mktemp(f"ner_{kind}")
            assert run_cli("ner", "--train_file", task_files["ner_train"], "--model_name_or_path", bert_dir,
                           *(["--charbert"] if kind == "charbert" else []), "--output_dir", root / "torch", *TRAIN) == 0
            export(root / "torch", root / "onnx")
            cache[kind] = root / "torch", root / "onnx"
        return cache[kind]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["charbert", "plain"])
def test_do_predict_on_export_folder_equals_pytorch(kind, ner_models, task_files, tmp_path):
    trained, exported = ner_models(kind)
    predictions = {}
    for name, folder in (("torch", trained), ("onnx", exported)):
        out = tmp_path / f"predict_{name}"
        assert run_cli("ner", "--do_predict", "--test_file", task_files["ner_dev"], "--model_name_or_path", folder,
                       "--output_dir", out, "--per_device_eval_batch_size", "3", "--max_seq_length", "64") == 0
        predictions[name] = (out / "predict_predictions.txt").read_text()
    assert predictions["onnx"] == predictions["torch"] and predictions["torch"].count("\n") > 50


@pytest.mark.slow
def test_robustness_scores_an_export_folder_like_its_pytorch_folder(ner_models, task_files, tmp_path, capsys):
    trained, exported = ner_models("charbert")
    out = tmp_path / "report"
    assert run_cli("robustness", "--task", "ner", "--model_name_or_path", trained, exported, "--model_names", "torch",
                   "onnx", "--test_file", task_files["ner_dev"], "--attacks", "swap", "--output_dir", out,
                   "--per_device_eval_batch_size", "3", "--max_seq_length", "64") == 0
    torch_scores, onnx_scores = (m["scores"] for m in json.loads((out / "report.json").read_text())["models"])
    assert onnx_scores == torch_scores and set(torch_scores) == {"clean", "swap"}
    capsys.readouterr()
    assert run_cli("robustness", "--task", "ner", "--model_name_or_path", exported, "--test_file", task_files["ner_dev"],
                   "--attacks", "swap", "--output_dir", tmp_path / "again", "--sensitivity") == 2
    assert "ONNX export" in capsys.readouterr().err


@pytest.mark.slow
def test_glue_predict_on_export_folder_and_no_training_on_it(bert_dir, task_files, tmp_path, capsys):
    trained = tmp_path / "sst2"
    assert run_cli("glue", "--task_name", "sst2", "--train_file", task_files["sst2_train"], "--model_name_or_path",
                   bert_dir, "--charbert", "--output_dir", trained, *TRAIN) == 0
    export(trained, tmp_path / "onnx")
    predictions = {}
    for name, folder in (("torch", trained), ("onnx", tmp_path / "onnx")):
        out = tmp_path / f"predict_{name}"
        assert run_cli("glue", "--task_name", "sst2", "--do_predict", "--test_file", task_files["sst2_dev"],
                       "--model_name_or_path", folder, "--output_dir", out, "--max_seq_length", "64") == 0
        predictions[name] = (out / "predict_predictions.tsv").read_text()
    assert predictions["onnx"] == predictions["torch"]
    capsys.readouterr()
    assert run_cli("glue", "--task_name", "sst2", "--train_file", task_files["sst2_train"], "--model_name_or_path",
                   tmp_path / "onnx", "--output_dir", tmp_path / "again", *TRAIN) == 2
    assert "ONNX export" in capsys.readouterr().err


@pytest.mark.slow
def test_token_classification_pipeline_takes_the_onnx_model(bert_dir, tiny_texts, tmp_path):
    from transformers import pipeline

    save_charbert(tmp_path / "model", bert_dir, CharBertForTokenClassification, num_labels=3,
                  id2label={0: "O", 1: "B-X", 2: "I-X"}, label2id={"O": 0, "B-X": 1, "I-X": 2})
    export(tmp_path / "model", tmp_path / "onnx")
    tokenizer = CharBertTokenizerFast.from_pretrained(tmp_path / "onnx")
    eager = pipeline("token-classification", model=str(tmp_path / "model"), device="cpu")
    onnx = pipeline("token-classification", model=OnnxModel.from_pretrained(tmp_path / "onnx"), tokenizer=tokenizer)
    for text in tiny_texts[20:25]:
        got, expected = onnx(text), eager(text)
        assert [(g["entity"], g["start"]) for g in got] == [(e["entity"], e["start"]) for e in expected]
        assert np.allclose([g["score"] for g in got], [e["score"] for e in expected], atol=1e-4)


@pytest.mark.slow
def test_pipelines_on_an_export_folder(bert_dir, tmp_path):
    from transformers import pipeline

    from charbert.serving.onnx_runtime import onnx_pipeline

    cases = [("text-classification", CharBertForSequenceClassification, {"num_labels": 3}, "Ada wrote a program.", {}),
             ("question-answering", CharBertForQuestionAnswering, {},
              {"question": "Who wrote it?", "context": "It was written by Ada in London, long ago."},
              {"doc_stride": 32, "top_k": 3}),
             ("fill-mask", CharBertForMaskedLM, {}, "Ada wrote the [MASK] program.", {})]
    for task, cls, config, text, options in cases:
        folder = tmp_path / cls.__name__
        save_charbert(folder / "model", bert_dir, cls, **config)
        export(folder / "model", folder / "onnx")
        expected = pipeline(task, model=str(folder / "model"), device="cpu")(text, **options)
        got = onnx_pipeline(task, folder / "onnx")(text, **options)
        expected, got = (x if isinstance(x, list) else [x] for x in (expected, got))
        assert len(got) == len(expected) > 0, task
        for g, e in zip(got, expected):
            assert g.keys() == e.keys() and g["score"] == pytest.approx(e["score"], abs=1e-4), task
            assert {k: v for k, v in g.items() if k != "score"} == {k: v for k, v in e.items() if k != "score"}, task


@pytest.mark.slow
def test_onnx_parity_script_on_a_fine_tuned_folder(ner_models, task_files, tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "experiments" / "onnx_parity.py"
    spec = importlib.util.spec_from_file_location("onnx_parity", script)
    parity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(parity)
    trained, _ = ner_models("charbert")
    assert parity.main(["--task", "ner", "--model_name_or_path", str(trained), "--test_file", str(task_files["ner_dev"]),
                        "--output_dir", str(tmp_path / "parity"), "--int8", "--max_seq_length", "64"]) == 0
    report = json.loads((tmp_path / "parity" / "parity.json").read_text())
    assert report["onnx_fp32_differing_lines"] == 0 and report["lines"] > 50 and "onnx_int8_differing_lines" in report
    assert report["metrics"]["onnx_fp32"]["f1"] == report["metrics"]["torch"]["f1"]


@pytest.mark.slow
def test_fusion_weights_are_shared_initializers_that_int8_quantizes(bert_dir, tmp_path):
    """The fusion's merged weights are traced as constants; the export stores them as initializers, once for
    a shared fusion block, so the int8 graph quantizes the fusion's matrix products too."""
    import onnx

    save_charbert(tmp_path / "model", bert_dir, CharBertForTokenClassification)
    info = export(tmp_path / "model", tmp_path / "onnx", quantize="int8")
    graph = onnx.load(str(tmp_path / "onnx" / ONNX_FILE)).graph
    big_constants = [n for n in graph.node if n.op_type == "Constant" and n.attribute[0].t.raw_data
                     and int(np.prod(n.attribute[0].t.dims)) >= 1024]
    assert not big_constants
    initializers = {i.name for i in graph.initializer}
    matmuls = [n for n in graph.node if n.op_type in ("MatMul", "Gemm") and "fusion" in n.name]
    assert len(matmuls) == 2 * 2  # word and character taps, two layers
    assert all(n.input[1] in initializers for n in matmuls)
    assert len({n.input[1] for n in matmuls}) == 2  # one shared block: one copy of each merged weight
    plain_layers = 2 * 6 + 1  # per layer Q, K, V, O, FFN in and out; the classifier
    assert info["int8"]["quantized_nodes"]["MatMulInteger"] == plain_layers + 4


@pytest.mark.slow
def test_export_traces_the_eager_attention_and_leaves_the_models_own(bert_dir, tiny_texts, tmp_path):
    """The graph has the eager attention's form (SDPA's guard adds an IsNaN and two Where per layer, which
    ONNX Runtime runs slower); the model keeps its own attention, and the export matches it."""
    import onnx

    from charbert.serving.export import export_model

    model = save_charbert(tmp_path / "model", bert_dir, CharBertForTokenClassification)
    layers = list(model.base_model.backbone_adapter.layers(model.base_model))
    assert model.config._attn_implementation == "sdpa" == layers[0].attention.self.config._attn_implementation
    export_model(model, CharBertTokenizerFast.from_pretrained(tmp_path / "model"), tmp_path / "onnx")
    assert model.config._attn_implementation == "sdpa" == layers[0].attention.self.config._attn_implementation
    ops = [n.op_type for n in onnx.load(str(tmp_path / "onnx" / ONNX_FILE)).graph.node]
    assert "IsNaN" not in ops and ops.count("Softmax") == model.config.num_hidden_layers
    check_against_eager(model, tmp_path / "onnx", tiny_texts)


@pytest.mark.slow
def test_denormals_are_flushed_during_a_run_and_the_threads_mode_restored(bert_dir, tiny_texts, tmp_path):
    """ONNX Runtime's GRU slows down ~4x on denormal hidden states: OnnxModel runs each call with denormals
    flushed to zero in the calling thread (and its session's threads), then leaves the thread as it was."""
    from charbert.serving.onnx_runtime import denormals_flushed, flushing_denormals, session_options

    assert not flushing_denormals()
    with denormals_flushed():
        assert flushing_denormals()
        with denormals_flushed():
            assert flushing_denormals()
        assert flushing_denormals()  # the inner block found the mode on and left it on
    assert not flushing_denormals()
    with denormals_flushed(enabled=False):
        assert not flushing_denormals()
    assert session_options(1).get_session_config_entry("session.set_denormal_as_zero") == "1"
    with pytest.raises(RuntimeError, match="does not have configuration"):  # the option is not set at all
        session_options(1, flush_denormals=False).get_session_config_entry("session.set_denormal_as_zero")

    model = save_charbert(tmp_path / "model", bert_dir, CharBertForTokenClassification)
    export(tmp_path / "model", tmp_path / "onnx")
    tokenizer = CharBertTokenizerFast.from_pretrained(tmp_path / "onnx")
    inputs = encode(tokenizer, batches(tiny_texts, sizes=(3,))[0])
    with torch.no_grad():
        eager = model(**inputs).logits
    for flush in (True, False):
        onnx_model = OnnxModel.from_pretrained(tmp_path / "onnx", flush_denormals=flush)
        run, seen = onnx_model.session.run, []

        def spy(*args, run=run, seen=seen):
            seen.append(flushing_denormals())
            return run(*args)

        onnx_model.session.run = spy
        assert (onnx_model(**inputs).logits - eager).abs().max() <= TOLERANCE
        assert seen == [flush] and not flushing_denormals()


@pytest.mark.slow
def test_export_and_eager_inference_paths_at_two_threads(bert_dir, tiny_texts, tmp_path, monkeypatch):
    """With two threads, and the GRU's directions at once and one layer call per channel forced on wherever
    they apply: the export still works (a trace keeps the stacked call and one thread), and eager inference,
    which takes both paths, gives the exported model's outputs."""
    from conftest import torch_threads

    from charbert import gru_inference, modeling

    monkeypatch.setattr(gru_inference, "MIN_PARALLEL_CHARS", 1)
    monkeypatch.setattr(modeling, "CPU_STACKED_TOKENS_LIMIT", 0)
    with torch_threads(2):
        model = save_charbert(tmp_path / "model", bert_dir, CharBertForTokenClassification, num_labels=3)
        export(tmp_path / "model", tmp_path / "onnx")
        check_against_eager(model, tmp_path / "onnx", tiny_texts)
