"""Scale-out on CPU: FSDP2 shards CharBERT and trains it exactly like DDP; what accelerate does with an FSDP config on CPU.

Finding (torch 2.13, accelerate 1.15; /work/notes/fsdp_finding.md): torch's FSDP2 (`fully_shard`)
runs on CPU over gloo, and CharBERT wraps cleanly (each backbone layer, the shared fusion block and
the character encoder one unit). accelerate, however, never selects FSDP on CPU: its
AcceleratorState switches to FSDP only from a multi-accelerator type (MULTI_GPU, MULTI_XPU, ...),
so `accelerate launch` with an FSDP config on a CPU-only machine runs plain DDP (MULTI_CPU). The
accelerate path is therefore tested as the documented fallback, DDP (+ gradient checkpointing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import free_port, gloo_available

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "fsdp_step_script.py"
CPU_FSDP_CONFIG = REPO / "configs" / "accelerate" / "fsdp_cpu_2proc.yaml"

CONFIGS = REPO / "configs" / "accelerate"
LAYER_CLASS = {"bert": "BertLayer", "roberta": "RobertaLayer"}

needs_gloo = pytest.mark.skipif(not gloo_available(), reason="needs torch.distributed with gloo")


def _tiny(backbone: str):
    from benchmarks.gpu_check import SMOKE, charbert_config
    from charbert import CharBertConfig, CharBertForPreTraining

    fields = charbert_config(SMOKE).to_dict()
    fields["backbone_type"] = backbone
    if backbone == "roberta":
        fields.update(pad_token_id=1, type_vocab_size=1)
    return CharBertForPreTraining(CharBertConfig(**{k: v for k, v in fields.items() if k != "model_type"}))


def _wrapped_classes(model, names: list[str] | None) -> set[str]:
    """The module classes accelerate's FSDP2 auto-wrap (TRANSFORMER_BASED_WRAP) makes units of."""
    from types import SimpleNamespace

    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    plugin = SimpleNamespace(auto_wrap_policy=transformer_auto_wrap_policy, transformer_cls_names_to_wrap=names)
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    return {type(m).__name__ for m in model.modules() if policy(m)}


def test_the_fsdp_configs_name_classes_the_bert_model_has():
    import yaml

    for name in ("fsdp.yaml", "fsdp_cpu_2proc.yaml"):
        config = yaml.safe_load((CONFIGS / name).read_text())
        assert config["distributed_type"] == "FSDP" and config["fsdp_config"]["fsdp_version"] == 2
        names = config["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"].split(",")
        assert _wrapped_classes(_tiny("bert"), names) == {"BertLayer", "HeterogeneousInteraction", "CharEncoder"}


@pytest.mark.parametrize("backbone", ["bert", "roberta"])
def test_auto_wrap_finds_the_layers_from_no_split_modules(backbone):
    model = _tiny(backbone)
    if not getattr(type(model), "_no_split_modules", None) and not getattr(model, "_no_split_modules", None):
        pytest.skip("CharBertPreTrainedModel does not set _no_split_modules yet")
    assert _wrapped_classes(model, None) == {LAYER_CLASS[backbone], "HeterogeneousInteraction", "CharEncoder"}


def _launch(launcher: list[str], mode: str, out: Path, *extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", *launcher, str(SCRIPT), mode, str(out), *extra]
    proc = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    report["state"] = torch.load(out / "state.pt")
    return report


def _torchrun() -> list[str]:
    return ["torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port())]


def _accelerate(config: Path) -> list[str]:
    return ["accelerate.commands.launch", "--config_file", str(config), "--main_process_port", str(free_port())]


def _assert_same_training(a: dict, b: dict) -> None:
    torch.testing.assert_close(torch.tensor(a["losses"]), torch.tensor(b["losses"]), atol=1e-5, rtol=0)
    assert a["state"].keys() == b["state"].keys()
    for key in a["state"]:
        torch.testing.assert_close(a["state"][key], b["state"][key], atol=1e-5, rtol=1e-4, msg=key)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> dict:
    """accelerate launch with the CPU FSDP config: accelerate makes it DDP (MULTI_CPU)."""
    return _launch(_accelerate(CPU_FSDP_CONFIG), "accelerate", tmp_path_factory.mktemp("ddp"))


@pytest.mark.slow
@needs_gloo
def test_accelerate_runs_an_fsdp_config_on_cpu_as_ddp(ddp_run):
    assert ddp_run["num_processes"] == 2
    assert ddp_run["distributed_type"] == "MULTI_CPU", (
        "accelerate now selects FSDP on CPU: make this test check FSDP through accelerate and update docs/training.md")
    assert ddp_run["fsdp_units"] == []
    assert ddp_run["losses"][0] != ddp_run["losses"][1], "each rank trains on its own batches"


@pytest.mark.slow
@needs_gloo
def test_fsdp2_on_cpu_shards_every_layer_and_trains_like_ddp(ddp_run, tmp_path):
    fsdp = _launch(_torchrun(), "fully_shard", tmp_path / "fsdp")
    assert fsdp["num_processes"] == 2
    assert {"BertLayer", "HeterogeneousInteraction", "CharEncoder", "CharBertForPreTraining"} == set(fsdp["fsdp_units"])
    _assert_same_training(fsdp, ddp_run)  # sharded gradients reduce to the same update as DDP's all-reduce


@pytest.mark.slow
@needs_gloo
def test_ddp_with_gradient_checkpointing_trains_like_ddp(ddp_run, tmp_path):
    checkpointed = _launch(_accelerate(CPU_FSDP_CONFIG), "accelerate", tmp_path / "gc", "--gradient_checkpointing")
    assert checkpointed["distributed_type"] == "MULTI_CPU" and checkpointed["gradient_checkpointing"]
    assert not ddp_run["gradient_checkpointing"]
    _assert_same_training(checkpointed, ddp_run)
