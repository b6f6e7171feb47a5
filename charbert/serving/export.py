"""ONNX export of a CharBERT (or plain BERT/RoBERTa) folder, for ONNX Runtime.

    python -m charbert.serving.export --model_name_or_path ner_out --output_dir ner_onnx [--quantize int8] [--opset 17]
    charbert-export ...                                             # the same, as a console script

Writes into `--output_dir`: `model.onnx` (fp32; `model_int8.onnx` too with `--quantize int8`), the
tokenizer (with `char_vocab.json` for CharBERT), `config.json`, `onnx_export.json` (inputs, outputs,
dynamic axes, the output class, the check below) and a model card (README.md) with one line on the
export. Load it with `charbert.serving.onnx_runtime.OnnxModel.from_pretrained(output_dir)`, or pass the folder
as `--model_name_or_path` to a fine-tuning program's `--do_predict`.

Every head exports: pretraining (MLM and NLM logits), fill-mask, sequence and token classification,
question answering, multiple choice, and the bare encoder; the head is the folder's
`config.architectures[0]` (a CharBERT checkpoint, or a plain one: the same command compares them).
Batch, token length, character length (and the number of choices) are dynamic axes; both character
padding modes and both character layouts export, as they are part of the model and the tokenizer.

The TorchScript exporter is used (`torch.onnx.export(..., dynamo=False)`), on the model's own forward
with the "eager" attention (`eager_attention`: the faster form for ONNX Runtime);
after writing, the export is run by ONNX Runtime on the traced batch and on a batch of another shape,
and refused when its outputs differ from eager PyTorch by more than `--tolerance` (default 1e-4).

int8 (`--quantize int8`): ONNX Runtime's dynamic quantization of the MatMul and Gemm weights (the
attention, feed-forward and head matrices and the fusion, whose maps and conv the model exports as two
merged matrix products: almost all of the compute), int8 weights with one scale per output channel (one
per matrix with `--int8_per_tensor`) and per-batch int8 activations. The embeddings (Gather: memory, not
compute) and the character GRU (recurrent: its error would add up along each row, and it is a small
share of the time) stay fp32. `onnx_export.json` lists the quantized operators by type.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import logging
import shutil
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..cli import run_main, setup_logging, write_json
from .onnx_runtime import (
    EXPORT_INFO_FILE,
    ONNX_FILE,
    ONNX_INT8_FILE,
    MissingExtraError,
    OnnxModel,
    require_onnx,
)

logger = logging.getLogger(__name__)

PROG = "charbert-export"
DEFAULT_OPSET = 17
QUANTIZED_OP_TYPES = ("MatMul", "Gemm")
# Outputs that are not exported: the loss (no labels are given) and per-layer states.
_SKIPPED_OUTPUTS = ("loss", "mlm_loss", "nlm_loss", "hidden_states", "char_hidden_states", "attentions")
_CHAR_AXIS_INPUTS = ("char_input_ids", "char_attention_mask")
_DUMMY_TEXTS = ("The quick brown fox jumps over the lazy dog beside the river bank, twice!",
                "Hello there", "Ada Lovelace wrote the first program in 1843.")


class ExportError(ValueError):
    """The folder cannot be exported as asked, or the export does not match eager PyTorch."""


# ---- loading ---------------------------------------------------------------------------


def load_for_export(path: str | Path):
    """(model, tokenizer) of a CharBERT or plain checkpoint folder, with its own head (config.architectures)."""
    import transformers

    from .. import modeling
    from ..checkpoint import read_config_dict, resolve_checkpoint

    path = resolve_checkpoint(path)
    config = read_config_dict(path)
    archs = config.get("architectures") or []
    model_type = config.get("model_type")
    if model_type == "charbert":
        name = archs[0] if archs else "CharBertModel"
        model_cls = getattr(modeling, name, None)
        from ..tokenization import CharBertTokenizerFast

        tokenizer = CharBertTokenizerFast.from_pretrained(path)
    else:
        name = archs[0] if archs else None
        model_cls = getattr(transformers, name, None) if name else transformers.AutoModel
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), use_fast=True)
    if model_cls is None:
        raise ExportError(f"{path}: unknown architecture {name!r} in config.json")
    model = model_cls.from_pretrained(path)
    return model.eval(), tokenizer


# ---- the export ------------------------------------------------------------------------


def _is_multiple_choice(model) -> bool:
    return type(model).__name__.endswith("ForMultipleChoice")


def _token_length(model) -> int:
    """A traced token length that no other output dimension has (so token axes are recognised)."""
    taken = {2, getattr(model.config, "hidden_size", 0), getattr(model.config, "num_labels", 0), 3}
    return next(n for n in (13, 11, 17, 19, 23) if n not in taken)


def dummy_inputs(model, tokenizer, input_names: Sequence[str], n_tokens: int | None = None,
                 batch: int = 2, choices: int = 3) -> dict[str, torch.Tensor]:
    """A padded batch (the second row shorter than the first) of `n_tokens` tokens; (batch, choices, ...)
    for multiple choice."""
    n_tokens = n_tokens or _token_length(model)
    mc = _is_multiple_choice(model)
    rows = batch * choices if mc else batch
    texts = [_DUMMY_TEXTS[i % len(_DUMMY_TEXTS)] for i in range(rows)]
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=n_tokens, return_tensors="pt")
    out = {name: enc[name] for name in input_names}
    if mc:
        out = {k: v.view(batch, choices, *v.shape[1:]) for k, v in out.items()}
    return out


def _input_names(model, tokenizer) -> list[str]:
    accepted = inspect.signature(model.forward).parameters
    names = [n for n in tokenizer.model_input_names if n in accepted]
    if "input_ids" not in names:
        raise ExportError(f"{type(model).__name__} does not take the tokenizer's inputs {tokenizer.model_input_names}")
    return names


def _dynamic_axes(input_names, output_names, eager: dict[str, torch.Tensor], n_tokens: int, mc: bool) -> dict:
    lead = {0: "batch", 1: "choices"} if mc else {0: "batch"}
    k = len(lead)
    axes = {}
    for name in input_names:
        axes[name] = {**lead, k: "chars" if name in _CHAR_AXIS_INPUTS else "tokens"}
    for name in output_names:
        value = eager[name]
        axes[name] = {0: "batch"}
        if mc and value.ndim >= 2:
            axes[name][1] = "choices"
        elif value.ndim >= 2 and value.shape[1] == n_tokens:
            axes[name][1] = "tokens"
    return axes


class _Traced(nn.Module):
    """The model's forward with positional inputs and a tuple of the exported outputs."""

    def __init__(self, model, input_names, output_names):
        super().__init__()
        self.model, self.input_names, self.output_names = model, list(input_names), list(output_names)

    def forward(self, *args):
        out = self.model(**dict(zip(self.input_names, args)), return_dict=True)
        return tuple(out[name] for name in self.output_names)


