"""Paper-scale reproduction: the CharBERT paper's robustness table, from the authors' released weights.

    python -m charbert.convert --original_checkpoint charbert-bert-wiki --char_vocab CharBERT/data/dict/bert_char_vocab \\
        --term_vocab CharBERT/data/dict/term_vocab --output_dir charbert-bert-wiki-hf
    python experiments/reproduce_paper.py --bert BERT_BASE_CASED_DIR --charbert charbert-bert-wiki-hf --data_dir DATA \\
        --attacked_dir CharBERT/data/attack_datasets --output_dir runs/reproduce_paper

Both models are fine-tuned the same way, through the project's own programs, with the authors'
recipes (NER and SQuAD: their README; QNLI: their ``shell/*.sh``; flags
shrink them for a smoke run):

* CoNLL-2003 NER (``finetune.ner``): 3 epochs, lr 3e-5, batch 6, length 128;
* QNLI (``finetune.glue --task_name qnli``): 8 epochs, lr 3e-5, batch 16, length 128;
* SQuAD 2.0 (``finetune.squad --version_2_with_negative``): 2 epochs, lr 3e-5, batch 4, length 384, stride 128;

linear decay, no warmup, no weight decay, seed 42.  Each fine-tuned model is then scored on the
clean test set and on attacked copies: those ``python -m finetune.robustness`` writes (our
Pruthi-style generator, ``--attacks``) and the attacked files the user passes (``--attacked_dir``:
the authors' ``data/attack_datasets`` with ``CharAttack_NER``, ``CharAttack_QNLI``,
``CharAttack_Squad_Q``; or ``--attacked_file TASK:NAME=PATH``), each scored by the task's program
with ``--do_predict --test_file``.

``--data_dir`` holds ``conll2003/{train,test}.txt``, ``glue/QNLI/{train,dev}.tsv`` and
``squad/{train,dev}-v2.0.json`` (or give each file: ``--ner_train_file`` ...).  The scores are
the paper's: NER test entity F1, QNLI dev accuracy, SQuAD 2.0 dev F1.

Stages are resumable (see ``stages.py``): re-running the command continues where it stopped.
Writes ``OUTPUT_DIR/paper_table.md`` and ``paper_table.json``: the paper's numbers beside ours.
On a GPU the programs use it; ``ACCELERATE_MIXED_PRECISION=fp16`` in the environment turns on
mixed precision for every stage.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the stage machinery beside this script
from stages import REPO, Runner

PROG = "reproduce_paper"
MODELS = ("BERT", "CharBERT")
TASKS = ("qnli", "ner", "squad")  # the paper's column order
DEFAULT_ATTACKS = "drop,add,swap,keyboard,all"

# The paper's robustness table ("original/attack"), as the authors' README gives it
# (wtma/CharBERT @ 0ac763b, README.md, "Robustness Evaluation (original/attack)").
PAPER = {
    "qnli": {"BERT": (90.7, 63.4), "CharBERT": (91.7, 80.1)},
    "ner": {"BERT": (91.24, 60.79), "CharBERT": (91.81, 76.14)},
    "squad": {"BERT": (76.3, 50.1), "CharBERT": (78.6, 56.3)},
}
PAPER_SOURCE = "wtma/CharBERT @ 0ac763b, README.md, 'Robustness Evaluation (original/attack)'"


@dataclass(frozen=True)
class TaskSpec:
    title: str  # the paper's column
    program: str  # finetune.<program>
    metric: str  # what the paper reports (our programs' metric name)
    train_file: str  # under --data_dir
    test_file: str
    attack_folder: str  # the authors' folder under data/attack_datasets
    suffixes: tuple[str, ...]  # what a data file of the task is called (others in the folder are not data)
    epochs: int  # the authors' recipe
    batch_size: int
    max_seq_length: int
    learning_rate: float = 3e-5


SPECS = {
    "qnli": TaskSpec("QNLI", "glue", "accuracy", "glue/QNLI/train.tsv", "glue/QNLI/dev.tsv", "CharAttack_QNLI",
                     (".tsv",), epochs=8, batch_size=16, max_seq_length=128),
    # Their NER command sets no length: 128 is the default of transformers 2.4's run_ner.py, which theirs
    # follows (their run_ner.py is not in ../shared/reference: unchecked).
    "ner": TaskSpec("CoNLL2003 NER", "ner", "f1", "conll2003/train.txt", "conll2003/test.txt", "CharAttack_NER",
                    ("", ".txt", ".conll", ".iob", ".bio"), epochs=3, batch_size=6, max_seq_length=128),
    "squad": TaskSpec("SQuAD 2.0", "squad", "f1", "squad/train-v2.0.json", "squad/dev-v2.0.json",
                      "CharAttack_Squad_Q", (".json",), epochs=2, batch_size=4, max_seq_length=384),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--bert", required=True, help="the plain BERT the paper compares with (bert-base-cased for "
                                                 "charbert-bert-wiki, roberta-base for charbert-roberta-wiki)")
    p.add_argument("--charbert", required=True, help="a CharBERT checkpoint (python -m charbert.convert's output)")
    p.add_argument("--data_dir", default=None, help="folder of the clean data sets (layout above)")
    p.add_argument("--output_dir", default="runs/reproduce_paper")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {list(TASKS)}")
    p.add_argument("--seed", type=int, default=42, help="fine-tuning seed")
    for task, spec in SPECS.items():
        g = p.add_argument_group(f"{spec.title} ({task})")
        g.add_argument(f"--{task}_train_file", default=None, help=f"default: DATA_DIR/{spec.train_file}")
        g.add_argument(f"--{task}_test_file", default=None, help=f"default: DATA_DIR/{spec.test_file}")
        g.add_argument(f"--{task}_num_train_epochs", type=int, default=spec.epochs)
        g.add_argument(f"--{task}_learning_rate", type=float, default=spec.learning_rate)
        g.add_argument(f"--{task}_per_device_train_batch_size", type=int, default=spec.batch_size)
        g.add_argument(f"--{task}_max_seq_length", type=int, default=spec.max_seq_length)
    p.add_argument("--squad_doc_stride", type=int, default=128)
    p.add_argument("--squad_max_query_length", type=int, default=64)
    s = p.add_argument_group("shrinking (smoke runs) and scoring")
    s.add_argument("--max_train_steps", type=int, default=None, help="cap every fine-tuning at N optimizer steps")
    s.add_argument("--max_train_samples", type=int, default=None, help="train on the first N examples of each task")
    s.add_argument("--max_predict_samples", type=int, default=None, help="score the first N test examples")
    s.add_argument("--per_device_eval_batch_size", type=int, default=32)
    a = p.add_argument_group("attacks")
    a.add_argument("--attacks", default=DEFAULT_ATTACKS,
                   help="our generator's attack types (finetune.robustness); 'all' = a random type per word, the "
                        "analogue of the authors' mixed sets")
    a.add_argument("--attack_seed", type=int, default=1)
    a.add_argument("--attacked_dir", default=None,
                   help="the authors' data/attack_datasets: every data file in CharAttack_NER, CharAttack_QNLI, "
                        "CharAttack_Squad_Q is an attacked test set of that task")
    a.add_argument("--attacked_file", action="append", default=[], metavar="TASK:NAME=PATH",
                   help="one more attacked test set, e.g. ner:CharAttack=attack/ner_test.txt (repeatable)")
    return p


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------


def fail(message: str):
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def check_models(args) -> None:
    """--charbert must be a CharBERT folder and --bert a plain one: the authors' unconverted folder says
    model_type "bert" and would be fine-tuned as a plain BERT, its character channel silently dropped."""
    from charbert.checkpoint import read_model_type

    for flag, want_charbert in (("bert", False), ("charbert", True)):
        if not (Path(getattr(args, flag)) / "config.json").is_file():
            fail(f"--{flag} {getattr(args, flag)}: no config.json there (not a checkpoint folder)")
        try:
            model_type = read_model_type(getattr(args, flag))
        except ValueError as err:  # not JSON, or not an object
            fail(str(err))
        if want_charbert and model_type != "charbert":
            fail(f"--charbert {args.charbert} is a {model_type!r} checkpoint, not CharBERT: convert the authors' "
                 "folder first (python -m charbert.convert)")
        if not want_charbert and model_type == "charbert":
            fail(f"--bert {args.bert} is a CharBERT checkpoint; give the plain BERT the paper compares with")


def selected_tasks(args) -> list[str]:
    wanted = [t.strip().lower() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in SPECS]
    if unknown or not wanted:
        fail(f"--tasks {args.tasks!r}: expected a comma-separated subset of {list(TASKS)}")
    return [t for t in TASKS if t in wanted]


def task_file(args, task: str, split: str) -> Path:
    given = getattr(args, f"{task}_{split}_file")
    if given is None:
        if args.data_dir is None:
            fail(f"give --data_dir or --{task}_{split}_file")
        given = Path(args.data_dir) / getattr(SPECS[task], f"{split}_file")
    path = Path(given)
    if not path.is_file():
        fail(f"{path} not found (the {SPECS[task].title} {split} file; give --{task}_{split}_file)")
    return path.resolve()


def attacked_sets(args, tasks: list[str]) -> dict[str, dict[str, Path]]:
    """``{task: {name: path}}`` of the attacked files the user passed (``--attacked_dir``, ``--attacked_file``)."""
    sets: dict[str, dict[str, Path]] = {task: {} for task in tasks}
    if args.attacked_dir is not None:
        root = Path(args.attacked_dir)
        if not root.is_dir():
            fail(f"--attacked_dir {root}: no such folder")
        for task in tasks:
            folder = root / SPECS[task].attack_folder
            if not folder.is_dir():
                continue
            files = sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")
                           and f.suffix.lower() in SPECS[task].suffixes)
            if not files:
                fail(f"{folder}: no {SPECS[task].title} data file in it (looked for {list(SPECS[task].suffixes)})")
            for f in files:
                sets[task][f"{SPECS[task].attack_folder}/{f.stem}" if len(files) > 1 else "CharAttack"] = f.resolve()
        if not any(sets.values()):
            fail(f"--attacked_dir {root} has none of {[SPECS[t].attack_folder for t in tasks]}")
    for item in args.attacked_file:
        task, sep, rest = item.partition(":")
        name, sep2, path = rest.partition("=")
        task = task.strip().lower()
        if not (sep and sep2 and name and path) or task not in SPECS:
            fail(f"--attacked_file {item!r}: expected TASK:NAME=PATH with TASK one of {list(TASKS)}")
        if task not in tasks:
            fail(f"--attacked_file {item!r}: task {task} is not in --tasks")
        if not Path(path).is_file():
            fail(f"--attacked_file {item!r}: {path} not found")
        if name in sets[task]:
            fail(f"--attacked_file {item!r}: {task} already has an attacked set named {name!r}")
        sets[task][name] = Path(path).resolve()
    return sets


# --------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------


def task_flags(args, task: str) -> list[str]:
    """Flags every run of the task's program needs (training or scoring)."""
    flags = ["--max_seq_length", str(getattr(args, f"{task}_max_seq_length"))]
    if task == "qnli":
        flags += ["--task_name", "qnli"]
    if task == "squad":
        flags += ["--version_2_with_negative", "--doc_stride", str(args.squad_doc_stride),
                  "--max_query_length", str(args.squad_max_query_length)]
    return flags


