"""Running an ONNX export (`python -m charbert.serving.export`) with ONNX Runtime, called like the PyTorch heads.

    model = OnnxModel.from_pretrained("ner_onnx")            # model.onnx; quantized=True: model_int8.onnx
    tokenizer = CharBertTokenizer.from_pretrained("ner_onnx")
    out = model(**tokenizer(["Ada lives in Paris"], return_tensors="pt"))
    out.logits                                               # torch tensor, as CharBertForTokenClassification's

The class knows its head from the folder (`onnx_export.json`, written by the exporter): the outputs
are the same ModelOutput dataclass, with the same fields, as the PyTorch model that was exported
(CharBERT or plain BERT/RoBERTa). Hidden states are not exported (ask the PyTorch model for them);
losses are not computed (labels are accepted and ignored, so the programs' batches can be passed).

It is an `nn.Module` without parameters, so the code that runs PyTorch models for prediction
(`accelerator.prepare_model`, `eval_mode`, `gather_predictions`, pipelines) runs it unchanged.
Needs the `onnx` extra: `pip install 'charbert[onnx]'`.
"""

from __future__ import annotations

import importlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ONNX_FILE = "model.onnx"
ONNX_INT8_FILE = "model_int8.onnx"
EXPORT_INFO_FILE = "onnx_export.json"
EXTRA = "onnx"
# Forward arguments the PyTorch heads take that an export has no use for (training targets, switches).
IGNORED_ARGUMENTS = ("labels", "nlm_labels", "start_positions", "end_positions", "return_dict", "output_attentions")


class MissingExtraError(ImportError):
    """onnx / onnxruntime are not installed (the `onnx` extra)."""


def require_onnx(*modules: str):
    """Import and return the named modules (default onnxruntime), or raise a one-line MissingExtraError."""
    out = []
    for name in modules or ("onnxruntime",):
        try:
            out.append(importlib.import_module(name))
        except ImportError:
            raise MissingExtraError(
                f"ONNX export and ONNX Runtime need the '{EXTRA}' extra ({name} is not installed): "
                f"pip install 'charbert[{EXTRA}]'"
            ) from None
    return out[0] if len(out) == 1 else out


def is_onnx_export(path: str | os.PathLike) -> bool:
    """Does `path` hold an export written by charbert.serving.export (model.onnx + onnx_export.json)?"""
    path = Path(path)
    return (path / ONNX_FILE).is_file() and (path / EXPORT_INFO_FILE).is_file()


def read_export_info(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(path) / EXPORT_INFO_FILE).read_text(encoding="utf-8"))


def session_options(num_threads: int | None = None, optimization: str = "all", flush_denormals: bool = True):
    """ONNX Runtime session options for CPU inference: every graph optimisation (operator fusion,
    constant folding, layout), `num_threads` intra-op threads (default: torch's thread count, so
    eager and ONNX Runtime use the same cores), one inter-op thread, sequential execution, and
    denormal floats read and written as zero in the session's threads (see `denormals_flushed`)."""
    ort = require_onnx("onnxruntime")
    options = ort.SessionOptions()
    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    options.graph_optimization_level = levels[optimization]
    options.intra_op_num_threads = num_threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if flush_denormals:
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
    return options


def flushing_denormals() -> bool:
    """Does this thread flush denormal floats to zero (the CPU's FTZ/DAZ modes)? A denormal float32
    product comes out as zero when either mode is on."""
    return float(np.float32(1e-40) * np.float32(1.0)) == 0.0


@contextmanager
def denormals_flushed(enabled: bool = True):
    """Flush denormal floats to zero in this thread for the block, then restore what it did before.

    Why: ONNX Runtime's GRU kernel slows down ~4x when its hidden states underflow into denormals,
    which the character GRU's do on real text (25 ms instead of 6.5 at batch 16 in
    `benchmarks/bench_inference.py`). The session option only reaches ONNX Runtime's own pool
    threads; the calling thread runs part of the work, so its mode is set here too. Values below
    1.2e-38 become zero: outputs move by far less than float32 rounding of the logits."""
    change = enabled and not flushing_denormals()
    if change:
        torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if change:
            torch.set_flush_denormal(False)


def _output_class(qualified: str):
    module, _, name = qualified.rpartition(".")
    return getattr(importlib.import_module(module), name)