def _has_local_attention(config) -> bool:
    return any(getattr(config, name, None) for name in ("sliding_window", "local_attention"))


@contextlib.contextmanager
def eager_attention(model):
    """Trace the model with the "eager" attention (matmul, additive mask, softmax, matmul), then restore
    its own. The SDPA form traces as the same products plus two Where and an IsNaN per layer (its guard
    for fully masked rows, which a tokenizer's batch never has): ONNX Runtime ran the eager form 4%
    faster at batch 16 (`benchmarks/bench_inference.py`, both models). A model without the switch, already
    eager, or with sliding-window attention (ModernBERT: a padded query can see no real key, a row the two
    forms fill differently, so padded positions' outputs would move) is traced as it is."""
    before = getattr(model.config, "_attn_implementation", None)
    switch = getattr(model, "set_attn_implementation", None)
    if before in (None, "eager") or switch is None or _has_local_attention(model.config):
        yield
        return
    try:
        switch("eager")
    except (ValueError, ImportError) as err:  # a backbone without an eager attention: keep its own
        logger.info("exporting with %s attention (%s)", before, err)
        yield
        return
    try:
        yield
    finally:
        switch(before)


def _max_diff(model, session, inputs: dict[str, torch.Tensor], output_names) -> float:
    with torch.no_grad():
        eager = model(**inputs, return_dict=True)
    taken = {i.name for i in session.get_inputs()}  # an input the graph does not use is dropped from it
    got = session.run(list(output_names), {k: v.numpy() for k, v in inputs.items() if k in taken})
    return max(float(np.abs(eager[n].float().numpy() - g).max()) if g.size else 0.0 for n, g in zip(output_names, got))