def finetune_command(args, task: str, model: str, train_file: Path, out: Path) -> list[str]:
    command = [sys.executable, "-m", f"finetune.{SPECS[task].program}", "--model_name_or_path", model,
               "--train_file", str(train_file), "--output_dir", str(out), *task_flags(args, task),
               "--num_train_epochs", str(getattr(args, f"{task}_num_train_epochs")),
               "--learning_rate", str(getattr(args, f"{task}_learning_rate")),
               "--per_device_train_batch_size", str(getattr(args, f"{task}_per_device_train_batch_size")),
               "--per_device_eval_batch_size", str(args.per_device_eval_batch_size),
               "--lr_scheduler_type", "linear", "--num_warmup_steps", "0", "--weight_decay", "0",
               "--seed", str(args.seed), "--logging_steps", "50"]
    if args.max_train_steps is not None:
        command += ["--max_train_steps", str(args.max_train_steps)]
    if args.max_train_samples is not None:
        command += ["--max_train_samples", str(args.max_train_samples)]
    return command


def robustness_command(args, task: str, finetuned: dict[str, Path], test_file: Path, out: Path) -> list[str]:
    command = [sys.executable, "-m", "finetune.robustness", "--task", "glue" if task == "qnli" else task,
               "--model_name_or_path", *map(str, finetuned.values()), "--model_names", *finetuned,
               "--test_file", str(test_file), "--attacks", args.attacks, "--seed", str(args.attack_seed),
               "--metric", SPECS[task].metric, "--per_device_eval_batch_size", str(args.per_device_eval_batch_size),
               "--output_dir", str(out), *task_flags(args, task)]
    if args.max_predict_samples is not None:
        command += ["--max_predict_samples", str(args.max_predict_samples)]
    return command


