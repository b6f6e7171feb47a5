"""The NLM head as a typo corrector: choose its threshold on held-out data, then measure it on CoNLL dev.

    python experiments/correction_sweep.py --model_name_or_path runs/replicate_small/pretrain/CharBERT \
        --output_dir runs/correction

1. Tuning: the first ``--tune_sentences`` sentences of CoNLL *train* (not the reported dev set), attacked
   with every attack type (seed ``--seed``, every eligible word, as ``finetune.robustness`` does). The NLM
   head predicts each file once; every threshold of ``--thresholds`` rewrites from that one prediction,
   with unknown words only as candidates (the default) and with every word (``only_unknown=False``).
   The setting kept is the one whose corrected text has the most words equal to the clean text
   (restored attacked words + untouched words left alone), averaged over the attacks.
2. Dev: CoNLL dev attacked the same way (the files ``finetune.robustness --seed 1`` writes), corrected
   at the chosen threshold and by the dictionary baseline; restored / wrongly changed per attack, and
   the corrected copies written as column files (``<attack>.nlm.txt``, ``<attack>.dict.txt``) for
   ``finetune.robustness --attacked_file`` (the NER F1 of a plain model on them).

Writes ``sweep.json`` and ``sweep.md`` to ``--output_dir``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ATTACKS = ("drop", "add", "swap", "keyboard", "all")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model_name_or_path", required=True, help="a CharBERT pretraining folder (NLM head + word_vocab.txt)")
    p.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--output_dir", required=True)
    p.add_argument("--tune_sentences", type=int, default=1000, help="CoNLL train sentences the threshold is chosen on")
    p.add_argument("--thresholds", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9")
    p.add_argument("--attacks", default=",".join(ATTACKS))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--per_device_eval_batch_size", type=int, default=64)
    return p


def first_sentences(path: Path, n: int, out: Path) -> Path:
    """The first ``n`` sentences of a CoNLL column file (document lines kept), as a file."""
    blocks = [b for b in path.read_text(encoding="utf-8").split("\n\n") if b.strip()]
    kept, count = [], 0
    for block in blocks:
        kept.append(block)
        count += not block.startswith("-DOCSTART-")
        if count >= n:
            break
    out.write_text("\n\n".join(kept) + "\n", encoding="utf-8")
    return out


def words(path: Path) -> list[list[str]]:
    from charbert.tasks.ner import read_conll

    return [s.tokens for s in read_conll(path)]


def reuse(sentences, rewritten, rewrite):
    """A rewrite that answers ``rewritten`` for ``sentences`` (no second model pass), else calls ``rewrite``."""
    return lambda s: rewritten if s == sentences else rewrite(s)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from charbert.robustness.attacks import attack_column_file
    from charbert.robustness.correct import DictionaryCorrector, NlmCorrector, correction_scores
    from charbert.robustness.tasks import get_attack_task

    data, out = Path(args.data_dir), Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    corrector = NlmCorrector.from_pretrained(args.model_name_or_path, batch_size=args.per_device_eval_batch_size)
    dictionary = DictionaryCorrector(corrector.word_vocab)

    # 1. the threshold, on attacked CoNLL train sentences
    tune = first_sentences(data / "conll2003/train.txt", args.tune_sentences, out / "tune.txt")
    tune_clean = words(tune)
    settings = [(t, only) for only in (True, False) for t in thresholds]
    sweep = {setting: [] for setting in settings}
    for attack in attacks:
        attacked_path = out / f"tune.{attack}.txt"
        attack_column_file(tune, attacked_path, attack=attack, seed=args.seed, task="ner")
        attacked = words(attacked_path)
        predictions = corrector.predict(attacked)
        for t, only in settings:
            corrected = corrector.rewrite(attacked, predictions, threshold=t, only_unknown=only)
            sweep[t, only].append({"attack": attack, **correction_scores(tune_clean, attacked, corrected)})
        untouched = correction_scores(tune_clean, attacked, attacked)["words_correct"]
        print(f"tune {attack}: attacked {untouched:.4f}; " + ", ".join(
            f"{t}{'' if only else '+known'}: {sweep[t, only][-1]['words_correct']:.4f}" for t, only in settings), flush=True)
    mean_accuracy = {setting: sum(r["words_correct"] for r in rows) / len(rows) for setting, rows in sweep.items()}
    chosen, chosen_only = max(settings, key=lambda st: (mean_accuracy[st], st[1], -st[0]))

    # 2. CoNLL dev at the chosen threshold, and the dictionary baseline
    dev_path = data / "conll2003/dev.txt"
    dev_clean = words(dev_path)
    task = get_attack_task("ner")
    dev_rows = []
    for attack in attacks:
        attacked_path = out / f"dev.{attack}.txt"
        attack_column_file(dev_path, attacked_path, attack=attack, seed=args.seed, task="ner")
        attacked = words(attacked_path)
        predictions = corrector.predict(attacked)
        row = {"attack": attack, "attacked_words_correct": correction_scores(dev_clean, attacked, attacked)["words_correct"]}
        for method, rewrite in (("nlm", lambda s, p=predictions: corrector.rewrite(s, p, chosen, chosen_only)),
                                ("dict", dictionary.correct_sentences)):
            corrected = rewrite(attacked)
            row[method] = correction_scores(dev_clean, attacked, corrected)
            # the same rewrite through the file format's own writer: one token per token, tags untouched
            task.correct_file(argparse.Namespace(), reuse(attacked, corrected, rewrite),
                              str(attacked_path), out / f"dev.{attack}.{method}.txt")
        dev_rows.append(row)
        print(f"dev {attack}: {json.dumps(row)}", flush=True)

    result = {"model": args.model_name_or_path, "seed": args.seed, "tune_sentences": len(tune_clean),
              "thresholds": thresholds, "chosen_threshold": chosen, "chosen_only_unknown": chosen_only,
              "mean_words_correct": {f"{t} {'unknown' if only else 'all'}": a for (t, only), a in mean_accuracy.items()},
              "tune": {f"{t} {'unknown' if only else 'all'}": rows for (t, only), rows in sweep.items()},
              "dev": dev_rows}
    (out / "sweep.json").write_text(json.dumps(result, indent=1))
    (out / "sweep.md").write_text(render(result))
    print(render(result))
    return 0


def render(result) -> str:
    pct = lambda v: "" if v is None else f"{100 * v:.1f}"  # noqa: E731
    mode = "unknown words only" if result["chosen_only_unknown"] else "every word"
    lines = [f"Setting chosen on {result['tune_sentences']} attacked CoNLL train sentences: threshold "
             f"**{result['chosen_threshold']}**, {mode} (mean share of words equal to the clean text after "
             "correction, per threshold and candidate words: "
             + ", ".join(f"{k}: {pct(a)}%" for k, a in result["mean_words_correct"].items()) + ").", "",
             "| attack | words correct, attacked | NLM restored | NLM wrongly changed | NLM words correct "
             "| dict. restored | dict. wrongly changed | dict. words correct |",
             "|---|---|---|---|---|---|---|---|"]
    for row in result["dev"]:
        n, d = row["nlm"], row["dict"]
        lines.append(f"| {row['attack']} | {pct(row['attacked_words_correct'])} | {pct(n['restored'])} | "
                     f"{pct(n['wrongly_changed'])} | {pct(n['words_correct'])} | {pct(d['restored'])} | "
                     f"{pct(d['wrongly_changed'])} | {pct(d['words_correct'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
