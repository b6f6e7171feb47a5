"""The robustness report: clean vs attacked scores as JSON, a Markdown table and a bar chart.

Everything here works on the plain ``report`` dictionary that ``python -m finetune.robustness``
writes to ``report.json``, so a report can be re-rendered (or several merged) without a model:

    {"task": "ner", "metric": "f1", "attacks": ["drop", ...],
     "models": [{"name": "bert", "path": ..., "scores": {"clean": 0.91, "drop": 0.62, ...},
                 "sensitivity": {...}, "by_subwords": {...}, "greedy": {...}}, ...], ...}

Scores are stored as the task metric returns them (fractions for F1/accuracy and the retrieval
metrics, percent for SQuAD); the Markdown and the chart show percent.  With several attack
budgets (``"max_words": [1, 2]``) the attack rows are named ``"drop K=1"``, ... and the mean of
attacks is taken per budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CLEAN = "clean"

__all__ = ["CLEAN", "score_drops", "as_percent", "render_markdown", "plot_scores"]


def score_drops(scores: dict[str, float | None], attacks: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """``{attack: {"absolute": clean - attacked, "relative": (clean - attacked) / clean}}``.

    Positive numbers are losses.  ``relative`` is None when the clean score is 0 (or missing).
    """
    clean = scores.get(CLEAN)
    out: dict[str, dict[str, float | None]] = {}
    for attack in attacks:
        value = scores.get(attack)
        if clean is None or value is None:
            out[attack] = {"absolute": None, "relative": None}
            continue
        absolute = clean - value
        out[attack] = {"absolute": absolute, "relative": absolute / clean if clean else None}
    return out


def as_percent(value: float | None, task: str) -> float | None:
    """Fractions -> percent (SQuAD's official metrics are percent already)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value) if task == "squad" else 100.0 * float(value)


def _fmt(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def scored_rows(report: dict[str, Any]) -> list[str]:
    """Every scored file but the clean one: generated attacks, outside files, corrected copies."""
    return list(report["attacks"]) + list(report.get("outside") or []) + list(report.get("corrected") or [])


def mean_rows(report: dict[str, Any]) -> dict[str, list[str]]:
    """``{row name: the attack rows it averages}``: "mean of attacks", or one per budget K."""
    attacks = list(report["attacks"])
    budgets = report.get("max_words")
    if not attacks:
        return {}
    if isinstance(budgets, list) and len(budgets) > 1:
        return {f"mean of attacks K={k}": [a for a in attacks if a.endswith(f" K={k}")] for k in budgets}
    return {"mean of attacks": attacks}


def _score_table(report: dict[str, Any]) -> list[str]:
    task, models = report["task"], report["models"]
    means = mean_rows(report)
    header = ["attack"]
    for m in models:
        header += [f"{m['name']} {report['metric']}", "drop", "rel. drop"]
    body: list[list[str]] = []
    for row in [CLEAN] + scored_rows(report) + list(means):
        cells = [row]
        for m in models:
            clean = as_percent(m["scores"].get(CLEAN), task)
            if row in means:
                value = _mean([as_percent(m["scores"].get(a), task) for a in means[row]])
            else:
                value = as_percent(m["scores"].get(row), task)
            if row == CLEAN or value is None or clean is None:
                cells += [_fmt(value), "", ""]
            else:
                rel = (clean - value) / clean * 100 if clean else None
                cells += [_fmt(value), _fmt(clean - value), (_fmt(rel, 1) + "%") if rel is not None else "-"]
        body.append(cells)
    return _md_table(header, body)


def _sensitivity_table(report: dict[str, Any]) -> list[str]:
    models = [m for m in report["models"] if m.get("sensitivity")]
    if not models:
        return []
    header = ["attack"] + [f"{m['name']} {k}" for m in models for k in ("S", "S noised", "S untouched")]
    body: list[list[str]] = []
    for attack in report["attacks"]:
        cells = [attack]
        for m in models:
            s = m["sensitivity"].get(attack) or {}
            cells += [_fmt(s.get("S"), 4), _fmt(s.get("S_noised"), 4), _fmt(s.get("S_untouched"), 4)]
        body.append(cells)
    return _md_table(header, body)


def _subword_table(report: dict[str, Any]) -> list[str]:
    models = [m for m in report["models"] if m.get("by_subwords")]
    if not models:
        return []
    header = ["file"] + [f"{m['name']} {g}" for m in models for g in ("F1 one-subword (n)", "F1 split (n)")]
    body: list[list[str]] = []
    for row in [CLEAN] + scored_rows(report):
        cells = [row]
        for m in models:
            groups = m["by_subwords"].get(row) or {}
            for g in ("single", "multi"):
                s = groups.get(g)
                cells.append("-" if s is None else f"{100 * s['f1']:.2f} ({s['support']})")
        body.append(cells)
    return _md_table(header, body)


RETRIEVAL_COLUMNS = (("R@1", "recall@1"), ("R@10", "recall@10"), ("MRR@10", "mrr@10"), ("nDCG@10", "ndcg@10"))


def _retrieval_table(report: dict[str, Any]) -> list[str]:
    """Every retrieval metric per file and model, with the relative drop of each from the clean queries."""
    models = [m for m in report["models"] if any("mrr@10" in v for v in (m.get("metrics") or {}).values())]
    if not models:
        return []
    header = ["queries", "model"] + [c for name, _ in RETRIEVAL_COLUMNS for c in (name, "rel. drop")] + \
        ["truncated queries"]
    body = []
    for row in [CLEAN] + scored_rows(report):
        for m in models:
            metrics, clean = m["metrics"].get(row), m["metrics"].get(CLEAN) or {}
            if not metrics:
                continue
            cells = [row, m["name"]]
            for _, key in RETRIEVAL_COLUMNS:
                value, base = metrics.get(key), clean.get(key)
                cells.append(_pct(value))
                cells.append("" if row == CLEAN or value is None or not base
                             else _fmt(100 * (base - value) / base, 1) + "%")
            cells.append(str(metrics.get("truncated_queries", "-")))
            body.append(cells)
    return _md_table(header, body)


def _retrieval_note(report: dict[str, Any]) -> str:
    truncated = {m["name"]: ((m.get("metrics") or {}).get(CLEAN) or {}).get("truncated_paragraphs")
                 for m in report["models"]}
    return ("Questions ranked against every paragraph of the test file by cosine similarity; R@k = share of "
            "questions whose paragraph is in the first k, MRR@10 = mean reciprocal rank of it (0 beyond 10), "
            "nDCG@10 with binary relevance; rel. drop = (clean - attacked) / clean. Texts longer than the model "
            "takes are truncated and counted; paragraphs truncated: "
            + ", ".join(f"{name} {n}" for name, n in truncated.items() if n is not None) + ".")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


_CLASSIFICATION_COLUMNS = (("orig. acc", "original_accuracy", _pct), ("acc. under attack", "accuracy_under_attack", _pct),
                           ("success rate", "attack_success_rate", _pct), ("skipped", "skipped", str),
                           ("perturbed words %", "avg_perturbed_word_share", _pct),
                           ("words/input", "avg_words_per_input", lambda v: _fmt(v, 1)),
                           ("queries", "avg_num_queries", lambda v: _fmt(v, 1)))
_LABELLING_COLUMNS = (("changed predictions %", "changed_prediction_share", _pct),
                      ("perturbed words %", "avg_perturbed_word_share", _pct),
                      ("words/input", "avg_words_per_input", lambda v: _fmt(v, 1)))


def _attack_metrics_table(report: dict[str, Any]) -> list[str]:
    """The TextAttack summary (classification) or changed-prediction share (NER/POS) per attacked file."""
    rows: dict[str, dict[str, dict[str, Any]]] = {}  # row -> model -> metrics
    for m in report["models"]:
        for label, metrics in (m.get("attack_metrics") or {}).items():
            rows.setdefault(label, {})[m["name"]] = metrics
        if m.get("greedy", {}).get("attack_metrics"):
            rows.setdefault(f"greedy (<= {len(m['greedy']['accuracy']) - 1} edits)", {})[m["name"]] = \
                m["greedy"]["attack_metrics"]
    if not rows:
        return []
    classification = any("attack_success_rate" in v for r in rows.values() for v in r.values())
    columns = _CLASSIFICATION_COLUMNS if classification else _LABELLING_COLUMNS
    header = ["file", "model"] + [c[0] for c in columns]
    body = []
    for label, per_model in rows.items():
        for name, metrics in per_model.items():
            body.append([label, name] + [fmt(metrics.get(key)) if metrics.get(key) is not None else "-"
                                         for _, key, fmt in columns])
    return _md_table(header, body)


def _attack_metrics_note(report: dict[str, Any]) -> str:
    if any("attack_success_rate" in v for m in report["models"] for v in (m.get("attack_metrics") or {}).values()) \
            or any(m.get("greedy") for m in report["models"]):
        return ("TextAttack's convention: skipped = wrong on the clean input (not attacked); success rate = "
                "successful / (successful + failed); accuracy under attack = failed / all; perturbed words over "
                "attacked examples; queries = model calls per attacked example (greedy only).")
    return "Share of sentences whose predicted tags changed under the attack; perturbed words = changed / words."


def _greedy_table(report: dict[str, Any]) -> list[str]:
    models = [m for m in report["models"] if m.get("greedy")]
    if not models:
        return []
    depth = max(len(m["greedy"]["accuracy"]) for m in models)
    header = ["edited words k"] + [f"{m['name']} accuracy" for m in models]
    body: list[list[str]] = []
    for k in range(depth):
        cells = [str(k) + (" (clean)" if k == 0 else "")]
        for m in models:
            acc = m["greedy"]["accuracy"]
            cells.append(_fmt(100 * acc[k]) if k < len(acc) else "-")
        body.append(cells)
    return _md_table(header, body)


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: the score table, then whichever analyses were run."""
    task = report["task"] + (f"/{report['task_name']}" if report.get("task_name") else "")
    out = [
        f"# Robustness report: {task}",
        "",
        f"Test file: `{report['test_file']}`"
        + (f" (first {report['max_predict_samples']} examples)" if report.get("max_predict_samples") else "")
        + f". Attacks: {', '.join(report['attacks']) or 'none generated'} (seed {report['seed']}, "
        + f"word rate {report['word_rate']:g}, budget: "
        + (_budget_text(report['max_words']) if report.get("max_words") else "all eligible words")
        + (", contexts too" if report.get("attack_context") else "") + "); attacked files in `attacks/`."
        + (f" Outside files: {', '.join(report['outside'])}." if report.get("outside") else "")
        + (f" Rows '... corrected': the file after the NLM-head corrector of `{report['correct_with']}`."
           if report.get("corrected") else ""),
        f"Scores: {report['metric']} in percent; drop = clean - attacked (points), rel. drop = drop / clean.",
        "",
    ]
    out += _score_table(report)
    sections = [
        ("Retrieval metrics", _retrieval_note(report), _retrieval_table(report)),
        ("Sensitivity S", "Mean cosine distance between each word's output representation before and after the "
                          "attack (words mapped by index; a word's vector is the mean of its subword vectors, both "
                          "channels for CharBERT). Lower = more stable.", _sensitivity_table(report)),
        ("Entities of one-subword words vs split words", "Entity F1 (and gold entity count) for entities whose words "
                                                          "are each one subword vs those with a word split into "
                                                          "several, under the model's own tokenizer.",
         _subword_table(report)),
        ("Greedy attack", _greedy_note(report), _greedy_table(report)),
        ("Attack metrics", _attack_metrics_note(report), _attack_metrics_table(report)),
    ]
    for title, note, table in sections:
        if table:
            out += ["", f"## {title}", "", note, ""] + table
    if report.get("command"):
        out += ["", "Command:", "", "```bash", report["command"], "```"]
    return "\n".join(out) + "\n"


def _budget_text(max_words: int | list[int]) -> str:
    if isinstance(max_words, list):
        return f"at most K words per sentence, K = {', '.join(map(str, max_words))} (rows 'K=...')"
    return f"at most {max_words} words per sentence"


def _greedy_note(report: dict[str, Any]) -> str:
    g = report.get("greedy_settings") or {}
    return ("Accuracy when an attacker edits up to k words, each by one character, choosing at each step the edit "
            "(of the allowed types, on eligible words) that lowers the true-class probability most"
            + (f"; {g['max_candidates']} candidate edits sampled per example and step" if g.get("max_candidates")
               else "; every candidate edit tried")
            + (f"; first {g['max_examples']} examples" if g.get("max_examples") else "") + ".")


def plot_scores(report: dict[str, Any], path: Path) -> Path:
    """A grouped bar chart: score per attack type (x), one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [CLEAN] + list(report["attacks"])
    models = report["models"]
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(rows) * max(1, len(models)) ** 0.5, 3.6))
    for i, m in enumerate(models):
        values = [as_percent(m["scores"].get(r), report["task"]) for r in rows]
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(rows))]
        bars = ax.bar(xs, [v if v is not None else 0.0 for v in values], width, label=m["name"])
        for bar, v in zip(bars, values):
            if v is not None:
                ax.annotate(f"{v:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                            va="bottom", fontsize=7)
    ax.set_xticks(range(len(rows)), rows)
    ax.set_ylabel(f"{report['metric']} (%)")
    ax.set_title(f"{report['task']}{'/' + report['task_name'] if report.get('task_name') else ''}: clean vs attacked")
    ax.legend(fontsize=8, loc="lower left")
    ax.set_ylim(0, 105 if report["task"] != "squad" else None)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
