"""python -m pretrain: CharBERT pretraining (MLM + noisy LM) on accelerate.

    python -m pretrain                      # the built-in default job: a tiny CharBERT on stdlib docstrings
    accelerate launch -m pretrain --model_name_or_path bert-dir --train_file corpus/*.txt --word_vocab vocab/ \\
        --max_seq_length 384 --per_device_train_batch_size 4 --gradient_accumulation_steps 8 \\
        --learning_rate 3e-5 --max_train_steps 320000 --checkpointing_steps 10000 --output_dir run1
    accelerate launch -m pretrain ... --resume_from_checkpoint latest
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import time
from functools import partial
from pathlib import Path

PROG = "python -m pretrain"
DEFAULT_OUTPUT_DIR = "runs/pretrain-default"
# What `python -m pretrain` with no model and no data runs (each can still be overridden by a flag).
DEFAULT_JOB_FLAGS = dict(
    per_device_train_batch_size=16, learning_rate=1e-3, num_warmup_steps=40, max_train_steps=400,
    logging_steps=20, checkpointing_steps=200, max_seq_length=128, eval_steps=200,
    new_module_lr_multiplier=1.0,  # its backbone is random too: nothing is newer than the rest
)
# How CharBERT starts on a plain checkpoint unless a flag says otherwise: the recipe measured best
# (docs/results.md, "Starting where the backbone is"): fusion blocks that pass the backbone's
# states through, one per layer (the identity start is exact only per layer), and new modules
# learning 5x faster than the backbone. A CharBERT checkpoint, and the plain objectives, get none.
PLAIN_CHECKPOINT_RECIPE = dict(new_module_init="identity", share_fusion="false", new_module_lr_multiplier=5.0)
WITHOUT_RECIPE = dict(new_module_init=None, share_fusion=None, new_module_lr_multiplier=1.0)


def build_parser() -> argparse.ArgumentParser:
    from charbert.cli import program_name
    from charbert.configuration import NEW_MODULE_INITS
    from charbert.pretraining.collator import OBJECTIVES
    from charbert.training import add_training_args

    parser = argparse.ArgumentParser(prog=program_name(PROG), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", help="a CharBERT checkpoint, or a plain BERT/RoBERTa checkpoint folder to start from")
    parser.add_argument("--train_file", nargs="+", help="text files or glob patterns (plain or .gz), one line a unit")
    parser.add_argument("--validation_file", nargs="+", help="held-out text for MLM perplexity and NLM accuracy")
    parser.add_argument("--dataset_name",
                        help="instead of --train_file: a datasets Hub name, a local dataset folder or a save_to_disk folder "
                             "(streamed into the packed blocks; needs the `datasets` extra)")
    parser.add_argument("--dataset_config_name", help="the dataset's configuration (e.g. wikitext-103-raw-v1)")
    parser.add_argument("--dataset_revision", help="the dataset's revision (pin it: the packed cache is keyed on it)")
    parser.add_argument("--text_column_name", help="the text column (default: 'text', else the first text column)")
    parser.add_argument("--train_split_name", default="train", help="the --dataset_name split to train on")
    parser.add_argument("--validation_split_name",
                        help="a --dataset_name split for validation (e.g. validation), unless --validation_file is given")
    parser.add_argument("--word_vocab", help="folder (or word_vocab.txt) from python -m pretrain.vocab; its char_vocab.json is used too")
    parser.add_argument("--char_vocab", help="a char_vocab.json (default: beside --word_vocab, then in the checkpoint)")
    parser.add_argument("--tokenizer_name", help="a folder with the tokenizer files, when --model_name_or_path has none")
    parser.add_argument("--allow_vocab_mismatch", action="store_true",
                        help="continue a CharBERT checkpoint with other vocabularies than its own, on purpose (a warning)")
    parser.add_argument("--new_module_init", choices=NEW_MODULE_INITS, default=None,
                        help="how the modules CharBERT adds to a plain checkpoint start: 'identity' (the subword channel "
                             "starts equal to the backbone's output; the default), 'reference' (the authors' init), "
                             "'normal' (see CharBertConfig.new_module_init)")
    parser.add_argument("--share_fusion", choices=("true", "false"), default=None,
                        help="on a plain checkpoint: one fusion block for all layers (true, the authors') or one per "
                             "layer (false, the default)")
    parser.add_argument("--objective", choices=OBJECTIVES, default="charbert",
                        help="charbert: MLM+NLM; advbert: plain model, MLM on the same noised text; mlm: plain MLM")
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--mlm_probability", type=float, default=0.10, help="share of tokens chosen for MLM (whole words)")
    parser.add_argument("--noise_probability", type=float, default=0.15, help="share of eligible words given character noise")
    parser.add_argument("--packing_slack", type=float, default=0.1,
                        help="blocks are packed to (1 - slack) x max_seq_length clean tokens: noise adds subwords")
    parser.add_argument("--cache_dir", help="where packed corpora are stored (default: OUTPUT_DIR/cache)")
    parser.add_argument("--max_eval_blocks", type=int, default=2000, help="evaluate on at most this many validation blocks")
    add_training_args(parser)
    # None: the plain-checkpoint recipe decides (apply_recipe).
    parser.set_defaults(new_module_lr_multiplier=None)
    parser._option_string_actions["--new_module_lr_multiplier"].help += " (pretrain: 5 on a plain checkpoint, else 1)"
    return parser


def apply_recipe(args, model_type: str) -> None:
    """Fill the start and lever flags left unset: PLAIN_CHECKPOINT_RECIPE when CharBERT is built on the plain
    checkpoint `model_type`, else WITHOUT_RECIPE; a start flag where no CharBERT is built is an error."""
    from charbert.cli import UsageError

    builds_charbert = args.objective == "charbert" and model_type != "charbert"
    if args.objective != "charbert":
        given = [f"--{k}" for k in ("new_module_init", "share_fusion") if getattr(args, k) is not None]
        if given:
            raise UsageError(f"{' and '.join(given)} shape(s) a new CharBERT; --objective {args.objective} trains a "
                             f"plain model")
    for key, value in (PLAIN_CHECKPOINT_RECIPE if builds_charbert else WITHOUT_RECIPE).items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.train_file is not None and args.dataset_name is not None:
        parser.error("give --train_file or --dataset_name, not both")
    if args.dataset_name is not None and importlib.util.find_spec("datasets") is None:
        parser.error("--dataset_name needs the `datasets` package: pip install 'charbert[datasets]'")
    has_data = args.train_file is not None or args.dataset_name is not None
    args.default_job = args.model_name_or_path is None and not has_data
    if args.default_job:
        given = {a.split("=")[0].lstrip("-") for a in (argv if argv is not None else sys.argv[1:]) if a.startswith("--")}
        for key, value in DEFAULT_JOB_FLAGS.items():
            if key not in given:
                setattr(args, key, value)
        args.output_dir = args.output_dir or DEFAULT_OUTPUT_DIR
    elif args.model_name_or_path is None or not has_data:
        parser.error("--model_name_or_path and --train_file (or --dataset_name) go together "
                     "(or give neither for the built-in default job)")
    return args


# The smallest block of clean tokens packing makes (charbert.pretraining.blocks.pack_lines).
MIN_BLOCK_TOKENS = 8


def block_budget(max_seq_length: int, packing_slack: float) -> int:
    """Clean tokens per block: [CLS] and [SEP] take two positions, the noise slack a share of the rest."""
    return int((max_seq_length - 2) * (1 - packing_slack))


def check_sizes(args) -> None:
    from charbert.cli import UsageError

    if not 0.0 <= args.packing_slack < 1.0:
        raise UsageError(f"--packing_slack must be in [0, 1); got {args.packing_slack}")
    if block_budget(args.max_seq_length, args.packing_slack) < MIN_BLOCK_TOKENS:
        smallest = next(n for n in range(3, 100_000) if block_budget(n, args.packing_slack) >= MIN_BLOCK_TOKENS)
        raise UsageError(f"--max_seq_length must be >= {smallest} (with --packing_slack {args.packing_slack}); "
                         f"got {args.max_seq_length}")
    for name in ("mlm_probability", "noise_probability"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise UsageError(f"--{name} must be in [0, 1]; got {getattr(args, name)}")
    if args.max_eval_blocks < 1:
        raise UsageError(f"--max_eval_blocks must be >= 1; got {args.max_eval_blocks}")


def write_card(args, model, eval_metrics: dict, word_vocab) -> None:
    """The model card (README.md) of the pretrained model."""
    from charbert.model_card import write_model_card

    config = model.config
    metrics = {k if k.startswith("eval_") else f"eval_{k}": v for k, v in eval_metrics.items()}
    data_files = [*(args.train_file or []), *(args.validation_file or [])] or [args.dataset_name]
    write_model_card(args.output_dir, task="pretraining", metrics=metrics, base_model=args.model_name_or_path,
                     training_args=vars(args), data_files=data_files,
                     char_vocab_size=getattr(config, "char_vocab_size", None),
                     word_vocab_size=len(word_vocab) if word_vocab is not None else None)


def pack_text(args, files: list[str] | None, split: str | None, *, tokenizer, cache: str, budget: int,
              show_progress: bool):
    """Packed blocks of text files, else of the --dataset_name split (streamed, never held in memory)."""
    if files:
        from charbert.pretraining.blocks import pack_corpus

        return pack_corpus(files, tokenizer, cache, budget, show_progress)
    from charbert.pretraining.hf_datasets import pack_dataset

    return pack_dataset(args.dataset_name, tokenizer, cache, budget, args.dataset_config_name, split,
                        args.text_column_name, revision=args.dataset_revision, show_progress=show_progress)


def run(args) -> dict:
    from charbert.checkpoint import read_model_type, resolve_checkpoint
    from charbert.pretraining.collator import PretrainingCollator
    from charbert.pretraining.job import (
        load_pretraining_model,
        prepare_default_job,
        pretraining_metrics,
        resolve_vocabularies,
    )
    from charbert.training import create_accelerator, save_model, stopped_line, train, training_config_from_args
    from charbert.training.lock import lock_output_dir

    start = time.time()
    check_sizes(args)
    apply_recipe(args, "bert" if args.default_job else read_model_type(resolve_checkpoint(args.model_name_or_path)))
    config = training_config_from_args(args)
    accelerator = create_accelerator(config)
    if accelerator.is_main_process:
        lock_output_dir(args.output_dir)  # for the whole run, the final save included
    if args.default_job:
        with accelerator.main_process_first():
            job = prepare_default_job(Path(args.output_dir) / "default-job", seed=args.seed)
        args.model_name_or_path, args.train_file = job["model"], [job["train_file"]]
        args.validation_file = args.validation_file or [job["validation_file"]]
        args.word_vocab = args.word_vocab or job["vocab"]
        accelerator.print(f"Default job: a tiny CharBERT from scratch on Python's stdlib docstrings ({job['train_file']}).")

    word_vocab, char_vocab = resolve_vocabularies(args.model_name_or_path, args.word_vocab, args.char_vocab)
    from accelerate.utils import set_seed

    set_seed(args.seed)  # before the model is built: its new character modules and heads start seeded
    new_model = {k: v for k, v in (("new_module_init", args.new_module_init),
                                   ("share_fusion", None if args.share_fusion is None else args.share_fusion == "true"))
                 if v is not None}
    model, tokenizer = load_pretraining_model(args.model_name_or_path, args.objective, word_vocab, char_vocab,
                                              args.max_seq_length, args.tokenizer_name, args.allow_vocab_mismatch,
                                              new_model=new_model)
    budget = block_budget(args.max_seq_length, args.packing_slack)
    cache = args.cache_dir or str(Path(args.output_dir) / "cache")
    with accelerator.main_process_first():
        pack = partial(pack_text, args, tokenizer=tokenizer.tokenizer, cache=cache, budget=budget,
                       show_progress=accelerator.is_main_process)
        train_blocks = pack(args.train_file, args.train_split_name)
        eval_blocks = None
        if args.validation_file or (args.dataset_name and args.validation_split_name):
            eval_blocks = pack(args.validation_file, args.validation_split_name)
    if eval_blocks is not None and len(eval_blocks) > args.max_eval_blocks:
        from torch.utils.data import Subset

        eval_blocks = Subset(eval_blocks, range(args.max_eval_blocks))
    skipped = train_blocks.meta["read_stats"]
    accelerator.print(
        f"{len(train_blocks)} training blocks of <= {budget} tokens from {skipped['lines']} lines "
        f"(skipped: {skipped['empty_lines']} empty, {skipped['skipped_non_utf8']} not UTF-8)"
    )
    collator = PretrainingCollator(
        tokenizer, word_vocab, args.max_seq_length, args.mlm_probability, args.noise_probability, objective=args.objective
    )
    result = train(
        model, train_blocks, config, collator, eval_fn=pretraining_metrics if eval_blocks is not None else None,
        accelerator=accelerator, eval_dataset=eval_blocks,
    )
    if result.stopped_early:
        accelerator.print(stopped_line(result))
        return {"output_dir": args.output_dir, "objective": args.objective, "steps": result.global_step,
                "stopped_early": True, "eval": result.last_eval, "log": str(result.log_path)}
    extra = {"pretraining_args.json": json.dumps(vars(args), indent=1, default=str)}
    if word_vocab is not None:
        extra["word_vocab.txt"] = "\n".join([word_vocab.UNK, *word_vocab.words]) + "\n"
    save_model(accelerator, model, args.output_dir, tokenizer=tokenizer if args.objective == "charbert" else tokenizer.tokenizer, extra_files=extra)
    if accelerator.is_main_process:
        write_card(args, model, result.last_eval, word_vocab)
    summary = {
        "output_dir": args.output_dir,
        "objective": args.objective,
        "steps": result.global_step,
        "train_loss": result.train_loss,
        "eval": result.last_eval,
        "wall_time_s": round(time.time() - start, 1),
        "log": str(result.log_path),
    }
    accelerator.print(json.dumps(summary, indent=1))
    accelerator.print(f"The pretrained model, tokenizer and vocabularies are in {args.output_dir} "
                      f"(fine-tune it with python -m finetune.glue --model_name_or_path {args.output_dir} ...).")
    return summary


def main(argv=None) -> int:
    from charbert.cli import program_name, run_main, setup_logging

    setup_logging(("pretrain", "charbert"), logging.WARNING)
    args = parse_args(argv)
    return run_main(program_name(PROG), lambda: run(args), known_errors=(ValueError,))


if __name__ == "__main__":
    raise SystemExit(main())