class OnnxModel(nn.Module):
    """An exported model (any head, CharBERT or plain) on an ONNX Runtime session.

    `model(**inputs)` takes what the tokenizer returns (torch tensors or numpy arrays), returns the
    exported model's ModelOutput with torch tensors. Missing `attention_mask` / `token_type_ids` /
    `char_attention_mask` are filled in as the PyTorch models do. Each call runs with denormal floats
    flushed to zero (`denormals_flushed`; `flush_denormals=False` leaves the thread's mode alone).
    """

    main_input_name = "input_ids"

    def __init__(self, path: str | os.PathLike, quantized: bool = False, num_threads: int | None = None,
                 optimization: str = "all", providers: list[str] | None = None, config=None,
                 flush_denormals: bool = True):
        super().__init__()
        ort = require_onnx("onnxruntime")
        self.path = Path(path)
        if not is_onnx_export(self.path):
            raise FileNotFoundError(f"{self.path} is not an ONNX export (no {ONNX_FILE} and {EXPORT_INFO_FILE}): "
                                    "write one with python -m charbert.serving.export")
        self.info = read_export_info(self.path)
        file = self.path / (ONNX_INT8_FILE if quantized else ONNX_FILE)
        if not file.is_file():
            raise FileNotFoundError(f"{file}: export with --quantize int8 to get the quantized model")
        self.onnx_file = file
        self.flush_denormals = flush_denormals
        self.session = ort.InferenceSession(str(file),
                                            sess_options=session_options(num_threads, optimization, flush_denormals),
                                            providers=providers or ["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.output_class = _output_class(self.info["output_class"])
        if config is None:
            from transformers import AutoConfig

            import charbert  # noqa: F401  (registers CharBertConfig with AutoConfig)

            config = AutoConfig.from_pretrained(self.path)
        self.config = config
        self.name_or_path = str(self.path)
        self.eval()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs) -> OnnxModel:
        return cls(path, **kwargs)

    @property
    def architecture(self) -> str:
        return self.info["architecture"]

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def _feed(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        def array(x):
            if isinstance(x, torch.Tensor):
                return x.detach().cpu().numpy()
            return np.asarray(x)

        given = {k: array(v) for k, v in inputs.items() if v is not None}
        if "input_ids" not in given:
            raise ValueError("the ONNX model needs input_ids (encode text with the export folder's tokenizer)")
        ids = given["input_ids"]
        feed = {}
        for name in self.input_names:
            if name in given:
                value = given[name]
            elif name == "attention_mask":
                value = np.ones_like(ids)
            elif name == "token_type_ids":
                value = np.zeros_like(ids)
            elif name == "char_attention_mask" and "char_input_ids" in given:
                value = given["char_input_ids"] != self.config.char_pad_token_id
            else:
                raise ValueError(f"the ONNX model needs {name} (encode text with the export folder's tokenizer)")
            feed[name] = np.ascontiguousarray(value, dtype=np.int64)
        return feed

    def forward(self, input_ids=None, output_hidden_states: bool | None = None, **kwargs):
        if output_hidden_states:
            raise ValueError(f"{self.path} is an ONNX export without hidden states; use the PyTorch model for them")
        unknown = set(kwargs) - set(self.info["traced_input_names"]) - set(IGNORED_ARGUMENTS) - {
            "attention_mask", "token_type_ids", "char_attention_mask", "position_ids"}
        if unknown:
            raise TypeError(f"unexpected input(s) for the ONNX model: {sorted(unknown)}")
        if kwargs.get("position_ids") is not None:
            raise ValueError("the ONNX export computes position_ids itself; do not pass them")
        inputs = {k: v for k, v in kwargs.items() if k not in IGNORED_ARGUMENTS}
        inputs["input_ids"] = input_ids
        feed = self._feed(inputs)
        with denormals_flushed(self.flush_denormals):
            outputs = self.session.run(self.output_names, feed)
        return self.output_class(**{name: torch.from_numpy(value) for name, value in zip(self.output_names, outputs)})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.onnx_file}, {self.architecture})"


# Another name for the same class, in the style of the PyTorch heads' names: one class serves every head.
CharBertOnnxModel = OnnxModel


def onnx_pipeline(task: str, model: str | os.PathLike | OnnxModel, tokenizer=None, quantized: bool = False,
                  **kwargs):
    """`transformers.pipeline(task)` on an export folder: its ONNX Runtime model and its tokenizer.

        ner = onnx_pipeline("token-classification", "ner_onnx", aggregation_strategy="simple")
    """
    from transformers import AutoTokenizer, pipeline

    import charbert  # noqa: F401  (CharBertTokenizerFast for AutoTokenizer; our question-answering pipeline)

    from ..cli import quiet_transformers

    if not isinstance(model, OnnxModel):
        model = OnnxModel.from_pretrained(model, quantized=quantized)
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(str(model.path))
    with quiet_transformers():  # "OnnxModel is not supported for <task>": it is, through the model's call
        return pipeline(task, model=model, tokenizer=tokenizer, **kwargs)
