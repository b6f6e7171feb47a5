"""Helper for tests/test_training.py: a tiny training run under torchrun (gloo, CPU).

Usage: python -m torch.distributed.run --nproc_per_node 2 tests/dist_train_script.py OUT_DIR REPORT_DIR

Each rank writes REPORT_DIR/rank{r}.json with the dataset indices (and collator masks) of
every batch its model consumed, per epoch, and REPORT_DIR/params{r}.pt with its final
parameters, so the test can check sharding, collator determinism and DDP synchronisation.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from test_training import RecordingModel, ToyMaskCollator, make_token_dataset  # noqa: E402

from charbert.training import TrainingConfig, create_accelerator, train  # noqa: E402

NUM_EXAMPLES = 48
BATCH = 4
STEPS = 12  # 48 / (4 * 2 ranks) = 6 steps per epoch -> 2 epochs
CHECKPOINT_EVERY = 3


def main() -> None:
    out_dir, report_dir = Path(sys.argv[1]), Path(sys.argv[2])
    config = TrainingConfig(
        output_dir=str(out_dir), seed=7, per_device_train_batch_size=BATCH, learning_rate=1e-2,
        max_train_steps=STEPS, checkpointing_steps=CHECKPOINT_EVERY, logging_steps=2, weight_decay=0.01,
    )
    accelerator = create_accelerator(config)
    torch.manual_seed(0)  # same initial weights on every rank (DDP also broadcasts them)
    model = RecordingModel()
    steps_per_epoch = NUM_EXAMPLES // (BATCH * accelerator.num_processes)
    result = train(model, make_token_dataset(NUM_EXAMPLES), config, ToyMaskCollator(), accelerator=accelerator)
    rank = accelerator.process_index
    report_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "rank": rank,
        "num_processes": accelerator.num_processes,
        "steps_per_epoch": steps_per_epoch,
        "batches": model.seen,  # [[idx...], ...] in consumption order
        "masks": model.masks,
        "global_step": result.global_step,
    }
    (report_dir / f"rank{rank}.json").write_text(json.dumps(record))
    torch.save({k: v.detach().cpu() for k, v in accelerator.unwrap_model(model).state_dict().items()},
               report_dir / f"params{rank}.pt")
    accelerator.wait_for_everyone()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
