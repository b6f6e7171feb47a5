"""An unconverted CharBERT checkpoint of the authors' code never runs as plain BERT by accident
(their issue #15: "loads as plain BERT and gives identical results"): every load path stops with one
line naming `python -m charbert.convert`, whatever config.json says (a hub copy's "bert", or none)."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import run_cli
from reference import authors_code_or_skip, build_authors_model, save_authors_checkpoint, vocab_tokens
from safetensors.torch import save_file

from charbert import CharBertForPreTraining, CharBertForTokenClassification, CharBertModel, CharBertTokenizer
from charbert.checkpoint import (
    UnconvertedCheckpointError,
    authors_tensor_names,
    check_converted,
    load_weights,
    weight_names,
)

VOCAB_SIZE = 120
CONVERT = "python -m charbert.convert --original_checkpoint"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    """Per backbone: the folder as the authors' code saved it (no model_type) and a hub copy saying model_type."""
    authors_code_or_skip()
    out = {}
    for backbone in ("bert", "roberta"):
        model = build_authors_model(backbone, "pretraining", VOCAB_SIZE, seed=1)
        raw = save_authors_checkpoint(model, tmp_path_factory.mktemp(f"raw_{backbone}"), backbone,
                                      vocab_tokens(backbone, VOCAB_SIZE))
        hub_copy = tmp_path_factory.mktemp(f"hub_{backbone}") / "copy"
        shutil.copytree(raw, hub_copy)
        config = json.loads((hub_copy / "config.json").read_text())
        config["model_type"] = backbone
        config["architectures"] = ["BertForMaskedLM" if backbone == "bert" else "RobertaForMaskedLM"]
        (hub_copy / "config.json").write_text(json.dumps(config))
        out[backbone] = {"raw": raw, "typed": hub_copy}
    return out


def assert_names_converter(err, path):
    text = str(err)
    assert "\n" not in text and "unconverted CharBERT checkpoint" in text, text
    assert f"{CONVERT} {path}" in text, text


def test_only_the_authors_names_are_recognised(releases):
    names = weight_names(releases["bert"]["raw"])
    found = authors_tensor_names(names)
    assert "bert.char_embeddings.rnn_layer.weight_ih_l0" in found and "cls.predictions.adv_decoder.weight" in found
    assert "bert.encoder.fusion_layer_list.0.weight" in found and "bert.encoder.word_linear1.weight" in found
    assert not authors_tensor_names([n for n in names if n.startswith(("bert.embeddings.", "bert.encoder.layer."))])
    roberta = authors_tensor_names(weight_names(releases["roberta"]["raw"]))
    assert "roberta.encoder.fusion_layer.weight" in roberta and "lm_head.char_dense.weight" in roberta
    # Ours never match, nor does a plain BERT's MLM head.
    ours = ["charbert.char_embeddings.embeddings.weight", "charbert.char_embeddings.forward_gru.weight_ih_l0",
            "charbert.fusion.0.fuse.weight", "nlm_head.decoder.weight", "cls.predictions.transform.dense.weight"]
    assert authors_tensor_names(ours) == []


def test_a_safetensors_mirror_is_recognised_too(releases, tmp_path):
    import torch

    mirror = tmp_path / "mirror"
    shutil.copytree(releases["bert"]["typed"], mirror)
    state = torch.load(mirror / "pytorch_model.bin", weights_only=True)
    save_file({k: v.contiguous().clone() for k, v in state.items()}, str(mirror / "model.safetensors"))
    (mirror / "pytorch_model.bin").unlink()
    with pytest.raises(UnconvertedCheckpointError) as err:
        check_converted(mirror)
    assert_names_converter(err.value, mirror)


@pytest.mark.parametrize("backbone", ["bert", "roberta"])
@pytest.mark.parametrize("kind", ["raw", "typed"])
def test_our_classes_and_the_tokenizer_refuse(releases, backbone, kind):
    folder = releases[backbone][kind]
    for load in (CharBertForPreTraining.from_pretrained, CharBertModel.from_pretrained,
                 CharBertForTokenClassification.from_backbone, CharBertTokenizer.from_pretrained,
                 lambda path: load_weights(CharBertForPreTraining, path)):
        with pytest.raises(UnconvertedCheckpointError) as err:
            load(folder)
        assert_names_converter(err.value, folder)


@pytest.mark.parametrize("backbone", ["bert", "roberta"])
def test_auto_classes_and_pipelines_refuse_after_import_charbert(releases, backbone):
    from transformers import AutoModel, AutoModelForMaskedLM, AutoModelForTokenClassification, BertForMaskedLM, pipeline

    folder = releases[backbone]["typed"]
    loaders = [AutoModel.from_pretrained, AutoModelForMaskedLM.from_pretrained,
               AutoModelForTokenClassification.from_pretrained]
    if backbone == "bert":
        loaders.append(BertForMaskedLM.from_pretrained)
    for load in loaders:
        with pytest.raises(UnconvertedCheckpointError) as err:
            load(folder)
        assert_names_converter(err.value, folder)
    with pytest.raises(ValueError) as err:  # the pipeline wraps it in its "Could not load model" report
        pipeline("fill-mask", model=str(folder))
    assert f"{CONVERT} {folder}" in str(err.value)


def test_plain_and_charbert_folders_still_load(bert_dir, tmp_path):
    from transformers import AutoModelForMaskedLM

    check_converted(bert_dir)  # a plain BERT: nothing to say
    AutoModelForMaskedLM.from_pretrained(bert_dir)
    CharBertForPreTraining.from_pretrained(bert_dir).save_pretrained(tmp_path / "cb")
    check_converted(tmp_path / "cb")
    CharBertForPreTraining.from_pretrained(tmp_path / "cb")


def finetune_error(capsys, *argv) -> str:
    rc = run_cli("ner", *argv)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err[-2000:]
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("kind", ["raw", "typed"])
@pytest.mark.parametrize("charbert", [False, True])
def test_finetune_stops_with_one_line(capsys, releases, task_files, tmp_path, kind, charbert):
    folder = releases["bert"][kind]
    line = finetune_error(capsys, "--model_name_or_path", folder, "--train_file", task_files["ner_train"],
                          "--output_dir", tmp_path / "out", "--max_train_steps", "1", *(["--charbert"] if charbert else []))
    assert line.startswith("python -m finetune.ner: error: ") and f"{CONVERT} {folder}" in line, line
    assert "(UnconvertedCheckpointError" not in line  # a usage error: the message alone


def test_pretraining_loader_refuses(releases):
    from charbert.chars import CharVocab
    from charbert.pretraining.job import load_pretraining_model
    from charbert.pretraining.vocab import WordVocab

    folder = releases["bert"]["typed"]
    with pytest.raises(UnconvertedCheckpointError) as err:
        load_pretraining_model(folder, "charbert", WordVocab(["a", "b"]), CharVocab.default(), 32)
    assert_names_converter(err.value, folder)


def test_tokenizer_of_a_release_without_weights_names_the_converter(releases, tmp_path):
    folder = tmp_path / "vocab_only"
    folder.mkdir()
    for name in ("config.json", "vocab.txt"):
        shutil.copy(releases["bert"]["raw"] / name, folder)
    with pytest.raises(ValueError, match=r"no tokenizer\.json .*convert it with python -m charbert\.convert"):
        CharBertTokenizer.from_pretrained(folder)