def score_command(args, task: str, model: Path, test_file: Path, out: Path) -> list[str]:
    """Score a fine-tuned model on one attacked file with the task's own program (``--do_predict``)."""
    command = [sys.executable, "-m", f"finetune.{SPECS[task].program}", "--model_name_or_path", str(model),
               "--test_file", str(test_file), "--do_predict", "--output_dir", str(out), *task_flags(args, task),
               "--per_device_eval_batch_size", str(args.per_device_eval_batch_size)]
    if args.max_predict_samples is not None:
        command += ["--max_predict_samples", str(args.max_predict_samples)]
    return command


def safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


def collect(out: Path, tasks: list[str], sets: dict[str, dict[str, Path]]) -> dict[str, dict]:
    """``{task: {"metric", "attacks", "files", "scores": {model: {"clean": %, attack: %, NAME: %}}}}``."""
    from charbert.robustness.report import as_percent

    results = {}
    for task in tasks:
        report = json.loads((out / "robustness" / task / "report.json").read_text(encoding="utf-8"))
        # fractions -> percent (SQuAD's metrics are percent already)
        scores = {m["name"]: {k: as_percent(v, task) for k, v in m["scores"].items()} for m in report["models"]}
        for name in sets[task]:
            for model, model_scores in scores.items():
                record = json.loads((out / "attacked" / task / safe(name) / model / "metrics.json").read_text())
                model_scores[name] = as_percent(record["predict"][SPECS[task].metric], task)
        results[task] = {"metric": SPECS[task].metric, "test_file": report["test_file"], "attacks": report["attacks"],
                         "attacked_files": {n: str(p) for n, p in sets[task].items()}, "scores": scores}
    return results