def _constants_as_initializers(path: Path, min_elements: int = 1024) -> None:
    """Rewrite the graph's large Constant nodes as initializers, one per distinct tensor. The fusion's merged
    weights (`fusion_inference.fused_for_inference`) are traced as constants, once per layer call; as
    initializers they are stored once (one shared fusion block: one copy for all layers) and are weights
    that int8 quantization can see."""
    import hashlib

    onnx = require_onnx("onnx")
    model = onnx.load(str(path))
    graph = model.graph
    names: dict[tuple, str] = {}
    kept = []
    renamed: dict[str, str] = {}
    for node in graph.node:
        value = node.attribute[0].t if node.op_type == "Constant" and len(node.attribute) == 1 and \
            node.attribute[0].name == "value" else None
        if value is None or int(np.prod(value.dims)) < min_elements or not value.raw_data:
            kept.append(node)
            continue
        key = (value.data_type, tuple(value.dims), hashlib.sha1(value.raw_data).hexdigest())
        if key not in names:
            names[key] = node.output[0]
            value.name = node.output[0]
            graph.initializer.append(value)
        else:
            renamed[node.output[0]] = names[key]
    if not names:
        return
    for node in kept:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    del graph.node[:]
    graph.node.extend(kept)
    onnx.save(model, str(path))


def quantize_int8(source: Path, target: Path, per_channel: bool = True) -> dict[str, int]:
    """Dynamic int8 quantization of the MatMul/Gemm weights (one scale per weight tensor, or per output
    channel); returns {operator type: count} of the int8 graph's quantized operators."""
    onnx = require_onnx("onnx")
    require_onnx("onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), op_types_to_quantize=list(QUANTIZED_OP_TYPES),
                     weight_type=QuantType.QInt8, per_channel=per_channel)
    counts: dict[str, int] = {}
    for node in onnx.load(str(target), load_external_data=False).graph.node:
        if node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul", "QGemm", "QLinearMatMul",
                            "DynamicQuantizeLinear", "ConvInteger"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def export_model(model, tokenizer, output_dir: str | Path, opset: int = DEFAULT_OPSET, quantize: str | None = None,
                 tolerance: float = 1e-4, source: str | None = None, int8_per_channel: bool = True) -> dict[str, Any]:
    """Export a loaded model (any head) and its tokenizer into `output_dir`; returns onnx_export.json's record."""
    onnx = require_onnx("onnx")
    ort = require_onnx("onnxruntime")
    if quantize not in (None, "int8"):
        raise ExportError(f"--quantize {quantize}: only int8 is supported")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    input_names = _input_names(model, tokenizer)
    n_tokens = _token_length(model)
    mc = _is_multiple_choice(model)
    inputs = dummy_inputs(model, tokenizer, input_names, n_tokens)
    with torch.no_grad():
        eager = model(**inputs, return_dict=True)
    output_names = [k for k, v in eager.items() if isinstance(v, torch.Tensor) and k not in _SKIPPED_OUTPUTS]
    axes = _dynamic_axes(input_names, output_names, eager, n_tokens, mc)
    path = output_dir / ONNX_FILE
    traced = _Traced(model, input_names, output_names).eval()
    with warnings.catch_warnings(), eager_attention(model):
        warnings.simplefilter("ignore")  # TracerWarnings of the input checks, the exporter's deprecation note
        torch.onnx.export(traced, tuple(inputs[n] for n in input_names), str(path), input_names=input_names,
                          output_names=output_names, dynamic_axes=axes, opset_version=opset, dynamo=False,
                          do_constant_folding=True)
    model.train(was_training)
    _constants_as_initializers(path)
    onnx.checker.check_model(str(path))

    # The check: the traced batch, and one of another batch size, token length and character length.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    other = dummy_inputs(model, tokenizer, input_names, n_tokens + 4, batch=3, choices=2)
    with torch.no_grad():
        diffs = {"traced_batch": _max_diff(model, session, inputs, output_names),
                 "other_shape": _max_diff(model, session, other, output_names)}
    if max(diffs.values()) > tolerance:
        raise ExportError(f"the ONNX export differs from eager PyTorch by {max(diffs.values()):.3g} "
                          f"(> {tolerance:g}): {diffs}")
    config = model.config
    info: dict[str, Any] = {
        "architecture": type(model).__name__,
        "model_type": config.model_type,
        "output_class": f"{type(eager).__module__}.{type(eager).__qualname__}",
        "input_names": [i.name for i in session.get_inputs()],  # what the graph reads
        "traced_input_names": input_names,  # what the model was given (char_padding="reference" ignores the mask)
        "output_names": output_names,
        "dynamic_axes": axes,
        "opset": opset,
        "exporter": f"torch.onnx.export (TorchScript), torch {torch.__version__}",
        "onnxruntime": ort.__version__,
        "max_abs_diff_vs_eager": diffs,
        "char_padding": getattr(config, "char_padding", None),
        "char_layout": getattr(tokenizer, "char_layout", None),
        "source": source,
        "files": [ONNX_FILE],
    }
    if quantize == "int8":
        granularity = "per output channel" if int8_per_channel else "per tensor"
        info["int8"] = {"file": ONNX_INT8_FILE, "weights": f"QInt8, {granularity}, dynamic activations",
                        "quantized_op_types": list(QUANTIZED_OP_TYPES),
                        "quantized_nodes": quantize_int8(path, output_dir / ONNX_INT8_FILE, int8_per_channel)}
        info["files"].append(ONNX_INT8_FILE)
    config.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    write_json(output_dir / EXPORT_INFO_FILE, info)
    _write_card(output_dir, info, source)
    logger.info("exported %s to %s (max |onnx - eager| %s)", info["architecture"], path,
                ", ".join(f"{k} {v:.2g}" for k, v in diffs.items()))
    return info


