"""Model cards: the `README.md` written into every saved model folder.

The card follows the Hugging Face conventions: YAML front matter with `model-index` metadata
(the task, its dataset and metrics), `base_model`, `library_name: transformers` and
`tags: [charbert]`, so the Hub shows the results and `huggingface_hub.ModelCard` /
`metadata_load` read them. Everything a reader needs to reproduce the model is in the front
matter too, under the `charbert:` key (package version, git commit, training arguments, data
files, vocabulary sizes, the source of a converted checkpoint); the Markdown body repeats it
for people.

    write_model_card("runs/ner", task="ner", metrics={"eval_f1": 0.91}, base_model="bert-base-cased",
                     training_args=vars(args), data_files=["train.txt"], char_vocab_size=1001,
                     word_vocab_size=30000)
    read_model_card("runs/ner")  # -> the front matter as a dict
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

CARD_NAME = "README.md"

# Our programs' task names -> the Hub's task types (pipeline tags).
HUB_TASK_TYPES = {
    "pretraining": "fill-mask",
    "fill-mask": "fill-mask",
    "glue": "text-classification",
    "text-classification": "text-classification",
    "ner": "token-classification",
    "pos": "token-classification",
    "tagging": "token-classification",
    "token-classification": "token-classification",
    "squad": "question-answering",
    "question-answering": "question-answering",
}


def hub_task_type(task: str) -> str | None:
    """The Hub task type of one of our task names, also as metrics.json names them ("glue/mrpc", "squad_v2")."""
    for key in (task, task.split("/")[0], task.split("/")[0].split("_")[0]):
        if key in HUB_TASK_TYPES:
            return HUB_TASK_TYPES[key]
    return None


def package_version() -> str:
    from . import __version__

    return __version__


def git_commit(directory: str | os.PathLike | None = None) -> str | None:
    """The commit of the git checkout holding `directory` (default: this package), or None
    (an installed wheel, no git, not a repository)."""
    directory = Path(directory) if directory is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(directory), "rev-parse", "HEAD"], check=False, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


def _plain(value: Any) -> Any:
    """`value` as YAML-safe plain data: numpy/torch scalars to Python numbers, paths and other
    objects to strings, non-finite floats to strings (YAML/JSON readers disagree on them)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalar
        return _plain(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return str(value)


# Counts and bookkeeping that evaluation reports beside its metrics: not results.
_NOT_METRICS = ("epoch", "step", "global_step")
_COUNT_SUFFIXES = ("_tokens", "_words", "_samples", "_examples", "_runtime", "_steps")


def _is_metric(name: str) -> bool:
    return name not in _NOT_METRICS and not name.endswith(_COUNT_SUFFIXES)


def _metric_type(name: str) -> str:
    return name.removeprefix("eval_")


def _eval_results(model_name: str, task: str, metrics: Mapping[str, Any], dataset: str | None, data_files: Sequence[str]):
    from huggingface_hub import EvalResult

    task_type = hub_task_type(task) or task
    dataset_name = dataset or (Path(data_files[0]).stem if data_files else "custom")
    results = []
    for name, value in metrics.items():
        value = _plain(value)
        if not _is_metric(name) or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue  # model-index metrics are numbers
        results.append(EvalResult(
            task_type=task_type, task_name=task, dataset_type=dataset_name, dataset_name=dataset_name,
            metric_type=_metric_type(name), metric_name=name, metric_value=value,
        ))
    return results


def _size(entries: int | None) -> str:
    return "none" if entries is None else f"{entries} entries"


def _body(model_name: str, task: str, meta: dict, metrics: Mapping[str, Any], notes: str | None = None) -> str:
    info = meta["charbert"]
    source = info.get("source")  # a converted checkpoint: what it was converted from, as the user named it
    made = (f"converted from the CharBERT authors' release `{source}` by" if source else "trained with")
    base = meta.get("base_model")
    lines = [
        f"# {model_name}",
        "",
        f"A CharBERT model ({task}) {made} the `charbert` package {info['version']}"
        + (f" at commit `{info['git_commit']}`." if info["git_commit"] else "."),
        "",
        f"- base model: `{base}`" if base else "- base model: not recorded",
        f"- character vocabulary: {_size(info['char_vocab_size'])}; word vocabulary (noisy-LM head): {_size(info['word_vocab_size'])}",
    ]
    if source:
        lines.append(f"- converted from: `{source}` (the authors' release)")
    if notes:
        lines += ["", notes.rstrip("\n")]
    lines += ["", "## Results", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {_plain(v)} |" for k, v in metrics.items()]
    else:
        lines.append("No evaluation metrics were recorded.")
    lines += ["", "## Data files", ""] + ([f"- `{f}`" for f in info["data_files"]] or ["(none recorded)"])
    lines += ["", "## Training arguments", "", "```json", json.dumps(info["training_args"], indent=1, sort_keys=True), "```", ""]
    lines += ["## Usage", "", "```python", "import charbert  # registers CharBERT with the Auto classes",
              "from transformers import AutoModel", f'model = AutoModel.from_pretrained("{model_name}")', "```", ""]
    return "\n".join(lines)


def write_model_card(
    output_dir: str | os.PathLike,
    *,
    task: str,
    metrics: Mapping[str, Any] | None,
    base_model: str | None,
    training_args: Mapping[str, Any] | None,
    data_files: Sequence[str | os.PathLike] | None,
    char_vocab_size: int | None,
    word_vocab_size: int | None,
    source: str | None = None,
    dataset: str | None = None,
    notes: str | None = None,
) -> Path:
    """Write `output_dir/README.md`, a model card whose front matter holds everything given.

    `task` is one of our task names ("pretraining", "glue", "ner", "pos", "squad") or a Hub task
    type; `metrics` maps names ("eval_f1") to numbers; `source` names the original checkpoint of
    a converted model; `dataset` names the dataset in model-index (default: the first data file's stem);
    `notes` is Markdown placed after the summary (e.g. how a checkpoint was converted).
    """
    from huggingface_hub import ModelCard, ModelCardData

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model_name = output_dir.resolve().name
    metrics = dict(metrics or {})
    data_files = [str(f) for f in (data_files or [])]
    info = {
        "version": package_version(),
        "git_commit": git_commit(),
        "task": task,
        "char_vocab_size": char_vocab_size,
        "word_vocab_size": word_vocab_size,
        "data_files": data_files,
        "training_args": _plain(dict(training_args or {})),
        "source": source,
    }
    results = _eval_results(model_name, task, metrics, dataset, data_files)
    card_data = ModelCardData(
        model_name=model_name,
        base_model=base_model,
        library_name="transformers",
        tags=["charbert"],
        pipeline_tag=hub_task_type(task),
        eval_results=results or None,
        charbert=info,
    )
    meta = card_data.to_dict()
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{_body(model_name, task, meta, metrics, notes)}")
    path = output_dir / CARD_NAME
    card.save(path)
    return path


def card_metrics(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics of the first model-index result of a card's front matter, by name."""
    results = (meta.get("model-index") or [{}])[0].get("results") or []
    return {m.get("name", m["type"]): m["value"] for r in results for m in r.get("metrics", [])}


def read_model_card(path: str | os.PathLike) -> dict:
    """The front matter of a model card (a `README.md` or the folder holding it) as a dict;
    {} for a card without front matter."""
    from huggingface_hub import metadata_load

    path = Path(path)
    if path.is_dir():
        path = path / CARD_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no model card at {path}")
    return metadata_load(path) or {}
