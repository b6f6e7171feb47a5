"""python -m finetune.robustness on tiny fine-tuned models: the clean score is the fine-tuning
program's score, the report's numbers follow from the per-file metrics, the analyses run, and
bad input ends in one clear line."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from charbert.robustness.report import render_markdown, score_drops
from charbert.robustness.sensitivity import sensitivity
from charbert.tasks.ner import get_entities, read_conll
from finetune.robustness import _load_encoder

TRAIN = ["--max_train_steps", "6", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "4",
         "--learning_rate", "2e-3", "--logging_steps", "2", "--seed", "3"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ner_models(tmp_path_factory, task_files, bert_dir):
    """A plain and a CharBERT NER model fine-tuned for a few steps on the tiny files."""
    out = {}
    for name, extra in (("plain", []), ("charbert", ["--charbert"])):
        folder = tmp_path_factory.mktemp(f"ner_{name}")
        assert run_cli("ner", "--model_name_or_path", bert_dir, "--train_file", task_files["ner_train"],
                       "--validation_file", task_files["ner_dev"], "--output_dir", folder, *TRAIN, *extra) == 0
        out[name] = folder
    return out


@pytest.fixture(scope="module")
def mrpc_model(tmp_path_factory, task_files, bert_dir):
    folder = tmp_path_factory.mktemp("mrpc_charbert")
    assert run_cli("glue", "--task_name", "mrpc", "--model_name_or_path", bert_dir, "--charbert",
                   "--train_file", task_files["mrpc_train"], "--validation_file", task_files["mrpc_dev"],
                   "--output_dir", folder, *TRAIN) == 0
    return folder


@pytest.mark.slow
def test_ner_report_two_models_clean_score_equals_finetune_score(ner_models, task_files, tmp_path):
    out = tmp_path / "report"
    code = run_cli("robustness", "--task", "ner", "--model_name_or_path", ner_models["plain"], ner_models["charbert"],
                   "--model_names", "bert", "charbert", "--test_file", task_files["ner_dev"], "--attacks", "swap,all",
                   "--output_dir", out, "--per_device_eval_batch_size", "4", "--sensitivity")
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["attacks"] == ["swap", "all"] and report["metric"] == "f1"
    assert [m["name"] for m in report["models"]] == ["bert", "charbert"]
    for attack in ("swap", "all"):  # the attacked files used are kept, one token per token
        attacked = read_conll(out / report["attack_files"][attack])
        clean = read_conll(task_files["ner_dev"])
        assert [len(s) for s in attacked] == [len(s) for s in clean]
        assert [s.tags for s in attacked] == [s.tags for s in clean]
        assert sum(a != b for s, t in zip(attacked, clean) for a, b in zip(s.tokens, t.tokens)) > 0

    gold_entities = sum(len(get_entities(s.tags)) for s in read_conll(task_files["ner_dev"]))
    for model, name in zip(report["models"], ("plain", "charbert")):
        finetuned = json.loads((ner_models[name] / "metrics.json").read_text())["eval"]
        assert model["scores"]["clean"] == finetuned["f1"]  # same reader, features, model and metric
        assert model["metrics"]["clean"]["precision"] == finetuned["precision"]
        for attack in ("swap", "all"):
            per_file = json.loads((out / "runs" / model["name"] / attack / "metrics.json").read_text())["predict"]
            assert model["scores"][attack] == per_file["f1"]
            assert model["drops"][attack]["absolute"] == pytest.approx(model["scores"]["clean"] - per_file["f1"])
        # every gold entity falls in exactly one of the two groups
        for label in ("clean", "swap", "all"):
            groups = model["by_subwords"][label]
            assert groups["single"]["support"] + groups["multi"]["support"] == gold_entities
        for attack in ("swap", "all"):
            s = model["sensitivity"][attack]
            assert s["num_noised"] > 0 and 0.0 < s["S_noised"] <= 2.0 and 0.0 <= s["S"] <= 2.0
        # S comes from the scoring passes: equal to encoding the files again on their own
        encoder, tokenizer = _load_encoder(str(ner_models[name]))
        clean_words = [s.tokens for s in read_conll(task_files["ner_dev"]) if s.tokens]
        for attack in ("swap", "all"):
            attacked_words = [s.tokens for s in read_conll(out / report["attack_files"][attack]) if s.tokens]
            alone = sensitivity(encoder, tokenizer, clean_words, attacked_words, batch_size=3)
            for key in ("S", "S_noised", "S_untouched"):
                assert model["sensitivity"][attack][key] == pytest.approx(alone[key], abs=1e-6)
            assert model["sensitivity"][attack]["num_words"] == alone["num_words"]

    markdown = (out / "report.md").read_text()
    assert "| bert f1 |" in markdown and "| charbert f1 |" in markdown
    assert "## Sensitivity S" in markdown and "one-subword" in markdown
    clean_row = next(line for line in markdown.splitlines() if line.startswith("| clean |"))
    assert f"{100 * report['models'][0]['scores']['clean']:.2f}" in clean_row
    assert (out / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_glue_greedy_attack_starts_at_the_clean_accuracy_and_never_rises(mrpc_model, task_files, tmp_path):
    out = tmp_path / "report"
    code = run_cli("robustness", "--task", "glue", "--task_name", "mrpc", "--model_name_or_path", mrpc_model,
                   "--test_file", task_files["mrpc_dev"], "--attacks", "drop", "--output_dir", out,
                   "--per_device_eval_batch_size", "8", "--greedy", "--max_edits", "2", "--max_candidates", "8")
    assert code == 0
    (model,) = json.loads((out / "report.json").read_text())["models"]
    accuracy = model["greedy"]["accuracy"]
    assert len(accuracy) == 3
    assert accuracy[0] == pytest.approx(model["scores"]["clean"])  # the same model and features
    assert accuracy[2] <= accuracy[1] <= accuracy[0]
    assert model["greedy"]["num_queries"] > 0
    assert "## Greedy attack" in (out / "report.md").read_text()


@pytest.mark.parametrize("case", ["unknown_attack", "other_format", "empty_file", "missing_model", "greedy_on_ner",
                                  "unknown_task", "unknown_flag"])
@pytest.mark.slow
def test_bad_input_gives_one_clear_line(case, ner_models, task_files, tmp_path, capsys):
    model, test_file = ner_models["plain"], task_files["ner_dev"]
    extra, expected = [], ""
    task = "ner"
    if case == "unknown_attack":
        extra, expected = ["--attacks", "swap,typo"], "unknown attack type 'typo'"
    elif case == "other_format":
        test_file, expected = task_files["mrpc_dev"], str(task_files["mrpc_dev"])
    elif case == "empty_file":
        test_file = tmp_path / "empty.txt"
        test_file.write_text("\n\n", encoding="utf-8")
        expected = "is empty"
    elif case == "missing_model":
        model, expected = tmp_path / "nowhere", "no such checkpoint folder"
    elif case == "greedy_on_ner":
        extra, expected = ["--greedy"], "--greedy is for sequence classification"
    elif case == "unknown_flag":  # parsed by the task program's own parser, which does not know it either
        extra, expected = ["--bogus_flag", "2"], "unrecognized arguments (neither"
    else:
        task, expected = "parsing", "unknown --task 'parsing'"
    code = run_cli("robustness", "--task", task, "--model_name_or_path", model, "--test_file", test_file,
                   "--output_dir", tmp_path / "out", *extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("python -m finetune.robustness: error: ") and expected in err[-1]
    assert not (tmp_path / "out" / "report.json").exists()


def test_score_drops_and_markdown_from_a_hand_made_report():
    drops = score_drops({"clean": 0.8, "swap": 0.6, "drop": None}, ["swap", "drop"])
    assert drops["swap"]["absolute"] == pytest.approx(0.2) and drops["swap"]["relative"] == pytest.approx(0.25)
    assert drops["drop"] == {"absolute": None, "relative": None}
    assert score_drops({"clean": 0.0, "swap": 0.0}, ["swap"])["swap"]["relative"] is None
    report = {"task": "ner", "metric": "f1", "attacks": ["swap"], "test_file": "dev.txt", "seed": 1, "word_rate": 1.0,
              "models": [{"name": "a", "scores": {"clean": 0.8, "swap": 0.6}},
                         {"name": "b", "scores": {"clean": 0.5, "swap": 0.45}}]}
    lines = render_markdown(report).splitlines()
    assert "| swap | 60.00 | 20.00 | 25.0% | 45.00 | 5.00 | 10.0% |" in lines
    assert "| mean of attacks | 60.00 | 20.00 | 25.0% | 45.00 | 5.00 | 10.0% |" in lines


def _write_outside(src, dst, transform):
    dst.write_text(transform(src.read_text(encoding="utf-8")), encoding="utf-8")
    return dst


@pytest.mark.slow
def test_outside_files_score_side_by_side_with_budgeted_attacks(ner_models, task_files, tmp_path):
    """A misspelt -DOCSTART- scores as the intact marker; tokens with spaces are repaired and counted; the report
    names the budget and gives the changed-prediction share of every attacked file."""
    clean = task_files["ner_dev"]
    lines = clean.read_text(encoding="utf-8").split("\n")
    token_line = [i for i, line in enumerate(lines) if line and not line.startswith("-DOCSTART-")][1]
    spaced = list(lines)
    word, *tags = spaced[token_line].split()
    spaced[token_line] = " ".join([word[:1], word[1:] or "x", *tags])  # "Decimals NN .." -> "D ecimals NN .."
    intact = _write_outside(clean, tmp_path / "intact.txt", lambda t: t)
    misspelt = _write_outside(clean, tmp_path / "misspelt.txt", lambda t: t.replace("-DOCSTART-", "-DCOSTART-"))
    spaces = _write_outside(clean, tmp_path / "spaces.txt", lambda t: "\n".join(spaced))
    first_line = [i for i, line in enumerate(lines) if line and not line.startswith("-DOCSTART-")][0]
    first = list(lines)  # the first token line holds the space: the clean file fixes the column count
    word, *tags = first[first_line].split()
    first[first_line] = " ".join([word[:1], word[1:] or "x", *tags])
    first = _write_outside(clean, tmp_path / "first.txt", lambda t: "\n".join(first))
    out = tmp_path / "report"
    code = run_cli("robustness", "--task", "ner", "--model_name_or_path", ner_models["plain"], "--test_file", clean,
                   "--attacks", "swap", "--max_words", "1", "--output_dir", out, "--per_device_eval_batch_size", "4",
                   "--attacked_file", f"intact={intact}", "--attacked_file", f"textflint={misspelt}",
                   "--attacked_file", f"spaces={spaces}", "--attacked_file", f"first={first}")
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    (model,) = report["models"]
    assert report["outside"] == ["intact", "textflint", "spaces", "first"] and report["max_words"] == 1
    assert model["scores"]["textflint"] == model["scores"]["intact"] == model["scores"]["clean"]
    assert report["outside_stats"]["textflint"] == {"misspelt_docstart_lines": 1}
    assert report["outside_stats"]["spaces"] == report["outside_stats"]["first"] == {"repaired_lines": 1}
    assert model["metrics"]["first"]["num_words"] == model["metrics"]["clean"]["num_words"]
    assert model["metrics"]["spaces"]["num_words"] == model["metrics"]["clean"]["num_words"]
    swap = read_conll(out / report["attack_files"]["swap"])
    assert all(sum(a != b for a, b in zip(s.tokens, c.tokens)) <= 1 for s, c in zip(swap, read_conll(clean)))
    assert model["attack_metrics"]["intact"]["changed_prediction_share"] == 0.0
    assert model["attack_metrics"]["intact"]["avg_perturbed_word_share"] == 0.0
    assert 0.0 <= model["attack_metrics"]["swap"]["changed_prediction_share"] <= 1.0
    markdown = (out / "report.md").read_text()
    assert "at most 1 words per sentence" in markdown and "## Attack metrics" in markdown
    assert "| textflint |" in markdown


@pytest.mark.slow
def test_misaligned_outside_file_names_its_line(ner_models, task_files, tmp_path, capsys):
    clean = task_files["ner_dev"]
    lines = clean.read_text(encoding="utf-8").split("\n")
    k = next(i for i, line in enumerate(lines) if line.endswith(" O") and not line.startswith("-DOCSTART-"))
    lines[k] = lines[k][:-1] + "B-PER"
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join(lines), encoding="utf-8")
    code = run_cli("robustness", "--task", "ner", "--model_name_or_path", ner_models["plain"], "--test_file", clean,
                   "--attacks", "none", "--attacked_file", f"bad={bad}", "--output_dir", tmp_path / "out")
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and f"{bad}:{k + 1}: does not align token for token" in err


@pytest.mark.slow
def test_glue_attack_metrics_outside_tsv_and_advglue(mrpc_model, task_files, tmp_path):
    dev = task_files["mrpc_dev"]
    outside = tmp_path / "theirs.tsv"
    outside.write_text(dev.read_text(encoding="utf-8").replace("the ", "teh "), encoding="utf-8")
    out = tmp_path / "report"
    code = run_cli("robustness", "--task", "glue", "--task_name", "mrpc", "--model_name_or_path", mrpc_model,
                   "--test_file", dev, "--attacks", "drop", "--output_dir", out, "--attacked_file", f"theirs={outside}",
                   "--per_device_eval_batch_size", "8", "--greedy", "--max_edits", "1", "--max_candidates", "4")
    assert code == 0
    (model,) = json.loads((out / "report.json").read_text())["models"]
    for label in ("drop", "theirs"):
        m = model["attack_metrics"][label]
        assert m["successful"] + m["failed"] + m["skipped"] == m["num_examples"] == 13
        assert m["original_accuracy"] == pytest.approx(model["scores"]["clean"])
        assert m["accuracy_under_attack"] <= m["original_accuracy"]
    greedy = model["greedy"]["attack_metrics"]
    assert greedy["accuracy_under_attack"] == pytest.approx(model["greedy"]["accuracy"][-1])
    assert greedy["avg_num_queries"] > 0 and greedy["skipped"] == model["attack_metrics"]["drop"]["skipped"]
    assert "success rate" in (out / "report.md").read_text()