def _write_card(output_dir: Path, info: dict[str, Any], source: str | None) -> None:
    """The source's model card, if it has one, plus one line on the export."""
    card = output_dir / "README.md"
    original = Path(source) / "README.md" if source else None
    if original is not None and original.is_file() and original.resolve() != card.resolve():
        shutil.copyfile(original, card)
    line = (f"ONNX export ({', '.join(info['files'])}) of `{source or info['architecture']}`: "
            f"{info['architecture']}, opset {info['opset']}, dynamic axes batch/tokens/chars, "
            f"max |ONNX Runtime - PyTorch| {max(info['max_abs_diff_vs_eager'].values()):.1e}; "
            "load with `charbert.serving.onnx_runtime.OnnxModel.from_pretrained`.")
    text = card.read_text(encoding="utf-8") if card.is_file() else f"# {info['architecture']} (ONNX)\n"
    card.write_text(text.rstrip("\n") + "\n\n## ONNX export\n\n" + line + "\n", encoding="utf-8")


def export(model_name_or_path: str | Path, output_dir: str | Path, opset: int = DEFAULT_OPSET,
           quantize: str | None = None, tolerance: float = 1e-4, int8_per_channel: bool = True) -> dict[str, Any]:
    """Load a folder (its own head) and export it; returns onnx_export.json's record."""
    require_onnx("onnx", "onnxruntime")  # before loading anything
    if Path(output_dir).resolve() == Path(model_name_or_path).resolve():
        raise ExportError("--output_dir must not be the model folder (its config and tokenizer would be rewritten)")
    model, tokenizer = load_for_export(model_name_or_path)
    return export_model(model, tokenizer, output_dir, opset=opset, quantize=quantize, tolerance=tolerance,
                        source=str(model_name_or_path), int8_per_channel=int8_per_channel)


# ---- command line ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from ..cli import ArgumentParser

    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                       epilog="Load the export with charbert.serving.onnx_runtime.OnnxModel.from_pretrained(output_dir).")
    p.add_argument("--model_name_or_path", required=True, help="A CharBERT or plain BERT/RoBERTa folder (its head).")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--quantize", choices=["int8"], default=None, help="Also write model_int8.onnx (dynamic int8).")
    p.add_argument("--int8_per_tensor", action="store_true",
                   help="int8: one weight scale per matrix instead of one per output channel (the default, which "
                        "kept CoNLL F1 within 0.11 of fp32 where one per matrix lost 1.75).")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="Largest |ONNX Runtime - eager| accepted in the check after export.")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(("charbert",))

    def run():
        info = export(args.model_name_or_path, args.output_dir, args.opset, args.quantize, args.tolerance,
                      int8_per_channel=not args.int8_per_tensor)
        print(json.dumps({"output_dir": str(args.output_dir), "architecture": info["architecture"],
                          "files": info["files"], "max_abs_diff_vs_eager": info["max_abs_diff_vs_eager"]}))

    return run_main(PROG, run, known_errors=(ExportError, MissingExtraError))


__all__ = ["ExportError", "OnnxModel", "dummy_inputs", "export", "export_model", "load_for_export", "main"]

if __name__ == "__main__":
    sys.exit(main())
