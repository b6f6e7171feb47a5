"""Serving a fine-tuned CharBERT outside PyTorch:

    export.py        `charbert-export`: an exact ONNX export (fp32, optional int8) checked against eager
    onnx_runtime.py  `OnnxModel`: an export folder run by ONNX Runtime behind the model's own call signature
"""