def generated_attack(attacks: list[str]) -> str:
    """The generated attack the main table shows: 'all' (a random type per word, like the authors' mixed
    sets) when it was run, else the mean of the types."""
    return "all" if "all" in attacks else "mean"


def cell(clean: float | None, attacked: float | None) -> str:
    return "-" if clean is None or attacked is None else f"{clean:.2f}/{attacked:.2f}"


def paper_table(results: dict[str, dict], tasks: list[str]) -> list[str]:
    """The paper's table (original/attack per task) with our rows under each of the paper's."""
    lines = ["| model | " + " | ".join(SPECS[t].title for t in tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for model in MODELS:
        lines.append(f"| {model} (paper) | " + " | ".join(cell(*PAPER[t][model]) for t in tasks) + " |")
        ours_sets, ours_generated = [], []
        for task in tasks:
            scores = results[task]["scores"].get(model, {})
            clean = scores.get("clean")
            names = list(results[task]["attacked_files"])
            ours_sets.append(" · ".join(cell(clean, scores.get(n)) for n in names) if names else "-")
            attacks = results[task]["attacks"]
            which = generated_attack(attacks)
            value = scores.get("all") if which == "all" else _mean([scores.get(a) for a in attacks])
            ours_generated.append(cell(clean, value))
        if any(results[t]["attacked_files"] for t in tasks):
            lines.append(f"| {model} (ours, the passed attacked sets) | " + " | ".join(ours_sets) + " |")
        lines.append(f"| {model} (ours, our attack) | " + " | ".join(ours_generated) + " |")
    return lines


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def detail_table(result: dict) -> list[str]:
    """One task: every model's clean score, each generated attack and each passed attacked set."""
    columns = ["clean", *result["attacks"], *result["attacked_files"]]
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for model, scores in result["scores"].items():
        lines.append(f"| {model} | " + " | ".join("-" if scores.get(c) is None else f"{scores[c]:.2f}"
                                                 for c in columns) + " |")
    return lines


def write_results(args, out: Path, tasks: list[str], sets: dict[str, dict[str, Path]], runner: Runner) -> dict:
    results = collect(out, tasks, sets)
    recipes = {t: {"num_train_epochs": getattr(args, f"{t}_num_train_epochs"),
                   "learning_rate": getattr(args, f"{t}_learning_rate"),
                   "per_device_train_batch_size": getattr(args, f"{t}_per_device_train_batch_size"),
                   "max_seq_length": getattr(args, f"{t}_max_seq_length")} for t in tasks}
    if "squad" in recipes:
        recipes["squad"].update(doc_stride=args.squad_doc_stride, max_query_length=args.squad_max_query_length)
    shrunk = {k: getattr(args, k) for k in ("max_train_steps", "max_train_samples", "max_predict_samples")
              if getattr(args, k) is not None}
    table = {"paper": {t: {m: dict(zip(("clean", "attacked"), PAPER[t][m])) for m in MODELS} for t in tasks},
             "paper_source": PAPER_SOURCE, "ours": results, "recipes": recipes, "shrunk": shrunk,
             "models": {"BERT": args.bert, "CharBERT": args.charbert}, "seed": args.seed,
             "attack_seed": args.attack_seed, "stage_wall_times_s": runner.times,
             "command": shlex.join([sys.executable, *sys.argv])}
    (out / "paper_table.json").write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    which = {generated_attack(results[t]["attacks"]) for t in tasks}
    md = ["# CharBERT paper: robustness table, reproduced", "",
          f"Original/attack, in percent: {', '.join(f'{SPECS[t].title} {SPECS[t].metric}' for t in tasks)} "
          f"(NER on its test file, QNLI and SQuAD on dev). Paper rows: {PAPER_SOURCE}.",
          f"\"Our attack\" is `python -m finetune.robustness --attacks {args.attacks}` (seed {args.attack_seed}, "
          f"every eligible word), shown as {' / '.join(sorted(which))}" + (" (a random type per word)" if "all" in which
                                                                          else " (mean of the types)") + ".", ""]
    if shrunk:
        md += [f"**Shrunk run** ({', '.join(f'{k} {v}' for k, v in shrunk.items())}): not the paper's recipe.", ""]
    md += paper_table(results, tasks) + [""]
    for task in tasks:
        files = results[task]["attacked_files"]
        md += [f"**{SPECS[task].title}** ({SPECS[task].metric}, {results[task]['test_file']}; full report: "
               f"`robustness/{task}/report.md`)" + "".join(f"; {n}: {p}" for n, p in files.items()), ""]
        md += detail_table(results[task]) + [""]
    md += ["Recipes: " + "; ".join(f"{t} " + ", ".join(f"{k} {v:g}" for k, v in r.items()) for t, r in recipes.items())
           + f"; seed {args.seed}.", "",
           "Stage wall times (min): " + ", ".join(f"{k} {v / 60:.1f}" for k, v in runner.times.items()), "",
           "Command:", "", "```bash", table["command"], "```", ""]
    (out / "paper_table.md").write_text("\n".join(md), encoding="utf-8")
    print("\n".join(md), flush=True)
    return table


# --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tasks = selected_tasks(args)
    check_models(args)
    files = {t: (task_file(args, t, "train"), task_file(args, t, "test")) for t in tasks}
    sets = attacked_sets(args, tasks)
    out = Path(args.output_dir).resolve()
    runner = Runner(out, prog=PROG)
    (out / "args.json").write_text(json.dumps(vars(args), indent=1))
    models = {"BERT": str(Path(args.bert).resolve()), "CharBERT": str(Path(args.charbert).resolve())}
    for task in tasks:
        train_file, test_file = files[task]
        finetuned = {}
        for name, model in models.items():
            finetuned[name] = out / "finetune" / task / name
            runner.run(f"finetune_{task}_{name}", finetune_command(args, task, model, train_file, finetuned[name]))
        runner.run(f"robustness_{task}", robustness_command(args, task, finetuned, test_file, out / "robustness" / task))
        for set_name, path in sets[task].items():
            for name, folder in finetuned.items():
                runner.run(f"score_{task}_{safe(set_name)}_{name}",
                           score_command(args, task, folder, path, out / "attacked" / task / safe(set_name) / name))
    write_results(args, out, tasks, sets, runner)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
