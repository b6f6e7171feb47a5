"""Helper for tests/test_fsdp.py: two optimizer steps of a tiny CharBertForPreTraining in 2 CPU processes.

    accelerate launch --config_file CONFIG tests/fsdp_step_script.py accelerate OUT [--gradient_checkpointing]
    python -m torch.distributed.run --nproc_per_node 2 tests/fsdp_step_script.py fully_shard OUT

`accelerate`: the model and optimizer go through `Accelerator.prepare` (whatever the launcher set up);
`fully_shard`: torch's FSDP2 directly, every backbone layer, the fusion block and the character
encoder one unit (what `fsdp_transformer_layer_cls_to_wrap` / `_no_split_modules` ask accelerate for).
Rank 0 writes OUT/report.json (distributed type, FSDP units, every rank's losses) and OUT/state.pt,
the full (unsharded) state dict after training.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from benchmarks.gpu_check import SMOKE, charbert_config, synthetic_pretraining_batch  # noqa: E402
from charbert import CharBertForPreTraining  # noqa: E402

STEPS = 2
FSDP_UNITS = ("BertLayer", "RobertaLayer", "HeterogeneousInteraction", "CharEncoder")


def tiny_model() -> CharBertForPreTraining:
    torch.manual_seed(0)  # the same initial weights on every rank and in every mode
    return CharBertForPreTraining(charbert_config(SMOKE))


def train_steps(model, optimizer, device, rank, backward, clip) -> list[float]:
    config = charbert_config(SMOKE)
    generator = torch.Generator().manual_seed(100 + rank)  # each rank its own data, the same in every mode
    model.train()
    losses = []
    for _ in range(STEPS):
        batch = {k: v.to(device) for k, v in synthetic_pretraining_batch(config, 2, 32, generator).items()}
        loss = model(**batch).loss
        backward(loss)
        clip()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.detach())
    return losses


def with_accelerate(gradient_checkpointing: bool):
    from accelerate import Accelerator

    # On a CPU-only machine accelerate goes distributed (gloo) only with cpu=True, as
    # charbert.training.create_accelerator does under torchrun / accelerate launch.
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    model = tiny_model()
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    losses = train_steps(model, optimizer, accelerator.device, accelerator.process_index, accelerator.backward,
                         lambda: accelerator.clip_grad_norm_(model.parameters(), 1.0))
    state = accelerator.get_state_dict(model)  # collective under FSDP
    info = {"distributed_type": str(accelerator.distributed_type).split(".")[-1],
            "gradient_checkpointing": accelerator.unwrap_model(model).is_gradient_checkpointing}
    return model, losses, state, info


def with_fully_shard():
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo")
    model = tiny_model()
    for module in list(model.modules()):
        if type(module).__name__ in FSDP_UNITS:
            fully_shard(module)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = train_steps(model, optimizer, torch.device("cpu"), dist.get_rank(), lambda loss: loss.backward(),
                         lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return model, losses, state, {"distributed_type": "FSDP2 (torch fully_shard)"}


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    if mode == "accelerate":
        model, losses, state, info = with_accelerate("--gradient_checkpointing" in sys.argv[3:])
    elif mode == "fully_shard":
        model, losses, state, info = with_fully_shard()
    else:
        raise SystemExit(f"unknown mode {mode!r}: accelerate or fully_shard")
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    local = torch.stack(losses).float()
    gathered = [torch.zeros_like(local) for _ in range(world)]
    if world > 1:
        dist.all_gather(gathered, local)
    else:
        gathered = [local]
    units = sorted({type(m).__name__.removeprefix("FSDP") for m in model.modules() if type(m).__name__.startswith("FSDP")})
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        report = {**info, "num_processes": world, "fsdp_units": units, "losses": [g.tolist() for g in gathered]}
        torch.save({k: v.detach().cpu().clone() for k, v in state.items()}, out / "state.pt")
        (out / "report.json").write_text(json.dumps(report, indent=1))
        print(json.dumps(report), flush=True)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
    # Everything is written and the process group is gone. On a loaded machine a rank has aborted in
    # interpreter teardown ("terminate called without an active exception", after its report was
    # printed), failing the run for nothing the test checks: leave without that teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
