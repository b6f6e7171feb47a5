"""Do fine-tuned models predict the same through ONNX Runtime as in PyTorch, on a real dev set?

    python experiments/onnx_parity.py --task ner --model_name_or_path runs/rep/ner_charbert \\
        --test_file ../shared/data/conll2003/dev.txt --output_dir runs/onnx_parity/ner_charbert
    python experiments/onnx_parity.py --task glue --task_name sst2 --model_name_or_path runs/rep/sst2_charbert \\
        --test_file ../shared/data/glue/SST-2/dev.tsv --output_dir runs/onnx_parity/sst2_charbert

Exports the folder (``charbert.serving.export``, fp32, and int8 with ``--int8``), runs the task program's
``--do_predict`` on the PyTorch folder and on the export, and compares the prediction files line by
line and the metrics. Writes ``parity.json`` in ``--output_dir`` and prints one line; exit code 1
when fp32 predictions differ.  (int8 is reported, never required to match.)
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the finetune programs, run from anywhere

PREDICTIONS = {"ner": "predict_predictions.txt", "pos": "predict_predictions.txt", "glue": "predict_predictions.tsv",
               "squad": "predict_predictions.json"}


def predict(task: str, folder: Path, out: Path, passthrough: Sequence[str]) -> tuple[list[str], dict]:
    program = importlib.import_module(f"finetune.{task}")
    argv = ["--do_predict", "--model_name_or_path", str(folder), "--output_dir", str(out), *passthrough]
    if program.main(argv) != 0:
        raise SystemExit(f"finetune.{task} {' '.join(argv)} failed")
    lines = (out / PREDICTIONS[task]).read_text(encoding="utf-8").splitlines()
    return lines, json.loads((out / "metrics.json").read_text())["predict"]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, choices=sorted(PREDICTIONS))
    p.add_argument("--model_name_or_path", required=True)
    p.add_argument("--test_file", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--int8", action="store_true", help="also the int8 export (reported, not required to match)")
    p.add_argument("--int8_per_tensor", action="store_true", help="int8 weights with one scale per matrix (default: per channel)")
    args, passthrough = p.parse_known_args(argv)  # the rest goes to the task program (--task_name sst2, ...)
    from charbert.serving.export import export

    out = Path(args.output_dir)
    info = export(args.model_name_or_path, out / "onnx", quantize="int8" if args.int8 else None,
                  int8_per_channel=not args.int8_per_tensor)
    common = ["--test_file", args.test_file, *passthrough]
    torch_lines, torch_metrics = predict(args.task, Path(args.model_name_or_path), out / "predict_torch", common)
    report = {"model": args.model_name_or_path, "test_file": args.test_file, "export": info["max_abs_diff_vs_eager"],
              "lines": len(torch_lines), "metrics": {"torch": torch_metrics}, "int8": info.get("int8")}
    backends = [("onnx_fp32", out / "onnx")]
    if args.int8:
        int8 = out / "onnx_int8"  # the int8 file as the folder's model.onnx, so the programs load it
        import shutil

        shutil.copytree(out / "onnx", int8, dirs_exist_ok=True)
        shutil.copyfile(out / "onnx" / "model_int8.onnx", int8 / "model.onnx")
        backends.append(("onnx_int8", int8))
    for name, folder in backends:
        lines, metrics = predict(args.task, folder, out / f"predict_{name}", common)
        report["metrics"][name] = metrics
        report[f"{name}_differing_lines"] = sum(a != b for a, b in zip(lines, torch_lines)) + abs(len(lines) - len(torch_lines))
    (out / "parity.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in report.items() if k.endswith("differing_lines")} | {"lines": report["lines"]}))
    return 0 if report["onnx_fp32_differing_lines"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
